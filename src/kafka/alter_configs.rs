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
use tributary_actors::{AlterBrokerConfig, TopicError};

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
    let changes = match (resource_type, changes) {
        (RESOURCE_TOPIC | RESOURCE_BROKER, Ok(changes)) => changes,
        (RESOURCE_TOPIC | RESOURCE_BROKER, Err((code, why))) => return (code, message(why)),
        _ => {
            let why = format!("resource type {resource_type} cannot be altered; use 2 (topic) or 4 (broker)");
            return (ResponseError::InvalidRequest.code(), message(why));
        }
    };
    let outcome = if resource_type == RESOURCE_BROKER {
        alter_broker(ctx, name, changes, replace, validate_only).await
    } else {
        alter_topic(ctx, name, changes, replace, validate_only).await
    };
    match outcome {
        Ok(()) => (0, None),
        Err((code, why)) => (code, message(why)),
    }
}

/// Dynamic broker configs are metadata: the registry validates them (and maps
/// broker names to topic-config names), the controller commits them, and every
/// broker's registry follows. A broker resource is this broker's id, or "" for
/// the cluster-wide default; both change the cluster-wide defaults.
async fn alter_broker(
    ctx: &RequestContext,
    name: &StrBytes,
    changes: Vec<(String, ConfigOp)>,
    replace: bool,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let node = ctx.node_id().to_string();
    if !name.is_empty() && name.as_str() != node {
        return Err((ResponseError::InvalidRequest.code(), format!("this is broker {node}, not '{name}'")));
    }
    let check = AlterBrokerConfig { changes, replace, validate_only: true };
    let overrides = match ctx.broker.registry().send(check).await {
        Ok(Ok(overrides)) => overrides,
        Ok(Err(e)) => return Err((e.error_code(), e.to_string())),
        Err(e) => return Err((ResponseError::UnknownServerError.code(), e.to_string())),
    };
    if validate_only {
        return Ok(());
    }
    let command = crate::cluster::metadata::Command::SetTopicDefaults { configs: overrides.clone() };
    ctx.cluster.commit(command).await?;
    ctx.cluster.await_local(&ctx.broker, |m| m.broker_overrides == overrides).await;
    Ok(())
}

/// Topic configs are metadata: validated here, committed by the controller.
async fn alter_topic(
    ctx: &RequestContext,
    name: &StrBytes,
    changes: Vec<(String, ConfigOp)>,
    replace: bool,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let Some(topic) = ctx.cluster.metadata().topics.get(name.as_str()).cloned() else {
        return Err((ResponseError::UnknownTopicOrPartition.code(), format!("topic '{name}' does not exist")));
    };
    let defaults = ctx.broker.metadata().defaults.clone();
    let mut configs = if replace { Default::default() } else { topic.configs.clone() };
    // The value in force for APPEND and SUBTRACT: the topic's current config.
    let current = tributary_actors::TopicConfig::with_overrides(&defaults, &topic.configs)
        .map_err(|e| (ResponseError::InvalidConfig.code(), e.0))?;
    for (key, op) in changes {
        op.apply(&key, &mut configs, &current).map_err(|e| {
            let e = TopicError::from(e);
            (e.error_code(), e.to_string())
        })?;
    }
    if let Err(e) = tributary_actors::TopicConfig::with_overrides(&defaults, &configs) {
        return Err((ResponseError::InvalidConfig.code(), e.0));
    }
    if validate_only {
        return Ok(());
    }
    let command =
        crate::cluster::metadata::Command::AlterTopicConfig { name: name.to_string(), configs: configs.clone() };
    ctx.cluster.commit(command).await?;
    ctx.cluster.await_local(&ctx.broker, |m| m.topic(name.as_str()).is_some_and(|t| t.overrides == configs)).await;
    Ok(())
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

super::registry::api! {
    AlterConfigs: AlterConfigsRequest => AlterConfigsResponse, versions 0..=2, access Topic AlterConfigs,
    |call, request| handle(&call.ctx, request).await
}

super::registry::api! {
    IncrementalAlterConfigs: IncrementalAlterConfigsRequest => IncrementalAlterConfigsResponse, versions 0..=1, access Topic AlterConfigs,
    |call, request| handle_incremental(&call.ctx, request).await
}
