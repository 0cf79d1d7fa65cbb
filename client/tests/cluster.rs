//! The client against a real three-broker cluster: a topic used right after
//! its creation through another broker, produce retried through a killed
//! leader (idempotent: nothing twice, nothing lost), coordinator routing.

mod common;

use std::time::Duration;

use common::{client, eventually, local, Cluster};
use tributary_client::*;

const FAILOVER: Duration = Duration::from_secs(45);

#[test]
fn produce_follows_a_new_topic_and_a_killed_leader() {
    let mut cluster = Cluster::start();
    local(async {
        let admin = client(vec![cluster.brokers[0].address.clone()], FAILOVER);
        eventually("three brokers in metadata", Duration::from_secs(30), || async {
            admin.metadata(Some(&[])).await.ok().filter(|m| m.brokers.len() == 3)
        })
        .await;
        let topic = NewTopic { name: "moving".into(), partitions: 3, replication_factor: 3, configs: Vec::new() };
        // Metadata may list a broker the controller has not registered yet: until it has, three replicas are refused.
        eventually("a topic with three replicas", Duration::from_secs(30), || async {
            match admin.create_topics(std::slice::from_ref(&topic)).await {
                Ok(()) => Some(()),
                Err(e) if e.kafka() == Some(ResponseError::InvalidReplicationFactor) => None,
                Err(e) => panic!("creating the topic: {e}"),
            }
        })
        .await;

        // Through broker 3 only, at once: it may not know the topic yet (UNKNOWN_TOPIC_OR_PARTITION, retried).
        let writer = client(vec![cluster.brokers[2].address.clone()], FAILOVER);
        let producer = Producer::idempotent(writer.clone(), ProducerConfig::default());
        let batch = |i: usize| vec![NewRecord::value(format!("r{i}"))];
        let mut acknowledged = Vec::new();
        // Bounded: 20 batches before the kill, 20 after.
        for i in 0..20 {
            acknowledged.push(producer.send("moving", 0, &batch(i)).await.unwrap().unwrap());
        }
        let leader = writer.topic("moving").await.unwrap().leader(0).unwrap();
        cluster.broker(leader).kill();
        let killed = std::time::Instant::now();
        for i in 20..40 {
            let offset =
                producer.send("moving", 0, &batch(i)).await.unwrap_or_else(|e| panic!("batch {i} after the kill: {e}"));
            acknowledged.push(offset.unwrap());
            if i == 20 {
                println!("the first batch after the kill was acknowledged after {:?}", killed.elapsed());
            }
        }
        assert_eq!(acknowledged, (0..40).collect::<Vec<i64>>(), "each batch once, in order");
        let new_leader = writer.topic("moving").await.unwrap().leader(0).unwrap();
        assert_ne!(new_leader, leader);

        let survivor = cluster.brokers.iter().find(|b| b.node_id != leader).unwrap().address.clone();
        let reader = client(vec![survivor], FAILOVER);
        let fetched = reader.fetch("moving", &[(0, 0)], &FetchOptions::default()).await.unwrap();
        let values: Vec<String> = fetched[0]
            .records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned())
            .collect();
        assert_eq!(values, (0..40).map(|i| format!("r{i}")).collect::<Vec<_>>());

        // Group requests find the group's coordinator from any broker (a
        // group stays on one broker, which may be the one killed: back it comes).
        cluster.broker(leader).run();
        let member = GroupMember::new(&reader, "cluster-group", &["moving"], GroupConfig::default());
        let assignment = member.join().await.unwrap();
        assert_eq!(assignment.partitions["moving"], [0, 1, 2]);
        member.commit(&[PartitionOffset::new("moving", 0, 40)]).await.unwrap();
        let committed = reader.fetch_offsets("cluster-group", None).await.unwrap();
        assert!(
            committed
                .contains(&PartitionOffset { metadata: Some(String::new()), ..PartitionOffset::new("moving", 0, 40) }),
            "{committed:?}"
        );
        member.leave().await.unwrap();
    });
}
