//! Scenario files (`simulations/*.toml`): the cluster, the workload and the
//! faults of a simulation. A seed turns a scenario into one fault schedule.

use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::Rng;
use serde::Deserialize;

/// Upper bounds, so a scenario file cannot ask for a run that never ends.
const MAX_BROKERS: usize = 7;
const MAX_DURATION_S: u64 = 3600;
const MAX_PARTITIONS: i32 = 64;
const MAX_PRODUCERS: usize = 32;
const MAX_SCHEDULED_FAULTS: usize = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "defaults::brokers")]
    pub brokers: usize,
    /// Virtual seconds of workload under faults.
    pub duration_s: u64,
    /// Virtual seconds, after every fault is healed, for the cluster to
    /// recover (leaders elected, replicas in sync) before the checker reads.
    #[serde(default = "defaults::settle_s")]
    pub settle_s: u64,
    /// "fsync" or "interval", as in the broker config.
    #[serde(default = "defaults::durability")]
    pub durability: String,
    #[serde(default = "defaults::topics")]
    pub topics: Vec<TopicSpec>,
    #[serde(default)]
    pub workload: WorkloadSpec,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub faults: FaultSpec,
    /// Broker settings over the simulation's own, in the broker config's
    /// format (`[broker_config.transactions]` ...); checked as a broker checks its file.
    #[serde(default)]
    pub broker_config: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    #[serde(default = "defaults::replication_factor")]
    pub replication_factor: i16,
    #[serde(default = "defaults::min_insync_replicas")]
    pub min_insync_replicas: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadSpec {
    /// Producers with enable.idempotence: every acknowledged record exactly once.
    pub idempotent_producers: usize,
    /// acks=-1 producers without idempotence: retries may duplicate.
    pub plain_producers: usize,
    pub records_per_batch: usize,
    /// Batches an idempotent producer keeps in flight to one partition, on one
    /// ordered connection (librdkafka's max.in.flight, at most 5). Plain producers keep one,
    /// as Kafka needs for ordering without idempotence.
    pub max_in_flight: usize,
    /// Pause between one producer's batches (after the previous one is answered).
    pub produce_every_ms: u64,
    /// Consumer groups, each reading every partition of the first topic and committing.
    pub consumer_groups: usize,
    pub commit_every_ms: u64,
    /// Topics created (through random brokers) while faults are running.
    pub topics_created: usize,
    /// Transactional producers: transactions of batches to random partitions, some aborted.
    pub transactional_producers: usize,
    /// Batches in one transaction.
    pub batches_per_transaction: usize,
    /// Share of transactions aborted on purpose, in percent.
    pub abort_percent: u64,
    /// A consume-transform-produce copier: a read_committed member of its own
    /// group copies the first topic to `<first topic>-copy`, each batch in a
    /// transaction with its input offsets (exactly once).
    pub copier: bool,
}

impl WorkloadSpec {
    /// The workload ids of the transactional producers (after the idempotent and plain ones).
    pub fn transactional_ids(&self) -> std::ops::Range<u32> {
        let first = (self.idempotent_producers + self.plain_producers) as u32 + 1;
        first..first + self.transactional_producers as u32
    }
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            idempotent_producers: 2,
            plain_producers: 1,
            records_per_batch: 4,
            max_in_flight: 5,
            produce_every_ms: 20,
            consumer_groups: 1,
            commit_every_ms: 250,
            topics_created: 1,
            transactional_producers: 0,
            batches_per_transaction: 3,
            abort_percent: 30,
            copier: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// One-way latency of every message, drawn from [min, max] ms.
    pub latency_ms: [u64; 2],
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec { latency_ms: [1, 5] }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Brokers split in two groups that cannot reach each other.
    Partition,
    /// The leader of a random partition cut off from every other broker.
    PartitionLeader,
    /// One broker's messages to another are lost; the other way works.
    OneWay,
    /// Two sides that reach each other only through one bridge broker.
    Bridge,
    /// A broker crashes (its process state is gone) and restarts later.
    Crash,
    /// The active controller (Raft leader) crashes and restarts later.
    ControllerLoss,
    /// Every broker restarts, one after another.
    RollingRestart,
    /// Extra latency on every inter-broker message.
    Delay,
    /// Inter-broker and client messages lost at random.
    Drop,
    /// Inter-broker requests delivered twice, the copy later.
    Duplicate,
    /// Latency jitter large enough for messages to overtake each other.
    Reorder,
    /// A broker's partition writes stall, as on a slow disk.
    SlowDisk,
    /// A broker's wall clock jumps ahead or behind.
    ClockSkew,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    /// Fault kinds drawn at random (a kind listed twice is drawn twice as often).
    pub kinds: Vec<FaultKind>,
    /// Quiet time before each random fault, [min, max] ms.
    pub gap_ms: [u64; 2],
    /// How long each random fault lasts, [min, max] ms.
    pub length_ms: [u64; 2],
    /// Faults at fixed times, in addition to the random ones.
    pub scheduled: Vec<ScheduledFault>,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec { kinds: Vec::new(), gap_ms: [1000, 5000], length_ms: [1000, 8000], scheduled: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledFault {
    pub at_ms: u64,
    pub kind: FaultKind,
    pub length_ms: u64,
}

/// One fault of a run's schedule. Which broker it hits is drawn when it starts,
/// from the run's seeded generator, since it may depend on who leads then.
#[derive(Debug, Clone)]
pub struct PlannedFault {
    pub at: Duration,
    pub kind: FaultKind,
    pub length: Duration,
}

mod defaults {
    pub fn brokers() -> usize {
        3
    }
    pub fn settle_s() -> u64 {
        40
    }
    pub fn durability() -> String {
        "fsync".into()
    }
    pub fn topics() -> Vec<super::TopicSpec> {
        vec![super::TopicSpec { name: "events".into(), partitions: 3, replication_factor: 3, min_insync_replicas: 2 }]
    }
    pub fn replication_factor() -> i16 {
        3
    }
    pub fn min_insync_replicas() -> i32 {
        2
    }
}

impl Scenario {
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).context("scenario is not valid")?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_BROKERS).contains(&self.brokers) {
            bail!("brokers = {} is out of range 1..={MAX_BROKERS}", self.brokers);
        }
        if !(1..=MAX_DURATION_S).contains(&self.duration_s) || self.settle_s > MAX_DURATION_S {
            bail!("duration_s and settle_s must be within 1..={MAX_DURATION_S}");
        }
        if !matches!(self.durability.as_str(), "fsync" | "interval") {
            bail!("durability = {:?}: expected \"fsync\" or \"interval\"", self.durability);
        }
        if self.topics.is_empty() {
            bail!("a scenario needs at least one topic");
        }
        for t in &self.topics {
            if !(1..=MAX_PARTITIONS).contains(&t.partitions) {
                bail!("topic {}: partitions = {} is out of range 1..={MAX_PARTITIONS}", t.name, t.partitions);
            }
            if t.replication_factor < 1 || t.replication_factor as usize > self.brokers {
                bail!("topic {}: replication_factor = {} with {} brokers", t.name, t.replication_factor, self.brokers);
            }
            if t.min_insync_replicas < 1 || t.min_insync_replicas > t.replication_factor as i32 {
                bail!(
                    "topic {}: min_insync_replicas = {} is out of range 1..=replication_factor",
                    t.name,
                    t.min_insync_replicas
                );
            }
            tributary_actors::config::validate_topic_name(&t.name)
                .map_err(|e| anyhow::anyhow!("topic {}: {e}", t.name))?;
        }
        let w = &self.workload;
        if w.idempotent_producers + w.plain_producers + w.transactional_producers > MAX_PRODUCERS {
            bail!("at most {MAX_PRODUCERS} producers");
        }
        if !(1..=100).contains(&w.records_per_batch) {
            bail!("records_per_batch must be within 1..=100");
        }
        if !(1..=5).contains(&w.max_in_flight) {
            bail!("max_in_flight must be within 1..=5 (the batches a broker remembers per producer)");
        }
        if w.consumer_groups > 8 || w.topics_created > 16 {
            bail!("at most 8 consumer groups and 16 created topics");
        }
        if !(1..=20).contains(&w.batches_per_transaction) || w.abort_percent > 100 {
            bail!("batches_per_transaction must be within 1..=20 and abort_percent 0..=100");
        }
        for range in [self.network.latency_ms, self.faults.gap_ms, self.faults.length_ms] {
            if range[0] > range[1] || range[1] > 600_000 {
                bail!("range {range:?} must be [min, max] with max <= 600000 ms");
            }
        }
        if self.faults.length_ms[0] == 0 || self.faults.gap_ms[1] == 0 {
            if !self.faults.kinds.is_empty() {
                bail!("random faults need length_ms and gap_ms above zero");
            }
        }
        if self.faults.scheduled.len() > MAX_SCHEDULED_FAULTS {
            bail!("at most {MAX_SCHEDULED_FAULTS} scheduled faults");
        }
        Ok(())
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_s)
    }

    /// The run's fault schedule: the scheduled faults, then random ones one
    /// after another (each after a quiet gap) until the duration is over.
    pub fn plan(&self, rng: &mut StdRng) -> Vec<PlannedFault> {
        let mut plan: Vec<PlannedFault> = self
            .faults
            .scheduled
            .iter()
            .map(|f| PlannedFault {
                at: Duration::from_millis(f.at_ms),
                kind: f.kind,
                length: Duration::from_millis(f.length_ms),
            })
            .collect();
        if !self.faults.kinds.is_empty() {
            let end = self.duration().as_millis() as u64;
            let [gap_min, gap_max] = self.faults.gap_ms;
            let [len_min, len_max] = self.faults.length_ms;
            let mut at = rng.gen_range(gap_min..=gap_max);
            while at < end && plan.len() < MAX_SCHEDULED_FAULTS {
                let kind = self.faults.kinds[rng.gen_range(0..self.faults.kinds.len())];
                let length = rng.gen_range(len_min..=len_max).min(end - at);
                plan.push(PlannedFault { at: Duration::from_millis(at), kind, length: Duration::from_millis(length) });
                at += length + rng.gen_range(gap_min..=gap_max);
            }
        }
        plan.sort_by_key(|f| f.at);
        plan
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_faults() {
        let s =
            Scenario::parse("name = \"t\"\nduration_s = 60\n[faults]\nkinds = [\"crash\", \"partition\", \"drop\"]\n")
                .unwrap();
        let a = s.plan(&mut StdRng::seed_from_u64(7));
        let b = s.plan(&mut StdRng::seed_from_u64(7));
        let c = s.plan(&mut StdRng::seed_from_u64(8));
        let show = |p: &[PlannedFault]| format!("{p:?}");
        assert_eq!(show(&a), show(&b));
        assert_ne!(show(&a), show(&c));
        assert!(!a.is_empty());
        assert!(a.iter().all(|f| f.at + f.length <= s.duration()));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| format!("{:#}", Scenario::parse(text).unwrap_err());
        assert!(err("name = \"t\"\nduration_s = 10\nbrokers = 9\n").contains("brokers = 9"));
        assert!(err("name = \"t\"\nduration_s = 10\n[faults]\nkinds = [\"meteor\"]\n").contains("meteor"));
        assert!(err(
            "name = \"t\"\nduration_s = 10\n[[topics]]\nname = \"a\"\npartitions = 1\nreplication_factor = 4\n"
        )
        .contains("replication_factor = 4"));
        assert!(err("name = \"t\"\nduration_s = 10\ndurability = \"never\"\n").contains("durability"));
    }
}
