//! The cluster as a Metadata answer describes it, in the client's own types.

use kafka_protocol::messages::MetadataResponse;
use kafka_protocol::ResponseError;

use crate::connector::BrokerAddress;
use crate::error::{check, kafka_error, Error, Result, Subject};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    pub address: BrokerAddress,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub index: i32,
    /// `None` while the partition has no leader (an election, its brokers down).
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error: Option<ResponseError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub error: Option<ResponseError>,
    pub internal: bool,
    /// By index, ascending.
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub fn partition(&self, index: i32) -> Option<&PartitionInfo> {
        self.partitions.binary_search_by_key(&index, |p| p.index).ok().map(|i| &self.partitions[i])
    }

    /// The partition indexes, ascending.
    pub fn indexes(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.index).collect()
    }

    /// `Ok` unless the topic came back with an error code.
    pub fn check(&self) -> Result<&TopicInfo> {
        check(self.error.map_or(0, |e| e.code()), || Subject::Topic(self.name.clone()))?;
        Ok(self)
    }

    /// The leader of `index`: UNKNOWN_TOPIC_OR_PARTITION if the topic has no
    /// such partition, LEADER_NOT_AVAILABLE while it has no leader.
    pub fn leader(&self, index: i32) -> Result<i32> {
        let subject = || Subject::Partition(self.name.clone(), index);
        let partition =
            self.partition(index).ok_or_else(|| kafka_error(ResponseError::UnknownTopicOrPartition, subject()))?;
        partition.leader.ok_or_else(|| kafka_error(ResponseError::LeaderNotAvailable, subject()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub cluster_id: Option<String>,
    pub controller: Option<i32>,
    /// By id, ascending.
    pub brokers: Vec<BrokerInfo>,
    /// In the broker's order.
    pub topics: Vec<TopicInfo>,
}

/// A broker as Metadata and DescribeCluster list it; a port outside u16 is a bad address.
pub(crate) fn broker_info(id: i32, host: &str, port: i32, rack: Option<&str>) -> Result<BrokerInfo> {
    let port = u16::try_from(port).map_err(|_| Error::BadAddress { input: format!("{host}:{port}") })?;
    Ok(BrokerInfo { id, address: BrokerAddress::new(host.to_string(), port), rack: rack.map(str::to_string) })
}

impl Metadata {
    pub fn from_response(response: MetadataResponse) -> Result<Metadata> {
        let mut brokers = response
            .brokers
            .into_iter()
            .map(|b| broker_info(b.node_id.0, &b.host, b.port, b.rack.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        brokers.sort_by_key(|b| b.id);
        let topics = response.topics.into_iter().map(topic_info).collect();
        Ok(Metadata {
            cluster_id: response.cluster_id.map(|c| c.to_string()),
            controller: (response.controller_id.0 >= 0).then_some(response.controller_id.0),
            brokers,
            topics,
        })
    }
}

fn topic_info(topic: kafka_protocol::messages::metadata_response::MetadataResponseTopic) -> TopicInfo {
    let mut partitions: Vec<PartitionInfo> = topic
        .partitions
        .into_iter()
        .map(|p| PartitionInfo {
            index: p.partition_index,
            leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
            leader_epoch: p.leader_epoch,
            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
            error: ResponseError::try_from_code(p.error_code),
        })
        .collect();
    partitions.sort_by_key(|p| p.index);
    TopicInfo {
        name: topic.name.map(|n| n.0.to_string()).unwrap_or_default(),
        error: ResponseError::try_from_code(topic.error_code),
        internal: topic.is_internal,
        partitions,
    }
}
