//! CreateTopics. One broker: replication factor must be 1 (or -1, the default).

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::config::{check_name_collision, validate_topic_name, TOPIC_CONFIG_NAMES};
use tributary_actors::{CreateTopic, TopicView};

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
        if let Some(cluster) = &ctx.cluster {
            results.push(create_in_cluster(ctx, cluster, topic, req.validate_only, version).await);
            continue;
        }
        if topic.replication_factor != -1 && topic.replication_factor != 1 {
            let why = format!("replication factor {} is larger than the 1 available broker", topic.replication_factor);
            results.push(fail(result, ResponseError::InvalidReplicationFactor.code(), why));
            continue;
        }
        let node = ctx.node_id();
        if topic.assignments.iter().any(|a| a.broker_ids.iter().any(|b| b.0 != node) || a.broker_ids.len() != 1) {
            let why = format!("replica assignments may only name broker {node}, once per partition");
            results.push(fail(result, ResponseError::InvalidReplicaAssignment.code(), why));
            continue;
        }
        let partitions = match (topic.num_partitions, topic.assignments.len()) {
            (-1, 0) => None,
            (-1, n) => Some(n as i32),
            (n, _) => Some(n),
        };
        let mut configs = BTreeMap::new();
        for c in &topic.configs {
            if let Some(value) = &c.value {
                configs.insert(c.name.to_string(), value.to_string());
            }
        }
        let msg = CreateTopic { name: name.clone(), partitions, configs, validate_only: req.validate_only, id: None };
        match ctx.broker.registry().send(msg).await {
            Ok(Ok(view)) => {
                let count = partitions.unwrap_or(ctx.config.topics.num_partitions);
                results.push(created(result, &view, count, 1, version));
            }
            Ok(Err(e)) => results.push(fail(result, e.error_code(), e.to_string())),
            Err(e) => results.push(fail(result, ResponseError::UnknownServerError.code(), e.to_string())),
        }
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

/// In a cluster the controller creates the topic: validated here, committed
/// through Raft, answered once this broker has it.
async fn create_in_cluster(
    ctx: &RequestContext,
    cluster: &crate::cluster::Cluster,
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
        let why = "manual replica assignment is not supported in a cluster; give a replication factor".to_string();
        return fail(result, ResponseError::InvalidReplicaAssignment.code(), why);
    }
    let count = if topic.num_partitions == -1 { ctx.config.topics.num_partitions } else { topic.num_partitions };
    if count < 1 || count > ctx.config.topics.max_partitions_per_topic {
        let why =
            format!("partition count {count} must be between 1 and {}", ctx.config.topics.max_partitions_per_topic);
        return fail(result, ResponseError::InvalidPartitions.code(), why);
    }
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
