//! `GroupRegistry`: finds or starts the `GroupCoordinator` of a group, lists
//! groups, and expires the offsets of groups that stayed empty longer than
//! `offsets_retention_ms` (Kafka's `offsets.retention.minutes`).
//!
//! Coordinators are started on demand, on one arbiter of their own, only for
//! requests that may create a group (JoinGroup, OffsetCommit) or for groups the
//! offset store knows; lookups of unknown groups never start an actor, so the
//! number of coordinators is bounded by real groups (and `max_groups`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use kafka_protocol::ResponseError as E;

use crate::group_coordinator::{GroupAnswer, GroupCoordinator, GroupRequest, GroupSettings};
use crate::offset_store::OffsetStore;

/// Find a group's coordinator; `create` starts one for a new group.
#[derive(Message)]
#[rtype(result = "Result<Option<Addr<GroupCoordinator>>, i16>")]
pub struct LookupGroup {
    pub group_id: String,
    pub create: bool,
}

/// Drop a coordinator whose group was deleted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetGroup(pub String);

/// Every group: `(group id, protocol type, state name)`.
#[derive(Message)]
#[rtype(result = "Vec<(String, String, String)>")]
pub struct ListGroups;

pub struct GroupRegistry {
    settings: Arc<GroupSettings>,
    store: Arc<OffsetStore>,
    groups: HashMap<String, Addr<GroupCoordinator>>,
    /// `None`: coordinators run on the caller's thread (simulations).
    arbiter: Option<ArbiterHandle>,
}

impl GroupRegistry {
    pub fn new(settings: GroupSettings, store: OffsetStore, own_thread: bool) -> GroupRegistry {
        GroupRegistry {
            settings: Arc::new(settings),
            store: Arc::new(store),
            groups: HashMap::new(),
            arbiter: own_thread.then(|| Arbiter::new().handle()),
        }
    }

    fn known_to_store(&self, group_id: &str) -> bool {
        matches!(self.store.group(group_id), Ok(Some(_)))
            || self.store.fetch_all(group_id).map(|o| !o.is_empty()).unwrap_or(false)
    }

    fn start(&mut self, group_id: &str) -> Addr<GroupCoordinator> {
        let (settings, store, id) = (self.settings.clone(), self.store.clone(), group_id.to_string());
        let coordinator = move |_: &mut Context<GroupCoordinator>| GroupCoordinator::new(id, settings, store);
        let addr = match &self.arbiter {
            Some(arbiter) => Supervisor::start_in_arbiter(arbiter, coordinator),
            None => Supervisor::start(coordinator),
        };
        self.groups.insert(group_id.to_string(), addr.clone());
        addr
    }

    /// Expires groups with no coordinator straight from the store; asks live ones.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let now = crate::now_ms();
        let retention = self.settings.offsets_retention_ms;
        let Ok(ids) = self.store.group_ids() else { return };
        for id in ids {
            if let Some(addr) = self.groups.get(&id) {
                let request = addr.send(GroupRequest::Expire { now_ms: now });
                ctx.spawn(request.into_actor(self).map(move |answer, act, _| {
                    if answer == Ok(Ok(GroupAnswer::Code(0))) {
                        act.groups.remove(&id);
                    }
                }));
                continue;
            }
            let last_activity = match self.store.group(&id) {
                Ok(Some(record)) => record.empty_since_ms,
                _ => self.store.fetch_all(&id).ok().and_then(|o| o.iter().map(|(_, c)| c.commit_time_ms).max()),
            };
            if last_activity.is_some_and(|since| now - since >= retention) {
                match self.store.delete_group(&id) {
                    Ok(()) => tracing::info!(group = %id, "expired offsets of empty group"),
                    Err(e) => tracing::error!(group = %id, error = %e, "cannot expire group"),
                }
            }
        }
    }
}

impl Actor for GroupRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = Duration::from_millis(self.settings.offsets_retention_check_interval_ms.max(100));
        ctx.run_interval(every, |act, ctx| act.expire(ctx));
    }
}

impl Supervised for GroupRegistry {}

impl Handler<LookupGroup> for GroupRegistry {
    type Result = Result<Option<Addr<GroupCoordinator>>, i16>;

    fn handle(&mut self, msg: LookupGroup, _: &mut Context<Self>) -> Self::Result {
        if msg.group_id.is_empty() || msg.group_id.contains('\0') {
            return Err(E::InvalidGroupId.code());
        }
        if let Some(addr) = self.groups.get(&msg.group_id) {
            if addr.connected() {
                return Ok(Some(addr.clone()));
            }
        }
        if !msg.create && !self.known_to_store(&msg.group_id) {
            return Ok(None);
        }
        if self.groups.len() >= self.settings.max_groups {
            tracing::warn!(limit = self.settings.max_groups, "group limit reached");
            return Err(E::CoordinatorNotAvailable.code());
        }
        Ok(Some(self.start(&msg.group_id)))
    }
}

/// A transaction marker for the groups of this broker: `producer_id`'s
/// pending transactional offsets become committed, or are dropped.
#[derive(Message)]
#[rtype(result = "Result<usize, i16>")]
pub struct CompleteTxnOffsets {
    pub producer_id: i64,
    pub commit: bool,
}

impl Handler<CompleteTxnOffsets> for GroupRegistry {
    type Result = Result<usize, i16>;

    /// Answers how many offsets there were; a storage failure is logged and
    /// answered COORDINATOR_NOT_AVAILABLE, so the coordinator retries.
    fn handle(&mut self, msg: CompleteTxnOffsets, _: &mut Context<Self>) -> Self::Result {
        self.store.complete_transaction(msg.producer_id, msg.commit).map_err(|e| {
            tracing::error!(producer_id = msg.producer_id, error = %e, "transactional offsets not completed");
            kafka_protocol::ResponseError::CoordinatorNotAvailable.code()
        })
    }
}

/// The partitions of a group whose offsets wait for a transaction's marker
/// (OffsetFetch with `require_stable` answers them UNSTABLE_OFFSET_COMMIT).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::offset_store::TopicPartition>, i16>")]
pub struct PendingTxnOffsets {
    pub group: String,
}

impl Handler<PendingTxnOffsets> for GroupRegistry {
    type Result = Result<Vec<crate::offset_store::TopicPartition>, i16>;

    fn handle(&mut self, msg: PendingTxnOffsets, _: &mut Context<Self>) -> Self::Result {
        self.store.pending_partitions(&msg.group).map_err(|e| {
            tracing::error!(group = %msg.group, error = %e, "pending transactional offsets not read");
            kafka_protocol::ResponseError::CoordinatorNotAvailable.code()
        })
    }
}

impl Handler<ForgetGroup> for GroupRegistry {
    type Result = ();

    fn handle(&mut self, msg: ForgetGroup, _: &mut Context<Self>) {
        self.groups.remove(&msg.0);
    }
}

impl Handler<ListGroups> for GroupRegistry {
    type Result = ResponseFuture<Vec<(String, String, String)>>;

    fn handle(&mut self, _: ListGroups, _: &mut Context<Self>) -> Self::Result {
        let live: Vec<(String, Addr<GroupCoordinator>)> =
            self.groups.iter().map(|(id, addr)| (id.clone(), addr.clone())).collect();
        let mut stored: Vec<(String, String, String)> = Vec::new();
        for id in self.store.group_ids().unwrap_or_default() {
            if !self.groups.contains_key(&id) {
                let protocol_type = self.store.group(&id).ok().flatten().map(|r| r.protocol_type).unwrap_or_default();
                stored.push((id, protocol_type, "Empty".to_string()));
            }
        }
        Box::pin(async move {
            let mut out = stored;
            for (id, addr) in live {
                if let Ok(Ok(GroupAnswer::Described(d))) = addr.send(GroupRequest::Describe).await {
                    if d.state != crate::group_coordinator::GroupState::Dead {
                        out.push((id, d.protocol_type, d.state.name().to_string()));
                    }
                }
            }
            out.sort();
            out
        })
    }
}
