//! The broker-wide budget of response bytes: encoded, and not yet taken by
//! their clients (`limits.max_queued_response_bytes`).
//!
//! Every encoded response is charged for its length until its bytes are
//! dropped, which is after the connection has written them: the charge
//! travels inside the response's `Bytes` (`Bytes::from_owner`), so no path
//! can forget to release it. A fetch, the one response that can be large,
//! reserves before it reads and is sized to what it got; other responses
//! are charged as they are encoded (they are small, so they may pass the
//! limit by their own size rather than wait). A client that never reads
//! holds its charge until the connection's write pace cuts it off.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The least a fetch reserves: below this it waits (or answers without records).
pub const MIN_FETCH_GRANT: usize = 64 << 10;

pub struct ResponseMemory {
    limit: usize,
    used: AtomicUsize,
    /// `used`, as the `response_bytes_queued` metric shows it.
    gauge: Gauge,
    /// Woken whenever a charge is released, for fetches waiting for room.
    freed: Notify,
}

/// Bytes of the budget held; released when dropped.
pub struct Charge {
    memory: Arc<ResponseMemory>,
    bytes: usize,
}

impl ResponseMemory {
    pub fn new(limit: usize, gauge: Gauge) -> Arc<ResponseMemory> {
        assert!(limit >= MIN_FETCH_GRANT, "the response budget holds at least one fetch grant");
        Arc::new(ResponseMemory { limit, used: AtomicUsize::new(0), gauge, freed: Notify::new() })
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        let now = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.gauge.set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    fn release(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        assert!(before >= bytes, "a charge releases no more than it took");
        self.gauge.set(i64::try_from(before - bytes).unwrap_or(i64::MAX));
        self.freed.notify_waiters();
    }

    /// Reserves up to `want` bytes, at least `MIN_FETCH_GRANT` (or `want` if
    /// smaller), waiting for room until `deadline`; `None` if none came.
    pub async fn reserve(self: &Arc<Self>, want: usize, deadline: Instant) -> Option<Charge> {
        let least = want.min(MIN_FETCH_GRANT);
        // Bounded by the deadline: each turn takes room or waits for a release.
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(charge) = self.try_reserve(want, least) {
                return Some(charge);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }

    fn try_reserve(self: &Arc<Self>, want: usize, least: usize) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Relaxed);
        // Bounded: each failed exchange means another reservation or release went through.
        loop {
            let room = self.limit.saturating_sub(used);
            if room < least {
                return None;
            }
            let take = want.min(room);
            match self.used.compare_exchange_weak(used, used + take, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.gauge.set(i64::try_from(used + take).unwrap_or(i64::MAX));
                    return Some(Charge { memory: self.clone(), bytes: take });
                }
                Err(now) => used = now,
            }
        }
    }

    /// Charges `bytes` whatever is left (a response already encoded).
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.add(bytes);
        Charge { memory: self.clone(), bytes }
    }
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes the charge exactly `bytes` (the encoded response's length).
    pub fn resize(mut self, bytes: usize) -> Charge {
        if bytes > self.bytes {
            self.memory.add(bytes - self.bytes);
        } else {
            self.memory.release(self.bytes - bytes);
        }
        self.bytes = bytes;
        self
    }

    /// One charge of both.
    pub fn absorb(mut self, mut other: Charge) -> Charge {
        assert!(Arc::ptr_eq(&self.memory, &other.memory), "charges of one budget");
        self.bytes += std::mem::take(&mut other.bytes);
        self
    }

    /// `response`, holding this charge until its bytes are dropped.
    pub fn attach(self, response: Bytes) -> Bytes {
        Bytes::from_owner(Charged { response, _charge: self })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.memory.release(self.bytes);
    }
}

struct Charged {
    response: Bytes,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn responses_hold_their_bytes_until_dropped_and_fetches_wait_for_room() {
        let gauge = Gauge::default();
        let memory = ResponseMemory::new(1 << 20, gauge.clone());
        let far = Instant::now() + std::time::Duration::from_secs(60);
        let big = memory.reserve(10 << 20, far).await.expect("room");
        assert_eq!(big.bytes(), 1 << 20, "a reservation takes what is left, up to what it wants");
        let response = big.resize(900 << 10).attach(Bytes::from(vec![7u8; 900 << 10]));
        assert_eq!(memory.used(), 900 << 10);
        let soon = Instant::now() + std::time::Duration::from_millis(100);
        assert!(memory.reserve(1 << 20, soon).await.is_some(), "124 KiB left is at least a grant");
        assert_eq!(memory.used(), 900 << 10, "the second grant was dropped");
        let held = memory.charge(100 << 10);
        assert!(memory.reserve(1 << 20, soon).await.is_none(), "24 KiB left is under a grant");
        let waiter = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(1 << 20, far).await.map(|c| c.bytes()) }
        });
        tokio::task::yield_now().await;
        drop(response);
        assert_eq!(waiter.await.unwrap(), Some((1 << 20) - (100 << 10)), "woken by the release");
        assert_eq!(gauge.get(), 100 << 10);
        drop(held);
        assert_eq!((memory.used(), gauge.get()), (0, 0));
    }
}
