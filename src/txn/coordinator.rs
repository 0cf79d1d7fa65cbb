//! `TxnCoordinator`: one actor per transactional id, on the broker that leads
//! the id's `__transaction_state` partition. It serialises everything about
//! its id (`AtomicResponse`: one request at a time), writes each new state to
//! the state partition (acks=all) before it answers, and drives the markers
//! of a prepared transaction to every partition and group in it, then writes
//! the completed state. Restarted by its supervisor after a panic, it keeps
//! its last written state (actix reuses the actor) and resumes any markers.

use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use kafka_protocol::ResponseError as E;

use super::state::{self, End, Init, Status, TxnMeta};
use super::{Lease, Shared};

/// What a request asks of a transactional id's coordinator.
#[derive(Debug, Clone)]
pub enum TxnCall {
    Init { timeout_ms: i32, expected: (i64, i16), new_producer_id: i64 },
    Add { producer_id: i64, epoch: i16, partitions: Vec<(String, i32)>, groups: Vec<String> },
    Verify { producer_id: i64, epoch: i16, partition: (String, i32) },
    End { producer_id: i64, epoch: i16, commit: bool },
    /// The open transaction that began at `started_ms` may have timed out.
    Expire { started_ms: i64, new_producer_id: i64 },
    /// The markers of the prepared state at this epoch are all written.
    Completed { producer_id: i64, epoch: i16, status: Status },
    Describe,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TxnAnswer {
    Producer { id: i64, epoch: i16 },
    Done,
    Described(Option<TxnMeta>),
}

#[derive(Message)]
#[rtype(result = "Result<TxnAnswer, i16>")]
pub struct Call(pub TxnCall);

pub struct TxnCoordinator {
    id: Rc<str>,
    shared: Rc<Shared>,
    /// Its state partition, the leader epoch it was loaded at (the
    /// coordinator epoch every marker carries), and whether its load is current.
    lease: Lease,
    meta: Option<TxnMeta>,
    /// Markers are being written for the current prepared state.
    driving: bool,
}

/// What a call comes to: an answer at once, or a state to write first and
/// the answer (or error) once it is written.
enum Decision {
    Answer(TxnAnswer),
    Write { next: TxnMeta, answer: Result<TxnAnswer, i16>, then: Then },
}

const DONE: Decision = Decision::Answer(TxnAnswer::Done);

fn write(next: TxnMeta, answer: Result<TxnAnswer, i16>, then: Then) -> Decision {
    Decision::Write { next, answer, then }
}

/// A state write that failed is tried again after this long.
const RETRY: Duration = Duration::from_millis(500);
/// Markers not all written after a coordinator's rounds are driven again after this long.
const MARKER_RETRY: Duration = Duration::from_secs(5);

/// What to do after a state is written.
enum Then {
    Nothing,
    DriveMarkers,
    ArmTimeout,
}

impl TxnCoordinator {
    pub fn new(id: Rc<str>, shared: Rc<Shared>, lease: Lease, meta: Option<TxnMeta>) -> Self {
        TxnCoordinator { id, shared, lease, meta, driving: false }
    }

    /// The next state and answer for `call`, or an answer without a write.
    fn decide(&self, call: TxnCall) -> Result<Decision, i16> {
        let now = tributary_actors::now_ms();
        let meta = self.meta.as_ref();
        let max = self.shared.config.transactions.max_timeout_ms;
        match call {
            TxnCall::Init { timeout_ms, expected, new_producer_id } => {
                if timeout_ms <= 0 || timeout_ms > max {
                    return Err(E::InvalidTransactionTimeout.code());
                }
                match state::init(meta, expected, timeout_ms, now, || Ok(new_producer_id))? {
                    Init::Ready(next) => {
                        let answer = TxnAnswer::Producer { id: next.producer_id, epoch: next.producer_epoch };
                        Ok(write(next, Ok(answer), Then::Nothing))
                    }
                    // The open transaction is aborted first: the client retries, by then it has completed.
                    Init::AbortFirst(next) => {
                        Ok(write(next, Err(E::ConcurrentTransactions.code()), Then::DriveMarkers))
                    }
                }
            }
            TxnCall::Add { producer_id, epoch, partitions, groups } => {
                match state::add(meta, producer_id, epoch, &partitions, &groups, now)? {
                    None => Ok(DONE),
                    Some(next) => {
                        let then = if meta.is_some_and(|m| m.status == Status::Ongoing) {
                            Then::Nothing
                        } else {
                            Then::ArmTimeout
                        };
                        Ok(write(next, Ok(TxnAnswer::Done), then))
                    }
                }
            }
            TxnCall::Verify { producer_id, epoch, partition } => {
                state::verify(meta, producer_id, epoch, &partition).map(|()| DONE)
            }
            TxnCall::End { producer_id, epoch, commit } => match state::end(meta, producer_id, epoch, commit, now)? {
                End::Done => Ok(DONE),
                End::Prepare(next) => Ok(write(next, Ok(TxnAnswer::Done), Then::DriveMarkers)),
            },
            TxnCall::Expire { started_ms, new_producer_id } => {
                let Some(meta) = meta.filter(|m| m.status == Status::Ongoing && m.started_ms == started_ms) else {
                    return Ok(DONE);
                };
                match state::expire(meta, now, || Ok(new_producer_id)) {
                    Some(next) => {
                        tracing::info!(transactional_id = %self.id, producer_id = meta.producer_id,
                            timeout_ms = meta.timeout_ms, "aborting a transaction open past its timeout");
                        self.shared.ctx.metrics.transactions_timed_out.inc();
                        Ok(write(next, Ok(TxnAnswer::Done), Then::DriveMarkers))
                    }
                    None => Ok(DONE),
                }
            }
            TxnCall::Completed { producer_id, epoch, status } => {
                let Some(meta) = meta.filter(|m| {
                    m.producer_id == producer_id && m.producer_epoch == epoch && m.status == status
                }) else {
                    return Ok(DONE);
                };
                Ok(write(state::complete(meta, now), Ok(TxnAnswer::Done), Then::Nothing))
            }
            TxnCall::Describe => Ok(Decision::Answer(TxnAnswer::Described(self.meta.clone()))),
        }
    }

    /// The state just written; the open-transactions gauge follows it.
    fn set_meta(&mut self, next: TxnMeta) {
        let was_open = self.meta.as_ref().is_some_and(|m| m.status == Status::Ongoing);
        let metrics = &self.shared.ctx.metrics;
        match (was_open, next.status == Status::Ongoing) {
            (false, true) => drop(metrics.transactions_open.inc()),
            (true, false) => drop(metrics.transactions_open.dec()),
            _ => {}
        }
        self.meta = Some(next);
    }

    /// After a write: markers for a prepared state, a timer for an open one.
    fn after(&mut self, then: Then, ctx: &mut Context<Self>) {
        match then {
            Then::Nothing => {}
            Then::DriveMarkers => self.drive_markers(ctx),
            Then::ArmTimeout => self.arm_timeout(ctx),
        }
    }

    fn arm_timeout(&mut self, ctx: &mut Context<Self>) {
        let Some(meta) = self.meta.as_ref().filter(|m| m.status == Status::Ongoing) else { return };
        let started = meta.started_ms;
        let left = (started + i64::from(meta.timeout_ms) - tributary_actors::now_ms()).max(0) as u64;
        // A little past the timeout, so the check after it finds it passed (and not
        // at once again when a write of the abort failed).
        let wait = Duration::from_millis(left + 10).max(if left == 0 { RETRY } else { Duration::ZERO });
        ctx.run_later(wait, move |actor, ctx| {
            let shared = actor.shared.clone();
            let check = async move {
                let new_producer_id = shared.allocate_producer_id().await.unwrap_or(-1);
                TxnCall::Expire { started_ms: started, new_producer_id }
            };
            ctx.spawn(check.into_actor(actor).map(|call, _, ctx| ctx.notify(Call(call))));
        });
    }

    /// Writes the markers of the prepared state, then the completed state.
    fn drive_markers(&mut self, ctx: &mut Context<Self>) {
        let Some(meta) = self.meta.clone().filter(|m| matches!(m.status, Status::PrepareCommit | Status::PrepareAbort))
        else {
            return;
        };
        if self.driving {
            return;
        }
        self.driving = true;
        let shared = self.shared.clone();
        let lease = self.lease.clone();
        let work = async move { super::markers::write_all(&shared, &lease, &meta).await };
        ctx.spawn(work.into_actor(self).map(|outcome, actor, ctx| {
            actor.driving = false;
            match outcome {
                Ok(done) => ctx.notify(Call(TxnCall::Completed {
                    producer_id: done.producer_id,
                    epoch: done.producer_epoch,
                    status: done.status,
                })),
                Err(why) if actor.lease.holds(&actor.shared) => {
                    tracing::warn!(transactional_id = %actor.id, reason = %why, "markers not written yet; trying again");
                    ctx.run_later(MARKER_RETRY, |actor, ctx| actor.drive_markers(ctx));
                }
                Err(why) => {
                    tracing::info!(transactional_id = %actor.id, reason = %why, "markers left to the new coordinator");
                }
            }
        }));
    }
}

impl Actor for TxnCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.meta.as_ref().is_some_and(|m| m.status == Status::Ongoing) {
            self.shared.ctx.metrics.transactions_open.inc();
        }
        // A loaded state: finish what a previous coordinator prepared, time what is open.
        self.drive_markers(ctx);
        self.arm_timeout(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.forget_gauge();
    }
}

impl TxnCoordinator {
    /// A coordinator that stops (its partition moved away) no longer counts its open transaction.
    fn forget_gauge(&mut self) {
        if self.meta.as_ref().is_some_and(|m| m.status == Status::Ongoing) {
            self.shared.ctx.metrics.transactions_open.dec();
        }
    }
}

impl Supervised for TxnCoordinator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(transactional_id = %self.id, "transaction coordinator restarting");
        self.driving = false;
    }
}

impl Handler<Call> for TxnCoordinator {
    type Result = AtomicResponse<Self, Result<TxnAnswer, i16>>;

    fn handle(&mut self, Call(call): Call, _: &mut Context<Self>) -> Self::Result {
        if !self.lease.holds(&self.shared) {
            // Its load is over (an older epoch, or the partition loaded again): another coordinator answers.
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(E::NotCoordinator.code()))));
        }
        let (next, answer, then) = match self.decide(call) {
            Err(code) => return AtomicResponse::new(Box::pin(actix::fut::ready(Err(code)))),
            Ok(Decision::Answer(answer)) => return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(answer)))),
            Ok(Decision::Write { next, answer, then }) => (next, answer, then),
        };
        let write = self.shared.clone().persist(self.lease.clone(), self.id.clone(), next.clone());
        AtomicResponse::new(Box::pin(write.into_actor(self).map(move |written, actor, ctx| {
            if let Err(code) = written {
                tracing::warn!(transactional_id = %actor.id, status = next.status.name(), code, "transaction state not written");
                let status = actor.meta.as_ref().map(|m| m.status);
                if matches!(next.status, Status::CompleteCommit | Status::CompleteAbort) {
                    // The markers are out; only the completed state is missing: write it again shortly.
                    let call = TxnCall::Completed {
                        producer_id: next.producer_id,
                        epoch: next.producer_epoch,
                        status: status.unwrap_or(next.status),
                    };
                    ctx.run_later(RETRY, move |_, ctx| ctx.notify(Call(call)));
                } else if status == Some(Status::Ongoing) {
                    // An abort on timeout that was not written: the timer tries again.
                    actor.arm_timeout(ctx);
                }
                return Err(code);
            }
            actor.set_meta(next);
            actor.after(then, ctx);
            answer
        })))
    }
}
