//! Physical references measured in the same run: what the loopback network and the data
//! disk can do at most, so broker figures can be read against the machine.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::stats::Latencies;

/// One TCP connection over 127.0.0.1, 128 KiB writes, reader in another thread.
pub fn loopback(total_bytes: u64) -> Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut buf = vec![0u8; 128 * 1024];
        let mut got = 0u64;
        loop {
            let n = socket.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    let chunk = vec![7u8; 128 * 1024];
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr)?;
    let mut sent = 0u64;
    while sent < total_bytes {
        socket.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    drop(socket);
    let got = reader.join().expect("reader thread")?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(got == sent, "loopback reader got {got} of {sent} bytes");
    Ok(json!({ "loopback_tcp_mb_s": sent as f64 / secs / 1e6 }))
}

/// Sequential 1 MiB writes then one fsync (the disk's streaming rate), and 64 KiB appends
/// each followed by fdatasync (what a broker that syncs every batch pays per batch).
pub fn disk(dir: &Path, total_bytes: u64, synced_appends: usize) -> Result<Value> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bench-disk-reference");
    let block = vec![0x5au8; 1024 * 1024];
    let started = Instant::now();
    {
        let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut written = 0u64;
        while written < total_bytes {
            file.write_all(&block)?;
            written += block.len() as u64;
        }
        file.sync_all()?;
    }
    let sequential = total_bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
    std::fs::remove_file(&path)?;

    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut latencies = Latencies::with_capacity(synced_appends);
    let started = Instant::now();
    for _ in 0..synced_appends {
        let t = Instant::now();
        file.write_all(&block[..64 * 1024])?;
        file.sync_data()?;
        latencies.push_micros(t.elapsed().as_micros() as u64);
    }
    let synced_mb_s = (synced_appends * 64 * 1024) as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(json!({
        "disk_sequential_write_mb_s": sequential,
        "disk_synced_64k_appends_mb_s": synced_mb_s,
        "disk_fdatasync_64k": latencies.summary(),
    }))
}
