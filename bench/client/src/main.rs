//! `tributary-bench`: one client binary for every broker in `bench/peers.py`, so each
//! broker is measured by the same code on the same machine. Each subcommand runs one
//! workload and prints one JSON object; the script starts and stops the brokers.

mod kafka;
mod nats;
mod reference;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Benchmark workloads for Tributary and its peers; prints JSON")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct KafkaArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value = "none")]
    compression: String,
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// Produce in transactions with this transactional.id, committing every --commit-ms.
    #[arg(long)]
    transactional_id: Option<String>,
    #[arg(long, default_value_t = 100)]
    commit_ms: u64,
}

impl KafkaArgs {
    fn producer(&self) -> kafka::ProducerSettings {
        kafka::ProducerSettings {
            bootstrap: self.bootstrap.clone(),
            compression: self.compression.clone(),
            linger_ms: self.linger_ms,
            transactional_id: self.transactional_id.clone(),
            commit_every: Duration::from_millis(self.commit_ms),
        }
    }
}

#[derive(clap::Args, Clone)]
struct NatsArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Publish acknowledgements outstanding per publisher.
    #[arg(long, default_value_t = 1024)]
    window: usize,
}

/// The fixed rate of a latency workload.
#[derive(clap::Args, Clone)]
struct PaceArgs {
    #[arg(long, default_value_t = 20)]
    rate_mb: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Sent and read but not counted.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
}

impl PaceArgs {
    fn pace(&self) -> stats::Pace {
        stats::Pace {
            rate_bytes_s: self.rate_mb * 1_000_000,
            seconds: self.seconds,
            warmup_seconds: self.warmup_seconds,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Creates a topic through the Kafka CreateTopics API.
    KafkaCreateTopic {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
    KafkaProduce {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    KafkaProduceMany {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value_t = 100)]
        producers: u32,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    KafkaConsume {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    KafkaLatency {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Deletes and recreates the benchmark stream.
    NatsResetStream {
        #[command(flatten)]
        nats: NatsArgs,
    },
    NatsProduce {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    NatsProduceMany {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, default_value_t = 100)]
        producers: u32,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    NatsConsume {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Messages per pull request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    NatsLatency {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Loopback TCP throughput of this machine.
    Loopback {
        #[arg(long, default_value_t = 4 << 30)]
        bytes: u64,
    },
    /// Sequential write and synced-append throughput of the disk holding `dir`.
    Disk {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        #[arg(long, default_value_t = 500)]
        appends: usize,
    },
}

fn create_topic(kafka: &KafkaArgs, partitions: i32, replication: i32) -> Result<Value> {
    let admin: AdminClient<DefaultClientContext> =
        kafka::base_config().set("bootstrap.servers", &kafka.bootstrap).create().context("admin client")?;
    let topic = NewTopic::new(&kafka.topic, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics([&topic], &options))?;
    for result in results {
        if let Err((name, code)) = result {
            anyhow::bail!("creating topic {name}: {code}");
        }
    }
    Ok(serde_json::json!({ "topic": kafka.topic, "partitions": partitions, "replication": replication }))
}

fn run(command: Command) -> Result<Value> {
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    Ok(match command {
        Command::KafkaCreateTopic { kafka, partitions, replication } => create_topic(&kafka, partitions, replication)?,
        Command::KafkaProduce { kafka, records } => {
            kafka::produce(&kafka.producer(), &kafka.topic, records, kafka.size)?
        }
        Command::KafkaProduceMany { kafka, producers, records } => {
            kafka::produce_many(&kafka.producer(), &kafka.topic, producers, records, kafka.size)?
        }
        Command::KafkaConsume { kafka, partitions, records } => {
            kafka::consume(&kafka.bootstrap, &kafka.topic, partitions, records)?
        }
        Command::KafkaLatency { kafka, partitions, pace } => {
            kafka::latency(&kafka.producer(), &kafka.topic, partitions, pace.pace(), kafka.size)?
        }
        Command::NatsResetStream { nats } => {
            runtime()?.block_on(nats::reset_stream(&nats.url))?;
            serde_json::json!({ "stream": "BENCH" })
        }
        Command::NatsProduce { nats, records } => {
            runtime()?.block_on(nats::produce(&nats.url, records, nats.size, nats.window))?
        }
        Command::NatsProduceMany { nats, producers, records } => {
            runtime()?.block_on(nats::produce_many(&nats.url, producers, records, nats.size, nats.window))?
        }
        Command::NatsConsume { nats, records, batch } => {
            runtime()?.block_on(nats::consume(&nats.url, records, batch))?
        }
        Command::NatsLatency { nats, pace } => {
            runtime()?.block_on(nats::latency(&nats.url, pace.pace(), nats.size, nats.window))?
        }
        Command::Loopback { bytes } => reference::loopback(bytes)?,
        Command::Disk { dir, bytes, appends } => reference::disk(&dir, bytes, appends)?,
    })
}

fn main() {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(value) => println!("{value}"),
        Err(e) => {
            eprintln!("tributary-bench: {e:#}");
            std::process::exit(1);
        }
    }
}
