//! The transactional producer (KIP-98), as Kafka's `KafkaProducer` with a
//! `transactional.id` runs it against the transaction coordinator:
//!
//! - `init` asks the coordinator for the id's producer id and a new epoch
//!   (InitProducerId), which fences every older instance of the same id and
//!   finishes whatever transaction it left open;
//! - a partition joins the transaction (AddPartitionsToTxn) before its first
//!   batch, which is written transactional, numbered as an idempotent
//!   producer numbers it, and names the transactional id so the leader can
//!   verify it (KIP-890);
//! - `send_offsets` joins a group's offsets (AddOffsetsToTxn) and commits
//!   them to the group's coordinator as part of the transaction
//!   (TxnOffsetCommit): the consume-transform-produce loop;
//! - `commit` and `abort` end it (EndTxn); the coordinator then writes the
//!   markers.
//!
//! A failed send leaves the transaction only abortable (whether the batch
//! was written is unknown), and the abort then bumps the epoch (KIP-360), so
//! the next transaction's sequences start over and nothing of the failed
//! batch can be taken for them. Methods take `&mut self`: one step at a time,
//! which keeps each partition's sequence simple.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, InitProducerIdRequest, ProducerId,
    TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::Request;

use crate::admin::{check_partitions, group_id, PartitionOffset};
use crate::client::{str_bytes, topic_name, Client};
use crate::connector::Connector;
use crate::error::{check, Error, Result, Subject, TxnMisuse};
use crate::produce::{Acks, Producer, ProducerConfig};
use crate::records::{batch_len, encode_transactional_batch, NewRecord, Sequenced};

/// A partition's sequence past this is started over (a bumped epoch) at the next transaction's end.
const SEQUENCE_RESTART: i32 = 1 << 30;
/// The highest AddPartitionsToTxn version of the client's form (v4 on is the brokers' batched one).
const ADD_PARTITIONS_CLIENT_VERSION: i16 = 3;

#[derive(Clone, Debug)]
pub struct TransactionConfig {
    pub transactional_id: String,
    /// The coordinator aborts a transaction open longer than this (`transaction.timeout.ms`).
    pub timeout: Duration,
    /// Compression and the ack timeout of sends; acks are always all.
    pub producer: ProducerConfig,
}

impl TransactionConfig {
    pub fn new(transactional_id: &str) -> TransactionConfig {
        TransactionConfig {
            transactional_id: transactional_id.to_string(),
            timeout: Duration::from_secs(60),
            producer: ProducerConfig::default(),
        }
    }
}

pub struct TransactionalProducer<C: Connector> {
    producer: Producer<C>,
    config: TransactionConfig,
    /// (producer id, epoch) from the coordinator.
    id: (i64, i16),
    /// The next sequence per partition, for this id and epoch.
    sequences: HashMap<(String, i32), i32>,
    /// The epoch must be bumped before the next send: a send failed, so a
    /// batch with the next sequence may be in the log (aborted), and the
    /// same sequence again would be taken for its retry and not written.
    bump: bool,
    open: Option<Open>,
}

/// The open transaction.
#[derive(Default)]
struct Open {
    partitions: BTreeSet<(String, i32)>,
    groups: BTreeSet<String>,
    /// A send failed: the transaction may only be aborted.
    failed: bool,
}

impl<C: Connector> TransactionalProducer<C> {
    /// Takes the transactional id's producer id and a new epoch, fencing older instances.
    pub async fn init(client: Client<C>, config: TransactionConfig) -> Result<TransactionalProducer<C>> {
        let producer = Producer::new(client, ProducerConfig { acks: Acks::All, ..config.producer.clone() });
        let mut me = TransactionalProducer {
            producer,
            config,
            id: (-1, -1),
            sequences: HashMap::new(),
            bump: false,
            open: None,
        };
        me.id = me.init_producer_id(None).await?;
        Ok(me)
    }

    /// (producer id, epoch).
    pub fn producer_id(&self) -> (i64, i16) {
        self.id
    }

    pub fn client(&self) -> &Client<C> {
        self.producer.client()
    }

    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    pub fn begin(&mut self) -> Result<()> {
        if self.open.is_some() {
            return Err(self.misuse(TxnMisuse::AlreadyOpen));
        }
        self.open = Some(Open::default());
        Ok(())
    }

    /// Writes `records` as one transactional batch to `topic`-`partition`: its base offset.
    pub async fn send(&mut self, topic: &str, partition: i32, records: &[NewRecord]) -> Result<i64> {
        let count = batch_len(records)?;
        let key = (topic.to_string(), partition);
        let added = self.open_usable()?.partitions.contains(&key);
        if self.bump {
            let bumped = self.bump_epoch().await;
            self.fail_on(&bumped);
            bumped?;
        }
        if !added {
            let joined = self.add_partition(topic, partition).await;
            self.fail_on(&joined);
            joined?;
            self.open_usable()?.partitions.insert(key.clone());
        }
        let base_sequence = self.sequences.get(&key).copied().unwrap_or(0);
        let sequenced = Sequenced { producer_id: self.id.0, producer_epoch: self.id.1, base_sequence };
        let client = self.producer.client();
        let batch = encode_transactional_batch(records, self.config.producer.compression, client.now_ms(), sequenced)?;
        let sent = self.producer.send_batch(topic, partition, batch, Some(&self.config.transactional_id)).await;
        self.fail_on(&sent);
        let offset = sent?.expect("acks=all is answered with an offset");
        self.sequences.insert(key, base_sequence + count);
        Ok(offset)
    }

    /// Commits `offsets` of `group` with the transaction, as member
    /// `member` (member id, generation) when the group has one.
    pub async fn send_offsets(
        &mut self,
        group: &str,
        offsets: &[PartitionOffset],
        member: Option<(&str, i32)>,
    ) -> Result<()> {
        let joined = self.open_usable()?.groups.contains(group);
        if !joined {
            let request = AddOffsetsToTxnRequest::default()
                .with_transactional_id(self.transactional_id())
                .with_producer_id(ProducerId(self.id.0))
                .with_producer_epoch(self.id.1)
                .with_group_id(group_id(group));
            let added = self.on_coordinator(&request, |r| check(r.error_code, || self.subject())).await;
            self.fail_on(&added);
            added?;
            self.open_usable()?.groups.insert(group.to_string());
        }
        let committed = self.commit_offsets(group, offsets, member).await;
        self.fail_on(&committed);
        committed
    }

    /// Commits the open transaction: once this returns, all of it is visible
    /// to read_committed consumers, or will be when its markers land.
    pub async fn commit(&mut self) -> Result<()> {
        match &self.open {
            None => return Err(self.misuse(TxnMisuse::NotOpen)),
            Some(open) if open.failed => return Err(self.misuse(TxnMisuse::MustAbort)),
            Some(_) => {}
        }
        self.end(true).await
    }

    /// Aborts the open transaction; after a failed send, also bumps the epoch.
    pub async fn abort(&mut self) -> Result<()> {
        if self.open.is_none() {
            return Err(self.misuse(TxnMisuse::NotOpen));
        }
        self.end(false).await
    }

    /// EndTxn. An answer that did not come may be asked again: the
    /// coordinator answers a repeated end as the first.
    async fn end(&mut self, commit: bool) -> Result<()> {
        let open = self.open.as_ref().expect("the callers checked");
        let failed = open.failed;
        // Nothing joined: there is nothing for the coordinator to end.
        if !(open.partitions.is_empty() && open.groups.is_empty()) {
            let request = EndTxnRequest::default()
                .with_transactional_id(self.transactional_id())
                .with_producer_id(ProducerId(self.id.0))
                .with_producer_epoch(self.id.1)
                .with_committed(commit);
            self.on_coordinator(&request, |r| check(r.error_code, || self.subject())).await?;
        }
        self.open = None;
        if failed || self.sequences.values().any(|s| *s > SEQUENCE_RESTART) {
            self.bump = true;
            // Tried now, and again before the next send if this fails: the end itself is done.
            let _ = self.bump_epoch().await;
        }
        Ok(())
    }

    /// KIP-360: the same producer id at the next epoch, with sequences from 0.
    async fn bump_epoch(&mut self) -> Result<()> {
        self.id = self.init_producer_id(Some(self.id)).await?;
        self.sequences.clear();
        self.bump = false;
        Ok(())
    }

    /// InitProducerId; with `current` (KIP-360) the same producer id at a bumped epoch.
    async fn init_producer_id(&self, current: Option<(i64, i16)>) -> Result<(i64, i16)> {
        let (producer_id, epoch) = current.unwrap_or((-1, -1));
        let timeout_ms = i32::try_from(self.config.timeout.as_millis()).unwrap_or(i32::MAX);
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(self.transactional_id()))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch);
        let response = self.on_coordinator(&request, |r| check(r.error_code, || self.subject())).await?;
        Ok((response.producer_id.0, response.producer_epoch))
    }

    async fn add_partition(&self, topic: &str, partition: i32) -> Result<()> {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(self.transactional_id())
            .with_v3_and_below_producer_id(ProducerId(self.id.0))
            .with_v3_and_below_producer_epoch(self.id.1)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![partition])]);
        let client = self.producer.client();
        client
            .retrying(|| async {
                let (_, connection) = client.transaction_coordinator(&self.config.transactional_id).await?;
                let version = connection.version(ApiKey::AddPartitionsToTxn)?.min(ADD_PARTITIONS_CLIENT_VERSION);
                let response = connection.send_at(version, &request, Duration::ZERO).await?;
                check(response.error_code, || self.subject())?;
                let codes = response.results_by_topic_v3_and_below.iter().flat_map(|t| t.results_by_partition.iter());
                codes
                    .map(|p| p.partition_error_code)
                    .try_for_each(|code| check(code, || Subject::Partition(topic.to_string(), partition)))
            })
            .await
    }

    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[PartitionOffset],
        member: Option<(&str, i32)>,
    ) -> Result<()> {
        let mut by_topic: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
        for o in offsets {
            by_topic.entry(&o.topic).or_default().push(
                TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(o.partition)
                    .with_committed_offset(o.offset)
                    .with_committed_metadata(o.metadata.as_deref().map(str_bytes)),
            );
        }
        let topics = by_topic
            .into_iter()
            .map(|(t, parts)| TxnOffsetCommitRequestTopic::default().with_name(topic_name(t)).with_partitions(parts))
            .collect();
        let (member_id, generation) = member.unwrap_or(("", -1));
        let request = TxnOffsetCommitRequest::default()
            .with_transactional_id(self.transactional_id())
            .with_group_id(group_id(group))
            .with_producer_id(ProducerId(self.id.0))
            .with_producer_epoch(self.id.1)
            .with_generation_id(generation)
            .with_member_id(str_bytes(member_id))
            .with_topics(topics);
        let check = |response: &TxnOffsetCommitResponse| {
            check_partitions(
                response
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| (&t.name, p.partition_index, p.error_code))),
            )
        };
        self.producer.client().on_coordinator(group, &request, check).await.map(drop)
    }

    /// Sends `request` to the transaction coordinator until `check` passes
    /// its answer, retried through coordinator moves, loads and transactions
    /// still completing.
    async fn on_coordinator<R, F>(&self, request: &R, check: F) -> Result<R::Response>
    where
        R: Request,
        F: Fn(&R::Response) -> Result<()>,
    {
        let client = self.producer.client();
        client
            .retrying(|| async {
                let (_, connection) = client.transaction_coordinator(&self.config.transactional_id).await?;
                let response = connection.send(request).await?;
                check(&response)?;
                Ok(response)
            })
            .await
    }

    /// The open transaction, unless a send of it failed.
    fn open_usable(&mut self) -> Result<&mut Open> {
        match self.open.as_ref().map(|o| o.failed) {
            None => Err(self.misuse(TxnMisuse::NotOpen)),
            Some(true) => Err(self.misuse(TxnMisuse::MustAbort)),
            Some(false) => Ok(self.open.as_mut().expect("checked")),
        }
    }

    /// After a failed step the transaction may only be aborted.
    fn fail_on<T>(&mut self, result: &Result<T>) {
        if let (Err(_), Some(open)) = (result, self.open.as_mut()) {
            open.failed = true;
        }
    }

    fn transactional_id(&self) -> TransactionalId {
        TransactionalId(str_bytes(&self.config.transactional_id))
    }

    fn subject(&self) -> Subject {
        Subject::Transaction(self.config.transactional_id.clone())
    }

    fn misuse(&self, misuse: TxnMisuse) -> Error {
        Error::Transaction { id: self.config.transactional_id.clone(), misuse }
    }
}
