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

use super::{handle_frame, topic_name, RequestContext, Session, APIS};

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

fn test_session() -> std::sync::Arc<Session> {
    std::sync::Arc::new(Session::new("127.0.0.1:40000".parse().unwrap(), "PLAINTEXT"))
}

async fn call<Req: Encodable, Resp: Decodable>(
    ctx: &std::sync::Arc<RequestContext>,
    api: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    let correlation_id = 1000 + version as i32;
    let bytes = handle_frame(ctx, &test_session(), frame(api, version, correlation_id, req))
        .await
        .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"))
        .unwrap_or_else(|| panic!("{api:?} v{version}: no response"));
    response(api, version, correlation_id, bytes)
}

fn versions(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let entry = APIS.iter().find(|e| e.key == api).unwrap();
    entry.min..=entry.max
}

#[test]
fn every_api_answers_at_every_advertised_version() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    actix::System::new().block_on(async move {
        let ctx = super::test_context(&data_dir).await;
        let broker = ctx.broker.clone();
        ctx.cluster.create_topic(&broker, "cov", 1, 1, BTreeMap::new()).await.unwrap();
        let batch = encode_batch(&[NewRecord::keyed("k", "v")], Compression::None, 1_000, None).unwrap();

        for v in versions(ApiKey::ApiVersions) {
            let r: ApiVersionsResponse = call(&ctx, ApiKey::ApiVersions, v, &ApiVersionsRequest::default()).await;
            assert_eq!(r.error_code, 0);
            assert_eq!(r.api_keys.len(), APIS.len());
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
        let mut ids = Vec::new();
        for v in versions(ApiKey::InitProducerId) {
            let r: InitProducerIdResponse =
                call(&ctx, ApiKey::InitProducerId, v, &InitProducerIdRequest::default().with_transactional_id(None))
                    .await;
            assert_eq!((r.error_code, r.producer_epoch), (0, 0), "InitProducerId v{v}");
            ids.push(r.producer_id.0);
        }
        ids.dedup();
        assert_eq!(ids.len(), versions(ApiKey::InitProducerId).count(), "every call gets a new producer id");
        for v in versions(ApiKey::AlterConfigs) {
            use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
            let req = AlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("cov"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_string(format!("{}", 60_000 + v as i64))))])]);
            let r: AlterConfigsResponse = call(&ctx, ApiKey::AlterConfigs, v, &req).await;
            assert_eq!(r.responses[0].error_code, 0, "AlterConfigs v{v}");
            assert_eq!(ctx.broker.metadata().topic("cov").unwrap().config.retention_ms, 60_000 + v as i64);
        }
        for v in versions(ApiKey::IncrementalAlterConfigs) {
            use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
            let set = |name: &'static str, value: &str, op: i8| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_static_str(name))
                    .with_config_operation(op)
                    .with_value(Some(StrBytes::from_string(value.to_string())))
            };
            let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("cov"))
                    .with_configs(vec![set("retention.bytes", "1000000", 0), set("retention.ms", "", 1)]),
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("cov"))
                    .with_configs(vec![set("retention.ms", "later", 0)]),
            ]);
            let r: IncrementalAlterConfigsResponse = call(&ctx, ApiKey::IncrementalAlterConfigs, v, &req).await;
            let codes: Vec<i16> = r.responses.iter().map(|r| r.error_code).collect();
            assert_eq!(
                codes,
                vec![0, kafka_protocol::ResponseError::InvalidConfig.code()],
                "IncrementalAlterConfigs v{v}"
            );
            let topic = ctx.broker.metadata().topic("cov").cloned().unwrap();
            assert_eq!(
                (topic.config.retention_bytes, topic.overrides.contains_key("retention.ms")),
                (1_000_000, false)
            );
        }
        for v in versions(ApiKey::DeleteRecords) {
            use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
            let req =
                DeleteRecordsRequest::default().with_timeout_ms(5000).with_topics(vec![DeleteRecordsTopic::default()
                    .with_name(topic_name("cov"))
                    .with_partitions(vec![
                        DeleteRecordsPartition::default().with_partition_index(0).with_offset(1 + v as i64),
                        DeleteRecordsPartition::default().with_partition_index(0).with_offset(999),
                    ])]);
            let r: DeleteRecordsResponse = call(&ctx, ApiKey::DeleteRecords, v, &req).await;
            let got: Vec<(i16, i64)> = r.topics[0].partitions.iter().map(|p| (p.error_code, p.low_watermark)).collect();
            let out_of_range = kafka_protocol::ResponseError::OffsetOutOfRange.code();
            assert_eq!(got, vec![(0, 1 + v as i64), (out_of_range, -1)], "DeleteRecords v{v}");
        }
        for v in versions(ApiKey::DescribeCluster) {
            let r: DescribeClusterResponse =
                call(&ctx, ApiKey::DescribeCluster, v, &DescribeClusterRequest::default().with_endpoint_type(1)).await;
            assert_eq!((r.error_code, r.brokers.len(), r.controller_id.0), (0, 1, 0), "DescribeCluster v{v}");
        }
        for v in versions(ApiKey::DescribeLogDirs) {
            let r: DescribeLogDirsResponse =
                call(&ctx, ApiKey::DescribeLogDirs, v, &DescribeLogDirsRequest::default().with_topics(None)).await;
            let cov = r.results[0].topics.iter().find(|t| t.name.0.as_str() == "cov").expect("cov listed");
            assert!(cov.partitions[0].partition_size > 0, "DescribeLogDirs v{v}");
            assert_eq!(r.results[0].total_bytes > 0, v >= 4);
        }
        for v in versions(ApiKey::DeleteTopics) {
            let name = format!("created-v{}", v + 1);
            let req = DeleteTopicsRequest::default().with_timeout_ms(5000).with_topic_names(vec![topic_name(&name)]);
            let r: DeleteTopicsResponse = call(&ctx, ApiKey::DeleteTopics, v, &req).await;
            assert_eq!(r.responses[0].error_code, 0, "DeleteTopics v{v}");
        }
    });
}

mod groups {
    use super::*;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    use kafka_protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::ResponseError as E;

    fn join_request(member_id: &str, instance: Option<&str>, v: i16) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(if v >= 1 { 10_000 } else { -1 })
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_group_instance_id(instance.map(|i| StrBytes::from_string(i.to_string())))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"\x00\x01\x00\x00\x00\x01\x00\x03cov\xff\xff\xff\xff"))])
    }

    /// Joins `group` alone at JoinGroup version `v` and returns (member id, generation).
    async fn join_alone(ctx: &std::sync::Arc<RequestContext>, group: &str, v: i16) -> (String, i32) {
        let mut member = String::new();
        for _ in 0..2 {
            let req = join_request(&member, None, v).with_group_id(GroupId(StrBytes::from_string(group.into())));
            let r: JoinGroupResponse = call(ctx, ApiKey::JoinGroup, v, &req).await;
            if r.error_code == E::MemberIdRequired.code() {
                assert!(v >= 4, "MEMBER_ID_REQUIRED only from v4");
                member = r.member_id.to_string();
                continue;
            }
            assert_eq!(r.error_code, 0, "JoinGroup v{v}");
            assert_eq!(r.leader, r.member_id, "a lone member leads");
            assert_eq!(r.members.len(), 1);
            return (r.member_id.to_string(), r.generation_id);
        }
        panic!("JoinGroup v{v} did not complete");
    }

    fn group_id(name: &str) -> GroupId {
        GroupId(StrBytes::from_string(name.to_string()))
    }

    #[test]
    fn every_group_api_answers_at_every_advertised_version() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        actix::System::new().block_on(async move {
            let ctx = super::super::test_context_with(&data_dir, "[groups]\ninitial_rebalance_delay_ms = 0\n").await;
            ctx.cluster.create_topic(&ctx.broker, "cov", 2, 1, BTreeMap::new()).await.unwrap();

            for v in versions(ApiKey::FindCoordinator) {
                let req = FindCoordinatorRequest::default()
                    .with_key(if v < 4 { StrBytes::from_static_str("g") } else { StrBytes::default() })
                    .with_coordinator_keys(if v >= 4 { vec![StrBytes::from_static_str("g")] } else { vec![] });
                let r: FindCoordinatorResponse = call(&ctx, ApiKey::FindCoordinator, v, &req).await;
                let node = if v >= 4 { r.coordinators[0].node_id.0 } else { r.node_id.0 };
                assert_eq!(node, 0, "FindCoordinator v{v}");
            }
            for v in versions(ApiKey::JoinGroup) {
                let group = format!("join-v{v}");
                let (member, generation) = join_alone(&ctx, &group, v).await;
                let sv = v.min(5);
                let sync = SyncGroupRequest::default()
                    .with_group_id(group_id(&group))
                    .with_generation_id(generation)
                    .with_member_id(StrBytes::from_string(member.clone()))
                    .with_assignments(vec![SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member.clone()))
                        .with_assignment(Bytes::from_static(b"assigned"))]);
                let r: SyncGroupResponse = call(&ctx, ApiKey::SyncGroup, sv, &sync).await;
                assert_eq!((r.error_code, r.assignment.as_ref()), (0, &b"assigned"[..]), "SyncGroup v{sv}");
                let hv = v.min(4);
                let beat = HeartbeatRequest::default()
                    .with_group_id(group_id(&group))
                    .with_generation_id(generation)
                    .with_member_id(StrBytes::from_string(member.clone()));
                let r: HeartbeatResponse = call(&ctx, ApiKey::Heartbeat, hv, &beat).await;
                assert_eq!(r.error_code, 0, "Heartbeat v{hv}");
                // Bad input: stale generation, unknown member, unknown group.
                let stale = beat.clone().with_generation_id(generation - 1);
                let r: HeartbeatResponse = call(&ctx, ApiKey::Heartbeat, hv, &stale).await;
                assert_eq!(r.error_code, E::IllegalGeneration.code());
                let stranger = beat.clone().with_member_id(StrBytes::from_static_str("nobody"));
                let r: HeartbeatResponse = call(&ctx, ApiKey::Heartbeat, hv, &stranger).await;
                assert_eq!(r.error_code, E::UnknownMemberId.code());
                let lost = beat.clone().with_group_id(group_id("no-such-group"));
                let r: HeartbeatResponse = call(&ctx, ApiKey::Heartbeat, hv, &lost).await;
                assert_eq!(r.error_code, E::UnknownMemberId.code());

                let lv = v.min(5);
                let leave = if lv >= 3 {
                    LeaveGroupRequest::default().with_group_id(group_id(&group)).with_members(vec![
                        MemberIdentity::default().with_member_id(StrBytes::from_string(member.clone())),
                    ])
                } else {
                    LeaveGroupRequest::default()
                        .with_group_id(group_id(&group))
                        .with_member_id(StrBytes::from_string(member))
                };
                let r: LeaveGroupResponse = call(&ctx, ApiKey::LeaveGroup, lv, &leave).await;
                let code = if lv >= 3 { r.members[0].error_code } else { r.error_code };
                assert_eq!(code, 0, "LeaveGroup v{lv}");
            }

            let (member, generation) = join_alone(&ctx, "committer", 5).await;
            // Commits during CompletingRebalance get REBALANCE_IN_PROGRESS, as in Kafka: sync first.
            let sync = SyncGroupRequest::default()
                .with_group_id(group_id("committer"))
                .with_generation_id(generation)
                .with_member_id(StrBytes::from_string(member.clone()));
            let r: SyncGroupResponse = call(&ctx, ApiKey::SyncGroup, 3, &sync).await;
            assert_eq!(r.error_code, 0);
            let partitions = |offset: i64| {
                vec![OffsetCommitRequestTopic::default().with_name(topic_name("cov")).with_partitions(vec![
                    OffsetCommitRequestPartition::default().with_partition_index(1).with_committed_offset(offset),
                    OffsetCommitRequestPartition::default().with_partition_index(9).with_committed_offset(offset),
                ])]
            };
            for v in versions(ApiKey::OffsetCommit) {
                let req = OffsetCommitRequest::default()
                    .with_group_id(group_id("committer"))
                    .with_generation_id_or_member_epoch(generation)
                    .with_member_id(StrBytes::from_string(member.clone()))
                    .with_topics(partitions(100 + v as i64));
                let r: OffsetCommitResponse = call(&ctx, ApiKey::OffsetCommit, v, &req).await;
                let codes: Vec<i16> = r.topics[0].partitions.iter().map(|p| p.error_code).collect();
                assert_eq!(codes, vec![0, E::UnknownTopicOrPartition.code()], "OffsetCommit v{v}");
                let stale = req.clone().with_generation_id_or_member_epoch(generation + 5);
                let r: OffsetCommitResponse = call(&ctx, ApiKey::OffsetCommit, v, &stale).await;
                assert_eq!(r.topics[0].partitions[0].error_code, E::IllegalGeneration.code());
            }
            for v in versions(ApiKey::OffsetFetch) {
                let topics = vec![OffsetFetchRequestTopic::default()
                    .with_name(topic_name("cov"))
                    .with_partition_indexes(vec![0, 1])];
                let req = OffsetFetchRequest::default().with_group_id(group_id("committer")).with_topics(Some(topics));
                let r: OffsetFetchResponse = call(&ctx, ApiKey::OffsetFetch, v, &req).await;
                let got: Vec<(i32, i64)> =
                    r.topics[0].partitions.iter().map(|p| (p.partition_index, p.committed_offset)).collect();
                assert_eq!(got, vec![(0, -1), (1, 108)], "OffsetFetch v{v}");
            }
            for v in versions(ApiKey::DescribeGroups) {
                let req = DescribeGroupsRequest::default().with_groups(vec![group_id("committer"), group_id("ghost")]);
                let r: DescribeGroupsResponse = call(&ctx, ApiKey::DescribeGroups, v, &req).await;
                assert_eq!(r.groups[0].group_state.as_str(), "Stable", "DescribeGroups v{v}");
                assert_eq!(r.groups[0].members.len(), 1);
                assert_eq!(r.groups[1].group_state.as_str(), "Dead");
            }
            for v in versions(ApiKey::ListGroups) {
                let r: ListGroupsResponse = call(&ctx, ApiKey::ListGroups, v, &ListGroupsRequest::default()).await;
                assert!(r.groups.iter().any(|g| g.group_id.0.as_str() == "committer"), "ListGroups v{v}");
            }
            for v in versions(ApiKey::OffsetDelete) {
                let req = OffsetDeleteRequest::default().with_group_id(group_id("committer")).with_topics(vec![
                    OffsetDeleteRequestTopic::default()
                        .with_name(topic_name("cov"))
                        .with_partitions(vec![OffsetDeleteRequestPartition::default().with_partition_index(1)]),
                ]);
                let r: OffsetDeleteResponse = call(&ctx, ApiKey::OffsetDelete, v, &req).await;
                // The member subscribes to "cov": its offsets are in use.
                assert_eq!(r.topics[0].partitions[0].error_code, E::GroupSubscribedToTopic.code(), "OffsetDelete v{v}");
            }
            for v in versions(ApiKey::DeleteGroups) {
                let req = DeleteGroupsRequest::default().with_groups_names(vec![
                    group_id("committer"),
                    group_id(&format!("join-v{v}")),
                    group_id("ghost"),
                ]);
                let r: DeleteGroupsResponse = call(&ctx, ApiKey::DeleteGroups, v, &req).await;
                let codes: Vec<i16> = r.results.iter().map(|g| g.error_code).collect();
                assert_eq!(codes, vec![E::NonEmptyGroup.code(), 0, E::GroupIdNotFound.code()], "DeleteGroups v{v}");
            }
        });
    }
}

/// One registry line per API key, and what ApiVersions v3 says about the
/// client stays in the connection's session.
#[test]
fn the_registry_is_the_one_list_and_sessions_keep_the_client() {
    let mut keys: Vec<i16> = APIS.iter().map(|e| e.key as i16).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), APIS.len(), "an API key is registered twice");
    assert!(APIS.iter().all(|e| e.min <= e.max));

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    actix::System::new().block_on(async move {
        let ctx = super::test_context(&data_dir).await;
        let session = test_session();
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("librdkafka"))
            .with_client_software_version(StrBytes::from_static_str("2.12.1"));
        let bytes = handle_frame(&ctx, &session, frame(ApiKey::ApiVersions, 3, 7, &req)).await.unwrap().unwrap();
        let r: ApiVersionsResponse = response(ApiKey::ApiVersions, 3, 7, bytes);
        assert_eq!(r.error_code, 0);
        let client = session.client_software();
        assert_eq!(
            (client.client_id.as_str(), client.name.as_str(), client.version.as_str()),
            ("version-test", "librdkafka", "2.12.1")
        );

        // A version past ours is answered in v0 with UNSUPPORTED_VERSION and our ranges (KIP-511).
        let mut future = BytesMut::from(&frame(ApiKey::ApiVersions, 3, 9, &req)[..]);
        future[2..4].copy_from_slice(&99i16.to_be_bytes());
        let bytes = handle_frame(&ctx, &session, future.freeze()).await.unwrap().unwrap();
        let r: ApiVersionsResponse = response(ApiKey::ApiVersions, 0, 9, bytes);
        assert_eq!(r.error_code, kafka_protocol::ResponseError::UnsupportedVersion.code());
        assert_eq!(r.api_keys.len(), APIS.len());
    });
}

/// The SASL and SCRAM-credential APIs at every advertised version: a user is
/// created through AlterUserScramCredentials, described, and authenticates
/// with PLAIN on a SASL session, which serves nothing else before that.
#[test]
fn sasl_and_scram_credential_apis_at_every_version() {
    use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
    use kafka_protocol::ResponseError as E;

    use crate::cluster::metadata::ScramMechanism;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    actix::System::new().block_on(async move {
        let ctx = super::test_context_with(&data_dir, "[security]\nfailed_authentication_delay_ms = 1\n").await;
        for v in versions(ApiKey::AlterUserScramCredentials) {
            let salt = b"salt-of-alice".to_vec();
            let salted = crate::security::scram::salted_password(ScramMechanism::Sha512, b"pw", &salt, 4096);
            let upsert = |iterations| {
                ScramCredentialUpsertion::default()
                    .with_name(StrBytes::from_static_str("alice"))
                    .with_mechanism(ScramMechanism::Sha512.code())
                    .with_iterations(iterations)
                    .with_salt(salt.clone().into())
                    .with_salted_password(salted.clone().into())
            };
            let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert(4096)]);
            let r: AlterUserScramCredentialsResponse = call(&ctx, ApiKey::AlterUserScramCredentials, v, &req).await;
            assert_eq!(r.results[0].error_code, 0, "{:?}", r.results[0].error_message);
            let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert(100)]);
            let r: AlterUserScramCredentialsResponse = call(&ctx, ApiKey::AlterUserScramCredentials, v, &req).await;
            assert_eq!(r.results[0].error_code, E::UnacceptableCredential.code(), "too few iterations");
        }
        for v in versions(ApiKey::DescribeUserScramCredentials) {
            let req = DescribeUserScramCredentialsRequest::default().with_users(None);
            let r: DescribeUserScramCredentialsResponse = call(&ctx, ApiKey::DescribeUserScramCredentials, v, &req).await;
            assert_eq!(r.results.len(), 1);
            assert_eq!(r.results[0].credential_infos[0].iterations, 4096);
        }
        for handshake in versions(ApiKey::SaslHandshake) {
            for v in versions(ApiKey::SaslAuthenticate) {
                let session = std::sync::Arc::new(Session::with_security(
                    "127.0.0.1:40001".parse().unwrap(),
                    "SASL_PLAINTEXT",
                    crate::security::Principal::anonymous(),
                    true,
                ));
                let metadata = frame(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
                assert!(handle_frame(&ctx, &session, metadata.clone()).await.is_err(), "nothing before authenticating");
                let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
                let bytes = handle_frame(&ctx, &session, frame(ApiKey::SaslHandshake, handshake, 2, &req)).await;
                let r: SaslHandshakeResponse = response(ApiKey::SaslHandshake, handshake, 2, bytes.unwrap().unwrap());
                assert_eq!(r.error_code, 0);
                assert!(r.mechanisms.iter().any(|m| m.as_str() == "SCRAM-SHA-512"));
                if handshake == 0 {
                    // The token is a frame of its own, and so is the (empty, for PLAIN) answer.
                    let token = Bytes::from_static(b"\0alice\0pw");
                    let answer = handle_frame(&ctx, &session, token).await.unwrap().unwrap();
                    assert_eq!(answer.as_ref(), &[0, 0, 0, 0], "SaslHandshake v0: a raw, empty token back");
                } else {
                    let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0alice\0pw"));
                    let bytes = handle_frame(&ctx, &session, frame(ApiKey::SaslAuthenticate, v, 3, &req)).await;
                    let r: SaslAuthenticateResponse = response(ApiKey::SaslAuthenticate, v, 3, bytes.unwrap().unwrap());
                    assert_eq!(r.error_code, 0, "SaslAuthenticate v{v}: {:?}", r.error_message);
                }
                assert_eq!(session.principal(), crate::security::Principal::user("alice"));
                assert!(handle_frame(&ctx, &session, metadata).await.is_ok(), "served once authenticated");
                // Re-authenticating keeps the mechanism (KIP-368).
                let other = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512"));
                let bytes = handle_frame(&ctx, &session, frame(ApiKey::SaslHandshake, 1, 4, &other)).await;
                let r: SaslHandshakeResponse = response(ApiKey::SaslHandshake, 1, 4, bytes.unwrap().unwrap());
                assert_eq!(r.error_code, E::UnsupportedSaslMechanism.code());
                assert!(session.failed(), "and the connection closes");
            }
        }
        // A wrong password fails the session; nothing is served on it after.
        let session = std::sync::Arc::new(Session::with_security(
            "127.0.0.1:40002".parse().unwrap(),
            "SASL_PLAINTEXT",
            crate::security::Principal::anonymous(),
            true,
        ));
        let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        handle_frame(&ctx, &session, frame(ApiKey::SaslHandshake, 1, 4, &req)).await.unwrap();
        let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0alice\0wrong"));
        let bytes = handle_frame(&ctx, &session, frame(ApiKey::SaslAuthenticate, 2, 5, &req)).await;
        let r: SaslAuthenticateResponse = response(ApiKey::SaslAuthenticate, 2, 5, bytes.unwrap().unwrap());
        assert_eq!(r.error_code, E::SaslAuthenticationFailed.code());
        assert!(session.failed());
        // A PLAINTEXT session has nothing to authenticate.
        let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let r: SaslHandshakeResponse = call(&ctx, ApiKey::SaslHandshake, 1, &req).await;
        assert_eq!(r.error_code, E::IllegalSaslState.code());
    });
}
