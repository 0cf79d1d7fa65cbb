//! Latency percentiles and the record payloads every client sends.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// Text-like payload (hex digits): compressible by lz4 about as much as JSON events are not,
/// which keeps the compressed workload honest. The same bytes go to every broker.
pub fn payload(size: usize) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            // xorshift: reproducible filler, no rand dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            HEX[(state & 15) as usize]
        })
        .collect()
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
