//! Transaction admin requests (Kafka's `kafka-transactions.sh`): list the
//! transactional ids every broker coordinates, describe one through its
//! coordinator, describe a partition's producers, and abort a hanging
//! transaction on a partition with a marker written there.

use futures::future::try_join_all;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::*;

use crate::client::{str_bytes, topic_name, Client};
use crate::connector::{BrokerAddress, Connector};
use crate::error::{check, check_message, kafka_error, Error, Result, Subject};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TransactionListing {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: String,
    /// The broker that coordinates it.
    pub coordinator: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionDescription {
    pub transactional_id: String,
    pub coordinator: i32,
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    /// When the open transaction began, -1 if none is open.
    pub start_time_ms: i64,
    pub partitions: Vec<(String, i32)>,
}

/// A producer a partition knows (DescribeProducers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerDescription {
    pub producer_id: i64,
    pub producer_epoch: i32,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    pub coordinator_epoch: i32,
    /// The first offset of its open transaction here, -1 if none.
    pub current_txn_start_offset: i64,
}

/// An open transaction on a partition that its coordinator does not know
/// as open there (Kafka's `kafka-transactions.sh find-hanging`): no marker
/// will end it, and it holds the partition's last stable offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HangingTransaction {
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    pub producer_epoch: i32,
    /// Where it starts: read_committed consumers stop here.
    pub start_offset: i64,
}

/// The coordinator states in which a transaction still has markers to come.
const UNFINISHED: [&str; 3] = ["Ongoing", "PrepareCommit", "PrepareAbort"];

impl<C: Connector> Client<C> {
    /// Every transactional id the brokers coordinate, by id.
    pub async fn list_transactions(&self) -> Result<Vec<TransactionListing>> {
        let brokers = self.metadata(Some(&[])).await?.brokers;
        let listed = try_join_all(brokers.iter().map(|b| self.transactions_on(b.id, &b.address))).await?;
        let mut all: Vec<TransactionListing> = listed.into_iter().flatten().collect();
        all.sort();
        Ok(all)
    }

    async fn transactions_on(&self, id: i32, address: &BrokerAddress) -> Result<Vec<TransactionListing>> {
        let response = self.connection(address).await?.send(&ListTransactionsRequest::default().with_duration_filter(-1)).await?;
        check(response.error_code, || Subject::Request(ApiKey::ListTransactions))?;
        Ok(response
            .transaction_states
            .into_iter()
            .map(|t| TransactionListing {
                transactional_id: t.transactional_id.0.to_string(),
                producer_id: t.producer_id.0,
                state: t.transaction_state.to_string(),
                coordinator: id,
            })
            .collect())
    }

    /// The connection to `id`'s transaction coordinator (FindCoordinator, key type 1).
    pub(crate) async fn transaction_coordinator(&self, id: &str) -> Result<(i32, std::rc::Rc<crate::Connection>)> {
        let request = FindCoordinatorRequest::default().with_key(str_bytes(id)).with_key_type(1);
        let response: FindCoordinatorResponse = self.any_broker().await?.send(&request).await?;
        check_message(response.error_code, response.error_message.as_ref(), || Subject::Transaction(id.to_string()))?;
        let port = u16::try_from(response.port)
            .map_err(|_| Error::BadAddress { input: format!("{}:{}", response.host, response.port) })?;
        let address = BrokerAddress::new(response.host.to_string(), port);
        Ok((response.node_id.0, self.connection(&address).await?))
    }

    pub async fn describe_transaction(&self, id: &str) -> Result<TransactionDescription> {
        self.retrying(|| async {
            let (coordinator, connection) = self.transaction_coordinator(id).await?;
            let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(str_bytes(id))]);
            let response = connection.send(&request).await?;
            let state = response.transaction_states.into_iter().next().ok_or_else(|| {
                kafka_error(kafka_protocol::ResponseError::TransactionalIdNotFound, Subject::Transaction(id.to_string()))
            })?;
            check(state.error_code, || Subject::Transaction(id.to_string()))?;
            let partitions = state
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.0.to_string(), *p)))
                .collect();
            Ok(TransactionDescription {
                transactional_id: id.to_string(),
                coordinator,
                state: state.transaction_state.to_string(),
                producer_id: state.producer_id.0,
                producer_epoch: state.producer_epoch,
                timeout_ms: state.transaction_timeout_ms,
                start_time_ms: state.transaction_start_time_ms,
                partitions,
            })
        })
        .await
    }

    /// The producers `topic`-`partition` knows, from its leader.
    pub async fn describe_producers(&self, topic: &str, partition: i32) -> Result<Vec<ProducerDescription>> {
        self.retrying(|| async {
            let request = DescribeProducersRequest::default()
                .with_topics(vec![TopicRequest::default().with_name(topic_name(topic)).with_partition_indexes(vec![partition])]);
            let response = self.leader(topic, partition).await?.send(&request).await?;
            let p = response
                .topics
                .into_iter()
                .flat_map(|t| t.partitions)
                .find(|p| p.partition_index == partition)
                .ok_or_else(|| kafka_error(kafka_protocol::ResponseError::UnknownTopicOrPartition, Subject::Partition(topic.to_string(), partition)))?;
            check_message(p.error_code, p.error_message.as_ref(), || Subject::Partition(topic.to_string(), partition))?;
            Ok(p.active_producers
                .into_iter()
                .map(|s| ProducerDescription {
                    producer_id: s.producer_id.0,
                    producer_epoch: s.producer_epoch,
                    last_sequence: s.last_sequence,
                    last_timestamp: s.last_timestamp,
                    coordinator_epoch: s.coordinator_epoch,
                    current_txn_start_offset: s.current_txn_start_offset,
                })
                .collect())
        })
        .await
    }

    /// Ends `producer_id`'s open transaction on `topic`-`partition` with an
    /// abort marker (as `kafka-transactions.sh abort`): for a transaction its
    /// coordinator no longer knows, which holds the partition's last stable offset.
    pub async fn abort_transaction(&self, topic: &str, partition: i32, producer: &ProducerDescription) -> Result<()> {
        let subject = || Subject::Partition(topic.to_string(), partition);
        let epoch = i16::try_from(producer.producer_epoch).map_err(|_| kafka_error(kafka_protocol::ResponseError::InvalidRequest, subject()))?;
        self.retrying(|| async {
            let marker = WritableTxnMarker::default()
                .with_producer_id(ProducerId(producer.producer_id))
                .with_producer_epoch(epoch)
                .with_transaction_result(false)
                .with_coordinator_epoch(producer.coordinator_epoch)
                .with_topics(vec![WritableTxnMarkerTopic::default().with_name(topic_name(topic)).with_partition_indexes(vec![partition])]);
            let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
            let response = self.leader(topic, partition).await?.send(&request).await?;
            let code = response
                .markers
                .iter()
                .flat_map(|m| m.topics.iter())
                .flat_map(|t| t.partitions.iter())
                .map(|p| p.error_code)
                .find(|c| *c != 0)
                .unwrap_or(0);
            check(code, subject)
        })
        .await
    }

    /// The hanging transactions of `topic`: each partition's open
    /// transactions (DescribeProducers) checked against their coordinators
    /// (ListTransactions once, and again for one it does not know;
    /// DescribeTransactions of the ids with that producer). One found open
    /// and unknown is asked about again, so a transaction that just ended is
    /// not reported.
    pub async fn find_hanging_transactions(&self, topic: &str) -> Result<Vec<HangingTransaction>> {
        let partitions = self.topic(topic).await?.partitions;
        let listed = self.list_transactions().await?;
        let mut out = Vec::new();
        for p in &partitions {
            for producer in self.describe_producers(topic, p.index).await? {
                if producer.current_txn_start_offset < 0 || self.coordinator_knows(&listed, topic, p.index, &producer).await? {
                    continue;
                }
                // Unknown to the listing taken first: ask afresh (it may have begun since).
                let fresh = self.list_transactions().await?;
                if self.coordinator_knows(&fresh, topic, p.index, &producer).await? {
                    continue;
                }
                let again = self.describe_producers(topic, p.index).await?;
                let still = again.iter().any(|q| {
                    q.producer_id == producer.producer_id && q.current_txn_start_offset == producer.current_txn_start_offset
                });
                if still {
                    out.push(HangingTransaction {
                        topic: topic.to_string(),
                        partition: p.index,
                        producer_id: producer.producer_id,
                        producer_epoch: producer.producer_epoch,
                        start_offset: producer.current_txn_start_offset,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Whether a coordinator has `producer`'s transaction open on `topic`-`partition`.
    async fn coordinator_knows(
        &self,
        listed: &[TransactionListing],
        topic: &str,
        partition: i32,
        producer: &ProducerDescription,
    ) -> Result<bool> {
        for id in listed.iter().filter(|t| t.producer_id == producer.producer_id) {
            let described = self.describe_transaction(&id.transactional_id).await?;
            let open = UNFINISHED.contains(&described.state.as_str());
            if open && described.partitions.iter().any(|(t, p)| t == topic && *p == partition) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
