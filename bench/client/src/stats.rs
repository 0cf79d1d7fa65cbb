//! Latency percentiles and the record payloads every client sends.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Latencies in microseconds; sorted once when summarised.
#[derive(Default)]
pub struct Latencies {
    micros: Vec<u64>,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Self { micros: Vec::with_capacity(n) }
    }

    pub fn push_micros(&mut self, us: u64) {
        self.micros.push(us);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    /// Drops warm-up samples.
    pub fn clear(&mut self) {
        self.micros.clear();
    }

    /// p50, p99, p99.9 and max in milliseconds; null when there are no samples.
    pub fn summary(mut self) -> Value {
        if self.micros.is_empty() {
            return Value::Null;
        }
        self.micros.sort_unstable();
        let at = |q: f64| {
            let i = ((q * self.micros.len() as f64) as usize).min(self.micros.len() - 1);
            self.micros[i] as f64 / 1000.0
        };
        json!({
            "samples": self.micros.len(),
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "p999_ms": at(0.999),
            "max_ms": *self.micros.last().unwrap() as f64 / 1000.0,
        })
    }
}

/// A latency workload's fixed rate: `warmup` records (sent and read, not counted),
/// then the measured ones, one every `interval_ns`.
#[derive(Clone, Copy)]
pub struct Pace {
    pub rate_bytes_s: u64,
    pub seconds: u64,
    pub warmup_seconds: u64,
}

impl Pace {
    /// (warm-up records, all records, nanoseconds between records) for records of `size` bytes.
    pub fn schedule(&self, size: usize) -> (u64, u64, u64) {
        let per_second = (self.rate_bytes_s / size.max(1) as u64).max(1);
        let warmup = per_second * self.warmup_seconds;
        (warmup, warmup + per_second * self.seconds, 1_000_000_000 / per_second)
    }

    /// How long the sender sleeps before record `i` of a schedule begun at `start`, if it is
    /// early by more than half a millisecond (shorter sleeps overshoot).
    pub fn delay_before(interval_ns: u64, i: u64, start: Instant) -> Option<Duration> {
        let due = Duration::from_nanos(i * interval_ns);
        let elapsed = start.elapsed();
        (due > elapsed + Duration::from_micros(500)).then(|| due - elapsed)
    }

    /// The figures a latency workload reports.
    pub fn figures(&self, size: usize, send_secs: f64, e2e: Latencies, acks: Latencies) -> Value {
        let (warmup, total, _) = self.schedule(size);
        json!({
            "target_mb_s": self.rate_bytes_s as f64 / 1e6,
            "achieved_mb_s": total as f64 * size as f64 / send_secs / 1e6,
            "records": total - warmup,
            "e2e_latency": e2e.summary(),
            "ack_latency": acks.summary(),
        })
    }
}

/// The figures every throughput workload reports; `ack_latency` when it has one.
pub fn throughput(records: u64, bytes: u64, secs: f64, ack_latency: Option<Latencies>) -> Value {
    let mut figures = json!({
        "records": records,
        "mb_s": bytes as f64 / secs / 1e6,
        "records_s": records as f64 / secs,
        "seconds": secs,
    });
    if let Some(latencies) = ack_latency {
        figures["ack_latency"] = latencies.summary();
    }
    figures
}

/// Record values: slices of a pool of text made of words from a small vocabulary,
/// so every record differs (no broker or codec sees one value repeated) and lz4
/// finds what it finds in event text, about 2x. The same bytes go to every broker.
pub struct Payloads {
    pool: Vec<u8>,
    size: usize,
}

impl Payloads {
    const POOL_BYTES: usize = 4 << 20;

    pub fn new(size: usize) -> Self {
        const WORDS: [&str; 32] = [
            "user", "order", "click", "view", "cart", "price", "item", "session", "region", "eu-west", "us-east",
            "mobile", "desktop", "status", "ok", "error", "retry", "amount", "currency", "EUR", "USD", "page",
            "search", "query", "result", "latency", "ms", "true", "false", "id", "ts", "ref",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            // xorshift: reproducible, no rand dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut pool = Vec::with_capacity(Self::POOL_BYTES + size + 16);
        while pool.len() < Self::POOL_BYTES + size {
            let r = next();
            pool.extend_from_slice(WORDS[(r & 31) as usize].as_bytes());
            // A number after some words, as events carry ids and amounts.
            if r & 0x300 == 0 {
                pool.extend_from_slice(format!("={}", (r >> 16) % 100_000).as_bytes());
            }
            pool.push(if r & 0x400 == 0 { b' ' } else { b',' });
        }
        Self { pool, size }
    }

    /// The value of record `i`: a different slice of the pool for consecutive records.
    pub fn get(&self, i: u64) -> &[u8] {
        let span = (self.pool.len() - self.size) as u64;
        let start = (i.wrapping_mul(7919) % span) as usize;
        &self.pool[start..start + self.size]
    }
}

pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64
}

/// Latency records carry the time they were due to be sent (not when they were: a stalled
/// sender must not hide its stall) and whether they belong to the warm-up.
pub fn stamp(buf: &mut [u8], due_unix_nanos: u64, warmup: bool) {
    assert!(buf.len() >= 9, "latency records need at least 9 bytes");
    buf[..8].copy_from_slice(&due_unix_nanos.to_le_bytes());
    buf[8] = warmup as u8;
}

/// Returns (due time, warm-up flag) of a stamped record, or None for a short payload.
pub fn read_stamp(buf: &[u8]) -> Option<(u64, bool)> {
    if buf.len() < 9 {
        return None;
    }
    Some((u64::from_le_bytes(buf[..8].try_into().ok()?), buf[8] != 0))
}
