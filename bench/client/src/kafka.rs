//! Workloads against any Kafka-compatible broker through librdkafka (rdkafka), the engine
//! under most non-Java Kafka clients. Every broker gets the same client configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;

use crate::stats::{self, Latencies, Pace};

/// How long any one workload may run before it is reported as failed.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct ProducerSettings {
    pub bootstrap: String,
    pub compression: String,
    pub linger_ms: u32,
    /// Transactions: the producer commits every `commit_every`.
    pub transactional_id: Option<String>,
    pub commit_every: Duration,
}

impl ProducerSettings {
    fn client_config(&self) -> ClientConfig {
        let mut config = base_config();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", &self.compression)
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "120000");
        if let Some(id) = &self.transactional_id {
            config.set("transactional.id", id).set("transaction.timeout.ms", "120000");
        }
        config
    }
}

/// Collects send-to-acknowledgement latencies from librdkafka's delivery reports.
#[derive(Default)]
struct Deliveries {
    latencies: Mutex<Latencies>,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        match result {
            Ok(_) => self.0.latencies.lock().unwrap().push_micros(sent.elapsed().as_micros() as u64),
            Err((error, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                self.0.first_error.lock().unwrap().get_or_insert_with(|| error.to_string());
            }
        }
    }
}

fn producer(settings: &ProducerSettings, deliveries: &Arc<Deliveries>) -> Result<ThreadedProducer<DeliveryContext>> {
    settings.client_config().create_with_context(DeliveryContext(deliveries.clone())).context("creating producer")
}

/// Enqueues one record, waiting while librdkafka's queue is full. The latency clock starts
/// when the record is accepted, as librdkafka's own `msg.latency()` does.
fn send(
    producer: &ThreadedProducer<DeliveryContext>,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: &[u8],
) -> Result<()> {
    let mut record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now())).key(key).payload(payload);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
                record.delivery_opaque = Box::new(Instant::now());
            }
            Err((e, _)) => bail!("produce failed: {e}"),
        }
    }
}

fn finish(producer: &ThreadedProducer<DeliveryContext>, deliveries: &Deliveries) -> Result<()> {
    producer.flush(WORKLOAD_LIMIT).context("flushing producer")?;
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} records failed: {}", deliveries.first_error.lock().unwrap().clone().unwrap_or_default());
    }
    Ok(())
}

/// `records` records of `size` bytes with keys spread over 1,024 values (so over every
/// partition), as fast as the client can.
pub fn produce(settings: &ProducerSettings, topic: &str, records: u64, size: usize) -> Result<Value> {
    let deliveries = Arc::new(Deliveries::default());
    let producer = producer(settings, &deliveries)?;
    let payloads = stats::Payloads::new(size);
    let keys: Vec<Vec<u8>> = (0..1024).map(|k| format!("key-{k}").into_bytes()).collect();
    let transactional = settings.transactional_id.is_some();
    if transactional {
        producer.init_transactions(WORKLOAD_LIMIT).context("init_transactions")?;
        producer.begin_transaction().context("begin_transaction")?;
    }
    let started = Instant::now();
    let (mut last_commit, mut commits) = (Instant::now(), 0u64);
    for i in 0..records {
        send(&producer, topic, None, &keys[(i % 1024) as usize], payloads.get(i))?;
        if transactional && last_commit.elapsed() >= settings.commit_every {
            producer.commit_transaction(WORKLOAD_LIMIT).context("commit_transaction")?;
            producer.begin_transaction().context("begin_transaction")?;
            (last_commit, commits) = (Instant::now(), commits + 1);
        }
    }
    if transactional {
        producer.commit_transaction(WORKLOAD_LIMIT).context("commit_transaction")?;
        commits += 1;
    }
    finish(&producer, &deliveries)?;
    let secs = started.elapsed().as_secs_f64();
    let latencies = std::mem::take(&mut *deliveries.latencies.lock().unwrap());
    let mut figures = stats::throughput(records, records * size as u64, secs, Some(latencies));
    if transactional {
        figures["transactions"] = commits.into();
    }
    Ok(figures)
}

/// `producers` producer instances (each its own connection), producer i writing
/// `records / producers` records to partition i, all at once.
pub fn produce_many(
    settings: &ProducerSettings,
    topic: &str,
    producers: u32,
    records: u64,
    size: usize,
) -> Result<Value> {
    let per_producer = records / producers as u64;
    let payloads = Arc::new(stats::Payloads::new(size));
    let start = Arc::new(std::sync::Barrier::new(producers as usize + 1));
    let mut handles = Vec::new();
    for i in 0..producers {
        let (settings, topic, payloads, start) = (settings.clone(), topic.to_string(), payloads.clone(), start.clone());
        handles.push(std::thread::spawn(move || -> Result<Latencies> {
            let deliveries = Arc::new(Deliveries::default());
            let producer = producer(&settings, &deliveries);
            start.wait();
            let producer = producer?;
            let key = format!("producer-{i}").into_bytes();
            for n in 0..per_producer {
                send(&producer, &topic, Some(i as i32), &key, payloads.get(i as u64 * per_producer + n))?;
            }
            finish(&producer, &deliveries)?;
            let latencies = std::mem::take(&mut *deliveries.latencies.lock().unwrap());
            Ok(latencies)
        }));
    }
    start.wait();
    let started = Instant::now();
    let mut all = Latencies::with_capacity(records as usize);
    for handle in handles {
        all.extend(handle.join().expect("producer thread panicked")?);
    }
    let secs = started.elapsed().as_secs_f64();
    let total = per_producer * producers as u64;
    let mut figures = stats::throughput(total, total * size as u64, secs, Some(all));
    figures["producers"] = producers.into();
    Ok(figures)
}

/// A librdkafka config with the settings of `TRIBUTARY_BENCH_KAFKA_OPTIONS`
/// (`key=value;key=value`): how a run reaches a TLS or SASL listener.
pub fn base_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    let options = std::env::var("TRIBUTARY_BENCH_KAFKA_OPTIONS").unwrap_or_default();
    for (key, value) in options.split(';').filter_map(|kv| kv.split_once('=')) {
        config.set(key.trim(), value.trim());
    }
    config
}

fn consumer(bootstrap: &str, group: &str) -> Result<BaseConsumer> {
    base_config()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // librdkafka's default, said aloud: transactional workloads are read as Kafka's EOS readers do.
        .set("isolation.level", "read_committed")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        .create()
        .context("creating consumer")
}

fn assign_from_start(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<()> {
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    Ok(())
}

/// Reads `records` records from the start of every partition.
pub fn consume(bootstrap: &str, topic: &str, partitions: i32, records: u64) -> Result<Value> {
    let consumer = consumer(bootstrap, "bench-consume")?;
    assign_from_start(&consumer, topic, partitions)?;
    let started = Instant::now();
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < records {
        if started.elapsed() > WORKLOAD_LIMIT {
            bail!("consumed {got} of {records} records within {WORKLOAD_LIMIT:?}");
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                got += 1;
                bytes += message.payload_len() as u64;
            }
            Some(Err(e)) => bail!("consume failed: {e}"),
            None => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(stats::throughput(got, bytes, secs, None))
}

/// End-to-end latency at a fixed rate: a paced producer stamps each record with the time it
/// was due, a consumer in the same process subtracts it on receipt. The first `warmup`
/// records are sent and read but not counted.
pub fn latency(settings: &ProducerSettings, topic: &str, partitions: i32, pace: Pace, size: usize) -> Result<Value> {
    let (warmup, total, interval_ns) = pace.schedule(size);
    let consumer = consumer(&settings.bootstrap, "bench-latency")?;
    assign_from_start(&consumer, topic, partitions)?;
    let reader = std::thread::spawn(move || -> Result<Latencies> {
        let mut e2e = Latencies::with_capacity(total as usize);
        let mut got = 0u64;
        let started = Instant::now();
        while got < total {
            if started.elapsed() > WORKLOAD_LIMIT {
                bail!("read {got} of {total} latency records");
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let now = stats::unix_nanos();
                    got += 1;
                    if let Some((due, false)) = message.payload().and_then(stats::read_stamp) {
                        e2e.push_micros(now.saturating_sub(due) / 1000);
                    }
                }
                Some(Err(e)) => bail!("consume failed: {e}"),
                None => {}
            }
        }
        Ok(e2e)
    });

    let deliveries = Arc::new(Deliveries::default());
    let producer = producer(settings, &deliveries)?;
    let keys: Vec<Vec<u8>> = (0..1024).map(|k| format!("key-{k}").into_bytes()).collect();
    let payloads = stats::Payloads::new(size);
    let mut payload = vec![0u8; size];
    let (start, start_unix) = (Instant::now(), stats::unix_nanos());
    for i in 0..total {
        if let Some(early) = Pace::delay_before(interval_ns, i, start) {
            std::thread::sleep(early);
        }
        if i == warmup {
            deliveries.latencies.lock().unwrap().clear();
        }
        payload.copy_from_slice(payloads.get(i));
        stats::stamp(&mut payload, start_unix + i * interval_ns, i < warmup);
        send(&producer, topic, None, &keys[(i % 1024) as usize], &payload)?;
    }
    let send_secs = start.elapsed().as_secs_f64();
    finish(&producer, &deliveries)?;
    let e2e = reader.join().expect("reader thread panicked")?;
    let acks = std::mem::take(&mut *deliveries.latencies.lock().unwrap());
    Ok(pace.figures(size, send_secs, e2e, acks))
}
