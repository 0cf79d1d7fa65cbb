//! CreateTopics. One broker: replication factor must be 1 (or -1, the default).

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::config::TOPIC_CONFIG_NAMES;
use tributary_actors::CreateTopic;

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
        let msg = CreateTopic { name: name.clone(), partitions, configs, validate_only: req.validate_only };
        match ctx.broker.registry().send(msg).await {
            Ok(Ok(view)) => {
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
                let count = partitions.unwrap_or(ctx.config.topics.num_partitions);
                let mut result = result;
                if version >= 5 {
                    result = result.with_num_partitions(count).with_replication_factor(1).with_configs(Some(configs));
                }
                if version >= 7 {
                    result = result.with_topic_id(view.id);
                }
                results.push(result);
            }
            Ok(Err(e)) => results.push(fail(result, e.error_code(), e.to_string())),
            Err(e) => results.push(fail(result, ResponseError::UnknownServerError.code(), e.to_string())),
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn fail(result: CreatableTopicResult, code: i16, why: String) -> CreatableTopicResult {
    result.with_error_code(code).with_error_message(message(why)).with_num_partitions(-1).with_replication_factor(-1)
}
