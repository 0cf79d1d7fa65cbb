//! Metadata: brokers, topics and partition leaders. On one broker, this
//! broker leads every partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;
use tributary_actors::TopicView;

use super::{str_bytes, topic_name, RequestContext};

pub async fn handle(call: &super::Call, req: MetadataRequest) -> MetadataResponse {
    let (ctx, version) = (&*call.ctx, call.version);
    let listeners = &ctx.listeners;
    let me = listeners.iter().find(|l| l.name() == call.session.listener).unwrap_or(&listeners[0]);
    let node = BrokerId(ctx.node_id());
    let broker = MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(str_bytes(me.advertised_host.clone()))
        .with_port(me.advertised_port);
    // Before v4 the request has no flag and Kafka always allowed creation.
    let allow_create = ctx.config.topics.auto_create && (version < 4 || req.allow_auto_topic_creation);

    let topics = match req.topics {
        None => ctx.broker.metadata().topics.values().map(|t| describe(ctx, t, version)).collect(),
        Some(requested) => {
            let mut creations = ctx.config.topics.max_auto_created_per_request;
            let mut out = Vec::with_capacity(requested.len());
            for topic in requested {
                let name = match topic.name {
                    Some(name) => name.0.to_string(),
                    None => {
                        let snapshot = ctx.broker.metadata();
                        match snapshot.topics.values().find(|t| t.id == topic.topic_id) {
                            Some(t) => {
                                out.push(describe(ctx, t, version));
                                continue;
                            }
                            None => {
                                out.push(
                                    error_topic(None, ResponseError::UnknownTopicId.code())
                                        .with_topic_id(topic.topic_id),
                                );
                                continue;
                            }
                        }
                    }
                };
                out.push(lookup_or_create(ctx, &name, allow_create.then_some(&mut creations), version).await);
            }
            out
        }
    };
    let (brokers, controller) = cluster_brokers(&ctx.cluster, &call.session, broker);
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id((version >= 2).then(|| str_bytes(ctx.config.broker.cluster_id.clone())))
        .with_controller_id(if version >= 1 { controller } else { BrokerId(-1) })
        .with_topics(topics)
}

/// The live brokers and the active controller, as the cluster metadata has them.
/// Before any broker is registered this one names itself, so clients can bootstrap.
/// Each broker at its address on the session's listener.
pub fn cluster_brokers(
    cluster: &crate::cluster::Cluster,
    session: &super::Session,
    me: MetadataResponseBroker,
) -> (Vec<MetadataResponseBroker>, BrokerId) {
    let metadata = cluster.metadata();
    let mut brokers: Vec<MetadataResponseBroker> = metadata
        .live_brokers()
        .filter_map(|b| {
            let endpoint = super::endpoint_for(b, session)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.node_id as i32))
                    .with_host(str_bytes(endpoint.host.clone()))
                    .with_port(endpoint.port)
                    .with_rack(b.rack.clone().map(str_bytes)),
            )
        })
        .collect();
    // Only while no broker is registered (a cluster forming): a broker that
    // named itself before its registration beside registered ones would be
    // counted live by clients (and tests) that the controller does not count.
    if brokers.is_empty() {
        brokers.push(me);
    }
    let controller = cluster.controller_id().map_or(BrokerId(-1), |id| BrokerId(id as i32));
    (brokers, controller)
}

/// Looks a topic up, creating it if `creations` (creations this request has
/// left) allows; errors become a topic entry with an error code.
async fn lookup_or_create(
    ctx: &RequestContext,
    name: &str,
    creations: Option<&mut usize>,
    version: i16,
) -> MetadataResponseTopic {
    if let Some(view) = ctx.broker.metadata().topic(name) {
        return describe(ctx, view, version);
    }
    if tributary_actors::config::validate_topic_name(name).is_err() {
        return error_topic(Some(name), ResponseError::InvalidTopicException.code());
    }
    let Some(creations) = creations else {
        return error_topic(Some(name), ResponseError::UnknownTopicOrPartition.code());
    };
    if *creations == 0 {
        // This request has created its share: the client asks again.
        return error_topic(Some(name), ResponseError::LeaderNotAvailable.code());
    }
    *creations -= 1;
    match auto_create(ctx, name).await {
        Ok(view) => describe(ctx, &view, version),
        Err(code) => error_topic(Some(name), code),
    }
}

/// Creates `name` with the broker's defaults. Losing a creation race is success.
pub async fn auto_create(ctx: &RequestContext, name: &str) -> Result<Arc<TopicView>, i16> {
    if let Some(view) = ctx.broker.metadata().topic(name) {
        return Ok(view.clone());
    }
    if let Err(e) = tributary_actors::config::validate_topic_name(name) {
        tracing::debug!(topic = name, error = %e, "not creating a topic of an invalid name");
        return Err(ResponseError::InvalidTopicException.code());
    }
    let partitions = ctx.config.topics.num_partitions;
    let replicas = partitions as usize * ctx.cluster.default_replication_factor() as usize;
    super::capacity::admit(ctx, replicas).map_err(|(code, _)| code)?;
    match ctx.cluster.create_topic(&ctx.broker, name, partitions, -1, BTreeMap::new()).await {
        Ok(view) => Ok(view),
        Err((code, _)) if code == ResponseError::TopicAlreadyExists.code() => {
            let exists = |m: &tributary_actors::MetadataSnapshot| m.topic(name).is_some();
            ctx.cluster.await_local(&ctx.broker, exists).await;
            ctx.broker.metadata().topic(name).cloned().ok_or(ResponseError::LeaderNotAvailable.code())
        }
        Err((code, _)) => Err(code),
    }
}

fn error_topic(name: Option<&str>, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default().with_name(name.map(topic_name)).with_error_code(code)
}

/// A topic's partitions as the controller placed them: leader, epoch, replicas, ISR.
fn describe(ctx: &RequestContext, topic: &TopicView, version: i16) -> MetadataResponseTopic {
    let metadata = ctx.cluster.metadata();
    let ids = |v: &[u64]| v.iter().map(|id| BrokerId(*id as i32)).collect::<Vec<_>>();
    let Some(record) = metadata.topics.get(topic.name.as_ref()) else {
        return error_topic(Some(&topic.name), ResponseError::UnknownTopicOrPartition.code());
    };
    let partitions = record
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let offline: Vec<u64> =
                p.replicas.iter().copied().filter(|id| metadata.brokers.get(id).is_none_or(|b| b.fenced)).collect();
            let error = if p.leader.is_none() { ResponseError::LeaderNotAvailable.code() } else { 0 };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(p.leader.map_or(-1, |l| l as i32)))
                .with_leader_epoch(if version >= 7 { p.leader_epoch } else { -1 })
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(if version >= 5 { ids(&offline) } else { Vec::new() })
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_topic_id(if version >= 10 { topic.id } else { uuid::Uuid::nil() })
        .with_partitions(partitions)
}

super::registry::api! {
    Metadata: MetadataRequest => MetadataResponse, versions 0..=12, access Topic Describe,
    |call, request| handle(call, request).await
}
