//! Reading: Fetch and ListOffsets, each partition asked of its leader (one
//! request per leader, in parallel), and a [`Consumer`] that keeps a
//! position per partition and the high watermark the broker last reported.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::try_join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, ListOffsetsRequest};

use crate::client::{topic_name, Client};
use crate::connector::Connector;
use crate::error::{check, Result, Subject};
use crate::records::{decode_committed, AbortedTxn, ConsumedRecord, Decoded};

/// Which offset ListOffsets looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark: the offset the next record will get.
    Latest,
    /// The first offset whose timestamp is at or after this (ms since the epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => {
                assert!(ms >= 0, "a timestamp to look up is not negative");
                ms
            }
        }
    }
}

/// A ListOffsets answer for one partition; offset -1 when no record is that late.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedOffset {
    pub offset: i64,
    pub timestamp: i64,
}

/// Which records a fetch may see (Kafka's `isolation.level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Everything up to the high watermark, open and aborted transactions too.
    #[default]
    ReadUncommitted,
    /// Up to the last stable offset, without aborted transactions' records.
    ReadCommitted,
}

#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// How long the broker may hold a fetch that has less than `min_bytes`.
    pub max_wait: Duration,
    pub min_bytes: i32,
    /// Bytes per response and per partition.
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    pub isolation: Isolation,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 16 << 20,
            partition_max_bytes: 1 << 20,
            isolation: Isolation::ReadUncommitted,
        }
    }
}

/// One partition's part of a fetch answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedPartition {
    pub partition: i32,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// The last stable offset: below it every transaction is decided (the
    /// high watermark when none is open).
    pub last_stable_offset: i64,
    /// At or past the fetch offset, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// Where the next fetch of this partition starts: past the last whole
    /// batch returned (which may be past its last record), or the fetch offset.
    pub next_offset: i64,
}

impl<C: Connector> Client<C> {
    /// Looks up `spec` for each of `partitions` of `topic`.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<i32, ListedOffset>> {
        self.retrying(|| async {
            let groups = self.by_leader(topic, partitions).await?;
            let answers =
                try_join_all(groups.into_iter().map(|(leader, parts)| self.list_on(leader, topic, parts, spec)))
                    .await?;
            Ok(answers.into_iter().flatten().collect())
        })
        .await
    }

    async fn list_on(
        &self,
        leader: i32,
        topic: &str,
        partitions: Vec<i32>,
        spec: OffsetSpec,
    ) -> Result<Vec<(i32, ListedOffset)>> {
        let parts = partitions
            .iter()
            .map(|p| ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(spec.timestamp()))
            .collect();
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default().with_name(topic_name(topic)).with_partitions(parts)]);
        let response = self.broker(leader).await?.send(&request).await?;
        let mut out = Vec::with_capacity(partitions.len());
        for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
            check(p.error_code, || Subject::Partition(topic.to_string(), p.partition_index))?;
            out.push((p.partition_index, ListedOffset { offset: p.offset, timestamp: p.timestamp }));
        }
        Ok(out)
    }

    /// Fetches `topic` from each `(partition, offset)`. OFFSET_OUT_OF_RANGE
    /// (an offset below the log start or past the end) is an error naming the
    /// partition; the caller decides where to go (ListOffsets).
    pub async fn fetch(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        options: &FetchOptions,
    ) -> Result<Vec<FetchedPartition>> {
        let partitions: Vec<i32> = positions.iter().map(|(p, _)| *p).collect();
        self.retrying(|| async {
            let groups = self.by_leader(topic, &partitions).await?;
            let asked = groups.into_iter().map(|(leader, parts)| {
                let at: Vec<(i32, i64)> = positions.iter().filter(|(p, _)| parts.contains(p)).copied().collect();
                self.fetch_on(leader, topic, at, options)
            });
            Ok(try_join_all(asked).await?.into_iter().flatten().collect())
        })
        .await
    }

    async fn fetch_on(
        &self,
        leader: i32,
        topic: &str,
        positions: Vec<(i32, i64)>,
        options: &FetchOptions,
    ) -> Result<Vec<FetchedPartition>> {
        let parts = positions
            .iter()
            .map(|(p, offset)| {
                FetchPartition::default()
                    .with_partition(*p)
                    .with_fetch_offset(*offset)
                    .with_partition_max_bytes(options.partition_max_bytes)
            })
            .collect();
        let max_wait_ms = i32::try_from(options.max_wait.as_millis()).unwrap_or(i32::MAX);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(options.min_bytes)
            .with_max_bytes(options.max_bytes)
            .with_isolation_level(match options.isolation {
                Isolation::ReadUncommitted => 0,
                Isolation::ReadCommitted => 1,
            })
            .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(parts)]);
        let connection = self.broker(leader).await?;
        let version = connection.version(ApiKey::Fetch)?;
        let response = connection.send_at(version, &request, options.max_wait).await?;
        check(response.error_code, || Subject::Request(ApiKey::Fetch))?;
        let mut out = Vec::with_capacity(positions.len());
        for p in response.responses.into_iter().flat_map(|t| t.partitions) {
            check(p.error_code, || Subject::Partition(topic.to_string(), p.partition_index))?;
            let from = positions.iter().find(|(index, _)| *index == p.partition_index).map_or(0, |(_, o)| *o);
            let aborted: Vec<AbortedTxn> = p
                .aborted_transactions
                .iter()
                .flatten()
                .map(|a| AbortedTxn { producer_id: a.producer_id.0, first_offset: a.first_offset })
                .collect();
            let decoded = match p.records {
                Some(data) => decode_committed(topic, p.partition_index, data, from, &aborted)?,
                None => Decoded::default(),
            };
            out.push(FetchedPartition {
                partition: p.partition_index,
                high_watermark: p.high_watermark,
                log_start_offset: p.log_start_offset,
                last_stable_offset: p.last_stable_offset,
                records: decoded.records,
                next_offset: decoded.next_offset.map_or(from, |next| next.max(from)),
            });
        }
        Ok(out)
    }
}

/// Reads a topic's partitions from given positions, following each
/// partition's high watermark.
pub struct Consumer<C: Connector> {
    client: Client<C>,
    topic: String,
    options: FetchOptions,
    /// The next offset to read, per partition.
    positions: BTreeMap<i32, i64>,
    /// The high watermark of the last answer, per partition.
    high_watermarks: BTreeMap<i32, i64>,
}

impl<C: Connector> Consumer<C> {
    pub fn new(client: Client<C>, topic: &str, positions: BTreeMap<i32, i64>, options: FetchOptions) -> Consumer<C> {
        assert!(!positions.is_empty(), "a consumer reads at least one partition");
        Consumer { client, topic: topic.to_string(), options, positions, high_watermarks: BTreeMap::new() }
    }

    pub fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.positions
    }

    pub fn high_watermarks(&self) -> &BTreeMap<i32, i64> {
        &self.high_watermarks
    }

    pub fn seek(&mut self, partition: i32, offset: i64) {
        assert!(self.positions.contains_key(&partition), "seek within the consumer's partitions");
        self.positions.insert(partition, offset);
    }

    /// Whether every partition was at its high watermark in the last answer.
    pub fn caught_up(&self) -> bool {
        self.positions.iter().all(|(p, at)| self.high_watermarks.get(p).is_some_and(|hw| at >= hw))
    }

    /// One fetch from every partition's position; positions move past what it returns.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>> {
        let positions: Vec<(i32, i64)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        let fetched = self.client.fetch(&self.topic, &positions, &self.options).await?;
        let mut records = Vec::new();
        for part in fetched {
            self.high_watermarks.insert(part.partition, part.high_watermark);
            self.positions.insert(part.partition, part.next_offset);
            records.extend(part.records);
        }
        Ok(records)
    }
}
