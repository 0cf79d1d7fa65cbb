//! WriteTxnMarkers (broker to broker): a transaction coordinator ends a
//! producer's transaction on the partitions this broker leads (a control
//! batch each, replicated before the answer) and on the groups it
//! coordinates (their pending transactional offsets become committed or go).

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::ResponseError as E;
use tributary_actors::{Marker, WriteMarker};

use super::RequestContext;
use crate::txn::{OFFSETS_TOPIC, STATE_TOPIC};


pub async fn handle(ctx: &RequestContext, req: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    let mut results = Vec::with_capacity(req.markers.len());
    for m in req.markers {
        let marker = Marker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        let mut topics = Vec::with_capacity(m.topics.len());
        for topic in m.topics {
            // Every partition's marker is queued before any is awaited.
            let mut pending = Vec::new();
            for index in topic.partition_indexes {
                let name = topic.name.0.as_str();
                let answer: futures::future::LocalBoxFuture<'static, i16> = if name == OFFSETS_TOPIC {
                    let groups = ctx.broker.groups().clone();
                    let (producer_id, commit) = (marker.producer_id, marker.commit);
                    Box::pin(async move {
                        match groups.send(tributary_actors::group_registry::CompleteTxnOffsets { producer_id, commit }).await {
                            Ok(Ok(_)) => 0,
                            _ => E::CoordinatorNotAvailable.code(),
                        }
                    })
                } else if name == STATE_TOPIC {
                    Box::pin(async { E::InvalidRequest.code() })
                } else {
                    match ctx.broker.metadata().partition(name, index) {
                        None => Box::pin(async { E::UnknownTopicOrPartition.code() }),
                        Some(handle) => {
                            let sent = handle.addr.send(WriteMarker(marker));
                            Box::pin(async move {
                                match sent.await {
                                    Ok(Ok(_)) => 0,
                                    Ok(Err(e)) => e.error_code(),
                                    Err(_) => E::NotLeaderOrFollower.code(),
                                }
                            })
                        }
                    }
                };
                pending.push((index, answer));
            }
            let mut partitions = Vec::with_capacity(pending.len());
            for (index, answer) in pending {
                let code = answer.await;
                if code != 0 {
                    tracing::debug!(topic = %topic.name.0, partition = index, code, "transaction marker not written");
                }
                partitions.push(WritableTxnMarkerPartitionResult::default().with_partition_index(index).with_error_code(code));
            }
            topics.push(WritableTxnMarkerTopicResult::default().with_name(topic.name).with_partitions(partitions));
        }
        results.push(WritableTxnMarkerResult::default().with_producer_id(m.producer_id).with_topics(topics));
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}

super::registry::api! {
    WriteTxnMarkers: WriteTxnMarkersRequest => WriteTxnMarkersResponse, versions 1..=1, access Cluster ClusterAction,
    |call, request| handle(&call.ctx, request).await
}
