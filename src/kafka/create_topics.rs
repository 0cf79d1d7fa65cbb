//! CreateTopics: validated here, committed by the controller, answered once
//! this broker has the topic.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::config::{check_name_collision, validate_topic_name, TOPIC_CONFIG_NAMES};
use tributary_actors::TopicView;

use super::{message, str_bytes, RequestContext};

/// `config_source` values of DescribeConfigs/CreateTopics.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_DEFAULT: i8 = 5;

pub async fn handle(ctx: &RequestContext, req: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> =
        req.topics.iter().map(|t| t.name.0.to_string()).filter(|n| !seen.insert(n.clone())).collect();
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.0.to_string();
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        if duplicates.contains(&name) {
            results.push(fail(
                result,
                ResponseError::InvalidRequest.code(),
                format!("topic '{name}' appears twice in the request"),
            ));
            continue;
        }
        results.push(create(ctx, topic, req.validate_only, version).await);
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn created(result: CreatableTopicResult, view: &TopicView, count: i32, rf: i16, version: i16) -> CreatableTopicResult {
    let configs = TOPIC_CONFIG_NAMES
        .iter()
        .map(|n| {
            let source = if view.overrides.contains_key(*n) { SOURCE_TOPIC } else { SOURCE_DEFAULT };
            CreatableTopicConfigs::default()
                .with_name(str_bytes(*n))
                .with_value(view.config.get(n).map(str_bytes))
                .with_config_source(source)
        })
        .collect();
    let mut result = result;
    if version >= 5 {
        result = result.with_num_partitions(count).with_replication_factor(rf).with_configs(Some(configs));
    }
    if version >= 7 {
        result = result.with_topic_id(view.id);
    }
    result
}

async fn create(
    ctx: &RequestContext,
    topic: CreatableTopic,
    validate_only: bool,
    version: i16,
) -> CreatableTopicResult {
    let name = topic.name.0.to_string();
    let result = CreatableTopicResult::default().with_name(topic.name.clone());
    if let Err(e) = validate_topic_name(&name) {
        return fail(result, ResponseError::InvalidTopicException.code(), e.0);
    }
    if !topic.assignments.is_empty() {
        let why = "manual replica assignment is not supported; give a replication factor".to_string();
        return fail(result, ResponseError::InvalidReplicaAssignment.code(), why);
    }
    let count = if topic.num_partitions == -1 { ctx.config.topics.num_partitions } else { topic.num_partitions };
    if count < 1 || count > ctx.config.topics.max_partitions_per_topic {
        let why =
            format!("partition count {count} must be between 1 and {}", ctx.config.topics.max_partitions_per_topic);
        return fail(result, ResponseError::InvalidPartitions.code(), why);
    }
    let cluster = &ctx.cluster;
    let live = cluster.metadata().live_brokers().count();
    let rf =
        if topic.replication_factor == -1 { cluster.default_replication_factor() } else { topic.replication_factor };
    if rf < 1 || rf as usize > live {
        let why = format!("replication factor {rf} needs that many live brokers; {live} are live");
        return fail(result, ResponseError::InvalidReplicationFactor.code(), why);
    }
    let requested: BTreeMap<String, String> =
        topic.configs.iter().filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string()))).collect();
    let defaults = ctx.broker.metadata().defaults.clone();
    let configs = match tributary_actors::TopicConfig::for_new_topic(&defaults, requested) {
        Ok((_, kept)) => kept,
        Err(e) => return fail(result, ResponseError::InvalidConfig.code(), e.0),
    };
    if cluster.metadata().topics.contains_key(&name) {
        return fail(result, ResponseError::TopicAlreadyExists.code(), format!("topic '{name}' already exists"));
    }
    if let Err((code, why)) = super::capacity::admit(ctx, count as usize * rf as usize) {
        return fail(result, code, why);
    }
    if validate_only {
        // It never reaches the controller, whose apply refuses a colliding name.
        let metadata = cluster.metadata();
        if let Err(e) = check_name_collision(&name, metadata.topics.keys().map(String::as_str)) {
            return fail(result, ResponseError::InvalidTopicException.code(), e.0);
        }
        return result.with_num_partitions(count).with_replication_factor(rf);
    }
    match cluster.create_topic(&ctx.broker, &name, count, rf, configs).await {
        Ok(view) => created(result, &view, count, rf, version),
        Err((code, why)) => fail(result, code, why),
    }
}

fn fail(result: CreatableTopicResult, code: i16, why: String) -> CreatableTopicResult {
    result.with_error_code(code).with_error_message(message(why)).with_num_partitions(-1).with_replication_factor(-1)
}

super::registry::api! {
    CreateTopics: CreateTopicsRequest => CreateTopicsResponse, versions 2..=7, access Topic Create,
    |call, request| handle(&call.ctx, request, call.version).await
}
