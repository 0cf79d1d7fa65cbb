//! Broker configuration: a TOML file whose defaults are `config/tributary.toml`,
//! compiled in so `tributary start` needs no file at all.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;
use tributary_actors::{Durability, StorageConfig};

/// The commented default configuration, also the embedded default.
pub const DEFAULT_CONFIG: &str = include_str!("../config/tributary.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub broker: BrokerSection,
    pub limits: LimitsSection,
    pub storage: StorageSection,
    pub topics: TopicsSection,
    pub groups: tributary_actors::GroupSettings,
    pub transactions: TransactionsSection,
    pub metrics: MetricsSection,
    pub cluster: ClusterSection,
}

/// `[transactions]`: the transaction coordinators and their state log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsSection {
    /// Partitions of `__transaction_state` (transaction.state.log.num.partitions).
    pub state_partitions: i32,
    /// Replicas of each, at most the brokers there are (transaction.state.log.replication.factor).
    pub state_replication_factor: i16,
    /// Longest transaction.timeout.ms a producer may ask for (transaction.max.timeout.ms).
    pub max_timeout_ms: i32,
    /// Transactional ids one broker coordinates at most; InitProducerId for more is refused.
    pub max_transactional_ids: usize,
    /// Partition leaders ask the coordinator before a transactional batch opens a
    /// transaction (KIP-890; transaction.partition.verification.enable).
    pub partition_verification: bool,
}

/// `[cluster]`: empty `voters` means a single broker with no cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub listen: String,
    pub voters: Vec<String>,
    pub seeds: Vec<String>,
    pub key: String,
    pub key_file: String,
    pub rack: String,
    pub region: String,
    pub session_timeout_ms: u64,
    pub replica_lag_time_max_ms: u64,
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the /metrics and /health endpoint; empty disables it.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub node_id: i32,
    pub cluster_id: String,
    pub listen: SocketAddr,
    pub advertised_listener: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_frame_bytes: usize,
    pub max_queued_request_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_partitions_per_broker: usize,
    pub idle_timeout_ms: u64,
    pub transfer_timeout_ms: u64,
    pub min_transfer_bytes_per_sec: u64,
    pub max_queued_response_bytes: usize,
    pub max_fetch_wait_ms: u64,
    pub max_fetch_bytes: usize,
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub durability: String,
    pub flush_interval_ms: u64,
    pub storage_threads: usize,
    pub initial_map_bytes: usize,
    pub max_partition_bytes: usize,
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsSection {
    pub auto_create: bool,
    pub num_partitions: i32,
    pub max_partitions_per_topic: i32,
    pub max_auto_created_per_request: usize,
    pub max_message_bytes: i32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub retention_check_interval_ms: u64,
}

impl BrokerConfig {
    /// The embedded default, overlaid with `file` if given: keys absent from
    /// the file keep their defaults.
    pub fn load(file: Option<&str>) -> anyhow::Result<BrokerConfig> {
        let overlay: Option<toml::Table> =
            file.map(|text| text.parse().context("config file is not valid TOML")).transpose()?;
        BrokerConfig::from_table(overlay.unwrap_or_default())
    }

    /// The embedded default with `overlay` over it, checked.
    pub fn from_table(overlay: toml::Table) -> anyhow::Result<BrokerConfig> {
        let mut merged: toml::Table = DEFAULT_CONFIG.parse().context("embedded default config")?;
        merge(&mut merged, overlay);
        let config: BrokerConfig = toml::Value::Table(merged).try_into().context("config file")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let l = &self.limits;
        if l.max_frame_bytes < 1024 || l.max_frame_bytes > 1 << 30 {
            bail!("limits.max_frame_bytes must be between 1 KiB and 1 GiB");
        }
        if l.max_queued_request_bytes < l.max_frame_bytes || l.max_queued_request_bytes > 1 << 40 {
            bail!("limits.max_queued_request_bytes must be at least limits.max_frame_bytes and at most 1 TiB");
        }
        if !(1..=3_600_000).contains(&l.transfer_timeout_ms) || l.min_transfer_bytes_per_sec < 1024 {
            bail!(
                "limits.transfer_timeout_ms must be 1 to 3600000 and limits.min_transfer_bytes_per_sec at least 1024"
            );
        }
        if l.max_connections == 0 || l.max_fetch_bytes == 0 {
            bail!("limits.max_connections and limits.max_fetch_bytes must be positive");
        }
        if l.max_connections_per_ip == 0 {
            bail!("limits.max_connections_per_ip must be positive");
        }
        if l.max_queued_response_bytes < 1 << 20 {
            bail!("limits.max_queued_response_bytes must be at least 1 MiB");
        }
        if l.max_partitions_per_broker == 0 {
            bail!("limits.max_partitions_per_broker must be positive");
        }
        if !matches!(self.storage.durability.as_str(), "fsync" | "interval") {
            bail!("storage.durability must be \"fsync\" or \"interval\", not {:?}", self.storage.durability);
        }
        let t = &self.transactions;
        if !(1..=1000).contains(&t.state_partitions) || !(1..=7).contains(&t.state_replication_factor) {
            bail!("transactions.state_partitions must be 1 to 1000 and transactions.state_replication_factor 1 to 7");
        }
        if t.max_timeout_ms < 1 || t.max_transactional_ids == 0 {
            bail!("transactions.max_timeout_ms and transactions.max_transactional_ids must be positive");
        }
        if self.topics.num_partitions < 1 || self.topics.num_partitions > self.topics.max_partitions_per_topic {
            bail!("topics.num_partitions must be between 1 and topics.max_partitions_per_topic");
        }
        let g = &self.groups;
        if g.min_session_timeout_ms < 1 || g.min_session_timeout_ms > g.max_session_timeout_ms {
            bail!("groups.min_session_timeout_ms must be positive and at most groups.max_session_timeout_ms");
        }
        if g.max_members == 0 || g.max_groups == 0 {
            bail!("groups.max_members and groups.max_groups must be positive");
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            bail!("metrics.listen must be an address like 127.0.0.1:9644, or empty; got {:?}", self.metrics.listen);
        }
        if self.broker.node_id < 0 {
            bail!("broker.node_id must not be negative");
        }
        if self.topics.max_message_bytes < 1024 {
            bail!("topics.max_message_bytes must be at least 1024");
        }
        self.cluster_settings()?;
        Ok(())
    }

    /// The `[cluster]` section resolved. With no voters the broker is a
    /// cluster of one (the only voter, no network), so a single broker runs
    /// the same control plane as a cluster.
    pub fn cluster_settings(&self) -> anyhow::Result<crate::cluster::ClusterSettings> {
        let c = &self.cluster;
        let node_id = self.broker.node_id as u64;
        if c.session_timeout_ms < 1000 || c.replica_lag_time_max_ms < 1000 || c.request_timeout_ms < 100 {
            bail!("cluster timeouts are too small (session and replica lag >= 1000 ms, requests >= 100 ms)");
        }
        let timeouts = (
            std::time::Duration::from_millis(c.session_timeout_ms),
            std::time::Duration::from_millis(c.replica_lag_time_max_ms),
            std::time::Duration::from_millis(c.request_timeout_ms),
        );
        let rack = (!c.rack.is_empty()).then(|| c.rack.clone());
        let region = (!c.region.is_empty()).then(|| c.region.clone());
        if c.voters.is_empty() {
            if !c.seeds.is_empty() || !c.listen.is_empty() {
                bail!("cluster.seeds and cluster.listen need cluster.voters (a broker with no voters is a cluster of one)");
            }
            // The address is only a label: a lone voter opens no cluster port.
            let listen = self.broker.listen;
            return Ok(crate::cluster::ClusterSettings {
                node_id,
                listen,
                voters: [(node_id, listen)].into(),
                seeds: Vec::new(),
                key: [0; 32],
                rack,
                region,
                session_timeout: timeouts.0,
                replica_lag: timeouts.1,
                request_timeout: timeouts.2,
                alone: true,
            });
        }
        let mut voters = std::collections::BTreeMap::new();
        for voter in &c.voters {
            let (id, addr) = voter
                .split_once('@')
                .with_context(|| format!("cluster.voters entry {voter:?} must look like 1@127.0.0.1:9093"))?;
            let id: u64 = id.parse().with_context(|| format!("cluster.voters entry {voter:?}: bad node id"))?;
            let addr: SocketAddr =
                addr.parse().with_context(|| format!("cluster.voters entry {voter:?}: bad address"))?;
            if voters.insert(id, addr).is_some() {
                bail!("cluster.voters names node {id} twice");
            }
        }
        let listen: SocketAddr = match (c.listen.is_empty(), voters.get(&node_id)) {
            (true, Some(addr)) => *addr,
            (true, None) => bail!("cluster.listen is required for a broker that is not a voter"),
            (false, _) => {
                c.listen.parse().with_context(|| format!("cluster.listen {:?} is not an address", c.listen))?
            }
        };
        let seeds = c
            .seeds
            .iter()
            .map(|s| s.parse::<SocketAddr>().with_context(|| format!("cluster.seeds entry {s:?} is not an address")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let key_text = match (c.key.is_empty(), c.key_file.is_empty()) {
            (false, true) => c.key.clone(),
            (true, false) => std::fs::read_to_string(&c.key_file)
                .with_context(|| format!("reading cluster.key_file {}", c.key_file))?,
            _ => bail!("a cluster needs exactly one of cluster.key and cluster.key_file (64 hex digits)"),
        };
        let key = crate::cluster::transport::parse_key(&key_text)?;
        Ok(crate::cluster::ClusterSettings {
            node_id,
            listen,
            voters,
            seeds,
            key,
            rack,
            region,
            session_timeout: timeouts.0,
            replica_lag: timeouts.1,
            request_timeout: timeouts.2,
            alone: false,
        })
    }

    /// The host and port clients are told to use.
    pub fn advertised(&self) -> (String, i32) {
        let listen = self.broker.listen;
        if self.broker.advertised_listener.is_empty() {
            return (listen.ip().to_string(), listen.port() as i32);
        }
        match self.broker.advertised_listener.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().unwrap_or(listen.port() as i32)),
            None => (self.broker.advertised_listener.clone(), listen.port() as i32),
        }
    }

    pub fn storage_config(&self) -> StorageConfig {
        let mut storage = StorageConfig::new(self.broker.data_dir.clone());
        storage.durability = match self.storage.durability.as_str() {
            "interval" => Durability::Interval { interval_ms: self.storage.flush_interval_ms },
            _ => Durability::Fsync,
        };
        storage.storage_threads = self.storage.storage_threads.max(1);
        storage.initial_map_bytes = self.storage.initial_map_bytes;
        storage.max_map_bytes = self.storage.max_partition_bytes;
        storage.max_partitions_per_topic = self.topics.max_partitions_per_topic;
        storage.default_num_partitions = self.topics.num_partitions;
        storage.topic_defaults.max_message_bytes = self.topics.max_message_bytes;
        storage.topic_defaults.retention_ms = self.topics.retention_ms;
        storage.topic_defaults.retention_bytes = self.topics.retention_bytes;
        storage.retention_check_interval_ms = self.topics.retention_check_interval_ms;
        storage.groups = self.groups.clone();
        storage.verify_transactions = self.transactions.partition_verification;
        // Every broker runs the control plane: partitions take roles from it.
        storage.replicated = true;
        storage
    }
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = BrokerConfig::load(None).unwrap();
        assert_eq!(c.broker.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(c.advertised(), ("127.0.0.1".to_string(), 9092));
    }

    #[test]
    fn overlay_keeps_defaults_and_refuses_typos() {
        let c = BrokerConfig::load(Some("[broker]\nlisten = \"127.0.0.1:19092\"\n")).unwrap();
        assert_eq!(c.broker.listen.port(), 19092);
        assert_eq!(c.topics.num_partitions, 1);
        assert!(BrokerConfig::load(Some("[broker]\nlisen = \"x\"\n")).is_err());
        assert!(BrokerConfig::load(Some("[storage]\ndurability = \"maybe\"\n")).is_err());
    }

    #[test]
    fn cluster_section_is_resolved_or_refused_with_a_reason() {
        let alone = BrokerConfig::load(None).unwrap().cluster_settings().unwrap();
        assert!(alone.alone && alone.voters.len() == 1 && alone.quorum() == 1, "no voters: a cluster of one");
        let key = "ab".repeat(32);
        let ok = format!(
            "[broker]\nnode_id = 2\n[cluster]\nvoters = [\"1@127.0.0.1:9093\", \"2@127.0.0.2:9093\", \"3@127.0.0.3:9093\"]\nkey = \"{key}\"\nrack = \"r2\"\n"
        );
        let settings = BrokerConfig::load(Some(&ok)).unwrap().cluster_settings().unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.2:9093", "a voter listens at its own entry");
        assert_eq!(settings.quorum(), 2);
        assert_eq!(settings.key, [0xab; 32]);
        assert_eq!(settings.rack.as_deref(), Some("r2"));
        let refused = |overlay: &str, why: &str| {
            let overlay = if overlay.starts_with("[broker]") {
                overlay.to_string()
            } else {
                format!("[broker]\nnode_id = 1\n{overlay}")
            };
            let error = format!("{:#}", BrokerConfig::load(Some(&overlay)).unwrap_err());
            assert!(error.contains(why), "{error:?} should mention {why:?}");
        };
        refused("[cluster]\nseeds = [\"127.0.0.1:9093\"]", "need cluster.voters");
        refused(&format!("[cluster]\nvoters = [\"1-127.0.0.1:9093\"]\nkey = \"{key}\""), "must look like");
        refused(&format!("[cluster]\nvoters = [\"1@x\"]\nkey = \"{key}\""), "bad address");
        refused("[cluster]\nvoters = [\"1@127.0.0.1:9093\"]\nkey = \"abc\"", "64 hex digits");
        refused("[cluster]\nvoters = [\"1@127.0.0.1:9093\"]", "exactly one of cluster.key");
        refused(
            &format!("[broker]\nnode_id = 7\n[cluster]\nvoters = [\"1@127.0.0.1:9093\"]\nkey = \"{key}\""),
            "cluster.listen is required",
        );
        refused(&format!("[cluster]\nvoters = [\"1@127.0.0.1:1\", \"1@127.0.0.2:1\"]\nkey = \"{key}\""), "twice");
    }
}
