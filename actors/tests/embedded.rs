//! The actor tree used in-process, as an actix application embeds it.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary_actors::partition_actor::InjectPanic;
use tributary_actors::{Broker, ClientError, Durability, NewRecord, OffsetQuery, PartitionError, StorageConfig};

fn records(prefix: &str, n: usize) -> Vec<NewRecord> {
    (0..n).map(|i| NewRecord::keyed(format!("{prefix}-k{i}"), format!("{prefix}-v{i}"))).collect()
}

fn values(records: &[tributary_actors::Record]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect()
}

#[actix::test]
async fn produce_fetch_and_list_offsets_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(StorageConfig::new(dir.path())).unwrap();
    broker.create_topic("events", 3, BTreeMap::new()).await.unwrap();
    let first = broker.produce("events", 1, &records("a", 4)).await.unwrap();
    let second = broker.produce("events", 1, &records("b", 2)).await.unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 3));
    assert_eq!((second.base_offset, second.last_offset), (4, 5));

    let fetched = broker.fetch("events", 1, 2, 1 << 20).await.unwrap();
    assert_eq!(fetched.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    assert_eq!(values(&fetched)[2], "b-v0");
    assert_eq!(broker.list_offset("events", 1, OffsetQuery::Latest).await.unwrap(), Some((6, -1)));
    assert_eq!(broker.list_offset("events", 0, OffsetQuery::Latest).await.unwrap(), Some((0, -1)));
    assert!(matches!(
        broker.produce("events", 3, &records("c", 1)).await,
        Err(ClientError::UnknownTopicOrPartition { .. })
    ));
    assert!(matches!(
        broker.fetch("events", 1, 7, 1024).await,
        Err(ClientError::Partition(PartitionError::OffsetOutOfRange { .. }))
    ));
}

#[test]
fn topics_survive_a_restart_of_the_tree() {
    restart_keeps_topics(Durability::Fsync);
}

#[test]
fn topics_survive_a_restart_of_the_tree_with_interval_durability() {
    restart_keeps_topics(Durability::Interval { interval_ms: 50 });
}

fn restart_keeps_topics(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let config = move |path: &std::path::Path| StorageConfig { durability, ..StorageConfig::new(path) };
    // The first tree runs in a System of its own, which stops and closes its
    // LMDB environments, as a broker process would on exit.
    std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let broker = Broker::start(config(&path)).unwrap();
            broker.create_topic("kept", 2, BTreeMap::from([("retention.ms".into(), "1000".into())])).await.unwrap();
            broker.produce("kept", 1, &records("x", 3)).await.unwrap();
            actix::System::current().stop();
        });
    })
    .join()
    .unwrap();

    let path = dir.path().to_path_buf();
    actix::System::new().block_on(async move {
        let broker = Broker::start(config(&path)).unwrap();
        let topic = broker.metadata().topic("kept").cloned().expect("topic reloaded");
        assert_eq!(topic.partitions.len(), 2);
        assert_eq!(topic.config.retention_ms, 1000);
        // The first tree's arbiter threads may still be closing their LMDB
        // environments; the partition retries the open on each request, and
        // the error meanwhile is the retriable one.
        let mut fetched = None;
        for _ in 0..100 {
            match broker.fetch("kept", 1, 0, 1 << 20).await {
                Ok(records) => {
                    fetched = Some(records);
                    break;
                }
                Err(ClientError::Partition(PartitionError::Unavailable(_))) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("unexpected error after restart: {e}"),
            }
        }
        assert_eq!(values(&fetched.expect("partition reopened")), vec!["x-v0", "x-v1", "x-v2"]);
    });
}

#[actix::test]
async fn a_panicking_partition_is_restarted_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(StorageConfig::new(dir.path())).unwrap();
    broker.create_topic("fragile", 1, BTreeMap::new()).await.unwrap();
    for round in 0..5 {
        broker.produce("fragile", 0, &records(&format!("r{round}"), 10)).await.unwrap();
    }
    let handle = broker.partition("fragile", 0).unwrap();
    handle.addr.send(InjectPanic).await.unwrap();

    // The append in flight when the actor panics gets a retriable error and is not written.
    let failed = broker.produce("fragile", 0, &records("lost", 3)).await;
    match failed {
        Err(ClientError::Partition(e @ PartitionError::Unavailable(_))) => {
            assert!(kafka_protocol::ResponseError::try_from_code(e.error_code()).unwrap().is_retriable());
        }
        other => panic!("expected a retriable error, got {other:?}"),
    }

    // The supervisor restarted the actor from LMDB: the next append continues at offset 50.
    let mut next = None;
    for _ in 0..50 {
        match broker.produce("fragile", 0, &records("after", 2)).await {
            Ok(appended) => {
                next = Some(appended);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let next = next.expect("partition came back after the restart");
    assert_eq!(next.base_offset, 50);
    let all = broker.fetch("fragile", 0, 0, 1 << 20).await.unwrap();
    assert_eq!(all.len(), 52);
    assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as i64));
    assert!(!values(&all).iter().any(|v| v.starts_with("lost")));
}

#[actix::test]
async fn concurrent_appends_keep_offsets_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(StorageConfig::new(dir.path())).unwrap();
    broker.create_topic("busy", 1, BTreeMap::new()).await.unwrap();
    let appends: Vec<_> = (0..200)
        .map(|i| {
            let broker = broker.clone();
            async move { broker.produce("busy", 0, &records(&format!("p{i}"), 5)).await.unwrap() }
        })
        .collect();
    let mut outcomes = futures::future::join_all(appends).await;
    outcomes.sort_by_key(|o| o.base_offset);
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.base_offset, i as i64 * 5, "each append gets its own contiguous range");
        assert_eq!(o.last_offset, o.base_offset + 4);
    }
    assert_eq!(broker.list_offset("busy", 0, OffsetQuery::Latest).await.unwrap(), Some((1000, -1)));
}

#[actix::test]
async fn deleting_a_topic_removes_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(StorageConfig::new(dir.path())).unwrap();
    broker.create_topic("gone", 2, BTreeMap::new()).await.unwrap();
    broker.produce("gone", 0, &records("g", 3)).await.unwrap();
    assert!(dir.path().join("gone-0").exists());
    broker.delete_topic("gone").await.unwrap();
    assert!(!dir.path().join("gone-0").exists());
    assert!(broker.metadata().topic("gone").is_none());
    // Re-created at once, the topic starts empty.
    broker.create_topic("gone", 1, BTreeMap::new()).await.unwrap();
    assert_eq!(broker.list_offset("gone", 0, OffsetQuery::Latest).await.unwrap(), Some((0, -1)));
}

#[actix::test]
async fn a_panicking_group_coordinator_is_restarted_and_keeps_committed_offsets() {
    use tributary_actors::group_coordinator::{CommitOffsets, JoinGroup};
    use tributary_actors::{GroupAnswer, GroupRequest};

    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path());
    config.groups.initial_rebalance_delay_ms = 0;
    let broker = Broker::start(config).unwrap();
    broker.create_topic("t", 1, BTreeMap::new()).await.unwrap();
    let commit = CommitOffsets {
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        offsets: vec![(("t".to_string(), 0), 42, -1, Some("meta".into()))],
    };
    let answer = broker.group_request("g", true, GroupRequest::Commit(commit)).await;
    assert_eq!(answer, Ok(Some(GroupAnswer::Codes(vec![0]))));

    let crashed = broker.group_request("g", false, GroupRequest::InjectPanic).await;
    assert_eq!(crashed, Err(kafka_protocol::ResponseError::CoordinatorNotAvailable.code()));

    // The supervisor restarted the coordinator; the committed offset was on disk all along.
    let mut fetched = None;
    for _ in 0..50 {
        if let Ok(Some(GroupAnswer::Fetched(0, offsets))) =
            broker.group_request("g", false, GroupRequest::Fetch(None)).await
        {
            fetched = Some(offsets);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let offsets = fetched.expect("coordinator answers after its restart");
    assert_eq!(offsets.len(), 1);
    let committed = offsets[0].1.as_ref().unwrap();
    assert_eq!((committed.offset, committed.metadata.as_deref()), (42, Some("meta")));

    // And it runs the group protocol again.
    let join = JoinGroup {
        member_id: String::new(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), bytes::Bytes::from_static(b"x"))],
        require_known_member_id: false,
    };
    match broker.group_request("g", true, GroupRequest::Join(join)).await {
        Ok(Some(GroupAnswer::Join(answer))) => assert_eq!((answer.error_code, answer.generation_id), (0, 1)),
        other => panic!("join after restart: {other:?}"),
    }
}
