//! Every API at every version we advertise: a representative request goes
//! through `handle_frame`, and the response must decode at that same version
//! with the request's correlation id and no error. `kafka-protocol` refuses to
//! encode fields a version lacks, so this catches a handler that sets one.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use tributary_actors::{encode_batch, NewRecord};

use super::{handle_frame, topic_name, RequestContext, SUPPORTED_APIS};

fn frame<T: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &T) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("version-test")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, api.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap_or_else(|e| panic!("test request {api:?} v{version}: {e}"));
    buf.freeze()
}

/// Decodes a response frame (with its length prefix) at `version`.
fn response<T: Decodable>(api: ApiKey, version: i16, correlation_id: i32, bytes: Bytes) -> T {
    let mut buf = bytes.slice(4..);
    assert_eq!(u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, buf.len(), "length prefix");
    let header = ResponseHeader::decode(&mut buf, api.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation_id, "{api:?} v{version} correlation id");
    let body = T::decode(&mut buf, version).unwrap_or_else(|e| panic!("{api:?} v{version} response: {e}"));
    assert!(buf.is_empty(), "{api:?} v{version}: {} bytes left after the response", buf.len());
    body
}

async fn call<Req: Encodable, Resp: Decodable>(ctx: &RequestContext, api: ApiKey, version: i16, req: &Req) -> Resp {
    let correlation_id = 1000 + version as i32;
    let bytes = handle_frame(ctx, frame(api, version, correlation_id, req), "127.0.0.1")
        .await
        .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"))
        .unwrap_or_else(|| panic!("{api:?} v{version}: no response"));
    response(api, version, correlation_id, bytes)
}

fn versions(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (_, min, max) = SUPPORTED_APIS.iter().find(|(k, _, _)| *k == api).unwrap();
    *min..=*max
}

#[test]
fn every_api_answers_at_every_advertised_version() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    actix::System::new().block_on(async move {
        let ctx = super::test_context(&data_dir);
        let broker = ctx.broker.clone();
        broker.create_topic("cov", 1, BTreeMap::new()).await.unwrap();
        let batch = encode_batch(&[NewRecord::new("k", "v")], Compression::None, 1_000).unwrap();

        for v in versions(ApiKey::ApiVersions) {
            let r: ApiVersionsResponse = call(&ctx, ApiKey::ApiVersions, v, &ApiVersionsRequest::default()).await;
            assert_eq!(r.error_code, 0);
            assert_eq!(r.api_keys.len(), SUPPORTED_APIS.len());
        }
        for v in versions(ApiKey::Produce) {
            let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
                TopicProduceData::default().with_name(topic_name("cov")).with_partition_data(vec![
                    PartitionProduceData::default().with_index(0).with_records(Some(batch.clone())),
                ]),
            ]);
            let r: ProduceResponse = call(&ctx, ApiKey::Produce, v, &req).await;
            let p = &r.responses[0].partition_responses[0];
            assert_eq!((p.error_code, p.base_offset), (0, (v - 3) as i64), "Produce v{v}");
        }
        for v in versions(ApiKey::Fetch) {
            let req = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
                FetchTopic::default().with_topic(topic_name("cov")).with_partitions(vec![FetchPartition::default()
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)]),
            ]);
            let r: FetchResponse = call(&ctx, ApiKey::Fetch, v, &req).await;
            let p = &r.responses[0].partitions[0];
            assert_eq!(p.error_code, 0, "Fetch v{v}");
            assert_eq!(p.high_watermark, 7, "Fetch v{v}: seven produce versions wrote one record each");
            assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
        }
        for v in versions(ApiKey::ListOffsets) {
            let mut partitions = vec![
                ListOffsetsPartition::default().with_timestamp(-1),
                ListOffsetsPartition::default().with_timestamp(-2),
                ListOffsetsPartition::default().with_timestamp(500),
            ];
            if v >= 7 {
                partitions.push(ListOffsetsPartition::default().with_timestamp(-3));
            }
            let req = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
                ListOffsetsTopic::default().with_name(topic_name("cov")).with_partitions(partitions),
            ]);
            let r: ListOffsetsResponse = call(&ctx, ApiKey::ListOffsets, v, &req).await;
            let offsets: Vec<_> = r.topics[0].partitions.iter().map(|p| (p.error_code, p.offset)).collect();
            assert_eq!(&offsets[..3], &[(0, 7), (0, 0), (0, 0)], "ListOffsets v{v}");
        }
        for v in versions(ApiKey::Metadata) {
            let topics = Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name("cov")))]);
            let req = MetadataRequest::default().with_topics(topics);
            let r: MetadataResponse = call(&ctx, ApiKey::Metadata, v, &req).await;
            assert_eq!(r.brokers.len(), 1);
            assert_eq!((r.topics[0].error_code, r.topics[0].partitions.len()), (0, 1), "Metadata v{v}");
        }
        for v in versions(ApiKey::CreateTopics) {
            let name = format!("created-v{v}");
            let req = CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(&name))
                .with_num_partitions(2)
                .with_replication_factor(1)]);
            let r: CreateTopicsResponse = call(&ctx, ApiKey::CreateTopics, v, &req).await;
            assert_eq!(r.topics[0].error_code, 0, "CreateTopics v{v}");
        }
        for v in versions(ApiKey::CreatePartitions) {
            let name = format!("created-v{}", 2 + v);
            let req = CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![CreatePartitionsTopic::default().with_name(topic_name(&name)).with_count(3)]);
            let r: CreatePartitionsResponse = call(&ctx, ApiKey::CreatePartitions, v, &req).await;
            assert_eq!(r.results[0].error_code, 0, "CreatePartitions v{v}");
        }
        for v in versions(ApiKey::DescribeConfigs) {
            let req = DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("cov")),
                DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_static_str("0")),
            ]);
            let r: DescribeConfigsResponse = call(&ctx, ApiKey::DescribeConfigs, v, &req).await;
            assert!(r.results.iter().all(|res| res.error_code == 0 && !res.configs.is_empty()), "DescribeConfigs v{v}");
        }
        for v in versions(ApiKey::DeleteTopics) {
            let name = format!("created-v{}", v + 1);
            let req = DeleteTopicsRequest::default().with_timeout_ms(5000).with_topic_names(vec![topic_name(&name)]);
            let r: DeleteTopicsResponse = call(&ctx, ApiKey::DeleteTopics, v, &req).await;
            assert_eq!(r.responses[0].error_code, 0, "DeleteTopics v{v}");
        }
    });
}
