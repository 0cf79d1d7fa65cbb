//! A `tributary-client` connector to this broker without a socket: each
//! connection is a `tokio::io::duplex` pipe whose broker end runs
//! `connection::serve`, the loop every TCP connection runs (request budget,
//! in-flight cap, pipelining, answers in order), with its own `Session`. For
//! embedding (Kafka Connect and Streams in the broker's process) and tests.
//!
//! Every address the client dials reaches this one broker; in a cluster,
//! requests for partitions other brokers lead are answered as over TCP
//! (NOT_LEADER_OR_FOLLOWER), so this is for a single broker or for requests
//! any broker answers. Must run on the broker's actix system (its `LocalSet`).

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tributary_client::{BrokerAddress, Connector, ReadHalf, WriteHalf};

use crate::kafka::{RequestContext, Session};

/// Bytes buffered in each direction of a pipe (as a socket's buffers would).
const PIPE_BYTES: usize = 256 * 1024;

/// The listener name sessions of in-process connections carry.
const LISTENER: &str = "IN_PROCESS";

pub struct InProcess {
    context: Arc<RequestContext>,
    shutdown: watch::Receiver<bool>,
    /// Connections opened, to give each session its own peer address.
    opened: Cell<u16>,
}

impl InProcess {
    /// Connections serve until the client drops them or `shutdown` turns true.
    pub fn new(context: Arc<RequestContext>, shutdown: watch::Receiver<bool>) -> InProcess {
        InProcess { context, shutdown, opened: Cell::new(0) }
    }
}

impl Connector for InProcess {
    async fn connect(&self, _broker: &BrokerAddress) -> io::Result<(ReadHalf, WriteHalf)> {
        let n = self.opened.get().wrapping_add(1);
        self.opened.set(n);
        let (client, broker) = tokio::io::duplex(PIPE_BYTES);
        let (broker_read, broker_write) = tokio::io::split(broker);
        let session = std::sync::Arc::new(Session::new(SocketAddr::from(([127, 0, 0, 1], n)), LISTENER));
        tokio::task::spawn_local(crate::connection::serve(
            broker_read,
            broker_write,
            session,
            self.context.clone(),
            self.shutdown.clone(),
        ));
        let (read, write) = tokio::io::split(client);
        Ok((Box::new(read), Box::new(write)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tributary_client::{Client, Config, FetchOptions, NewRecord, NewTopic, Producer, ProducerConfig};

    use super::*;

    #[test]
    fn a_client_produces_and_fetches_through_the_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        actix::System::new().block_on(async move {
            let context = crate::kafka::test_context(&data_dir).await;
            let (_stop, shutdown) = watch::channel(false);
            let bootstrap = vec![BrokerAddress::new("in-process", 0)];
            let client = Client::new(InProcess::new(context, shutdown), Config::new(bootstrap));
            let topic = NewTopic { name: "piped".into(), partitions: 2, replication_factor: 1, configs: Vec::new() };
            client.create_topics(&[topic]).await.unwrap();

            let producer = Producer::idempotent(client.clone(), ProducerConfig::default());
            let records: Vec<NewRecord> = (0..10).map(|i| NewRecord::keyed(format!("k{i}"), format!("v{i}"))).collect();
            assert_eq!(producer.send("piped", 1, &records[..4]).await.unwrap(), Some(0));
            assert_eq!(producer.send("piped", 1, &records[4..]).await.unwrap(), Some(4));

            let fetched = client.fetch("piped", &[(0, 0), (1, 2)], &FetchOptions::default()).await.unwrap();
            let by_partition: BTreeMap<i32, _> = fetched.into_iter().map(|f| (f.partition, f)).collect();
            assert!(by_partition[&0].records.is_empty());
            let one = &by_partition[&1];
            assert_eq!((one.high_watermark, one.next_offset), (10, 10));
            let values: Vec<&[u8]> = one.records.iter().map(|r| r.value.as_deref().unwrap()).collect();
            let expected: Vec<String> = (2..10).map(|i| format!("v{i}")).collect();
            assert_eq!(values, expected.iter().map(|v| v.as_bytes()).collect::<Vec<_>>());
            assert_eq!(one.records[0].offset, 2);
            assert_eq!(one.records[0].key.as_deref(), Some(&b"k2"[..]));
        });
    }
}
