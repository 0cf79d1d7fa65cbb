//! Prometheus metrics (`prometheus-client`) and the HTTP endpoint that serves
//! them with `/health`.
//!
//! Counted on the request path: bytes and records in and out per topic, and a
//! latency histogram per API. Computed when scraped: topic and partition
//! counts, and consumer group lag (high watermark minus committed offset).
//!
//! The endpoint answers `GET /metrics` and `GET /health` only. It is a minimal
//! HTTP/1.1 responder on tokio, bounded in request size and time; two fixed
//! routes do not justify an HTTP stack in the build.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tributary_actors::{Broker, GroupAnswer, GroupRequest, ListGroups};

/// Largest HTTP request head read from a scraper.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabel {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

type LatencyFamily = Family<ApiLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    pub bytes_in: Family<TopicLabel, Counter>,
    pub records_in: Family<TopicLabel, Counter>,
    pub bytes_out: Family<TopicLabel, Counter>,
    pub records_out: Family<TopicLabel, Counter>,
    pub request_seconds: LatencyFamily,
    pub connections: Gauge,
    topics: Gauge,
    partitions: Gauge,
    under_replicated: Gauge,
    group_lag: Family<LagLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tributary");
        let m = Metrics {
            registry: Registry::default(),
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            connections: Gauge::default(),
            topics: Gauge::default(),
            partitions: Gauge::default(),
            under_replicated: Gauge::default(),
            group_lag: Family::default(),
        };
        registry.register("bytes_in", "Record batch bytes produced, per topic", m.bytes_in.clone());
        registry.register("records_in", "Records produced, per topic", m.records_in.clone());
        registry.register("bytes_out", "Record batch bytes fetched, per topic", m.bytes_out.clone());
        registry.register("records_out", "Records fetched, per topic (whole batches)", m.records_out.clone());
        registry.register("request_seconds", "Request handling time, per Kafka API", m.request_seconds.clone());
        registry.register("connections", "Open client connections", m.connections.clone());
        registry.register("topics", "Topics", m.topics.clone());
        registry.register("partitions", "Partitions led by this broker", m.partitions.clone());
        registry.register(
            "under_replicated_partitions",
            "Partitions led by this broker with fewer in-sync replicas than replicas",
            m.under_replicated.clone(),
        );
        registry.register("consumer_group_lag", "High watermark minus committed offset", m.group_lag.clone());
        Metrics { registry, ..m }
    }

    /// Records one request's handling time under its API's name.
    pub fn observe_request(&self, api: kafka_protocol::messages::ApiKey, took: Duration) {
        let label = ApiLabel { api: format!("{api:?}") };
        self.request_seconds.get_or_create(&label).observe(took.as_secs_f64());
    }

    pub fn topic(&self, topic: &str) -> TopicLabel {
        TopicLabel { topic: topic.to_string() }
    }

    /// Refreshes the gauges computed from broker state, then encodes everything.
    pub async fn render(&self, broker: &Broker, cluster: &crate::cluster::Cluster) -> String {
        let snapshot = broker.metadata();
        self.topics.set(snapshot.topics.len() as i64);
        let metadata = cluster.metadata();
        let led: Vec<_> = metadata
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.leader == Some(cluster.node_id()))
            .collect();
        self.partitions.set(led.len() as i64);
        self.under_replicated.set(led.iter().filter(|p| p.isr.len() < p.replicas.len()).count() as i64);
        self.group_lag.clear();
        if let Ok(groups) = broker.groups().send(ListGroups).await {
            for (group, _, _) in groups {
                let Ok(Some(GroupAnswer::Fetched(0, offsets))) =
                    broker.group_request(&group, false, GroupRequest::Fetch(None)).await
                else {
                    continue;
                };
                for ((topic, partition), committed) in offsets {
                    let (Some(committed), Some(handle)) = (committed, snapshot.partition(&topic, partition)) else {
                        continue;
                    };
                    let high_watermark = handle.offsets.borrow().high_watermark();
                    let label = LagLabel { group: group.clone(), topic, partition: partition.to_string() };
                    self.group_lag.get_or_create(&label).set((high_watermark - committed.offset).max(0));
                }
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Serves `/metrics` and `/health` on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    broker: Broker,
    cluster: crate::cluster::Cluster,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listening");
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, broker, cluster) = (metrics.clone(), broker.clone(), cluster.clone());
        actix::spawn(async move {
            let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let path = read_request_path(&mut stream).await?;
                let (status, kind, body) = match path.as_deref() {
                    Some("/metrics") => (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics.render(&broker, &cluster).await,
                    ),
                    Some("/health") => ("200 OK", "application/json", "{\"status\":\"ok\"}\n".to_string()),
                    Some(_) => ("404 Not Found", "text/plain", "not found: use /metrics or /health\n".to_string()),
                    None => ("400 Bad Request", "text/plain", "only GET requests are served\n".to_string()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            if let Ok(Err(e)) = answered {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

/// Reads the request head (bounded) and returns the path of a GET, or None.
async fn read_request_path(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => Ok(Some(path.split('?').next().unwrap_or(path).to_string())),
        _ => Ok(None),
    }
}
