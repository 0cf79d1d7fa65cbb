//! The same workloads against NATS JetStream through async-nats, the NATS team's Rust client.
//! A stream is one ordered log, JetStream's nearest thing to a partition; "partitions" become
//! subjects of one file-backed stream with one replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream::{self, consumer, stream, Context};
use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::Value;

use crate::stats::{self, Latencies, Pace, Payloads};

const STREAM: &str = "BENCH";
/// How long any one workload may run before it is reported as failed.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(600);

async fn connect(url: &str) -> Result<Context> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to {url}"))?;
    Ok(jetstream::new(client))
}

/// A fresh stream for each workload, so every run starts from an empty log.
pub async fn reset_stream(url: &str) -> Result<()> {
    let js = connect(url).await?;
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["bench.>".to_string()],
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("creating stream: {e}"))?;
    Ok(())
}

/// Publishes `count` records keeping up to `window` acknowledgements outstanding, the
/// JetStream counterpart of librdkafka's pipelined, batched produce.
async fn publish(
    js: &Context,
    subject: String,
    count: u64,
    payloads: &Payloads,
    first: u64,
    window: usize,
) -> Result<Latencies> {
    let mut in_flight = FuturesUnordered::new();
    let mut latencies = Latencies::with_capacity(count as usize);
    for n in 0..count {
        if in_flight.len() >= window {
            let (sent, ack): (Instant, Result<_, _>) = in_flight.next().await.expect("window is not empty");
            ack.map_err(|e| anyhow!("publish not acknowledged: {e}"))?;
            latencies.push_micros(sent.elapsed().as_micros() as u64);
        }
        let sent = Instant::now();
        let payload = Bytes::copy_from_slice(payloads.get(first + n));
        let ack = js.publish(subject.clone(), payload).await.map_err(|e| anyhow!("publish: {e}"))?;
        in_flight.push(async move { (sent, ack.await) });
    }
    while let Some((sent, ack)) = in_flight.next().await {
        ack.map_err(|e| anyhow!("publish not acknowledged: {e}"))?;
        latencies.push_micros(sent.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

pub async fn produce(url: &str, records: u64, size: usize, window: usize) -> Result<Value> {
    let js = connect(url).await?;
    let payloads = Payloads::new(size);
    let started = Instant::now();
    let latencies = publish(&js, "bench.0".to_string(), records, &payloads, 0, window).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(stats::throughput(records, records * size as u64, secs, Some(latencies)))
}

/// `producers` connections, producer i publishing to subject `bench.i`, all at once.
pub async fn produce_many(url: &str, producers: u32, records: u64, size: usize, window: usize) -> Result<Value> {
    let per_producer = records / producers as u64;
    let payloads = Arc::new(Payloads::new(size));
    let mut contexts = Vec::new();
    for _ in 0..producers {
        contexts.push(connect(url).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = contexts
        .into_iter()
        .enumerate()
        .map(|(i, js)| {
            let payloads = payloads.clone();
            let first = i as u64 * per_producer;
            tokio::spawn(
                async move { publish(&js, format!("bench.{i}"), per_producer, &payloads, first, window).await },
            )
        })
        .collect();
    let mut all = Latencies::with_capacity(records as usize);
    for task in tasks {
        all.extend(task.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let total = per_producer * producers as u64;
    let mut figures = stats::throughput(total, total * size as u64, secs, Some(all));
    figures["producers"] = producers.into();
    Ok(figures)
}

/// An ephemeral pull consumer from the start of the stream, without per-message acks (a
/// Kafka consumer does not acknowledge records either).
async fn reader(js: &Context, batch: usize) -> Result<impl futures::Stream<Item = Result<jetstream::Message>>> {
    let stream = js.get_stream(STREAM).await.map_err(|e| anyhow!("stream: {e}"))?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("creating consumer: {e}"))?;
    let messages =
        consumer.stream().max_messages_per_batch(batch).messages().await.map_err(|e| anyhow!("pulling: {e}"))?;
    Ok(messages.map(|m| m.map_err(|e| anyhow!("pull failed: {e}"))))
}

pub async fn consume(url: &str, records: u64, batch: usize) -> Result<Value> {
    let js = connect(url).await?;
    let started = Instant::now();
    let messages = reader(&js, batch).await?;
    futures::pin_mut!(messages);
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < records {
        let Ok(next) = tokio::time::timeout_at((started + WORKLOAD_LIMIT).into(), messages.next()).await else {
            bail!("consumed {got} of {records} records within {WORKLOAD_LIMIT:?}");
        };
        let message = next.ok_or_else(|| anyhow!("consumer ended after {got} records"))??;
        got += 1;
        bytes += message.payload.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(stats::throughput(got, bytes, secs, None))
}

/// End-to-end latency at a fixed rate, stamped and counted as in the Kafka workload.
pub async fn latency(url: &str, pace: Pace, size: usize, window: usize) -> Result<Value> {
    let (warmup, total, interval_ns) = pace.schedule(size);
    let js = connect(url).await?;
    let messages = reader(&js, 1000).await?;
    let read = tokio::spawn(async move {
        futures::pin_mut!(messages);
        let mut e2e = Latencies::with_capacity(total as usize);
        let deadline = tokio::time::Instant::now() + WORKLOAD_LIMIT;
        for got in 0..total {
            let Ok(next) = tokio::time::timeout_at(deadline, messages.next()).await else {
                bail!("read {got} of {total} latency records");
            };
            let message = next.ok_or_else(|| anyhow!("consumer ended after {got} records"))??;
            let now = stats::unix_nanos();
            if let Some((due, false)) = stats::read_stamp(&message.payload) {
                e2e.push_micros(now.saturating_sub(due) / 1000);
            }
        }
        Ok(e2e)
    });

    let publisher = connect(url).await?;
    let payloads = Payloads::new(size);
    let mut in_flight = FuturesUnordered::new();
    let mut acks = Latencies::with_capacity(total as usize);
    let (start, start_unix) = (Instant::now(), stats::unix_nanos());
    for i in 0..total {
        if let Some(early) = Pace::delay_before(interval_ns, i, start) {
            tokio::time::sleep(early).await;
        }
        while in_flight.len() >= window {
            let (sent, warm, ack): (Instant, bool, Result<_, _>) = in_flight.next().await.expect("window is not empty");
            ack.map_err(|e| anyhow!("publish not acknowledged: {e}"))?;
            if !warm {
                acks.push_micros(sent.elapsed().as_micros() as u64);
            }
        }
        let mut payload = BytesMut::from(payloads.get(i));
        stats::stamp(&mut payload, start_unix + i * interval_ns, i < warmup);
        let sent = Instant::now();
        let ack = publisher.publish("bench.0", payload.freeze()).await.map_err(|e| anyhow!("publish: {e}"))?;
        let warm = i < warmup;
        in_flight.push(async move { (sent, warm, ack.await) });
    }
    let send_secs = start.elapsed().as_secs_f64();
    while let Some((sent, warm, ack)) = in_flight.next().await {
        ack.map_err(|e| anyhow!("publish not acknowledged: {e}"))?;
        if !warm {
            acks.push_micros(sent.elapsed().as_micros() as u64);
        }
    }
    let e2e = read.await??;
    Ok(pace.figures(size, send_secs, e2e, acks))
}
