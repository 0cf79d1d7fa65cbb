//! Wall-clock time for record timestamps, retention and producer expiry.
//!
//! A broker reads the system clock. The simulation runs every broker on one
//! thread in virtual time: it sets a virtual epoch for the thread, so
//! timestamps follow tokio's paused clock (and replay with the seed), and a
//! per-broker skew while it polls that broker.

use std::cell::Cell;

thread_local! {
    static VIRTUAL_EPOCH: Cell<Option<(tokio::time::Instant, i64)>> = const { Cell::new(None) };
    static SKEW_MS: Cell<i64> = const { Cell::new(0) };
}

/// Milliseconds since the Unix epoch, as this broker's clock reads them.
pub fn now_ms() -> i64 {
    let base = match VIRTUAL_EPOCH.with(Cell::get) {
        Some((start, epoch_ms)) => epoch_ms + start.elapsed().as_millis() as i64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    };
    base + SKEW_MS.with(Cell::get)
}

/// Makes this thread's wall clock read `epoch_ms` now and advance with tokio's
/// clock (paused in a simulation). For simulations only.
pub fn use_virtual_wall_clock(epoch_ms: i64) {
    VIRTUAL_EPOCH.with(|c| c.set(Some((tokio::time::Instant::now(), epoch_ms))));
}

/// Sets this thread's clock skew and returns the previous one. The simulation
/// sets a broker's skew while it polls that broker's tasks.
pub fn set_skew_ms(skew_ms: i64) -> i64 {
    SKEW_MS.with(|c| c.replace(skew_ms))
}
