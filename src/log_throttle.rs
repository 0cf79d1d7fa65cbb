//! Log lines a client can cause at will (a failed TLS handshake, a wrong
//! password) are throttled: at most one a second from each place, the lines
//! left out counted into the next one. A client that retries every 50 ms
//! then costs the log one line a second, not twenty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds between two lines from one place.
const EVERY_MS: u64 = 1000;

pub struct Throttle {
    /// When the last line was let through, in ms since `epoch()`, plus one (0: never).
    last: AtomicU64,
    skipped: AtomicU64,
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle { last: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }

    /// `Some(lines left out since the last one)` if a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= EVERY_MS;
        if due && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_rest_counted() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit_at(10), Some(0), "the first line is logged");
        assert_eq!(
            (0..5).filter_map(|i| throttle.admit_at(20 + i * 100)).count(),
            0,
            "the next ones in the second are not"
        );
        assert_eq!(throttle.admit_at(1010), Some(5), "a second on, a line counting what was left out");
        assert_eq!(throttle.admit_at(1500), None);
    }
}
