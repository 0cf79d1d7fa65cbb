//! The client against one real broker process over TCP: admin, produce
//! (acks 0/1/-1, idempotent), fetch, ListOffsets, groups.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{client_at, eventually, local, Broker, Versions};
use tributary_client::*;

fn new_topic(name: &str, partitions: i32) -> NewTopic {
    NewTopic { name: name.to_string(), partitions, replication_factor: 1, configs: Vec::new() }
}

#[test]
fn admin_at_the_newest_versions() {
    admin_topics_partitions_configs_and_cluster(Versions::Newest);
}

#[test]
fn admin_at_the_oldest_versions() {
    admin_topics_partitions_configs_and_cluster(Versions::Oldest);
}

fn admin_topics_partitions_configs_and_cluster(versions: Versions) {
    let broker = Broker::start("");
    local(async {
        let client = client_at(vec![broker.address.clone()], Duration::from_secs(10), versions.caps());
        let mut topic = new_topic("admin-a", 2);
        topic.configs.push(("retention.ms".to_string(), "60000".to_string()));
        client.create_topics(&[topic.clone(), new_topic("admin-b", 1)]).await.unwrap();
        let again = client.create_topics(&[topic]).await.unwrap_err();
        assert_eq!(again.kafka(), Some(ResponseError::TopicAlreadyExists), "{again}");

        let names: Vec<String> = client.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["admin-a", "admin-b"]);
        let described = client.describe_topics(&["admin-a", "nope"]).await.unwrap();
        assert_eq!(described[0].indexes(), [0, 1]);
        assert_eq!(described[0].partitions[0].leader, Some(0));
        assert_eq!(described[1].error, Some(ResponseError::UnknownTopicOrPartition));

        client.create_partitions("admin-a", 4).await.unwrap();
        assert_eq!(client.describe_topics(&["admin-a"]).await.unwrap()[0].partitions.len(), 4);
        let shrink = client.create_partitions("admin-a", 1).await.unwrap_err();
        assert_eq!(shrink.kafka(), Some(ResponseError::InvalidPartitions));

        let resource = ConfigResource::Topic("admin-a".to_string());
        let config =
            |entries: Vec<ConfigEntry>, name: &str| entries.into_iter().find(|e| e.name == name).and_then(|e| e.value);
        assert_eq!(config(client.describe_configs(&resource).await.unwrap(), "retention.ms").as_deref(), Some("60000"));
        let changes = [
            AlterConfig::Set("retention.ms".into(), "120000".into()),
            AlterConfig::Set("cleanup.policy".into(), "compact".into()),
        ];
        client.incremental_alter_configs(&resource, &changes).await.unwrap();
        assert_eq!(
            config(client.describe_configs(&resource).await.unwrap(), "retention.ms").as_deref(),
            Some("120000")
        );
        client.incremental_alter_configs(&resource, &[AlterConfig::Delete("retention.ms".into())]).await.unwrap();
        assert_eq!(
            config(client.describe_configs(&resource).await.unwrap(), "retention.ms").as_deref(),
            Some("604800000")
        );
        client.alter_configs(&resource, &[("retention.ms".into(), "30000".into())]).await.unwrap();
        let entries = client.describe_configs(&resource).await.unwrap();
        assert_eq!(config(entries.clone(), "retention.ms").as_deref(), Some("30000"));
        assert_eq!(
            config(entries, "cleanup.policy").as_deref(),
            Some("delete"),
            "AlterConfigs replaces every override"
        );
        let bad = client
            .incremental_alter_configs(&resource, &[AlterConfig::Set("retention.ms".into(), "soon".into())])
            .await;
        let bad = bad.unwrap_err();
        assert_eq!(bad.kafka(), Some(ResponseError::InvalidConfig));
        assert!(bad.to_string().contains("soon"), "the broker's message is kept: {bad}");
        assert!(!client.describe_configs(&ConfigResource::Broker(0)).await.unwrap().is_empty());

        let cluster = client.describe_cluster().await.unwrap();
        assert_eq!(cluster.cluster_id, "tributary-local");
        assert_eq!(
            cluster.brokers.iter().map(|b| b.address.clone()).collect::<Vec<_>>(),
            std::slice::from_ref(&broker.address)
        );

        client.delete_topics(&["admin-a", "admin-b"]).await.unwrap();
        assert!(client.list_topics().await.unwrap().is_empty());
        let missing = client.delete_topics(&["admin-a"]).await.unwrap_err();
        assert_eq!(missing.kafka(), Some(ResponseError::UnknownTopicOrPartition));
    });
}

#[test]
fn data_at_the_newest_versions() {
    produce_with_every_acks_and_idempotence_then_fetch_and_list_offsets(Versions::Newest);
}

#[test]
fn data_at_the_oldest_versions() {
    produce_with_every_acks_and_idempotence_then_fetch_and_list_offsets(Versions::Oldest);
}

fn produce_with_every_acks_and_idempotence_then_fetch_and_list_offsets(versions: Versions) {
    let broker = Broker::start("");
    local(async {
        let client = client_at(vec![broker.address.clone()], Duration::from_secs(10), versions.caps());
        client.create_topics(&[new_topic("data", 2)]).await.unwrap();
        let record = |i: usize| NewRecord {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: vec![("n".to_string(), Some(Bytes::from(i.to_string())))],
            timestamp: Some(1_000_000 + i as i64),
        };
        let batch = |from: usize| (from..from + 5).map(record).collect::<Vec<_>>();
        let leader_acks =
            Producer::new(client.clone(), ProducerConfig { acks: Acks::Leader, ..ProducerConfig::default() });
        assert_eq!(leader_acks.send("data", 0, &batch(0)).await.unwrap(), Some(0));
        let spoken = client.leader("data", 0).await.unwrap().version(ApiKey::Produce).unwrap();
        assert_eq!(spoken, if matches!(versions, Versions::Oldest) { 3 } else { 9 });
        let all_acks = Producer::new(client.clone(), ProducerConfig::default());
        assert_eq!(all_acks.send("data", 0, &batch(5)).await.unwrap(), Some(5));
        let no_acks = Producer::new(client.clone(), ProducerConfig { acks: Acks::None, ..ProducerConfig::default() });
        assert_eq!(no_acks.send("data", 0, &batch(10)).await.unwrap(), None);
        let idempotent = Producer::idempotent(
            client.clone(),
            ProducerConfig { compression: Compression::Lz4, ..ProducerConfig::default() },
        );
        for round in 0..4 {
            assert_eq!(idempotent.send("data", 1, &batch(100 + 5 * round)).await.unwrap(), Some(5 * round as i64));
        }

        // acks=0 is not answered: wait until its records are there.
        let end = eventually("acks=0 records written", Duration::from_secs(10), || async {
            let latest = client.list_offsets("data", &[0, 1], OffsetSpec::Latest).await.unwrap();
            (latest[&0].offset == 15).then_some(latest)
        })
        .await;
        assert_eq!(end[&1].offset, 20);
        let earliest = client.list_offsets("data", &[0, 1], OffsetSpec::Earliest).await.unwrap();
        assert_eq!((earliest[&0].offset, earliest[&1].offset), (0, 0));
        let by_time = client.list_offsets("data", &[0], OffsetSpec::Timestamp(1_000_007)).await.unwrap();
        assert_eq!(by_time[&0].offset, 7);

        let options = FetchOptions { max_wait: Duration::from_millis(100), ..FetchOptions::default() };
        let fetched = client.fetch("data", &[(0, 3), (1, 0)], &options).await.unwrap();
        let by_partition: BTreeMap<i32, FetchedPartition> = fetched.into_iter().map(|f| (f.partition, f)).collect();
        let zero = &by_partition[&0];
        assert_eq!(zero.high_watermark, 15);
        assert_eq!(zero.records.iter().map(|r| r.offset).collect::<Vec<_>>(), (3..15).collect::<Vec<_>>());
        let r = &zero.records[0];
        assert_eq!(
            (r.key.as_deref(), r.value.as_deref(), r.timestamp),
            (Some(&b"k3"[..]), Some(&b"v3"[..]), 1_000_003)
        );
        assert_eq!(r.headers, vec![("n".to_string(), Some(Bytes::from("3")))]);
        assert_eq!(by_partition[&1].records.len(), 20, "compressed idempotent batches decode");

        let out_of_range = client.fetch("data", &[(0, 99)], &options).await.unwrap_err();
        assert_eq!(out_of_range.kafka(), Some(ResponseError::OffsetOutOfRange), "{out_of_range}");
        assert!(out_of_range.to_string().contains("data-0"), "{out_of_range}");

        // A consumer follows the high watermark, and a long poll is woken by new data.
        let mut consumer = Consumer::new(client.clone(), "data", BTreeMap::from([(0, 0), (1, 18)]), options.clone());
        let mut seen = 0;
        // Bounded: three polls drain 17 records.
        for _ in 0..3 {
            seen += consumer.poll().await.unwrap().len();
        }
        assert_eq!(seen, 15 + 2);
        assert!(consumer.caught_up());
        all_acks.send("data", 1, &batch(200)).await.unwrap();
        let more = consumer.poll().await.unwrap();
        assert_eq!(more.iter().map(|r| r.offset).collect::<Vec<_>>(), (20..25).collect::<Vec<_>>());
    });
}

#[test]
fn the_key_partitioner_is_javas() {
    // Kafka's DefaultPartitioner: toPositive(murmur2(key)) % partitions.
    assert_eq!(partition_for_key(b"user1", 4), (murmur2(b"user1") & 0x7fff_ffff) % 4);
    assert_eq!(murmur2(b"foobar"), -790332482);
}

#[test]
fn groups_at_the_newest_versions() {
    two_members_of_one_group_split_its_partitions_and_commit(Versions::Newest);
}

#[test]
fn groups_at_the_oldest_versions() {
    two_members_of_one_group_split_its_partitions_and_commit(Versions::Oldest);
}

fn two_members_of_one_group_split_its_partitions_and_commit(versions: Versions) {
    let broker = Broker::start("");
    local(async {
        let client = client_at(vec![broker.address.clone()], Duration::from_secs(10), versions.caps());
        client.create_topics(&[new_topic("grouped", 4)]).await.unwrap();
        let config = GroupConfig { session_timeout: Duration::from_secs(10), ..GroupConfig::default() };
        let a = GroupMember::new(&client, "splitters", &["grouped"], config.clone());
        let b = GroupMember::new(&client, "splitters", &["grouped"], config);
        let (first_a, first_b) = futures::join!(a.join(), b.join());
        let (mut assigned_a, mut assigned_b) = (first_a.unwrap(), first_b.unwrap());
        // Should the two joins land in different generations, the first learns of the second by heartbeat.
        // Bounded: at most 5 rebalances.
        for _ in 0..5 {
            if assigned_a.generation == assigned_b.generation {
                break;
            }
            let (hb_a, hb_b) = futures::join!(a.heartbeat(), b.heartbeat());
            if hb_a.is_err() || hb_b.is_err() {
                let (ja, jb) = futures::join!(a.join(), b.join());
                (assigned_a, assigned_b) = (ja.unwrap(), jb.unwrap());
            }
        }
        assert_eq!(assigned_a.generation, assigned_b.generation);
        let mut all: Vec<i32> =
            assigned_a.partitions["grouped"].iter().chain(&assigned_b.partitions["grouped"]).copied().collect();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3], "disjoint and complete: {assigned_a:?} {assigned_b:?}");
        assert_eq!(assigned_a.partitions["grouped"].len(), 2);
        a.heartbeat().await.unwrap();
        b.heartbeat().await.unwrap();

        let offsets: Vec<PartitionOffset> =
            assigned_a.partitions["grouped"].iter().map(|p| PartitionOffset::new("grouped", *p, 7)).collect();
        a.commit(&offsets).await.unwrap();
        let committed = a.committed(&assigned_a.partitions).await.unwrap();
        assert_eq!(committed.iter().map(|o| o.offset).collect::<Vec<_>>(), [7, 7]);

        let described = client.describe_group("splitters").await.unwrap();
        assert_eq!(
            (described.state.as_str(), described.members.len(), described.protocol.as_str()),
            ("Stable", 2, "range")
        );
        assert_eq!(
            client.list_groups().await.unwrap().iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(),
            ["splitters"]
        );
        let busy = client.delete_groups(&["splitters"]).await.unwrap_err();
        assert_eq!(busy.kafka(), Some(ResponseError::NonEmptyGroup));
        let stale = client.commit_offsets("splitters", &offsets).await.unwrap_err();
        assert!(stale.kafka().is_some(), "a standalone commit to a running group is refused: {stale}");

        // b leaves; a's next heartbeat says rebalance, and a rejoins with all four.
        b.leave().await.unwrap();
        let rebalance = a.heartbeat().await.unwrap_err();
        assert_eq!(rebalance.kafka(), Some(ResponseError::RebalanceInProgress));
        let alone = a.join().await.unwrap();
        assert_eq!(alone.partitions["grouped"], [0, 1, 2, 3]);
        a.leave().await.unwrap();

        client.delete_offsets("splitters", "grouped", &[0]).await.unwrap();
        let left = client.fetch_offsets("splitters", None).await.unwrap();
        assert!(left.iter().all(|o| o.partition != 0 || o.offset == -1), "{left:?}");
        client.delete_groups(&["splitters"]).await.unwrap();
        assert!(client.list_groups().await.unwrap().is_empty());
    });
}
