//! CreatePartitions: grow a topic. Existing partitions and their data stay.

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::{message, RequestContext};

pub async fn handle(ctx: &RequestContext, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(match grow(ctx, &topic, req.validate_only).await {
            Ok(()) => result,
            Err((code, why)) => result.with_error_code(code).with_error_message(message(why)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// Checks the new count against the controller's metadata and commits it.
async fn grow(ctx: &RequestContext, topic: &CreatePartitionsTopic, validate_only: bool) -> Result<(), (i16, String)> {
    let name = topic.name.0.to_string();
    let max = ctx.config.topics.max_partitions_per_topic;
    let metadata = ctx.cluster.metadata();
    let existing = metadata.topics.get(&name);
    let replication = existing.and_then(|t| t.partitions.first()).map_or(1, |p| p.replicas.len());
    match existing.map(|t| t.partitions.len() as i32) {
        None => return Err((ResponseError::UnknownTopicOrPartition.code(), format!("topic '{name}' does not exist"))),
        Some(n) if topic.count <= n => {
            let why = format!("topic '{name}' has {n} partitions; the new count {} must be larger", topic.count);
            return Err((ResponseError::InvalidPartitions.code(), why));
        }
        Some(_) if topic.count > max => {
            return Err((ResponseError::InvalidPartitions.code(), format!("at most {max} partitions per topic")))
        }
        Some(_) if topic.assignments.as_ref().is_some_and(|a| !a.is_empty()) => {
            let why = "manual replica assignment is not supported".to_string();
            return Err((ResponseError::InvalidReplicaAssignment.code(), why));
        }
        Some(n) => super::capacity::admit(ctx, (topic.count - n) as usize * replication)?,
    }
    if validate_only {
        return Ok(());
    }
    let count = topic.count;
    let command = crate::cluster::metadata::Command::CreatePartitions { name: name.clone(), count };
    ctx.cluster.commit(command).await?;
    let grown = |m: &tributary_actors::MetadataSnapshot| m.topic(&name).is_some_and(|t| t.partitions.len() as i32 >= count);
    ctx.cluster.await_local(&ctx.broker, grown).await;
    Ok(())
}

super::registry::api! {
    CreatePartitions: CreatePartitionsRequest => CreatePartitionsResponse, versions 0..=3, access Topic Alter,
    |call, request| handle(&call.ctx, request).await
}
