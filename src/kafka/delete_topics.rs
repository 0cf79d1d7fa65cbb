//! DeleteTopics: answered once every partition's directory is gone.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::DeleteTopic;

use super::{message_since, RequestContext};

pub async fn handle(ctx: &RequestContext, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(req.topic_names.len());
    for name in req.topic_names {
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        if let Some(cluster) = &ctx.cluster {
            let topic = name.0.to_string();
            let command = crate::cluster::metadata::Command::DeleteTopic { name: topic.clone() };
            results.push(match cluster.commit(command).await {
                Ok(()) => {
                    cluster.await_local(&ctx.broker, |m| m.topic(&topic).is_none()).await;
                    result
                }
                Err((code, why)) => result.with_error_code(code).with_error_message(message_since(version, 5, why)),
            });
            continue;
        }
        let outcome = ctx.broker.registry().send(DeleteTopic { name: name.0.to_string() }).await;
        results.push(match outcome {
            Ok(Ok(())) => result,
            Ok(Err(e)) => result.with_error_code(e.error_code()).with_error_message(message_since(version, 5, &e)),
            Err(e) => result
                .with_error_code(ResponseError::UnknownServerError.code())
                .with_error_message(message_since(version, 5, e)),
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}

super::registry::api! {
    DeleteTopics: DeleteTopicsRequest => DeleteTopicsResponse, versions 1..=5, access Topic Delete,
    |call, request| handle(&call.ctx, request, call.version).await
}
