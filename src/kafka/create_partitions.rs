//! CreatePartitions: grow a topic. Existing partitions and their data stay.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::CreatePartitions;

use super::{message, RequestContext};

pub async fn handle(ctx: &RequestContext, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let msg =
            CreatePartitions { name: topic.name.0.to_string(), count: topic.count, validate_only: req.validate_only };
        results.push(match ctx.broker.registry().send(msg).await {
            Ok(Ok(())) => result,
            Ok(Err(e)) => result.with_error_code(e.error_code()).with_error_message(message(&e)),
            Err(e) => result.with_error_code(ResponseError::UnknownServerError.code()).with_error_message(message(e)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
