//! `tributary simulate`: seeded, replayable chaos runs against a cluster of
//! real broker code, and a checker that proves nothing acknowledged was lost
//! or reordered.
//!
//! One run is one seed. Everything runs on one thread: an actix system on a
//! current-thread tokio runtime with paused time (timers fire in virtual
//! time, as soon as nothing else can run) and a seeded scheduler RNG. Each
//! broker is its own `LocalSet` there, so it can be crashed by dropping it.
//! The brokers talk through `net::SimNet` instead of libp2p, clients reach
//! them through the same network, and every random choice (faults, latency,
//! loss, workload, Raft election timeouts) comes from the seed. Storage is
//! the real LMDB, in a scratch directory per run.

mod checker;
mod cluster;
mod connector;
mod faults;
mod net;
mod scenario;
mod txn_workload;
mod workload;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tributary_actors::replication::{DescribeRole, Role};
use tributary_client::{Client, FetchOptions, Isolation, NewTopic};

use self::checker::{FinalLogs, Violation};
use self::cluster::SimBroker;
use self::connector::SimConnector;
pub use self::scenario::Scenario;
use self::world::{Shared, World};

/// The virtual wall clock's reading when a run starts (2026-01-01).
const VIRTUAL_EPOCH_MS: i64 = 1_767_225_600_000;
/// Bound on the wait for a cluster to form at the start of a run.
const FORMATION_LIMIT: Duration = Duration::from_secs(60);
/// Fetch rounds per partition when reading the final logs.
const MAX_FINAL_FETCHES: usize = 10_000;
/// Failed requests tolerated (each after a pause) when reading the final logs.
const MAX_FINAL_TRIES: u32 = 20;

/// What one seed did.
pub struct RunReport {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// The fault events, and the events of the partitions a violation names.
    pub trace: Vec<String>,
    /// Every event of the run.
    pub events: Vec<String>,
    /// A hash of everything the run saw: the same seed gives the same digest.
    pub digest: u64,
    pub virtual_time: Duration,
    pub real_time: Duration,
    pub acked_records: usize,
    /// Partition offsets group members committed and were told so.
    pub acked_commits: u64,
    pub faults: usize,
    pub messages: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub crashes: usize,
}

/// Runs `scenario` with `seed` in a scratch directory under `work_dir`.
pub fn run_one(scenario: &Scenario, seed: u64, work_dir: &Path) -> anyhow::Result<RunReport> {
    let dir = work_dir.join(format!("{}-seed-{seed}", scenario.name));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let real_start = std::time::Instant::now();
    let run_scenario = scenario.clone();
    let run_dir = dir.clone();
    let report = actix::System::with_tokio_rt(move || {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all().start_paused(true);
        // tokio's own random choices (select! fairness) follow the seed too.
        #[cfg(tokio_unstable)]
        builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
        builder.build().expect("a current-thread runtime builds")
    })
    .block_on(simulate(run_scenario, seed, run_dir));
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = report?;
    report.real_time = real_start.elapsed();
    Ok(report)
}

async fn simulate(scenario: Scenario, seed: u64, dir: PathBuf) -> anyhow::Result<RunReport> {
    tributary_actors::clock::use_virtual_wall_clock(VIRTUAL_EPOCH_MS);
    tributary_actors::clock::set_skew_ms(0);
    crate::cluster::raft_runtime::seed_thread_rng(seed ^ 0x5eed_5eed);
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = scenario.plan(&mut rng);
    let net = net::SimNet::new(rng.gen(), scenario.network.latency_ms);
    let n = scenario.brokers;
    let brokers = (1..=n as u64)
        .map(|id| SimBroker::new(id, n, dir.join(format!("broker{id}")), &scenario.durability, &scenario.broker_config))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let world = World::new(scenario.clone(), net, brokers, StdRng::seed_from_u64(rng.gen()));
    for id in world.broker_ids() {
        faults::restart(&world, id);
    }
    let formed = form(&world).await;
    if let Err(e) = formed {
        world.event(format!("cluster did not form: {e}"));
        let violation = Violation { invariant: "cluster formation", detail: e, partition: None };
        return Ok(finish(&world, seed, plan.len(), vec![violation], &FinalLogs::new()).await);
    }
    world.event("cluster formed; workload and faults start");
    let start = tokio::time::Instant::now();
    let (stop, give_up) = (workload::Flag::new(), workload::Flag::new());
    let mut producers = Vec::new();
    let w = &scenario.workload;
    for i in 0..(w.idempotent_producers + w.plain_producers) {
        let idempotent = i < w.idempotent_producers;
        let task = workload::producer(world.clone(), i as u32 + 1, idempotent, stop.clone(), give_up.clone());
        producers.push(tokio::task::spawn_local(task));
    }
    for id in w.transactional_ids() {
        let task = txn_workload::transactional_producer(world.clone(), id, stop.clone(), give_up.clone());
        producers.push(tokio::task::spawn_local(task));
    }
    let mut consumers = Vec::new();
    if w.copier {
        consumers.push(tokio::task::spawn_local(txn_workload::copier(world.clone(), stop.clone())));
    }
    for g in 0..w.consumer_groups {
        consumers.push(tokio::task::spawn_local(workload::consumer(world.clone(), format!("group-{g}"), stop.clone())));
    }
    let observer = tokio::task::spawn_local(workload::observe_leaders(world.clone(), stop.clone()));
    for i in 0..w.topics_created {
        let at = Duration::from_millis(world.random(0..=scenario.duration().as_millis() as u64));
        let (world, rf) = (world.clone(), scenario.brokers.min(3) as i16);
        tokio::task::spawn_local(async move {
            tokio::time::sleep(at).await;
            workload::create_topic(world, format!("created-{i}"), rf).await;
        });
    }
    let injector = tokio::task::spawn_local(faults::inject(world.clone(), plan.clone()));

    tokio::time::sleep_until(start + scenario.duration()).await;
    stop.raise();
    injector.abort();
    let _ = injector.await;
    heal(&world).await;
    world.event("every fault healed; settling");
    let settle_deadline = tokio::time::Instant::now() + Duration::from_secs(scenario.settle_s);
    let mut violations = Vec::new();
    let healthy = loop {
        let done = producers.iter().all(|p| p.is_finished());
        match health(&world).await {
            Ok(()) if done => break Ok(()),
            Ok(()) => {}
            Err(e) if tokio::time::Instant::now() >= settle_deadline => break Err(e),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= settle_deadline {
            break Err("producers still retrying".to_string());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    give_up.raise();
    for task in producers.into_iter().chain(consumers).chain([observer]) {
        let _ = task.await;
    }
    if let Err(e) = healthy {
        violations.push(Violation {
            invariant: "cluster recovers after healing",
            detail: format!("not recovered {} s after healing: {e}", scenario.settle_s),
            partition: None,
        });
    }
    let checker = workload::admin_client(&world, "checker");
    let (logs, existing) = read_final_logs(&world, &checker, &mut violations).await;
    for g in 0..w.consumer_groups {
        let topic = &scenario.topics[0];
        let mut read = false;
        for _ in 0..20 {
            if workload::read_commits(&world, &checker, &format!("group-{g}"), &topic.name, topic.partitions).await {
                read = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !read && !world.history.borrow().commits.is_empty() {
            violations.push(Violation {
                invariant: "committed offsets readable after healing",
                detail: format!("group-{g}'s committed offsets could not be read"),
                partition: None,
            });
        }
    }
    violations.extend(checker::check(&world.history.borrow(), &logs, &existing));
    if w.transactional_producers > 0 || w.copier {
        check_transactions(&world, &checker, &mut violations).await;
    }
    // A producer that never got an acknowledgement means the run tested nothing of it.
    let producers = (w.idempotent_producers + w.plain_producers + w.transactional_producers) as u32;
    for id in 1..=producers {
        let acked = world.history.borrow().acks.iter().any(|a| a.records.first().is_some_and(|r| r.producer == id));
        if !acked {
            violations.push(Violation {
                invariant: "every producer makes progress",
                detail: format!("producer {id} had nothing acknowledged in {} s", scenario.duration_s),
                partition: None,
            });
        }
    }
    Ok(finish(&world, seed, plan.len(), violations, &logs).await)
}

/// Waits until every broker is registered and the scenario's topics exist.
async fn form(world: &Shared) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + FORMATION_LIMIT;
    let n = world.scenario.brokers;
    loop {
        let registered = world
            .brokers
            .borrow()
            .iter()
            .filter_map(|b| b.context())
            .map(|c| c.cluster.metadata().live_brokers().count())
            .max()
            .unwrap_or(0);
        if registered == n {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{registered} of {n} brokers registered after {FORMATION_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = workload::admin_client(world, "formation");
    let mut topics = world.scenario.topics.clone();
    if world.scenario.workload.copier {
        topics.push(scenario::TopicSpec { name: txn_workload::copy_topic(world), ..topics[0].clone() });
    }
    for topic in &topics {
        let new = NewTopic {
            name: topic.name.clone(),
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            configs: vec![("min.insync.replicas".to_string(), topic.min_insync_replicas.to_string())],
        };
        if !workload::create(world, &client, &new, 50).await {
            return Err(format!("topic {} could not be created", topic.name));
        }
    }
    while health(world).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            return Err("the scenario's topics did not get leaders and full ISRs".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Heals every fault: network rules off, disks and clocks back, crashed brokers restarted.
async fn heal(world: &Shared) {
    world.net.set_rules(net::Rules::default());
    for broker in world.brokers.borrow().iter() {
        broker.set_write_stall(0);
        broker.skew_ms.set(0);
    }
    for id in world.broker_ids() {
        faults::restart(world, id);
    }
}

/// Healthy: every broker live and registered, and every partition led by a
/// broker whose partition actor agrees, with every replica in sync and the
/// high watermark at the log end.
async fn health(world: &Shared) -> Result<(), String> {
    let contexts: Vec<_> = world.brokers.borrow().iter().map(|b| (b.id, b.context())).collect();
    let mut metadata = None;
    for (id, context) in &contexts {
        let Some(context) = context else { return Err(format!("broker {id} is not up")) };
        let cluster = &context.cluster;
        if cluster.controller_id().is_none() {
            return Err(format!("broker {id} knows no controller"));
        }
        metadata = Some(cluster.metadata());
    }
    let metadata = metadata.ok_or("no broker")?;
    if metadata.live_brokers().count() != world.scenario.brokers {
        return Err(format!("{} live brokers registered", metadata.live_brokers().count()));
    }
    for (name, topic) in &metadata.topics {
        for (index, p) in topic.partitions.iter().enumerate() {
            let Some(leader) = p.leader else { return Err(format!("{name}-{index} has no leader")) };
            if p.isr.len() != p.replicas.len() {
                return Err(format!("{name}-{index}: ISR {:?} of replicas {:?}", p.isr, p.replicas));
            }
            let Some(Some(context)) = contexts.iter().find(|(id, _)| *id == leader).map(|(_, c)| c) else {
                return Err(format!("leader {leader} of {name}-{index} is down"));
            };
            let Some(handle) = context.broker.metadata().partition(name, index as i32).cloned() else {
                return Err(format!("{name}-{index} is not on its leader {leader} yet"));
            };
            // Recovered means the high watermark has caught up with the log end too: a
            // leader that just restarted starts from 0 until its followers fetch again.
            let end = handle.offsets.borrow().log_end_offset;
            match handle.addr.send(DescribeRole).await {
                Ok((Role::Leader(role), hw)) if role.epoch == p.leader_epoch && hw == end => {}
                Ok((Role::Leader(role), hw)) if role.epoch == p.leader_epoch => {
                    return Err(format!("{name}-{index}: high watermark {hw} below the log end {end}"))
                }
                _ => return Err(format!("{name}-{index}: broker {leader} does not lead it yet")),
            }
        }
    }
    Ok(())
}

/// Reads every partition from its leader, from offset 0 to the high watermark.
async fn read_final_logs(
    world: &Shared,
    client: &Client<SimConnector>,
    violations: &mut Vec<Violation>,
) -> (FinalLogs, BTreeSet<String>) {
    let mut logs = FinalLogs::new();
    let mut existing = BTreeSet::new();
    let mut metadata = None;
    for _ in 0..MAX_FINAL_TRIES {
        match client.metadata(None).await {
            Ok(answer) => {
                metadata = Some(answer);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let Some(metadata) = metadata else {
        violations.push(Violation { invariant: "final read", detail: "metadata unavailable".into(), partition: None });
        return (logs, existing);
    };
    for topic in &metadata.topics {
        existing.insert(topic.name.clone());
        for p in &topic.partitions {
            let key = (topic.name.clone(), p.index);
            let read = match p.leader {
                None => Err("no leader".to_string()),
                Some(leader) => {
                    let read = Read { isolation: Isolation::ReadUncommitted, parse: checker::RecordId::parse };
                    read_partition(world, client, &topic.name, p.index, leader, read).await.map(|(log, _)| log)
                }
            };
            match read {
                Ok(log) => {
                    logs.insert(key, log);
                }
                Err(e) => violations.push(Violation {
                    invariant: "final read",
                    detail: format!("{}-{}: {e}", topic.name, p.index),
                    partition: Some(key),
                }),
            }
        }
    }
    (logs, existing)
}

/// How the final logs are read: which records, and what the values are.
#[derive(Clone, Copy)]
struct Read {
    isolation: Isolation,
    parse: fn(&[u8]) -> Option<checker::RecordId>,
}

/// A partition read to its end: to its high watermark, or read_committed to
/// its last stable offset, with (last stable offset, high watermark).
type PartitionRead = (std::collections::BTreeMap<i64, Option<checker::RecordId>>, (i64, i64));

async fn read_partition(
    world: &Shared,
    client: &Client<SimConnector>,
    topic: &str,
    partition: i32,
    leader: i32,
    read: Read,
) -> Result<PartitionRead, String> {
    let options = FetchOptions {
        max_wait: Duration::ZERO,
        min_bytes: 0,
        max_bytes: 4 << 20,
        partition_max_bytes: 4 << 20,
        isolation: read.isolation,
    };
    let mut log = std::collections::BTreeMap::new();
    let mut next = 0i64;
    let mut failures = 0;
    for _ in 0..MAX_FINAL_FETCHES {
        let fetched = match client.fetch(topic, &[(partition, next)], &options).await {
            Ok(mut fetched) if fetched.len() == 1 => fetched.remove(0),
            Ok(fetched) => return Err(format!("a fetch of one partition answered {} partitions", fetched.len())),
            Err(e) if failures < MAX_FINAL_TRIES && e.is_retriable() => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        for record in fetched.records {
            if record.offset >= next {
                log.insert(record.offset, record.value.as_deref().and_then(read.parse));
                next = record.offset + 1;
            }
        }
        next = next.max(fetched.next_offset);
        let end = match read.isolation {
            Isolation::ReadCommitted => fetched.last_stable_offset,
            Isolation::ReadUncommitted => fetched.high_watermark,
        };
        if next >= end {
            world.event(format!(
                "final {:?} read of {topic}-{partition} from broker {leader}: {} records, high watermark {}, last stable {}, log start {}",
                read.isolation,
                log.len(),
                fetched.high_watermark,
                fetched.last_stable_offset,
                fetched.log_start_offset
            ));
            return Ok((log, (fetched.last_stable_offset, fetched.high_watermark)));
        }
    }
    Err(format!("not read to its end in {MAX_FINAL_FETCHES} fetches"))
}

/// How long after healing an open transaction may keep a partition's last
/// stable offset below its high watermark: its timeout, and time to abort it.
const HANGING_LIMIT: Duration = Duration::from_secs(30);

/// Reads every partition read_committed (waiting out transactions the
/// coordinators are still to time out) and the copier's committed offsets,
/// and runs the transactional checks on them.
async fn check_transactions(world: &Shared, client: &Client<SimConnector>, violations: &mut Vec<Violation>) {
    let copy_topic = txn_workload::copy_topic(world);
    let mut names: Vec<String> = world.scenario.topics.iter().map(|t| t.name.clone()).collect();
    if world.scenario.workload.copier {
        names.push(copy_topic.clone());
    }
    let (mut committed, mut copies) = (FinalLogs::new(), FinalLogs::new());
    let deadline = tokio::time::Instant::now() + HANGING_LIMIT;
    for name in &names {
        let parse = if *name == copy_topic { txn_workload::parse_copy } else { checker::RecordId::parse };
        let read = Read { isolation: Isolation::ReadCommitted, parse };
        let Ok(topic) = client.topic(name).await else {
            violations.push(Violation { invariant: "final read", detail: format!("{name}: no metadata"), partition: None });
            continue;
        };
        for p in &topic.partitions {
            let key = (name.clone(), p.index);
            // Bounded by the deadline: a read per second while a transaction holds the partition.
            let outcome = loop {
                let leader = client.topic(name).await.ok().and_then(|t| t.partitions.iter().find(|q| q.index == p.index).and_then(|q| q.leader));
                let Some(leader) = leader else { break Err("no leader".to_string()) };
                match read_partition(world, client, name, p.index, leader, read).await {
                    Ok((log, (stable, high))) if stable >= high => break Ok(log),
                    Ok((_, (stable, high))) if tokio::time::Instant::now() >= deadline => {
                        break Err(format!(
                            "a transaction still holds it {HANGING_LIMIT:?} after healing: last stable offset {stable}, high watermark {high}"
                        ))
                    }
                    Err(e) if tokio::time::Instant::now() >= deadline => break Err(e),
                    _ => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            };
            match outcome {
                Ok(log) if *name == copy_topic => {
                    copies.insert(key, log);
                }
                Ok(log) => {
                    committed.insert(key, log);
                }
                Err(e) => violations.push(Violation {
                    invariant: "no transaction hangs",
                    detail: format!("{name}-{}: {e}", p.index),
                    partition: Some(key),
                }),
            }
        }
    }
    // A transaction open on a partition that no coordinator knows will never end (KIP-890's hazard).
    for name in &names {
        match client.find_hanging_transactions(name).await {
            Ok(hanging) => {
                for h in hanging {
                    violations.push(Violation {
                        invariant: "no transaction hangs",
                        detail: format!(
                            "{}-{}: producer {} (epoch {}) has a transaction open from offset {} that no coordinator knows",
                            h.topic, h.partition, h.producer_id, h.producer_epoch, h.start_offset
                        ),
                        partition: Some((h.topic, h.partition)),
                    });
                }
            }
            Err(e) => violations.push(Violation {
                invariant: "final read",
                detail: format!("{name}: hanging transactions not found out: {e}"),
                partition: None,
            }),
        }
    }
    let mut copier_offsets = BTreeMap::new();
    if world.scenario.workload.copier {
        let first = &world.scenario.topics[0];
        let asked = BTreeMap::from([(first.name.clone(), (0..first.partitions).collect())]);
        match client.fetch_stable_offsets(txn_workload::COPIER_GROUP, Some(&asked)).await {
            Ok(offsets) => {
                for o in offsets.into_iter().filter(|o| o.topic == first.name) {
                    copier_offsets.insert((o.topic, o.partition), o.offset.max(0));
                }
            }
            Err(e) => violations.push(Violation {
                invariant: "committed offsets readable after healing",
                detail: format!("the copier's committed offsets could not be read: {e}"),
                partition: None,
            }),
        }
        if world.history.borrow().copier_commits.is_empty() {
            violations.push(Violation {
                invariant: "every producer makes progress",
                detail: "the copier committed no transaction".into(),
                partition: None,
            });
        }
    }
    let history = world.history.borrow();
    for id in world.scenario.workload.transactional_ids() {
        let committed_one = history.txns.iter().any(|t| {
            t.producer == id && matches!(t.end, checker::TxnEnd::Commit { answered: true, .. })
        });
        if !committed_one {
            violations.push(Violation {
                invariant: "every producer makes progress",
                detail: format!("transactional producer {id} had no commit acknowledged"),
                partition: None,
            });
        }
    }
    violations.extend(checker::check_transactions(&history, &committed, &copies, &copier_offsets));
}

/// Stops every broker and sums the run up.
async fn finish(world: &Shared, seed: u64, faults: usize, violations: Vec<Violation>, logs: &FinalLogs) -> RunReport {
    let crashes = world.history.borrow().events.iter().filter(|(_, e)| e.ends_with(" crashed")).count();
    for id in world.broker_ids() {
        faults::stop(world, id).await;
    }
    let history = world.history.borrow();
    let mut hasher = Fnv64::default();
    for (at, event) in &history.events {
        hasher.write_u128(at.as_nanos());
        hasher.write(event.as_bytes());
    }
    for ack in &history.acks {
        hasher.write(ack.partition.0.as_bytes());
        hasher.write_i32(ack.partition.1);
        hasher.write_i64(ack.base_offset);
        for r in &ack.records {
            hasher.write_u32(r.producer);
            hasher.write_u64(r.seq);
        }
    }
    for txn in &history.txns {
        hasher.write_u32(txn.producer);
        hasher.write_usize(txn.acked.len());
        hasher.write_u8(matches!(txn.end, checker::TxnEnd::Commit { answered: true, .. }) as u8);
    }
    for ((topic, partition), log) in logs {
        hasher.write(topic.as_bytes());
        hasher.write_i32(*partition);
        hasher.write_usize(log.len());
    }
    let named: BTreeSet<String> =
        violations.iter().filter_map(|v| v.partition.as_ref()).map(|(t, p)| format!("{t}-{p}")).collect();
    let trace: Vec<String> = history
        .events
        .iter()
        .filter(|(_, e)| !e.starts_with("producer") || named.iter().any(|n| e.contains(n.as_str())))
        .filter(|(_, e)| !e.contains(" leads ") || named.iter().any(|n| e.contains(n.as_str())))
        .map(|(at, e)| format!("{:>9.3}s  {e}", at.as_secs_f64()))
        .collect();
    let stats = world.net.stats();
    let events = history.events.iter().map(|(at, e)| format!("{:>9.3}s  {e}", at.as_secs_f64())).collect();
    RunReport {
        events,
        seed,
        violations,
        trace,
        digest: hasher.finish(),
        virtual_time: world.now(),
        real_time: Duration::ZERO,
        acked_records: history.acks.iter().map(|a| a.records.len()).sum(),
        acked_commits: history.commits_acked,
        faults,
        messages: stats.messages,
        lost: stats.lost,
        duplicated: stats.duplicated,
        crashes,
    }
}

/// FNV-1a: a stable hash (std's is seeded per process).
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `tributary simulate` arguments.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// A scenario file, or the name of one in simulations/ (e.g. leader-partition).
    pub scenario: String,
    /// Run this one seed (and print its trace).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run this many seeds, starting at --first-seed.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Seeds run at once, each on its own thread (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Scratch directory for the brokers' storage (default: /dev/shm if present).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print every event of a single seed's run (a sweep prints each seed's digest).
    #[arg(long)]
    pub trace: bool,
}

fn resolve(scenario: &str) -> anyhow::Result<PathBuf> {
    let direct = PathBuf::from(scenario);
    if direct.is_file() {
        return Ok(direct);
    }
    let named = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations").join(format!("{scenario}.toml"));
    if named.is_file() {
        return Ok(named);
    }
    let local = Path::new("simulations").join(format!("{scenario}.toml"));
    if local.is_file() {
        return Ok(local);
    }
    anyhow::bail!("no scenario {scenario:?}: not a file, and no simulations/{scenario}.toml")
}

fn print_failure(report: &RunReport, name: &str) -> String {
    let mut out = format!(
        "\nFAILED: scenario {name}, seed {} (replay: tributary simulate {name} --seed {})\n",
        report.seed, report.seed
    );
    for v in &report.violations {
        out.push_str(&format!("  violated: {} -- {}\n", v.invariant, v.detail));
    }
    out.push_str("  trace (faults, and events of the partitions named):\n");
    let skip = report.trace.len().saturating_sub(80);
    if skip > 0 {
        out.push_str(&format!("    ... {skip} earlier events\n"));
    }
    for line in report.trace.iter().skip(skip) {
        out.push_str(&format!("    {line}\n"));
    }
    out
}

/// Runs the command: one seed with its trace, or many with a progress bar and a summary.
pub fn command(args: SimulateArgs) -> anyhow::Result<()> {
    if !cfg!(tokio_unstable) {
        eprintln!(
            "warning: built without --cfg tokio_unstable (RUSTFLAGS replaces .cargo/config.toml's): \
             tokio's select! fairness is not seeded, so a seed may not replay its run exactly"
        );
    }
    let path = resolve(&args.scenario)?;
    let scenario = Scenario::load(&path)?;
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.join("tributary-sim")
        } else {
            std::env::temp_dir().join("tributary-sim")
        }
    });
    let work_dir = work_dir.join(format!("pid-{}", std::process::id()));
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.first_seed, args.seeds.clamp(1, 1_000_000)),
    };
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, 64);
    let jobs = jobs.min(count as usize);
    let bar = indicatif::ProgressBar::new(count);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} seeds  {msg}  ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(scenario.name.clone());
    if !scenario.description.is_empty() {
        eprintln!("{}: {}", scenario.name, scenario.description.trim());
    }
    if count == 1 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // Not bar.println: it prints nothing when the bar is hidden (no terminal, as in CI).
    let say = |text: String| bar.suspend(|| println!("{text}"));
    let next = Arc::new(AtomicU64::new(first));
    let (results_tx, results_rx) = mpsc::channel::<(u64, anyhow::Result<RunReport>)>();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let (next, results, scenario, work_dir) =
            (next.clone(), results_tx.clone(), scenario.clone(), work_dir.clone());
        workers.push(std::thread::Builder::new().name("simulation".into()).spawn(move || loop {
            let seed = next.fetch_add(1, Ordering::Relaxed);
            if seed >= first + count {
                return;
            }
            if results.send((seed, run_one(&scenario, seed, &work_dir))).is_err() {
                return;
            }
        })?);
    }
    drop(results_tx);
    let (mut passed, mut failed, mut errors) = (0u64, Vec::new(), 0u64);
    let (mut virtual_time, mut real_time) = (Duration::ZERO, Duration::ZERO);
    let (mut acked, mut faults, mut crashes, mut messages, mut lost, mut duplicated) =
        (0usize, 0usize, 0usize, 0u64, 0u64, 0u64);
    let mut commits = 0u64;
    let started = std::time::Instant::now();
    for (seed, result) in results_rx {
        match result {
            Ok(report) => {
                virtual_time += report.virtual_time;
                real_time += report.real_time;
                acked += report.acked_records;
                commits += report.acked_commits;
                faults += report.faults;
                crashes += report.crashes;
                messages += report.messages;
                lost += report.lost;
                duplicated += report.duplicated;
                if count == 1 {
                    println!("scenario {}, seed {seed}: digest {:016x}", scenario.name, report.digest);
                    if args.trace {
                        for line in &report.events {
                            println!("  {line}");
                        }
                    }
                } else if args.trace {
                    say(format!("seed {seed}: digest {:016x}", report.digest));
                }
                if report.violations.is_empty() {
                    passed += 1;
                } else {
                    say(print_failure(&report, &scenario.name));
                    failed.push(seed);
                }
            }
            Err(e) => {
                errors += 1;
                say(format!("seed {seed}: the harness failed: {e:#}"));
                failed.push(seed);
            }
        }
        bar.set_message(format!("{} failed", failed.len()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    for worker in workers {
        let _ = worker.join();
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    let wall = started.elapsed();
    let speed = virtual_time.as_secs_f64() / real_time.as_secs_f64().max(1e-9);
    println!();
    println!("{:<34} {:>12}", "scenario", scenario.name);
    println!("{:<34} {:>12}", "seeds run", count);
    println!("{:<34} {:>12}", "passed", passed);
    println!("{:<34} {:>12}", "failed", failed.len());
    if errors > 0 {
        println!("{:<34} {:>12}", "of which the harness failed", errors);
    }
    println!("{:<34} {:>12.0}", "virtual seconds simulated", virtual_time.as_secs_f64());
    println!("{:<34} {:>12.1}", "wall seconds", wall.as_secs_f64());
    println!("{:<34} {:>12.1}", "virtual s per real s (one thread)", speed);
    println!("{:<34} {:>12}", "faults injected", faults);
    println!("{:<34} {:>12}", "broker crashes", crashes);
    println!("{:<34} {:>12}", "records acknowledged and checked", acked);
    println!("{:<34} {:>12}", "group commits acknowledged", commits);
    println!("{:<34} {:>12}", "messages (lost, duplicated)", format!("{messages} ({lost}, {duplicated})"));
    if !failed.is_empty() {
        let shown: Vec<String> = failed.iter().take(20).map(|s| s.to_string()).collect();
        eprintln!("{} of {count} seeds failed: {}", failed.len(), shown.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
