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
    pub security: SecuritySection,
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

/// `[security]`: authentication on the SASL listeners and the TLS certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// Offered on SASL listeners (sasl.enabled.mechanisms).
    pub sasl_mechanisms: Vec<String>,
    /// A SASL connection must authenticate within this long of opening.
    pub authentication_timeout_ms: u64,
    /// A failed authentication is answered after this long (connection.failed.authentication.delay.ms).
    pub failed_authentication_delay_ms: u64,
    /// Sessions re-authenticate within this long (connections.max.reauth.ms); 0: never.
    pub max_reauth_ms: u64,
    /// PEM certificate chain and private key of the TLS listeners.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// PEM certificates of the CAs whose client certificates are accepted.
    pub tls_client_ca_file: PathBuf,
    /// "none", "requested" or "required" (ssl.client.auth).
    pub tls_client_auth: String,
    /// How a client certificate's subject becomes a principal (ssl.principal.mapping.rules).
    pub tls_principal_mapping_rules: Vec<String>,
    /// OAUTHBEARER: the JWKS file of the keys tokens are signed with.
    pub oauth_jwks_file: PathBuf,
    /// A token's `aud` must include this (empty: not checked).
    pub oauth_audience: String,
    /// A token's `iss` must be this (empty: not checked).
    pub oauth_issuer: String,
    /// The claim that names the principal.
    pub oauth_principal_claim: String,
    /// Clock difference allowed on `exp` and `nbf`.
    pub oauth_clock_skew_ms: u64,
}

/// A listener's security protocol; a listener is named by its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub const ALL: [SecurityProtocol; 4] =
        [SecurityProtocol::Plaintext, SecurityProtocol::Ssl, SecurityProtocol::SaslPlaintext, SecurityProtocol::SaslSsl];

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    fn parse(name: &str) -> Option<SecurityProtocol> {
        SecurityProtocol::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(name))
    }
}

/// One Kafka listener, resolved: where it binds and what clients are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub protocol: SecurityProtocol,
    pub addr: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: i32,
}

impl Listener {
    pub fn name(&self) -> &'static str {
        self.protocol.name()
    }
}

/// `NAME://host:port` as Kafka's `listeners` writes it.
fn parse_listener(entry: &str, key: &str) -> anyhow::Result<(SecurityProtocol, String, u16)> {
    let (name, address) =
        entry.split_once("://").with_context(|| format!("{key} entry {entry:?} must look like SASL_SSL://host:9093"))?;
    let protocol = SecurityProtocol::parse(name).with_context(|| {
        format!("{key} entry {entry:?}: the listener name must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    })?;
    let (host, port) =
        address.rsplit_once(':').with_context(|| format!("{key} entry {entry:?} has no port"))?;
    let port: u16 = port.parse().with_context(|| format!("{key} entry {entry:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((protocol, host, port))
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
    /// Serve it over TLS, with `security.tls_cert_file` and `tls_key_file`.
    pub tls: bool,
    /// A file holding the token every request must bear (`Authorization: Bearer`); empty: none.
    pub bearer_token_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub node_id: i32,
    pub cluster_id: String,
    pub listen: SocketAddr,
    pub advertised_listener: String,
    pub listeners: Vec<String>,
    pub advertised_listeners: Vec<String>,
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
        let broker = overlay.get("broker").and_then(toml::Value::as_table);
        if broker.is_some_and(|b| b.contains_key("listen") && b.contains_key("listeners")) {
            bail!("give broker.listeners or broker.listen (one PLAINTEXT listener), not both");
        }
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
        if !self.metrics.bearer_token_file.as_os_str().is_empty() {
            crate::http::read_token(&self.metrics.bearer_token_file).context("metrics.bearer_token_file")?;
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
        self.listeners()?;
        self.validate_security()?;
        self.cluster_settings()?;
        Ok(())
    }

    fn validate_security(&self) -> anyhow::Result<()> {
        let s = &self.security;
        for mechanism in &s.sasl_mechanisms {
            if !crate::security::MECHANISMS.contains(&mechanism.as_str()) {
                bail!(
                    "security.sasl_mechanisms: {mechanism:?} is not one of {}",
                    crate::security::MECHANISMS.join(", ")
                );
            }
        }
        if !(100..=3_600_000).contains(&s.authentication_timeout_ms) || s.failed_authentication_delay_ms > 60_000 {
            bail!("security.authentication_timeout_ms must be 100 to 3600000 and failed_authentication_delay_ms at most 60000");
        }
        if !matches!(s.tls_client_auth.as_str(), "none" | "requested" | "required") {
            bail!("security.tls_client_auth must be \"none\", \"requested\" or \"required\", not {:?}", s.tls_client_auth);
        }
        crate::security::tls::PrincipalRules::parse(&s.tls_principal_mapping_rules)
            .context("security.tls_principal_mapping_rules")?;
        if s.oauth_principal_claim.is_empty() || s.oauth_clock_skew_ms > 3_600_000 {
            bail!("security.oauth_principal_claim must name a claim and oauth_clock_skew_ms be at most 3600000");
        }
        crate::security::oauth::OAuth::load(s).context("security.oauth_jwks_file")?;
        let listeners = self.listeners()?;
        if listeners.iter().any(|l| l.protocol.sasl()) && s.sasl_mechanisms.is_empty() {
            bail!("a SASL listener needs at least one of security.sasl_mechanisms");
        }
        if crate::security::tls::needed(self, &listeners) {
            if s.tls_cert_file.as_os_str().is_empty() || s.tls_key_file.as_os_str().is_empty() {
                bail!("an SSL or SASL_SSL listener (or metrics.tls) needs security.tls_cert_file and security.tls_key_file");
            }
            if s.tls_client_auth != "none" && s.tls_client_ca_file.as_os_str().is_empty() {
                bail!("security.tls_client_auth = {:?} needs security.tls_client_ca_file", s.tls_client_auth);
            }
            // Loaded now, so bad files stop the broker before it joins the cluster.
            crate::security::tls::Tls::load(s).context("the TLS certificate, key or CA file")?;
        }
        Ok(())
    }

    /// The Kafka listeners: `broker.listeners`, or one PLAINTEXT listener at
    /// `broker.listen`. The first is the one other brokers use.
    pub fn listeners(&self) -> anyhow::Result<Vec<Listener>> {
        let b = &self.broker;
        let bound: Vec<(SecurityProtocol, SocketAddr)> = if b.listeners.is_empty() {
            vec![(SecurityProtocol::Plaintext, b.listen)]
        } else {
            let mut bound = Vec::new();
            for entry in &b.listeners {
                let (protocol, host, port) = parse_listener(entry, "broker.listeners")?;
                let ip: std::net::IpAddr = host.parse().with_context(|| {
                    format!("broker.listeners entry {entry:?}: bind to an IP address (0.0.0.0 for all)")
                })?;
                bound.push((protocol, SocketAddr::new(ip, port)));
            }
            bound
        };
        let mut advertised = std::collections::HashMap::new();
        for entry in &b.advertised_listeners {
            let (protocol, host, port) = parse_listener(entry, "broker.advertised_listeners")?;
            if advertised.insert(protocol, (host, port as i32)).is_some() {
                bail!("broker.advertised_listeners names {} twice", protocol.name());
            }
        }
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, (protocol, addr)) in bound.into_iter().enumerate() {
            if listeners.iter().any(|l| l.protocol == protocol) {
                bail!("broker.listeners names {} twice", protocol.name());
            }
            let legacy = (i == 0 && !b.advertised_listener.is_empty()).then(|| self.legacy_advertised(addr));
            let (advertised_host, advertised_port) = advertised
                .remove(&protocol)
                .or(legacy)
                .unwrap_or_else(|| (addr.ip().to_string(), addr.port() as i32));
            let wildcard = advertised_host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
            if advertised_host.is_empty() || wildcard {
                bail!(
                    "the {} listener would advertise {advertised_host:?}, which clients cannot reach: \
                     name a host in broker.advertised_listeners (or advertised_listener)",
                    protocol.name()
                );
            }
            if let Some(other) = listeners.iter().find(|l| l.addr.port() == addr.port()) {
                bail!("broker.listeners: {} and {} both use port {}", other.name(), protocol.name(), addr.port());
            }
            listeners.push(Listener { protocol, addr, advertised_host, advertised_port });
        }
        if let Some(protocol) = advertised.keys().next() {
            bail!("broker.advertised_listeners names {}, which broker.listeners does not", protocol.name());
        }
        Ok(listeners)
    }

    /// `broker.advertised_listener` ("host" or "host:port") for the first listener.
    fn legacy_advertised(&self, addr: SocketAddr) -> (String, i32) {
        let advertised = &self.broker.advertised_listener;
        match advertised.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().unwrap_or(addr.port() as i32)),
            None => (advertised.clone(), addr.port() as i32),
        }
    }

    /// Every listener's advertised address, for the cluster metadata.
    pub fn advertised_endpoints(&self) -> Vec<crate::cluster::metadata::Endpoint> {
        self.listeners()
            .expect("listeners are checked at load")
            .into_iter()
            .map(|l| crate::cluster::metadata::Endpoint {
                listener: l.name().to_string(),
                host: l.advertised_host,
                port: l.advertised_port,
            })
            .collect()
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
            let listen = self.listeners()?[0].addr;
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
        if self.listeners()?[0].protocol != SecurityProtocol::Plaintext {
            bail!(
                "in a cluster the first of broker.listeners is the one brokers reach each other on, and must be \
                 PLAINTEXT for now (bind it to a private address)"
            );
        }
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

    /// The first listener's advertised host and port: where other brokers reach this one.
    pub fn advertised(&self) -> (String, i32) {
        let first = self.listeners().expect("listeners are checked at load").swap_remove(0);
        (first.advertised_host, first.advertised_port)
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
    fn listeners_are_resolved_or_refused_with_a_reason() {
        let c = BrokerConfig::load(Some(
            "[broker]\nlisteners = [\"PLAINTEXT://127.0.0.1:9092\", \"sasl_plaintext://0.0.0.0:9093\"]\n\
             advertised_listeners = [\"SASL_PLAINTEXT://broker.example:443\"]\n",
        ))
        .unwrap();
        let listeners = c.listeners().unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!((listeners[0].name(), listeners[0].advertised_port), ("PLAINTEXT", 9092));
        assert_eq!(listeners[1].protocol, SecurityProtocol::SaslPlaintext);
        assert_eq!((listeners[1].advertised_host.as_str(), listeners[1].advertised_port), ("broker.example", 443));
        let refused = |overlay: &str, why: &str| {
            let error = format!("{:#}", BrokerConfig::load(Some(overlay)).unwrap_err());
            assert!(error.contains(why), "{error:?} should mention {why:?}");
        };
        refused("[broker]\nlisten = \"127.0.0.1:1\"\nlisteners = [\"PLAINTEXT://127.0.0.1:2\"]", "not both");
        refused("[broker]\nlisteners = [\"KERBEROS://127.0.0.1:2\"]", "listener name must be");
        refused("[broker]\nlisteners = [\"PLAINTEXT://localhost:2\"]", "IP address");
        refused("[broker]\nlisteners = [\"PLAINTEXT://127.0.0.1:2\", \"PLAINTEXT://127.0.0.1:3\"]", "twice");
        refused("[broker]\nlisteners = [\"SSL://127.0.0.1:2\"]", "tls_cert_file");
        refused("[broker]\nlisteners = [\"SASL_PLAINTEXT://0.0.0.0:2\"]", "clients cannot reach");
        refused("[broker]\nlisteners = [\"PLAINTEXT://127.0.0.1:2\", \"SASL_PLAINTEXT://127.0.0.2:2\"]", "both use port");
        refused(
            "[broker]\nlisteners = [\"SSL://127.0.0.1:2\"]\n[security]\ntls_cert_file = \"/nonexistent.pem\"\ntls_key_file = \"/nonexistent.key\"",
            "TLS certificate",
        );
        refused("[broker]\nadvertised_listeners = [\"SSL://h:2\"]", "which broker.listeners does not");
        refused("[security]\nsasl_mechanisms = [\"GSSAPI\"]", "is not one of");
        refused("[security]\ntls_principal_mapping_rules = [\"RULE:x\"]", "tls_principal_mapping_rules");
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
