//! CreatePartitions: grow a topic. Existing partitions and their data stay.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::CreatePartitions as Grow;

use super::{message, RequestContext};

pub async fn handle(ctx: &RequestContext, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        if let Some(cluster) = &ctx.cluster {
            let name = topic.name.0.to_string();
            let current = cluster.metadata().topics.get(&name).map(|t| t.partitions.len() as i32);
            let refusal = match current {
                None => Some((ResponseError::UnknownTopicOrPartition.code(), format!("topic '{name}' does not exist"))),
                Some(n) if topic.count <= n => Some((
                    ResponseError::InvalidPartitions.code(),
                    format!("topic '{name}' has {n} partitions; the new count {} must be larger", topic.count),
                )),
                Some(_) if topic.count > ctx.config.topics.max_partitions_per_topic => Some((
                    ResponseError::InvalidPartitions.code(),
                    format!("at most {} partitions per topic", ctx.config.topics.max_partitions_per_topic),
                )),
                Some(_) if topic.assignments.is_some() => Some((
                    ResponseError::InvalidReplicaAssignment.code(),
                    "manual replica assignment is not supported in a cluster".to_string(),
                )),
                _ => None,
            };
            let outcome = match refusal {
                Some(refused) => Err(refused),
                None if req.validate_only => Ok(()),
                None => {
                    let count = topic.count;
                    let grown = |m: &tributary_actors::MetadataSnapshot| {
                        m.topic(&name).is_some_and(|t| t.partitions.len() as i32 >= count)
                    };
                    let command = crate::cluster::metadata::Command::CreatePartitions { name: name.clone(), count };
                    match cluster.commit(command).await {
                        Ok(()) => {
                            cluster.await_local(&ctx.broker, grown).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            results.push(match outcome {
                Ok(()) => result,
                Err((code, why)) => result.with_error_code(code).with_error_message(message(why)),
            });
            continue;
        }
        let msg =
            Grow { name: topic.name.0.to_string(), count: topic.count, validate_only: req.validate_only };
        results.push(match ctx.broker.registry().send(msg).await {
            Ok(Ok(())) => result,
            Ok(Err(e)) => result.with_error_code(e.error_code()).with_error_message(message(&e)),
            Err(e) => result.with_error_code(ResponseError::UnknownServerError.code()).with_error_message(message(e)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

super::registry::api! {
    CreatePartitions: CreatePartitionsRequest => CreatePartitionsResponse, versions 0..=3, access Topic Alter,
    |call, request| handle(&call.ctx, request).await
}
