//! DescribeProducers: the producers a partition's leader remembers, with the
//! start of each one's open transaction there (how hanging transactions are
//! found; `tributary transactions abort` ends one).

use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::ResponseError as E;

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: DescribeProducersRequest) -> DescribeProducersResponse {
    let snapshot = ctx.broker.metadata();
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
        for index in topic.partition_indexes {
            let response = PartitionResponse::default().with_partition_index(index);
            let handle = snapshot.partition(&topic.name, index);
            let answer = match (super::leader_epoch(handle), handle) {
                (Ok(_), Some(handle)) => match handle.addr.send(tributary_actors::DescribeProducers).await {
                    Ok(answer) => answer.map_err(|e| e.error_code()),
                    Err(_) => Err(E::NotLeaderOrFollower.code()),
                },
                (Err(code), _) => Err(code),
                (Ok(_), None) => Err(E::UnknownTopicOrPartition.code()),
            };
            partitions.push(match answer {
                Ok(producers) => response.with_active_producers(
                    producers
                        .into_iter()
                        .map(|(id, s)| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(id))
                                .with_producer_epoch(i32::from(s.epoch))
                                .with_last_sequence(s.batches.last().map_or(-1, |b| b.last_seq))
                                .with_last_timestamp(s.last_append_ms)
                                .with_coordinator_epoch(s.coordinator_epoch)
                                .with_current_txn_start_offset(s.txn_first_offset.unwrap_or(-1))
                        })
                        .collect(),
                ),
                Err(code) => response.with_error_code(code),
            });
        }
        topics.push(TopicResponse::default().with_name(topic.name).with_partitions(partitions));
    }
    DescribeProducersResponse::default().with_topics(topics)
}

super::registry::api! {
    DescribeProducers: DescribeProducersRequest => DescribeProducersResponse, versions 0..=0, access Topic Read,
    |call, request| handle(&call.ctx, request).await
}
