//! Settings the actor tree needs: where data lives, how durable a commit is,
//! and the per-topic configs that Kafka clients may set by name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a committed LMDB write transaction reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Durability {
    /// Every group commit fsyncs before any produce in it is acknowledged.
    /// `acks=1` and `acks=-1` then promise the record survives power loss.
    Fsync,
    /// Commits skip fsync; the partition flushes every `interval_ms`, as
    /// Kafka's `log.flush.interval.ms`. An acknowledged record survives a
    /// process crash (it is in the page cache) but a machine crash may lose
    /// up to one interval.
    Interval { interval_ms: u64 },
}

/// Configuration for the storage side of the actor tree.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Threads (actix arbiters) that partition actors are spread over; 0 runs
    /// them on the caller's thread (the simulation runs everything on one).
    pub storage_threads: usize,
    /// First LMDB map size of a partition; it doubles on demand.
    pub initial_map_bytes: usize,
    /// Largest a partition's LMDB map may grow; past it produce fails with KAFKA_STORAGE_ERROR.
    pub max_map_bytes: usize,
    /// Appends waiting for one group commit before new ones are refused.
    pub max_pending_appends: usize,
    /// Upper bound on partitions per topic, so one request cannot create millions of actors.
    pub max_partitions_per_topic: i32,
    /// Defaults applied to topics created without explicit configs.
    pub topic_defaults: TopicConfig,
    /// Partitions given to a topic that is created without a count (auto-create, or -1).
    pub default_num_partitions: i32,
    /// Consumer group settings.
    pub groups: crate::group_coordinator::GroupSettings,
    /// A producer id idle this long is forgotten by a partition (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
    /// Producer ids a partition remembers at most; the least recently used go first.
    pub max_producers_per_partition: usize,
    /// How often retention is applied (Kafka's `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// In a cluster, partitions start as followers without a leader and take
    /// produce only once the cluster layer makes them leader; alone, they
    /// start (and stay) standalone.
    pub replicated: bool,
    /// After each write a partition takes no messages for this long: a slow
    /// disk, set by the simulation (0 in a broker).
    pub write_stall_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where partitions verify transactional batches (set by the broker that
    /// runs the transaction coordinators).
    pub txn_verifier: crate::partition_actor::TxnVerifier,
    /// Whether a transactional batch that would open a transaction is first
    /// verified with its coordinator (KIP-890). Only for brokers that must
    /// behave as Kafka did before it, and for showing what it prevents.
    pub verify_transactions: bool,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
            storage_threads: 8,
            initial_map_bytes: 1 << 30,
            max_map_bytes: 1 << 40,
            max_pending_appends: 4096,
            max_partitions_per_topic: 10_000,
            topic_defaults: TopicConfig::default(),
            default_num_partitions: 1,
            groups: Default::default(),
            producer_id_expiration_ms: 24 * 3600 * 1000,
            max_producers_per_partition: 100_000,
            retention_check_interval_ms: 300_000,
            replicated: false,
            write_stall_ms: Default::default(),
            txn_verifier: Default::default(),
            verify_transactions: true,
        }
    }

    pub fn flush_interval(&self) -> Option<Duration> {
        match self.durability {
            Durability::Fsync => None,
            Durability::Interval { interval_ms } => Some(Duration::from_millis(interval_ms.max(1))),
        }
    }
}

/// The topic configs Tributary understands, by Kafka name. Values are kept as
/// validated numbers; unknown names are refused so typos do not pass silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub cleanup_policy: String,
    pub max_message_bytes: i32,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub min_insync_replicas: i32,
    pub delete_retention_ms: i64,
    pub message_timestamp_type: String,
    pub compression_type: String,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            cleanup_policy: "delete".into(),
            max_message_bytes: 1_048_588,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            min_insync_replicas: 1,
            delete_retention_ms: 24 * 3600 * 1000,
            message_timestamp_type: "CreateTime".into(),
            compression_type: "producer".into(),
        }
    }
}

/// A config name or value that was refused, with a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Broker configs that may change at runtime (Kafka's dynamic broker configs),
/// each the broker-wide default of a topic config: `(broker name, topic name)`.
pub const DYNAMIC_BROKER_CONFIGS: &[(&str, &str)] = &[
    ("compression.type", "compression.type"),
    ("log.cleaner.delete.retention.ms", "delete.retention.ms"),
    ("log.cleanup.policy", "cleanup.policy"),
    ("log.message.timestamp.type", "message.timestamp.type"),
    ("log.retention.bytes", "retention.bytes"),
    ("log.retention.ms", "retention.ms"),
    ("log.roll.ms", "segment.ms"),
    ("log.segment.bytes", "segment.bytes"),
    ("message.max.bytes", "max.message.bytes"),
    ("min.insync.replicas", "min.insync.replicas"),
];

/// The topic config a dynamic broker config sets the default of.
pub fn topic_name_of_broker_config(name: &str) -> Option<&'static str> {
    DYNAMIC_BROKER_CONFIGS.iter().find(|(b, _)| *b == name).map(|(_, t)| *t)
}

/// The names `TopicConfig` answers to, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIG_NAMES: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// Topic configs Kafka 3.x still accepts that change nothing on this broker,
/// which stores only v2 batches and never converts them. Old clients and
/// tools still send them, so a valid value is accepted and then dropped:
/// it is neither kept as an override nor described.
/// - `message.format.version`: ignored by Kafka from 3.0 on (the format
///   follows the inter-broker protocol), removed in 4.0.
/// - `message.downconversion.enable`: down-conversion serves Fetch below v4,
///   which is not advertised here; a no-op in Kafka 4.
pub const IGNORED_TOPIC_CONFIGS: &[&str] = &["message.downconversion.enable", "message.format.version"];

/// Refuses a bad value of an ignored config, as Kafka would, so a typo is still an error.
fn check_ignored(name: &str, value: &str) -> Result<(), ConfigError> {
    let value = value.trim();
    let valid = match name {
        "message.downconversion.enable" => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        _ => is_kafka_version(value),
    };
    if !valid {
        let want = if name == "message.downconversion.enable" { "true or false" } else { "a Kafka version, e.g. 2.8" };
        return Err(ConfigError(format!("config {name}: '{value}' must be {want} (it is accepted and ignored)")));
    }
    Ok(())
}

/// A version as `message.format.version` takes it in Kafka 3.x: `0.10.2`,
/// `2.8`, `3.0-IV1`, ... (major 0 to 3).
fn is_kafka_version(value: &str) -> bool {
    let (numbers, iv) = value.split_once("-IV").unwrap_or((value, "0"));
    let parts: Vec<&str> = numbers.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    (2..=3).contains(&parts.len())
        && parts.iter().all(numeric)
        && matches!(parts[0], "0" | "1" | "2" | "3")
        && numeric(&iv)
}

/// Topic configs whose value is a comma-separated list (Kafka's `Type.LIST`):
/// the only ones APPEND and SUBTRACT apply to.
pub const LIST_TOPIC_CONFIGS: &[&str] = &["cleanup.policy"];

/// One change to a config, as IncrementalAlterConfigs names them (Kafka's
/// `AlterConfigOp.OpType`); AlterConfigs only sets and deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    Set(String),
    /// Back to the default.
    Delete,
    /// List configs: adds each of the comma-separated values not yet in the list.
    Append(String),
    /// List configs: removes each of the comma-separated values from the list.
    Subtract(String),
}

/// Why a `ConfigOp` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOpError {
    /// APPEND or SUBTRACT on a config that is not a list; Kafka answers
    /// INVALID_REQUEST ("Config value append is not allowed for config key").
    NotAList(String),
    /// An unknown config name (INVALID_CONFIG).
    Invalid(ConfigError),
}

impl std::fmt::Display for ConfigOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigOpError::NotAList(m) => f.write_str(m),
            ConfigOpError::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConfigOpError {}

impl ConfigOp {
    /// Applies this change of config `name` to `overrides`. APPEND and
    /// SUBTRACT start from the value in force: the override if there is one,
    /// else `current`'s (which holds the defaults, dynamic ones included; Kafka
    /// starts from the static default there). The result is validated when the
    /// overrides are applied (`TopicConfig::with_overrides`).
    pub fn apply(
        self,
        name: &str,
        overrides: &mut BTreeMap<String, String>,
        current: &TopicConfig,
    ) -> Result<(), ConfigOpError> {
        let unknown = || ConfigOpError::Invalid(ConfigError(format!("unknown topic config '{name}'")));
        if IGNORED_TOPIC_CONFIGS.contains(&name) {
            return match self {
                ConfigOp::Set(value) => check_ignored(name, &value).map_err(ConfigOpError::Invalid),
                ConfigOp::Delete => Ok(()),
                ConfigOp::Append(_) | ConfigOp::Subtract(_) => Err(ConfigOpError::NotAList(format!(
                    "Config value append or subtract is not allowed for config key: {name} (it is not a list)"
                ))),
            };
        }
        let (value, op) = match self {
            ConfigOp::Set(value) => {
                overrides.insert(name.to_string(), value);
                return Ok(());
            }
            ConfigOp::Delete => {
                if current.get(name).is_none() {
                    return Err(unknown());
                }
                overrides.remove(name);
                return Ok(());
            }
            ConfigOp::Append(value) => (value, "append"),
            ConfigOp::Subtract(value) => (value, "subtract"),
        };
        let Some(in_force) = overrides.get(name).cloned().or_else(|| current.get(name)) else {
            return Err(unknown());
        };
        if !LIST_TOPIC_CONFIGS.contains(&name) {
            return Err(ConfigOpError::NotAList(format!(
                "Config value {op} is not allowed for config key: {name} (it is not a list; lists: {})",
                LIST_TOPIC_CONFIGS.join(", ")
            )));
        }
        let append = op == "append";
        let items = |list: &str| -> Vec<String> {
            list.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from).collect()
        };
        let (mut list, given) = (items(&in_force), items(&value));
        if append {
            for v in given {
                if !list.contains(&v) {
                    list.push(v);
                }
            }
        } else {
            list.retain(|v| !given.contains(v));
        }
        overrides.insert(name.to_string(), list.join(","));
        Ok(())
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError(format!("config {name}: '{value}' is not a valid number")))
}

fn at_least<T: PartialOrd + std::fmt::Display + Copy>(name: &str, v: T, min: T) -> Result<T, ConfigError> {
    if v < min {
        return Err(ConfigError(format!("config {name}: {v} is below the minimum {min}")));
    }
    Ok(v)
}

impl TopicConfig {
    /// Applies `name = value` after validating both.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        match name {
            "retention.ms" => self.retention_ms = at_least(name, parse_num(name, value)?, -1)?,
            "retention.bytes" => self.retention_bytes = at_least(name, parse_num(name, value)?, -1)?,
            "segment.bytes" => self.segment_bytes = at_least(name, parse_num(name, value)?, 14)?,
            "segment.ms" => self.segment_ms = at_least(name, parse_num(name, value)?, 1)?,
            "delete.retention.ms" => self.delete_retention_ms = at_least(name, parse_num(name, value)?, 0)?,
            "max.message.bytes" => self.max_message_bytes = at_least(name, parse_num(name, value)?, 0)?,
            "min.insync.replicas" => self.min_insync_replicas = at_least(name, parse_num(name, value)?, 1)?,
            "cleanup.policy" => {
                let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
                parts.sort_unstable();
                parts.dedup();
                if parts.is_empty() || parts.iter().any(|p| *p != "delete" && *p != "compact") {
                    return Err(ConfigError(format!(
                        "config cleanup.policy: '{value}' must be delete, compact or compact,delete"
                    )));
                }
                self.cleanup_policy = parts.join(",");
            }
            "message.timestamp.type" => {
                if value != "CreateTime" && value != "LogAppendTime" {
                    return Err(ConfigError(format!(
                        "config message.timestamp.type: '{value}' must be CreateTime or LogAppendTime"
                    )));
                }
                self.message_timestamp_type = value.to_string();
            }
            "compression.type" => {
                const CODECS: &[&str] = &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"];
                if !CODECS.contains(&value) {
                    return Err(ConfigError(format!("config compression.type: '{value}' must be one of {CODECS:?}")));
                }
                self.compression_type = value.to_string();
            }
            // Electing a replica outside the ISR can drop acknowledged records; never done.
            "unclean.leader.election.enable" => {
                if value.trim() != "false" {
                    return Err(ConfigError(format!(
                        "config unclean.leader.election.enable: '{value}' is not supported; only false \
                         (a leader is always elected from the in-sync replicas)"
                    )));
                }
            }
            _ => return Err(ConfigError(format!("unknown topic config '{name}'"))),
        }
        Ok(())
    }

    /// The current value of a known config, as Kafka prints it.
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "cleanup.policy" => self.cleanup_policy.clone(),
            "message.timestamp.type" => self.message_timestamp_type.clone(),
            "compression.type" => self.compression_type.clone(),
            "unclean.leader.election.enable" => "false".into(),
            _ => return None,
        })
    }

    pub fn is_compacted(&self) -> bool {
        self.cleanup_policy.contains("compact")
    }

    /// `Some(now)` when batches of this topic are stamped with the broker's time.
    pub fn log_append_time(&self, now: i64) -> Option<i64> {
        (self.message_timestamp_type == "LogAppendTime").then_some(now)
    }

    /// A new topic's config, and the overrides to keep, from the configs it
    /// is created with: each is applied as a SET, so ignored ones are dropped.
    pub fn for_new_topic(
        defaults: &TopicConfig,
        requested: BTreeMap<String, String>,
    ) -> Result<(TopicConfig, BTreeMap<String, String>), ConfigError> {
        let mut overrides = BTreeMap::new();
        for (name, value) in requested {
            ConfigOp::Set(value).apply(&name, &mut overrides, defaults).map_err(|e| ConfigError(e.to_string()))?;
        }
        Ok((TopicConfig::with_overrides(defaults, &overrides)?, overrides))
    }

    /// Builds a config from defaults plus explicit overrides.
    pub fn with_overrides(
        defaults: &TopicConfig,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, ConfigError> {
        let mut config = defaults.clone();
        for (name, value) in overrides {
            config.set(name, value)?;
        }
        Ok(config)
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError("topic name is empty".into()));
    }
    if name.len() > 249 {
        return Err(ConfigError(format!("topic name is {} characters; the limit is 249", name.len())));
    }
    if name == "." || name == ".." {
        return Err(ConfigError(format!("topic name '{name}' is not allowed")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-')) {
        return Err(ConfigError(format!(
            "topic name '{name}' has illegal character {c:?}; allowed: a-z A-Z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// Kafka refuses a topic whose name equals an existing one's once '.' and '_'
/// are made the same (INVALID_TOPIC_EXCEPTION): metric names turn '.' into
/// '_', so `foo.bar` and `foo_bar` would report as one. Every creation that
/// decides a new name passes here: the topic registry (one broker) and the
/// cluster metadata's `apply` (the controller).
pub fn check_name_collision<'a>(name: &str, existing: impl IntoIterator<Item = &'a str>) -> Result<(), ConfigError> {
    if !name.contains(['.', '_']) {
        return Ok(()); // a collision needs a '.' or '_' in both names
    }
    let metric_name = |n: &str| n.replace('.', "_");
    let wanted = metric_name(name);
    match existing.into_iter().find(|other| *other != name && metric_name(other) == wanted) {
        Some(other) => Err(ConfigError(format!(
            "topic '{name}' collides with existing topic '{other}': '.' and '_' are the same in metric names"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_A-b").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names_that_differ_only_in_dot_or_underscore_collide() {
        let existing = ["foo.bar", "plain", "a_b.c"];
        assert!(check_name_collision("foo_bar", existing).unwrap_err().0.contains("'foo.bar'"));
        assert!(check_name_collision("a.b_c", existing).is_err());
        assert!(check_name_collision("foo.bar", existing).is_ok(), "the same name is TOPIC_ALREADY_EXISTS, not this");
        assert!(check_name_collision("foo-bar", existing).is_ok());
        assert!(check_name_collision("plain2", existing).is_ok());
    }

    #[test]
    fn append_and_subtract_change_list_configs_only() {
        let defaults = TopicConfig::default();
        let mut overrides = BTreeMap::new();
        ConfigOp::Append("compact".into()).apply("cleanup.policy", &mut overrides, &defaults).unwrap();
        assert_eq!(overrides["cleanup.policy"], "delete,compact", "appended to the default in force");
        ConfigOp::Append("compact, delete".into()).apply("cleanup.policy", &mut overrides, &defaults).unwrap();
        assert_eq!(overrides["cleanup.policy"], "delete,compact", "values already there are not added twice");
        let config = TopicConfig::with_overrides(&defaults, &overrides).unwrap();
        assert!(config.is_compacted() && config.cleanup_policy.contains("delete"));
        ConfigOp::Subtract("delete,absent".into()).apply("cleanup.policy", &mut overrides, &config).unwrap();
        assert_eq!(overrides["cleanup.policy"], "compact");
        ConfigOp::Subtract("compact".into()).apply("cleanup.policy", &mut overrides, &config).unwrap();
        assert!(TopicConfig::with_overrides(&defaults, &overrides).is_err(), "an empty cleanup.policy is refused");

        let not_a_list = ConfigOp::Append("1".into()).apply("retention.ms", &mut overrides, &defaults);
        assert!(matches!(not_a_list, Err(ConfigOpError::NotAList(m)) if m.contains("key: retention.ms")));
        let unknown = ConfigOp::Subtract("x".into()).apply("no.such.config", &mut overrides, &defaults);
        assert!(matches!(unknown, Err(ConfigOpError::Invalid(_))));
    }

    #[test]
    fn old_configs_are_validated_then_dropped() {
        let requested: BTreeMap<String, String> = [
            ("message.format.version", "0.10.2-IV0"),
            ("message.downconversion.enable", "FALSE"),
            ("retention.ms", "1000"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let (config, kept) = TopicConfig::for_new_topic(&TopicConfig::default(), requested.clone()).unwrap();
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["retention.ms"]);
        assert_eq!(config, TopicConfig { retention_ms: 1000, ..TopicConfig::default() });
        for (name, bad) in [
            ("message.format.version", "banana"),
            ("message.format.version", "9.0"),
            ("message.downconversion.enable", "yes"),
        ] {
            let mut with_bad = requested.clone();
            with_bad.insert(name.into(), bad.into());
            assert!(TopicConfig::for_new_topic(&TopicConfig::default(), with_bad).is_err(), "{name}={bad}");
        }
        let mut overrides = BTreeMap::new();
        ConfigOp::Delete.apply("message.format.version", &mut overrides, &config).unwrap();
        let append = ConfigOp::Append("2.8".into()).apply("message.format.version", &mut overrides, &config);
        assert!(matches!(append, Err(ConfigOpError::NotAList(_))));
        for version in ["0.8.0", "2.8", "3.0-IV1", "2.1.1"] {
            assert!(is_kafka_version(version), "{version}");
        }
    }

    #[test]
    fn configs_validate_names_and_values() {
        let mut c = TopicConfig::default();
        c.set("retention.ms", "1000").unwrap();
        c.set("cleanup.policy", "delete,compact").unwrap();
        assert_eq!(c.get("cleanup.policy").unwrap(), "compact,delete");
        assert!(c.set("retention.ms", "soon").is_err());
        assert!(c.set("cleanup.policy", "shred").is_err());
        assert!(c.set("no.such.config", "1").is_err());
        for name in TOPIC_CONFIG_NAMES {
            assert!(c.get(name).is_some(), "{name} has a value");
        }
    }
}
