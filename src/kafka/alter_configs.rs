//! AlterConfigs (replace a topic's overrides) and IncrementalAlterConfigs
//! (SET, DELETE, and APPEND or SUBTRACT on list configs) for topics, and for
//! the broker's dynamic configs (the broker-wide topic defaults, e.g.
//! `log.retention.ms`). The arithmetic of each change is `ConfigOp::apply`,
//! the same on one broker (in the topic registry) and in a cluster (here).

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tributary_actors::config::ConfigOp;
use tributary_actors::{AlterBrokerConfig, AlterTopicConfig, TopicError};

use super::{message, RequestContext};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The changes of one resource, or why they cannot be read (an error code and message).
type Changes = Result<Vec<(String, ConfigOp)>, (i16, String)>;

/// Applies `changes` to one resource; returns its error code and message.
async fn alter(
    ctx: &RequestContext,
    resource_type: i8,
    name: &StrBytes,
    changes: Changes,
    replace: bool,
    validate_only: bool,
) -> (i16, Option<StrBytes>) {
    if resource_type != RESOURCE_TOPIC && resource_type != RESOURCE_BROKER {
        let why = format!("resource type {resource_type} cannot be altered; use 2 (topic) or 4 (broker)");
        return (ResponseError::InvalidRequest.code(), message(why));
    }
    if let Some(cluster) = &ctx.cluster {
        return alter_in_cluster(ctx, cluster, resource_type, name, changes, replace, validate_only).await;
    }
    // A broker resource is this broker's id, or "" for the cluster-wide default.
    let node = ctx.node_id().to_string();
    if resource_type == RESOURCE_BROKER && !name.is_empty() && name.as_str() != node {
        return (ResponseError::InvalidRequest.code(), message(format!("this is broker {node}, not '{name}'")));
    }
    let changes = match changes {
        Ok(changes) => changes,
        Err((code, why)) => return (code, message(why)),
    };
    let outcome = if resource_type == RESOURCE_BROKER {
        ctx.broker.registry().send(AlterBrokerConfig { changes, replace, validate_only }).await
    } else {
        ctx.broker.registry().send(AlterTopicConfig { name: name.to_string(), changes, replace, validate_only }).await
    };
    match outcome {
        Ok(Ok(())) => (0, None),
        Ok(Err(e)) => (e.error_code(), message(&e)),
        Err(e) => (ResponseError::UnknownServerError.code(), message(e)),
    }
}

fn result(resource_type: i8, name: StrBytes, (code, why): (i16, Option<StrBytes>)) -> AlterConfigsResourceResponse {
    AlterConfigsResourceResponse::default()
        .with_resource_type(resource_type)
        .with_resource_name(name)
        .with_error_code(code)
        .with_error_message(why)
}

pub async fn handle(ctx: &RequestContext, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let op = |value: Option<&StrBytes>| value.map_or(ConfigOp::Delete, |v| ConfigOp::Set(v.to_string()));
        let changes = Ok(r.configs.iter().map(|c| (c.name.to_string(), op(c.value.as_ref()))).collect());
        let outcome = alter(ctx, r.resource_type, &r.resource_name, changes, true, req.validate_only).await;
        responses.push(result(r.resource_type, r.resource_name, outcome));
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn handle_incremental(
    ctx: &RequestContext,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as Response;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let changes: Changes = r
            .configs
            .iter()
            .map(|c| {
                let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
                let op = match c.config_operation {
                    OP_SET => ConfigOp::Set(value),
                    OP_DELETE => ConfigOp::Delete,
                    OP_APPEND => ConfigOp::Append(value),
                    OP_SUBTRACT => ConfigOp::Subtract(value),
                    op => {
                        let why = format!("unknown config operation {op} on '{}'; use 0 to 3", c.name);
                        return Err((ResponseError::InvalidRequest.code(), why));
                    }
                };
                Ok((c.name.to_string(), op))
            })
            .collect();
        let (code, why) = alter(ctx, r.resource_type, &r.resource_name, changes, false, req.validate_only).await;
        responses.push(
            Response::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(why),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// In a cluster, topic configs are metadata: validated here, committed by the controller.
async fn alter_in_cluster(
    ctx: &RequestContext,
    cluster: &crate::cluster::Cluster,
    resource_type: i8,
    name: &StrBytes,
    changes: Changes,
    replace: bool,
    validate_only: bool,
) -> (i16, Option<StrBytes>) {
    if resource_type != RESOURCE_TOPIC {
        let why = "dynamic broker configs are not yet replicated in a cluster; set them in each broker's config file";
        return (ResponseError::InvalidRequest.code(), message(why));
    }
    let changes = match changes {
        Ok(changes) => changes,
        Err((code, why)) => return (code, message(why)),
    };
    let Some(topic) = cluster.metadata().topics.get(name.as_str()).cloned() else {
        return (ResponseError::UnknownTopicOrPartition.code(), message(format!("topic '{name}' does not exist")));
    };
    let defaults = ctx.broker.metadata().defaults.clone();
    let mut configs = if replace { Default::default() } else { topic.configs.clone() };
    // The value in force for APPEND and SUBTRACT: the topic's current config.
    let current = match tributary_actors::TopicConfig::with_overrides(&defaults, &topic.configs) {
        Ok(current) => current,
        Err(e) => return (ResponseError::InvalidConfig.code(), message(e.0)),
    };
    for (key, op) in changes {
        if let Err(e) = op.apply(&key, &mut configs, &current) {
            let e = TopicError::from(e);
            return (e.error_code(), message(&e));
        }
    }
    if let Err(e) = tributary_actors::TopicConfig::with_overrides(&defaults, &configs) {
        return (ResponseError::InvalidConfig.code(), message(e.0));
    }
    if validate_only {
        return (0, None);
    }
    let command =
        crate::cluster::metadata::Command::AlterTopicConfig { name: name.to_string(), configs: configs.clone() };
    match cluster.commit(command).await {
        Ok(()) => {
            cluster.await_local(&ctx.broker, |m| m.topic(name.as_str()).is_some_and(|t| t.overrides == configs)).await;
            (0, None)
        }
        Err((code, why)) => (code, message(why)),
    }
}
