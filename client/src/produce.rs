//! Producing: one batch to one partition per call, to its leader, retried
//! through leader changes.
//!
//! The idempotent producer (KIP-98) takes a producer id once
//! (InitProducerId) and numbers each partition's batches. A retried batch is
//! the same bytes with the same sequence, so a broker that already wrote it
//! answers with its first offsets instead of writing it twice. Sends to one
//! partition take turns (one batch in flight per partition), which keeps the
//! sequence rules simple; partitions proceed in parallel. When a send fails
//! for good, whether the broker wrote it is unknown, so the producer takes a
//! new producer id before its next send rather than reuse the sequence.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, ProduceRequest, ProduceResponse};
use kafka_protocol::records::Compression;
use tokio::sync::Mutex;

use crate::client::{topic_name, Client};
use crate::connector::Connector;
use crate::error::{check, check_message, kafka_error, Result, Subject};
use crate::records::{batch_len, encode_batch, NewRecord, Sequenced};

/// How many replicas must have a batch before the broker answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// No answer at all: the send returns once the request is written.
    None,
    Leader,
    /// Every in-sync replica.
    All,
}

impl Acks {
    fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProducerConfig {
    pub acks: Acks,
    pub compression: Compression,
    /// How long the broker may wait for replicas (the request's `timeout_ms`).
    pub ack_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig { acks: Acks::All, compression: Compression::None, ack_timeout: Duration::from_secs(30) }
    }
}

pub struct Producer<C: Connector> {
    client: Client<C>,
    config: ProducerConfig,
    idempotence: Option<Idempotence>,
}

/// The idempotent producer's state.
#[derive(Default)]
struct Idempotence {
    /// (producer id, epoch); `None` until InitProducerId, and after a send failed for good.
    producer: RefCell<Option<(i64, i16)>>,
    /// Per partition: the next sequence and the producer it belongs to; its
    /// lock is the partition's turn.
    partitions: RefCell<HashMap<(String, i32), Turn>>,
}

/// A partition's sequence behind the lock that is its turn to send.
type Turn = Rc<Mutex<Sequence>>;

#[derive(Default)]
struct Sequence {
    producer: (i64, i16),
    next: i32,
}

impl<C: Connector> Producer<C> {
    /// A plain producer: a retried batch may be written twice.
    pub fn new(client: Client<C>, config: ProducerConfig) -> Producer<C> {
        Producer { client, config, idempotence: None }
    }

    /// An idempotent producer; its acks are always [`Acks::All`], as Kafka requires.
    pub fn idempotent(client: Client<C>, config: ProducerConfig) -> Producer<C> {
        let config = ProducerConfig { acks: Acks::All, ..config };
        Producer { client, config, idempotence: Some(Idempotence::default()) }
    }

    pub fn client(&self) -> &Client<C> {
        &self.client
    }

    /// Writes `records` as one batch to `topic`-`partition`: its base offset,
    /// or `None` with [`Acks::None`].
    pub async fn send(&self, topic: &str, partition: i32, records: &[NewRecord]) -> Result<Option<i64>> {
        match &self.idempotence {
            None => {
                let batch = encode_batch(records, self.config.compression, self.client.now_ms(), None)?;
                self.send_batch(topic, partition, batch, None).await
            }
            Some(state) => self.send_sequenced(state, topic, partition, records).await,
        }
    }

    /// The producer id, asked for (InitProducerId) when there is none.
    async fn producer_id(&self, state: &Idempotence) -> Result<(i64, i16)> {
        let known = *state.producer.borrow();
        if let Some(producer) = known {
            return Ok(producer);
        }
        // No transactional id: an idempotent producer only (the default is an empty id, which is refused).
        let request = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
        let response = self
            .client
            .retrying(|| async {
                let response = self.client.any_broker().await?.send(&request).await?;
                check(response.error_code, || Subject::Request(ApiKey::InitProducerId))?;
                Ok(response)
            })
            .await?;
        let producer = (response.producer_id.0, response.producer_epoch);
        *state.producer.borrow_mut() = Some(producer);
        Ok(producer)
    }

    async fn send_sequenced(
        &self,
        state: &Idempotence,
        topic: &str,
        partition: i32,
        records: &[NewRecord],
    ) -> Result<Option<i64>> {
        let turn = state.partitions.borrow_mut().entry((topic.to_string(), partition)).or_default().clone();
        let mut sequence = turn.lock().await;
        let count = batch_len(records)?;
        if sequence.next > i32::MAX - count {
            // Sequences do not wrap here: a new producer id starts them at 0.
            *state.producer.borrow_mut() = None;
        }
        let producer = self.producer_id(state).await?;
        if sequence.producer != producer {
            *sequence = Sequence { producer, next: 0 };
        }
        let sequenced = Sequenced { producer_id: producer.0, producer_epoch: producer.1, base_sequence: sequence.next };
        let batch = encode_batch(records, self.config.compression, self.client.now_ms(), Some(sequenced))?;
        match self.send_batch(topic, partition, batch, None).await {
            Ok(offset) => {
                sequence.next += count;
                Ok(offset)
            }
            Err(error) => {
                *state.producer.borrow_mut() = None;
                Err(error)
            }
        }
    }

    /// Sends one encoded batch to the partition's leader, retried through
    /// leader changes; the same bytes every time. A transactional batch
    /// names its transactional id (the leader verifies it with the coordinator).
    pub(crate) async fn send_batch(
        &self,
        topic: &str,
        partition: i32,
        batch: bytes::Bytes,
        transactional_id: Option<&str>,
    ) -> Result<Option<i64>> {
        let data = PartitionProduceData::default().with_index(partition).with_records(Some(batch));
        let request = ProduceRequest::default()
            .with_transactional_id(transactional_id.map(crate::client::str_bytes).map(Into::into))
            .with_acks(self.config.acks.code())
            .with_timeout_ms(i32::try_from(self.config.ack_timeout.as_millis()).unwrap_or(i32::MAX))
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![data])]);
        let request = &request;
        self.client
            .retrying(|| async move {
                let leader = self.client.leader(topic, partition).await?;
                let version = leader.version(ApiKey::Produce)?;
                if self.config.acks == Acks::None {
                    leader.send_unanswered(version, request).await?;
                    return Ok(None);
                }
                let response = leader.send_at(version, request, self.config.ack_timeout).await?;
                base_offset(&response, topic, partition).map(Some)
            })
            .await
    }
}

/// The base offset the answer gives `topic`-`partition`, or its error.
fn base_offset(response: &ProduceResponse, topic: &str, partition: i32) -> Result<i64> {
    let subject = || Subject::Partition(topic.to_string(), partition);
    let answer = response.responses.iter().flat_map(|t| t.partition_responses.iter()).find(|p| p.index == partition);
    let answer = answer.ok_or_else(|| kafka_error(kafka_protocol::ResponseError::UnknownServerError, subject()))?;
    check_message(answer.error_code, answer.error_message.as_ref(), subject)?;
    Ok(answer.base_offset)
}
