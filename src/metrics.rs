//! Prometheus metrics (`prometheus-client`) and the HTTP endpoint that serves
//! them with `/health`.
//!
//! Counted on the request path: bytes and records in and out per topic, and a
//! latency histogram per API. Computed when scraped: topic and partition
//! counts, and consumer group lag (high watermark minus committed offset).
//!
//! `routes` makes the `/metrics` and `/health` routes of the HTTP server
//! (`http.rs`), which bounds connections, request heads and time.

use std::sync::Arc;

use hyper::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tributary_actors::{Broker, GroupAnswer, GroupRequest, ListGroups};

use crate::http::{respond, Router};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    /// Response bytes encoded and not yet taken by clients (kafka::response_memory).
    pub response_bytes_queued: Gauge,
    topics: Gauge,
    partitions: Gauge,
    under_replicated: Gauge,
    group_lag: Family<LagLabel, Gauge>,
    /// Appends failed on storage, from `partition_actor::STORAGE_ERRORS` at each scrape.
    storage_errors: Counter,
    /// Transactions open on the coordinators of this broker.
    pub transactions_open: Gauge,
    /// Transactions this broker's coordinators aborted because they passed their timeout.
    pub transactions_timed_out: Counter,
    /// Partitions here whose last stable offset is below their high watermark (an open transaction holds them).
    partitions_unstable: Gauge,
    /// SASL authentications that failed (wrong password, unknown user, bad message).
    pub authentication_failures: Counter,
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
            response_bytes_queued: Gauge::default(),
            storage_errors: Counter::default(),
            topics: Gauge::default(),
            partitions: Gauge::default(),
            under_replicated: Gauge::default(),
            group_lag: Family::default(),
            transactions_open: Gauge::default(),
            transactions_timed_out: Counter::default(),
            partitions_unstable: Gauge::default(),
            authentication_failures: Counter::default(),
        };
        registry.register("bytes_in", "Record batch bytes produced, per topic", m.bytes_in.clone());
        registry.register("records_in", "Records produced, per topic", m.records_in.clone());
        registry.register("bytes_out", "Record batch bytes fetched, per topic", m.bytes_out.clone());
        registry.register("records_out", "Records fetched, per topic (whole batches)", m.records_out.clone());
        registry.register("request_seconds", "Request handling time, per Kafka API", m.request_seconds.clone());
        registry.register("connections", "Open client connections", m.connections.clone());
        registry.register(
            "storage_errors",
            "Appends that failed on storage (a full disk, an LMDB map that cannot grow)",
            m.storage_errors.clone(),
        );
        registry.register(
            "response_bytes_queued",
            "Response bytes encoded and not yet taken by clients (limits.max_queued_response_bytes)",
            m.response_bytes_queued.clone(),
        );
        registry.register("topics", "Topics", m.topics.clone());
        registry.register("partitions", "Partitions led by this broker", m.partitions.clone());
        registry.register(
            "under_replicated_partitions",
            "Partitions led by this broker with fewer in-sync replicas than replicas",
            m.under_replicated.clone(),
        );
        registry.register("consumer_group_lag", "High watermark minus committed offset", m.group_lag.clone());
        registry.register("transactions_open", "Transactions open on this broker's coordinators", m.transactions_open.clone());
        registry.register(
            "transactions_timed_out",
            "Transactions aborted by their coordinator for passing their transaction.timeout.ms",
            m.transactions_timed_out.clone(),
        );
        registry.register(
            "partitions_unstable",
            "Partitions led here whose last stable offset is below the high watermark (open transactions)",
            m.partitions_unstable.clone(),
        );
        registry.register(
            "authentication_failures",
            "SASL authentications that failed (wrong password, unknown user, malformed exchange)",
            m.authentication_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records one request's handling time under its API's name.
    pub fn observe_request(&self, api: kafka_protocol::messages::ApiKey, took: std::time::Duration) {
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
        let unstable = snapshot
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .map(|p| *p.offsets.borrow())
            .filter(|o| o.leader_epoch.is_some() && o.last_stable_offset < o.high_watermark)
            .count();
        self.partitions_unstable.set(unstable as i64);
        let failed = tributary_actors::partition_actor::STORAGE_ERRORS.load(std::sync::atomic::Ordering::Relaxed);
        self.storage_errors.inc_by(failed.saturating_sub(self.storage_errors.get()));
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

/// `GET /metrics` (Prometheus text, computed when scraped) and `GET /health`.
pub fn routes(router: Router, metrics: Arc<Metrics>, broker: Broker, cluster: crate::cluster::Cluster) -> Router {
    router
        .get("/metrics", move |_| {
            let (metrics, broker, cluster) = (metrics.clone(), broker.clone(), cluster.clone());
            async move { respond(StatusCode::OK, OPENMETRICS, metrics.render(&broker, &cluster).await) }
        })
        .get("/health", |_| async { respond(StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n") })
}
