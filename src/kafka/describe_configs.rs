//! DescribeConfigs for topics (resource type 2) and this broker (type 4).

use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::config::{DYNAMIC_BROKER_CONFIGS, TOPIC_CONFIG_NAMES};

use super::create_topics::{SOURCE_DEFAULT, SOURCE_TOPIC};
use super::{message, str_bytes, RequestContext};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_BROKER: i8 = 2;
const SOURCE_STATIC_BROKER: i8 = 4;

pub fn handle(ctx: &RequestContext, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            // Null or empty asks for every config, as in Kafka.
            let wanted = |config: &str| match resource.configuration_keys.as_deref() {
                None | Some([]) => true,
                Some(keys) => keys.iter().any(|k| k.as_str() == config),
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => match ctx.broker.metadata().topic(&name) {
                    Some(topic) => {
                        let configs = TOPIC_CONFIG_NAMES
                            .iter()
                            .filter(|n| wanted(n))
                            .map(|n| {
                                let source =
                                    if topic.overrides.contains_key(*n) { SOURCE_TOPIC } else { SOURCE_DEFAULT };
                                entry(n, topic.config.get(n).unwrap_or_default(), source)
                            })
                            .collect();
                        result.with_configs(configs)
                    }
                    None => result
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(message(format!("topic '{name}' does not exist"))),
                },
                RESOURCE_BROKER => {
                    let id = ctx.node_id().to_string();
                    if !name.is_empty() && name != id {
                        return result
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(message(format!("this is broker {id}, not '{name}'")));
                    }
                    let snapshot = ctx.broker.metadata();
                    let mut configs: Vec<_> = broker_configs(ctx)
                        .into_iter()
                        .filter(|(n, _)| wanted(n))
                        .map(|(n, v)| entry(n, v, SOURCE_STATIC_BROKER))
                        .collect();
                    for (broker_name, topic_name) in DYNAMIC_BROKER_CONFIGS {
                        if !wanted(broker_name) {
                            continue;
                        }
                        let source = if snapshot.broker_overrides.contains_key(*topic_name) {
                            SOURCE_DYNAMIC_BROKER
                        } else {
                            SOURCE_DEFAULT
                        };
                        configs.push(entry(broker_name, snapshot.defaults.get(topic_name).unwrap_or_default(), source));
                    }
                    result.with_configs(configs)
                }
                other => result.with_error_code(ResponseError::InvalidRequest.code()).with_error_message(message(
                    format!("resource type {other} is not supported; use 2 (topic) or 4 (broker)"),
                )),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn entry(name: &str, value: String, source: i8) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_read_only(source == SOURCE_STATIC_BROKER)
        .with_config_source(source)
}

fn broker_configs(ctx: &RequestContext) -> Vec<(&'static str, String)> {
    let c = &ctx.config;
    vec![
        ("auto.create.topics.enable", c.topics.auto_create.to_string()),
        ("broker.id", c.broker.node_id.to_string()),
        ("log.dirs", c.broker.data_dir.display().to_string()),
        ("num.partitions", c.topics.num_partitions.to_string()),
        ("socket.request.max.bytes", c.limits.max_frame_bytes.to_string()),
    ]
}

super::registry::api! {
    DescribeConfigs: DescribeConfigsRequest => DescribeConfigsResponse, versions 1..=4, access Topic DescribeConfigs,
    |call, request| handle(&call.ctx, request)
}
