//! An async Kafka client on tokio and `kafka-protocol`: the one client of
//! Tributary's CLI, and of its simulation, Kafka Connect and Streams to come.
//!
//! Layers, bottom up:
//! - [`Connector`]: how bytes reach a broker ([`Tcp`]; the broker crate's
//!   in-process pipe; the simulation's network).
//! - [`Connection`]: one broker, framed requests pipelined and answered in
//!   order, versions negotiated (ApiVersions), every request bounded in time
//!   and size.
//! - [`Client`]: the cluster, from bootstrap brokers: metadata, one
//!   connection per broker, leader and coordinator routing, bounded retries.
//! - On the client: [`Producer`] (plain and idempotent),
//!   [`TransactionalProducer`] (transactions, offsets sent with them), fetch
//!   (read_uncommitted or read_committed) and
//!   ListOffsets ([`Consumer`] follows positions), admin requests, and
//!   [`GroupMember`] for consumer groups.
//!
//! Nothing requires `Send`: the client runs on a tokio `LocalSet` (a
//! current-thread runtime), so a connector's streams may be bound to it.
//! Errors are one typed [`Error`].
//!
//! ```no_run
//! use tributary_client::*;
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! tokio::task::LocalSet::new().block_on(&runtime, async {
//!     let client = Client::new(Tcp, Config::new(BrokerAddress::parse_list("127.0.0.1:9092")?));
//!     let producer = Producer::idempotent(client.clone(), ProducerConfig::default());
//!     let partitions = client.topic("orders").await?.partitions.len() as i32;
//!     let partition = partition_for_key(b"user1", partitions);
//!     producer.send("orders", partition, &[NewRecord::keyed("user1", "clicked")]).await?;
//!     let fetched = client.fetch("orders", &[(partition, 0)], &FetchOptions::default()).await?;
//!     println!("{} records", fetched[0].records.len());
//!     Ok::<(), Error>(())
//! })
//! .unwrap();
//! ```

mod admin;
mod transactional;
mod transactions;
mod client;
mod connection;
mod connector;
mod error;
mod fetch;
mod frame;
mod group;
mod metadata;
mod partitioner;
mod produce;
mod records;
mod security;
mod versions;

pub use admin::{
    AlterConfig, ClusterDescription, ConfigEntry, ConfigResource, GroupDescription, GroupListing, MemberDescription,
    NewTopic, PartitionOffset, ScramChange, ScramUser,
};
pub use client::{Client, Config, Retry};
pub use connection::{Connection, ConnectionSettings};
pub use security::{Sasl, Transport};
pub use connector::{BrokerAddress, Connector, ReadHalf, Tcp, WriteHalf};
pub use error::{Error, FrameProblem, Result, Subject, TxnMisuse};
pub use fetch::{Consumer, FetchOptions, FetchedPartition, Isolation, ListedOffset, OffsetSpec};
pub use group::{range_assign, Assignment, GroupConfig, GroupMember};
pub use kafka_protocol::messages::ApiKey;
pub use kafka_protocol::records::Compression;
pub use kafka_protocol::ResponseError;
pub use metadata::{BrokerInfo, Metadata, PartitionInfo, TopicInfo};
pub use partitioner::{murmur2, partition_for_key};
pub use produce::{Acks, Producer, ProducerConfig};
pub use transactional::{TransactionConfig, TransactionalProducer};
pub use transactions::{HangingTransaction, ProducerDescription, TransactionDescription, TransactionListing};
pub use records::{
    decode_batches, decode_committed, encode_batch, encode_transactional_batch, AbortedTxn, ConsumedRecord, Decoded, NewRecord,
    Sequenced, MAX_BATCH_RECORDS,
};
pub use versions::IMPLEMENTED;
