//! A partition's place in a replicated cluster: its role, and the leader's
//! bookkeeping of its followers (Kafka's ISR and high watermark rules).
//!
//! The cluster layer decides roles (from the controller's metadata) and sends
//! them with `SetRole`; followers pull with `ReplicaRead` on the leader and
//! write with `AppendReplicated`. Nothing here knows the transport.
//!
//! Invariants the leader keeps:
//! - the high watermark never passes the log end of any member of the
//!   maximal ISR (the committed ISR plus additions in flight), and never moves back;
//! - an `acks=-1` append is answered only once the high watermark passes it;
//! - an ISR change is only proposed, never assumed: shrinking takes effect
//!   when the controller commits it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::partition_actor::PartitionError;

pub type BrokerId = u64;

/// Proposed to the controller by a partition leader (KIP-497's AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub topic: Arc<str>,
    pub partition: i32,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<BrokerId>,
}

#[derive(Debug, Clone)]
pub struct LeaderRole {
    pub node_id: BrokerId,
    pub epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    pub min_insync_replicas: i32,
    /// A follower that has not caught up for this long leaves the ISR (replica.lag.time.max.ms).
    pub replica_lag: Duration,
    pub isr_changes: mpsc::UnboundedSender<IsrChange>,
}

#[derive(Debug, Clone)]
pub enum Role {
    /// One broker, no replication: a record is visible once committed.
    Standalone,
    Leader(LeaderRole),
    /// Refuses produce; `leader` is `None` while the partition has no leader.
    Follower {
        leader: Option<BrokerId>,
        epoch: i32,
    },
}

impl Role {
    pub fn epoch(&self) -> i32 {
        match self {
            Role::Standalone => 0,
            Role::Leader(l) => l.epoch,
            Role::Follower { epoch, .. } => *epoch,
        }
    }

    /// The epoch this replica leads in (a standalone partition leads itself), or `None`.
    pub fn leading_epoch(&self) -> Option<i32> {
        match self {
            Role::Standalone => Some(0),
            Role::Leader(l) => Some(l.epoch),
            Role::Follower { .. } => None,
        }
    }

    /// Same role, epoch and ISR: nothing to do.
    pub fn same_as(&self, other: &Role) -> bool {
        match (self, other) {
            (Role::Standalone, Role::Standalone) => true,
            (Role::Leader(a), Role::Leader(b)) => {
                a.epoch == b.epoch
                    && a.partition_epoch == b.partition_epoch
                    && a.isr == b.isr
                    && a.replicas == b.replicas
            }
            (Role::Follower { leader: a, epoch: x }, Role::Follower { leader: b, epoch: y }) => a == b && x == y,
            _ => false,
        }
    }
}

/// Take this role (idempotent for the same epoch and ISR).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRole(pub Role);

/// A follower's fetch, on the leader (KIP-320: it names the epoch of its last record,
/// so the leader can tell it where its log diverges).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<ReplicaReadOutcome, PartitionError>")]
pub struct ReplicaRead {
    pub follower: BrokerId,
    pub leader_epoch: i32,
    pub fetch_offset: i64,
    /// The epoch of the follower's last record, -1 if its log is empty.
    pub last_fetched_epoch: i32,
    pub max_bytes: usize,
}

#[derive(Debug, Clone)]
pub enum ReplicaReadOutcome {
    Records {
        records: Bytes,
        high_watermark: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    /// The follower's log differs from `end_offset` on: it truncates there.
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
    /// The leader no longer has `fetch_offset`: the follower restarts at `log_start_offset`.
    Behind {
        log_start_offset: i64,
    },
}

/// A follower writes what it fetched. Answers its new log end offset.
#[derive(Message)]
#[rtype(result = "Result<i64, PartitionError>")]
pub struct AppendReplicated {
    pub leader_epoch: i32,
    pub records: Bytes,
    pub leader_high_watermark: i64,
}

/// Where a follower's next fetch starts: `(log end offset, epoch of its last record or -1)`.
#[derive(Message)]
#[rtype(result = "Result<(i64, i32), PartitionError>")]
pub struct FetchPosition;

/// The follower's answer to divergence: truncate to the smaller of the
/// leader's end of `epoch` and its own.
#[derive(Message)]
#[rtype(result = "Result<(), PartitionError>")]
pub struct TruncateDiverged {
    pub epoch: i32,
    pub end_offset: i64,
}

/// Empty the log and start again at this offset (the leader has deleted what comes before).
#[derive(Message)]
#[rtype(result = "Result<(), PartitionError>")]
pub struct RestartAt(pub i64);

/// Periodic (from the cluster layer): shrink the ISR of followers that lag.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckIsr;

/// The partition's current role and high watermark (the simulation's checker
/// watches that no two brokers lead one partition in one epoch).
#[derive(Message)]
#[rtype(result = "(Role, i64)")]
pub struct DescribeRole;

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
pub struct FollowerState {
    pub log_end_offset: i64,
    pub last_caught_up: Instant,
    last_fetch: Instant,
    /// The leader's log end when this follower last fetched.
    leader_end_at_last_fetch: i64,
}

/// The leader's view of its followers.
#[derive(Debug)]
pub struct ReplicaSet {
    pub followers: BTreeMap<BrokerId, FollowerState>,
    /// ISR changes sent to the controller at one partition epoch and not yet
    /// seen answered by a newer committed epoch.
    pub pending_isr: Option<PendingIsr>,
    /// The leader's log end when it took up this leadership. A follower joins
    /// the ISR only from here on: a leader restarted within its epoch starts
    /// with a high watermark of 0, so "at the high watermark" alone would let
    /// a follower that lacks acknowledged records in (found by the simulation,
    /// rolling-restart seed 239).
    pub lead_start_end: i64,
}

/// ISR changes in flight. A proposal that timed out may still commit (a
/// delayed or duplicated request), so every member any proposal at
/// `base_epoch` adds counts for the high watermark until the leader sees a
/// committed partition epoch past `base_epoch`; a refusal or a timeout proves
/// nothing. To end the wait when the added member cannot catch up, the
/// leader proposes the committed ISR unchanged, which commits as a newer
/// epoch and so fences every proposal still in flight (found by the
/// simulation, mixed-faults seed 199: a timed-out addition committed after
/// the leader had stopped counting the member, which then lacked
/// acknowledged records and was elected).
#[derive(Debug, Clone)]
pub struct PendingIsr {
    pub base_epoch: i32,
    pub additions: Vec<BrokerId>,
    pub since: Instant,
}

/// How long a proposed ISR change may stay unanswered before it is proposed again.
const ISR_CHANGE_RETRY: Duration = Duration::from_secs(5);
/// How long a leader holds a replica fetch with nothing new (the long poll);
/// followers ask for it, leaders cap it.
pub const REPLICA_FETCH_MAX_WAIT: Duration = Duration::from_secs(3);
/// A follower fetched within this long is fetching: its fetches wait at most
/// `REPLICA_FETCH_MAX_WAIT` at the leader, so a live one is never longer away.
const FETCHING: Duration = Duration::from_secs(REPLICA_FETCH_MAX_WAIT.as_secs() + 1);

impl ReplicaSet {
    pub fn new(role: &LeaderRole, leader_end: i64, now: Instant) -> ReplicaSet {
        // Followers start unknown (offset -1) but caught up as of now: each gets a full lag period.
        let followers = role
            .replicas
            .iter()
            .filter(|id| **id != role.node_id)
            .map(|id| {
                let state = FollowerState {
                    log_end_offset: -1,
                    last_caught_up: now,
                    last_fetch: now,
                    leader_end_at_last_fetch: leader_end,
                };
                (*id, state)
            })
            .collect();
        ReplicaSet { followers, pending_isr: None, lead_start_end: leader_end }
    }

    /// A leadership this actor was not holding a moment ago. Changes it (or
    /// an earlier incarnation at the same epoch) proposed may still commit,
    /// and nothing here remembers them, so every replica counts for the high
    /// watermark, and the ISR is proposed at once, until a committed epoch
    /// newer than the current one is seen (mixed-faults seed 199: a leader
    /// demoted by a lost lease and restored at the same epoch forgot its
    /// pending addition, acknowledged records the added member lacked, and
    /// the member was elected).
    pub fn taking_over(role: &LeaderRole, leader_end: i64, now: Instant) -> ReplicaSet {
        let mut set = ReplicaSet::new(role, leader_end, now);
        let additions: Vec<BrokerId> = role.replicas.iter().copied().filter(|id| !role.isr.contains(id)).collect();
        if !additions.is_empty() {
            let since = now.checked_sub(ISR_CHANGE_RETRY).unwrap_or(now);
            set.pending_isr = Some(PendingIsr { base_epoch: role.partition_epoch, additions, since });
        }
        set
    }

    /// Records a follower's fetch from `fetch_offset` while the leader's log ends at `leader_end`.
    pub fn on_fetch(&mut self, follower: BrokerId, fetch_offset: i64, leader_end: i64, now: Instant) {
        let Some(state) = self.followers.get_mut(&follower) else { return };
        if fetch_offset >= leader_end {
            state.last_caught_up = now;
        } else if fetch_offset >= state.leader_end_at_last_fetch {
            state.last_caught_up = state.last_caught_up.max(state.last_fetch);
        }
        state.log_end_offset = fetch_offset;
        state.last_fetch = now;
        state.leader_end_at_last_fetch = leader_end;
    }

    /// The committed ISR plus members being added: the set the high watermark waits for.
    fn maximal_isr(&self, role: &LeaderRole) -> Vec<BrokerId> {
        let mut isr = role.isr.clone();
        if let Some(pending) = &self.pending_isr {
            for id in &pending.additions {
                if !isr.contains(id) {
                    isr.push(*id);
                }
            }
        }
        isr
    }

    /// The smallest log end over the maximal ISR (the leader's own is `leader_end`).
    pub fn high_watermark(&self, role: &LeaderRole, leader_end: i64) -> i64 {
        self.maximal_isr(role)
            .iter()
            .map(
                |id| {
                    if *id == role.node_id {
                        leader_end
                    } else {
                        self.followers.get(id).map_or(-1, |f| f.log_end_offset)
                    }
                },
            )
            .min()
            .unwrap_or(leader_end)
    }

    /// The ISR the leader wants now: lagging followers out (only when
    /// `shrink`), caught-up ones in. `None` if that is the current ISR or a
    /// change is already in flight.
    pub fn wanted_isr(
        &mut self,
        role: &LeaderRole,
        high_watermark: i64,
        epoch_start: i64,
        shrink: bool,
        now: Instant,
    ) -> Option<Vec<BrokerId>> {
        if let Some(pending) = &self.pending_isr {
            if now.duration_since(pending.since) < ISR_CHANGE_RETRY {
                return None;
            }
        }
        let mut wanted: Vec<BrokerId> = role
            .isr
            .iter()
            .copied()
            .filter(|id| {
                *id == role.node_id
                    || !shrink
                    || self.followers.get(id).is_some_and(|f| now.duration_since(f.last_caught_up) <= role.replica_lag)
            })
            .collect();
        for (id, f) in &self.followers {
            // Only a follower that is fetching joins: one that died caught up (a fenced broker,
            // which the controller refuses) would otherwise be proposed again and again, and,
            // counted while proposed, hold the high watermark at its end, so that it looked
            // caught up forever (found with a transaction coordinator's broker killed).
            let fetching = now.duration_since(f.last_fetch) <= FETCHING;
            let caught_up = fetching
                && f.log_end_offset >= high_watermark
                && f.log_end_offset >= epoch_start
                && f.log_end_offset >= self.lead_start_end;
            if !wanted.contains(id) && caught_up {
                wanted.push(*id);
            }
        }
        wanted.sort_unstable();
        let mut current = role.isr.clone();
        current.sort_unstable();
        let mut additions: Vec<BrokerId> = wanted.iter().copied().filter(|id| !current.contains(id)).collect();
        if let Some(pending) = self.pending_isr.as_ref().filter(|p| p.base_epoch == role.partition_epoch) {
            for id in &pending.additions {
                if !additions.contains(id) {
                    additions.push(*id);
                }
            }
        }
        let still_counted = additions.iter().any(|id| !current.contains(id));
        if wanted == current && !still_counted {
            self.pending_isr = None;
            return None;
        }
        self.pending_isr = Some(PendingIsr { base_epoch: role.partition_epoch, additions, since: now });
        // The committed ISR again, when only earlier additions are waited for: it fences them.
        Some(wanted)
    }

    /// The controller's committed state at `partition_epoch` reached the leader:
    /// proposals made at an older epoch are answered (applied or fenced).
    pub fn committed(&mut self, partition_epoch: i32) {
        if self.pending_isr.as_ref().is_some_and(|p| p.base_epoch < partition_epoch) {
            self.pending_isr = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(isr: Vec<BrokerId>) -> LeaderRole {
        LeaderRole {
            node_id: 1,
            epoch: 3,
            partition_epoch: 0,
            replicas: vec![1, 2, 3],
            isr,
            min_insync_replicas: 2,
            replica_lag: Duration::from_secs(10),
            isr_changes: mpsc::unbounded_channel().0,
        }
    }

    #[test]
    fn high_watermark_waits_for_every_isr_member() {
        let role = leader(vec![1, 2, 3]);
        let now = Instant::now();
        let mut set = ReplicaSet::new(&role, 100, now);
        assert_eq!(set.high_watermark(&role, 100), -1, "unknown followers hold it");
        set.on_fetch(2, 100, 100, now);
        set.on_fetch(3, 60, 100, now);
        assert_eq!(set.high_watermark(&role, 100), 60);
        let role = leader(vec![1, 2]);
        assert_eq!(set.high_watermark(&role, 100), 100, "a follower out of the ISR does not hold it");
    }

    /// mixed-faults seed 199: an addition whose proposal timed out keeps
    /// counting, through a repeated role at the same epoch and after the
    /// member falls behind again, until a newer epoch is committed; the
    /// leader then proposes the ISR unchanged to fence it.
    #[test]
    fn an_unanswered_addition_counts_until_a_newer_epoch_commits() {
        let role = leader(vec![1, 3]);
        let start = Instant::now();
        let mut set = ReplicaSet::new(&role, 100, start);
        set.on_fetch(2, 100, 100, start);
        set.on_fetch(3, 100, 100, start);
        assert_eq!(set.wanted_isr(&role, 100, 0, false, start), Some(vec![1, 2, 3]));
        // The proposal times out; 2 falls behind while the leader writes on.
        let later = start + ISR_CHANGE_RETRY;
        set.on_fetch(3, 160, 160, later);
        set.on_fetch(2, 120, 160, later);
        set.committed(role.partition_epoch);
        assert_eq!(set.high_watermark(&role, 160), 120, "2 may yet be in the ISR");
        // (2 is behind where this epoch began, so it is not caught up.)
        assert_eq!(set.wanted_isr(&role, 120, 150, false, later), Some(vec![1, 3]), "the fencing proposal");
        assert_eq!(set.high_watermark(&role, 160), 120);
        set.committed(role.partition_epoch + 1);
        assert_eq!(set.high_watermark(&role, 160), 160, "answered: 2 is out");
    }

    #[test]
    fn lagging_followers_are_proposed_out_and_caught_up_ones_in() {
        let role = leader(vec![1, 2, 3]);
        let start = Instant::now();
        let mut set = ReplicaSet::new(&role, 100, start);
        let later = start + Duration::from_secs(11);
        set.on_fetch(2, 100, 100, later);
        assert_eq!(set.wanted_isr(&role, 100, 0, true, later), Some(vec![1, 2]));
        // In flight: not proposed again until the retry period passes.
        assert_eq!(set.wanted_isr(&role, 100, 0, true, later), None);
        // Committed; then 3 catches up and is proposed back in.
        let role = LeaderRole { partition_epoch: 1, ..leader(vec![1, 2]) };
        set.committed(1);
        assert!(set.pending_isr.is_none(), "a newer committed epoch answers the proposal");
        set.on_fetch(3, 100, 100, later);
        assert_eq!(set.wanted_isr(&role, 100, 0, false, later), Some(vec![1, 2, 3]));
        // While the addition is in flight the high watermark already waits for 3.
        set.on_fetch(3, 100, 150, later);
        assert_eq!(set.high_watermark(&role, 150), 100);
    }

    #[test]
    fn a_restarted_leader_admits_only_followers_at_its_log_end() {
        // Restarted within epoch 3 with 100 records, high watermark back at 0.
        let role = leader(vec![1, 3]);
        let now = Instant::now();
        let mut set = ReplicaSet::new(&role, 100, now);
        set.on_fetch(3, 100, 100, now);
        set.on_fetch(2, 80, 100, now);
        assert_eq!(set.wanted_isr(&role, 0, 0, false, now), None, "2 lacks offsets 80..100");
        set.on_fetch(2, 100, 100, now);
        assert_eq!(set.wanted_isr(&role, 0, 0, false, now), Some(vec![1, 2, 3]));
    }
}
