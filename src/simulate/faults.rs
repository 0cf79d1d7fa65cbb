//! Injects a run's planned faults at their times and heals each one after its length.

use std::collections::BTreeSet;
use std::time::Duration;

use super::net::Rules;
use super::scenario::{FaultKind, PlannedFault};
use super::world::Shared;
use crate::cluster::metadata::NodeId;

/// Plays `plan`, one fault after another (each is healed before the next starts).
pub async fn inject(world: Shared, plan: Vec<PlannedFault>) {
    for fault in plan {
        tokio::time::sleep_until(world.start + fault.at).await;
        play(&world, &fault).await;
    }
}

fn cut_between(a: &[NodeId], b: &[NodeId]) -> BTreeSet<(NodeId, NodeId)> {
    let mut cut = BTreeSet::new();
    for x in a {
        for y in b {
            cut.insert((*x, *y));
            cut.insert((*y, *x));
        }
    }
    cut
}

fn shuffled(world: &Shared, mut ids: Vec<NodeId>) -> Vec<NodeId> {
    for i in (1..ids.len()).rev() {
        let j = world.random(0..=i as u64) as usize;
        ids.swap(i, j);
    }
    ids
}

async fn play(world: &Shared, fault: &PlannedFault) {
    let ids = world.broker_ids();
    let n = ids.len();
    let length = fault.length;
    match fault.kind {
        FaultKind::Partition | FaultKind::PartitionLeader | FaultKind::Bridge | FaultKind::OneWay if n < 2 => {
            world.event(format!("{:?} skipped: one broker", fault.kind));
        }
        FaultKind::Partition => {
            let order = shuffled(world, ids);
            let split = world.random(1..=n as u64 - 1) as usize;
            let (a, b) = order.split_at(split);
            world.event(format!("partition {a:?} | {b:?} for {length:?}"));
            with_rules(world, length, |r| r.cut = cut_between(a, b)).await;
        }
        FaultKind::PartitionLeader => {
            let victim =
                leader_of_random_partition(world).await.unwrap_or(ids[world.random(0..=n as u64 - 1) as usize]);
            let others: Vec<NodeId> = ids.iter().copied().filter(|id| *id != victim).collect();
            world.event(format!("leader {victim} cut off from {others:?} for {length:?}"));
            with_rules(world, length, |r| r.cut = cut_between(&[victim], &others)).await;
        }
        FaultKind::OneWay => {
            let order = shuffled(world, ids);
            let (from, rest) = (order[0], &order[1..]);
            let to: Vec<NodeId> = if world.random(0..=1) == 0 { vec![rest[0]] } else { rest.to_vec() };
            world.event(format!("one-way: broker {from} cannot reach {to:?} for {length:?}"));
            with_rules(world, length, |r| r.cut = to.iter().map(|t| (from, *t)).collect()).await;
        }
        FaultKind::Bridge if n < 3 => world.event("bridge skipped: fewer than three brokers"),
        FaultKind::Bridge => {
            let order = shuffled(world, ids);
            let bridge = order[0];
            let split = world.random(1..=n as u64 - 2) as usize;
            let (a, b) = order[1..].split_at(split);
            world.event(format!("bridge: {a:?} | {b:?}, only through broker {bridge}, for {length:?}"));
            with_rules(world, length, |r| r.cut = cut_between(a, b)).await;
        }
        FaultKind::Crash => {
            let running = world.running_ids();
            if running.is_empty() {
                return;
            }
            let victim = running[world.random(0..=running.len() as u64 - 1) as usize];
            crash_for(world, victim, length, "crash").await;
        }
        FaultKind::ControllerLoss => match world.controller() {
            Some(controller) => crash_for(world, controller, length, "controller loss").await,
            None => world.event("controller loss skipped: no controller"),
        },
        FaultKind::RollingRestart => {
            let step = length / (2 * n as u32).max(1);
            world.event(format!("rolling restart, {step:?} down each"));
            for id in ids {
                crash_for(world, id, step, "rolling restart").await;
                tokio::time::sleep(step).await;
            }
        }
        FaultKind::Delay => {
            let ms = world.random(20..=400);
            world.event(format!("inter-broker delay +{ms} ms for {length:?}"));
            with_rules(world, length, |r| r.delay_ms = ms).await;
        }
        FaultKind::Drop => {
            let per_mille = world.random(20..=300) as u32;
            world.event(format!("message loss {per_mille}/1000 for {length:?}"));
            with_rules(world, length, |r| r.drop_per_mille = per_mille).await;
        }
        FaultKind::Duplicate => {
            let per_mille = world.random(100..=500) as u32;
            world.event(format!("inter-broker duplication {per_mille}/1000 for {length:?}"));
            with_rules(world, length, |r| r.duplicate_per_mille = per_mille).await;
        }
        FaultKind::Reorder => {
            let jitter = world.random(50..=500);
            world.event(format!("reordering jitter up to {jitter} ms for {length:?}"));
            with_rules(world, length, |r| r.jitter_ms = jitter).await;
        }
        FaultKind::SlowDisk => {
            let victim = ids[world.random(0..=n as u64 - 1) as usize];
            let ms = world.random(20..=300);
            world.event(format!("slow disk on broker {victim}: {ms} ms per write for {length:?}"));
            world.brokers.borrow()[victim as usize - 1].set_write_stall(ms);
            tokio::time::sleep(length).await;
            world.brokers.borrow()[victim as usize - 1].set_write_stall(0);
            world.event(format!("disk of broker {victim} healed"));
        }
        FaultKind::ClockSkew => {
            let victim = ids[world.random(0..=n as u64 - 1) as usize];
            let seconds = world.random(1..=3600) as i64 * if world.random(0..=1) == 0 { 1 } else { -1 };
            world.event(format!("clock of broker {victim} off by {seconds} s for {length:?}"));
            world.brokers.borrow()[victim as usize - 1].skew_ms.set(seconds * 1000);
            tokio::time::sleep(length).await;
            world.brokers.borrow()[victim as usize - 1].skew_ms.set(0);
            world.event(format!("clock of broker {victim} back"));
        }
    }
}

/// Applies network rules for `length`, then heals them.
async fn with_rules(world: &Shared, length: Duration, change: impl FnOnce(&mut Rules)) {
    let mut rules = Rules::default();
    change(&mut rules);
    world.net.set_rules(rules);
    tokio::time::sleep(length).await;
    world.net.set_rules(Rules::default());
    world.event("network healed");
}

/// Stops a broker at the end of a run (not a fault: no event).
pub async fn stop(world: &Shared, id: NodeId) {
    let task = world.brokers.borrow_mut()[id as usize - 1].kill();
    if let Some(task) = task {
        let _ = task.await;
    }
}

pub async fn crash(world: &Shared, id: NodeId) {
    let task = world.brokers.borrow_mut()[id as usize - 1].kill();
    if let Some(task) = task {
        let _ = task.await;
        world.event(format!("broker {id} crashed"));
    }
}

pub fn restart(world: &Shared, id: NodeId) {
    let mut brokers = world.brokers.borrow_mut();
    let broker = &mut brokers[id as usize - 1];
    if !broker.is_running() {
        broker.start(world);
        let first = broker.starts == 1;
        drop(brokers);
        world.event(format!("broker {id} {}", if first { "started" } else { "restarted" }));
    }
}

async fn crash_for(world: &Shared, id: NodeId, length: Duration, why: &str) {
    world.event(format!("{why}: broker {id} down for {length:?}"));
    crash(world, id).await;
    tokio::time::sleep(length).await;
    restart(world, id);
}

/// The leader of a random partition of the first topic, as a running broker's metadata says.
async fn leader_of_random_partition(world: &Shared) -> Option<NodeId> {
    let topic = world.scenario.topics[0].clone();
    let partition = world.random(0..=topic.partitions as u64 - 1) as i32;
    let contexts: Vec<_> = world.brokers.borrow().iter().filter_map(|b| b.context()).collect();
    contexts.iter().find_map(|c| c.cluster.metadata().partition(&topic.name, partition)?.leader)
}
