//! DeleteTopics: committed by the controller, answered once this broker's
//! partition directories are gone.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};

use super::{message_since, RequestContext};

pub async fn handle(ctx: &RequestContext, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(req.topic_names.len());
    for name in req.topic_names {
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        let topic = name.0.to_string();
        if crate::txn::is_internal(&topic) {
            let why = format!("{topic} is internal and cannot be deleted");
            results.push(result.with_error_code(kafka_protocol::ResponseError::InvalidTopicException.code()).with_error_message(message_since(version, 5, why)));
            continue;
        }
        let command = crate::cluster::metadata::Command::DeleteTopic { name: topic.clone() };
        results.push(match ctx.cluster.commit(command).await {
            Ok(()) => {
                let gone = |m: &tributary_actors::MetadataSnapshot| m.topic(&topic).is_none() && !m.deleting.contains(topic.as_str());
                ctx.cluster.await_local(&ctx.broker, gone).await;
                result
            }
            Err((code, why)) => result.with_error_code(code).with_error_message(message_since(version, 5, why)),
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}

super::registry::api! {
    DeleteTopics: DeleteTopicsRequest => DeleteTopicsResponse, versions 1..=5, access Topic Delete,
    |call, request| handle(&call.ctx, request, call.version).await
}
