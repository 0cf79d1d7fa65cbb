//! Starting one broker: the actor tree, the control plane, the replica
//! manager and the request context the listener serves. Every broker runs the
//! same control plane: with `[cluster] voters` it is one member of a cluster;
//! without, it is a cluster of one (the only voter, no network), as Kafka's
//! KRaft combined mode on one node. So a single broker and a cluster share the
//! metadata, Raft log, leader epochs and ISR code, and no Kafka handler asks
//! which one it is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tributary_actors::Broker;

use crate::cluster::metadata::Command;
use crate::cluster::{replica_manager, Cluster};
use crate::config::BrokerConfig;
use crate::kafka::RequestContext;

/// How long a cluster of one may take to elect itself and register before
/// the broker gives up starting.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Written once a cluster of one has taken over the topics of a data dir
/// from before the control plane (see `adopt_local_topics`).
const ADOPTED_MARKER: &str = "__cluster_adopted";

/// Starts the broker's parts inside the current actix system; the caller
/// serves the returned context.
pub async fn start(config: BrokerConfig, metrics: Arc<crate::metrics::Metrics>) -> anyhow::Result<RequestContext> {
    let data_dir = config.broker.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let broker = Broker::start(config.storage_config()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = config.cluster_settings()?;
    let alone = settings.alone;
    let cluster = Cluster::start(settings, broker.clone(), data_dir.clone(), config.advertised_endpoints()).await?;
    if alone {
        // The listener opens once this broker can answer: elected, registered, leading.
        cluster.registered(READY_WAIT).await.context("the cluster of one did not register itself")?;
        adopt_local_topics(&cluster, &broker, &data_dir).await?;
    }
    replica_manager::start(cluster.clone(), broker.clone());
    let min_free = config.storage.min_free_bytes;
    let mut ctx = RequestContext::new(broker, Arc::new(config), metrics, cluster);
    ctx.disk = crate::disk::DiskReserve::new(min_free);
    ctx.disk.watch(data_dir);
    Ok(ctx)
}

/// A data dir written before the control plane keeps its topics (and dynamic
/// broker configs) in the topic registry's own store. On the first start of a
/// cluster of one over it, they become metadata with the same ids, partition
/// counts and configs, before the replica manager (which deletes local topics
/// the metadata lacks) starts. Idempotent until the marker is written, so a
/// crash halfway through is finished on the next start.
async fn adopt_local_topics(cluster: &Cluster, broker: &Broker, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let marker = data_dir.join(ADOPTED_MARKER);
    if marker.exists() {
        return Ok(());
    }
    let local = broker.metadata();
    let metadata = cluster.metadata();
    for view in local.topics.values() {
        if metadata.topics.contains_key(view.name.as_ref()) {
            continue;
        }
        let command = Command::CreateTopic {
            name: view.name.to_string(),
            id: *view.id.as_bytes(),
            partitions: view.partitions.len() as i32,
            replication_factor: 1,
            configs: view.overrides.clone(),
        };
        cluster
            .commit(command)
            .await
            .map_err(|(code, why)| anyhow::anyhow!("adopting topic {}: {why} ({code})", view.name))?;
        tracing::info!(topic = %view.name, partitions = view.partitions.len(), "topic adopted by the control plane");
    }
    if metadata.topic_defaults.is_empty() && !local.broker_overrides.is_empty() {
        let command = Command::SetTopicDefaults { configs: local.broker_overrides.clone() };
        cluster
            .commit(command)
            .await
            .map_err(|(code, why)| anyhow::anyhow!("adopting broker configs: {why} ({code})"))?;
    }
    write_durably(&marker, data_dir).with_context(|| format!("writing {}", marker.display()))
}

/// Creates `path` (empty) and fsyncs it and its directory.
fn write_durably(path: &std::path::Path, dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}
