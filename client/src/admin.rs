//! Admin requests: topics, partitions, configs, groups and their offsets,
//! the cluster. Each is sent where Kafka wants it (topic changes to the
//! controller, group requests to the group's coordinator) and retried
//! through moves of either. Requests about several items fail with the first
//! item's error, after the broker has acted on all of them.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::client::{str_bytes, topic_name, Client};
use crate::connector::{BrokerAddress, Connector};
use crate::error::{check, check_message, Result, Subject};
use crate::metadata::{BrokerInfo, TopicInfo};

/// One change to a user's SCRAM credentials; `mechanism` is Kafka's code
/// (1 SCRAM-SHA-256, 2 SCRAM-SHA-512).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramChange {
    Upsert { user: String, mechanism: i8, iterations: i32, salt: Vec<u8>, salted_password: Vec<u8> },
    Delete { user: String, mechanism: i8 },
}

/// A user's SCRAM credentials as described: (mechanism code, iterations) each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramUser {
    pub user: String,
    pub mechanisms: Vec<(i8, i32)>,
}

/// How long the broker may take over a topic change.
const TOPIC_CHANGE_TIMEOUT_MS: i32 = 30_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's default.
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// What a config request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigResource {
    Topic(String),
    Broker(i32),
    /// The cluster-wide default of dynamic broker configs.
    BrokerDefault,
}

impl ConfigResource {
    fn kind(&self) -> i8 {
        match self {
            ConfigResource::Topic(_) => 2,
            ConfigResource::Broker(_) | ConfigResource::BrokerDefault => 4,
        }
    }

    fn name(&self) -> StrBytes {
        match self {
            ConfigResource::Topic(name) => str_bytes(name),
            ConfigResource::Broker(id) => StrBytes::from_string(id.to_string()),
            ConfigResource::BrokerDefault => StrBytes::from_static_str(""),
        }
    }

    fn subject(&self) -> Subject {
        Subject::Config(match self {
            ConfigResource::Topic(name) => format!("topic '{name}'"),
            ConfigResource::Broker(id) => format!("broker {id}"),
            ConfigResource::BrokerDefault => "the broker default".to_string(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub read_only: bool,
    /// Kafka's ConfigSource code (1 topic, 4 dynamic default broker, 5 static broker, 6 default, ...).
    pub source: i8,
    pub sensitive: bool,
}

/// One change of an incremental config alteration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlterConfig {
    Set(String, String),
    /// Back to the default.
    Delete(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupListing {
    pub group_id: String,
    /// Empty from brokers older than ListGroups v4.
    pub state: String,
    pub protocol_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
}

/// A committed offset (OffsetCommit, OffsetFetch); offset -1: none committed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: Option<String>,
}

impl PartitionOffset {
    pub fn new(topic: &str, partition: i32, offset: i64) -> PartitionOffset {
        PartitionOffset { topic: topic.to_string(), partition, offset, metadata: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: String,
    pub controller: Option<i32>,
    pub brokers: Vec<BrokerInfo>,
}

/// The first error of per-partition answers `(topic, partition, error code)`, naming its partition.
pub(crate) fn check_partitions<'a>(answers: impl IntoIterator<Item = (&'a TopicName, i32, i16)>) -> Result<()> {
    answers.into_iter().try_for_each(|(topic, partition, code)| {
        check(code, || Subject::Partition(topic.0.to_string(), partition))
    })
}

pub(crate) fn group_id(group: &str) -> GroupId {
    GroupId(str_bytes(group))
}

impl<C: Connector> Client<C> {
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<()> {
        let creatable = topics
            .iter()
            .map(|t| {
                let configs = t
                    .configs
                    .iter()
                    .map(|(n, v)| {
                        CreatableTopicConfig::default().with_name(str_bytes(n)).with_value(Some(str_bytes(v)))
                    })
                    .collect();
                CreatableTopic::default()
                    .with_name(topic_name(&t.name))
                    .with_num_partitions(t.partitions)
                    .with_replication_factor(t.replication_factor)
                    .with_configs(configs)
            })
            .collect();
        let request = CreateTopicsRequest::default().with_timeout_ms(TOPIC_CHANGE_TIMEOUT_MS).with_topics(creatable);
        let response = self.on_controller(&request).await?;
        for t in &response.topics {
            check_message(t.error_code, t.error_message.as_ref(), || Subject::Topic(t.name.0.to_string()))?;
        }
        Ok(())
    }

    pub async fn delete_topics(&self, names: &[&str]) -> Result<()> {
        let request = DeleteTopicsRequest::default()
            .with_timeout_ms(TOPIC_CHANGE_TIMEOUT_MS)
            .with_topic_names(names.iter().map(|n| topic_name(n)).collect());
        let response = self.on_controller(&request).await?;
        for t in &response.responses {
            let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            check_message(t.error_code, t.error_message.as_ref(), || Subject::Topic(name))?;
        }
        Ok(())
    }

    /// Grows `topic` to `total` partitions.
    pub async fn create_partitions(&self, topic: &str, total: i32) -> Result<()> {
        let request = CreatePartitionsRequest::default().with_timeout_ms(TOPIC_CHANGE_TIMEOUT_MS).with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default().with_name(topic_name(topic)).with_count(total),
        ]);
        let response = self.on_controller(&request).await?;
        for r in &response.results {
            check_message(r.error_code, r.error_message.as_ref(), || Subject::Topic(r.name.0.to_string()))?;
        }
        Ok(())
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let mut topics = self.metadata(None).await?.topics;
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// The named topics as metadata describes them, each with its own error
    /// (UNKNOWN_TOPIC_OR_PARTITION for one that does not exist); no retries.
    pub async fn describe_topics(&self, names: &[&str]) -> Result<Vec<TopicInfo>> {
        Ok(self.metadata(Some(names)).await?.topics)
    }

    pub async fn describe_configs(&self, resource: &ConfigResource) -> Result<Vec<ConfigEntry>> {
        let request = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(resource.kind())
            .with_resource_name(resource.name())
            .with_configuration_keys(None)]);
        let response = self.on_config_broker(resource, &request).await?;
        let mut entries = Vec::new();
        for r in response.results {
            check_message(r.error_code, r.error_message.as_ref(), || resource.subject())?;
            entries.extend(r.configs.into_iter().map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.map(|v| v.to_string()),
                read_only: c.read_only,
                source: c.config_source,
                sensitive: c.is_sensitive,
            }));
        }
        Ok(entries)
    }

    /// Replaces every dynamic config of `resource` with `configs` (AlterConfigs).
    pub async fn alter_configs(&self, resource: &ConfigResource, configs: &[(String, String)]) -> Result<()> {
        let configs = configs
            .iter()
            .map(|(n, v)| {
                alter_configs_request::AlterableConfig::default().with_name(str_bytes(n)).with_value(Some(str_bytes(v)))
            })
            .collect();
        let request =
            AlterConfigsRequest::default().with_resources(vec![alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(resource.kind())
                .with_resource_name(resource.name())
                .with_configs(configs)]);
        let response = self.on_config_broker(resource, &request).await?;
        for r in &response.responses {
            check_message(r.error_code, r.error_message.as_ref(), || resource.subject())?;
        }
        Ok(())
    }

    /// Sets and deletes single configs of `resource` (IncrementalAlterConfigs).
    pub async fn incremental_alter_configs(&self, resource: &ConfigResource, changes: &[AlterConfig]) -> Result<()> {
        let configs = changes
            .iter()
            .map(|change| {
                let config = incremental_alter_configs_request::AlterableConfig::default();
                match change {
                    AlterConfig::Set(n, v) => {
                        config.with_name(str_bytes(n)).with_config_operation(0).with_value(Some(str_bytes(v)))
                    }
                    AlterConfig::Delete(n) => config.with_name(str_bytes(n)).with_config_operation(1),
                }
            })
            .collect();
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(resource.kind())
                .with_resource_name(resource.name())
                .with_configs(configs),
        ]);
        let response = self.on_config_broker(resource, &request).await?;
        for r in &response.responses {
            check_message(r.error_code, r.error_message.as_ref(), || resource.subject())?;
        }
        Ok(())
    }

    /// Every group of every broker (each lists the groups it coordinates), sorted.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let brokers = self.metadata(Some(&[])).await?.brokers;
        let listed = try_join_all(brokers.iter().map(|b| self.groups_on(&b.address))).await?;
        let mut groups: Vec<GroupListing> = listed.into_iter().flatten().collect();
        groups.sort();
        Ok(groups)
    }

    async fn groups_on(&self, address: &BrokerAddress) -> Result<Vec<GroupListing>> {
        let response = self.connection(address).await?.send(&ListGroupsRequest::default()).await?;
        check(response.error_code, || Subject::Request(ApiKey::ListGroups))?;
        Ok(response
            .groups
            .into_iter()
            .map(|g| GroupListing {
                group_id: g.group_id.0.to_string(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
            })
            .collect())
    }

    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
        let described = self
            .on_coordinator(group, &request, |response: &DescribeGroupsResponse| {
                response.groups.iter().try_for_each(|g| check(g.error_code, || Subject::Group(group.to_string())))
            })
            .await?;
        let g = described.groups.into_iter().next().ok_or_else(|| {
            crate::error::kafka_error(kafka_protocol::ResponseError::GroupIdNotFound, Subject::Group(group.to_string()))
        })?;
        Ok(GroupDescription {
            group_id: g.group_id.0.to_string(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members: g
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id.to_string(),
                    group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                })
                .collect(),
        })
    }

    /// Deletes empty groups.
    pub async fn delete_groups(&self, groups: &[&str]) -> Result<()> {
        for group in groups {
            let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
            self.on_coordinator(group, &request, |response: &DeleteGroupsResponse| {
                response.results.iter().try_for_each(|r| check(r.error_code, || Subject::Group(group.to_string())))
            })
            .await?;
        }
        Ok(())
    }

    /// `group`'s committed offsets: of `topics` (topic, partitions), or of every topic.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&BTreeMap<String, Vec<i32>>>,
    ) -> Result<Vec<PartitionOffset>> {
        self.offsets_of(group, topics, false).await
    }

    /// As [`Client::fetch_offsets`], waiting out transactional commits not yet
    /// decided (`require_stable`, as a read_committed consumer asks).
    pub async fn fetch_stable_offsets(
        &self,
        group: &str,
        topics: Option<&BTreeMap<String, Vec<i32>>>,
    ) -> Result<Vec<PartitionOffset>> {
        self.offsets_of(group, topics, true).await
    }

    async fn offsets_of(
        &self,
        group: &str,
        topics: Option<&BTreeMap<String, Vec<i32>>>,
        require_stable: bool,
    ) -> Result<Vec<PartitionOffset>> {
        let topics = topics.map(|topics| {
            topics
                .iter()
                .map(|(t, parts)| {
                    OffsetFetchRequestTopic::default().with_name(topic_name(t)).with_partition_indexes(parts.clone())
                })
                .collect()
        });
        let request = OffsetFetchRequest::default()
            .with_group_id(group_id(group))
            .with_topics(topics)
            .with_require_stable(require_stable);
        let response = self
            .on_coordinator(group, &request, |response: &OffsetFetchResponse| {
                check(response.error_code, || Subject::Group(group.to_string()))?;
                response.topics.iter().try_for_each(|t| {
                    let topic = t.name.0.to_string();
                    t.partitions
                        .iter()
                        .try_for_each(|p| check(p.error_code, || Subject::Partition(topic.clone(), p.partition_index)))
                })
            })
            .await?;
        let mut offsets: Vec<PartitionOffset> = response
            .topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| PartitionOffset {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    metadata: p.metadata.map(|m| m.to_string()),
                })
            })
            .collect();
        offsets.sort();
        Ok(offsets)
    }

    /// Commits `offsets` for a group with no members (generation -1), as an
    /// admin does; a running group refuses it.
    pub async fn commit_offsets(&self, group: &str, offsets: &[PartitionOffset]) -> Result<()> {
        self.commit_as(group, -1, "", offsets).await
    }

    /// OffsetCommit as member `member_id` of `generation` (-1 and "": no member).
    pub(crate) async fn commit_as(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        offsets: &[PartitionOffset],
    ) -> Result<()> {
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for o in offsets {
            by_topic.entry(&o.topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(o.partition)
                    .with_committed_offset(o.offset)
                    .with_committed_metadata(Some(str_bytes(o.metadata.as_deref().unwrap_or("")))),
            );
        }
        let topics = by_topic
            .into_iter()
            .map(|(t, parts)| OffsetCommitRequestTopic::default().with_name(topic_name(t)).with_partitions(parts))
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(str_bytes(member_id))
            .with_topics(topics);
        self.on_coordinator(group, &request, |response: &OffsetCommitResponse| {
            check_partitions(
                response.topics.iter().flat_map(|t| t.partitions.iter().map(|p| (&t.name, p.partition_index, p.error_code))),
            )
        })
        .await
        .map(drop)
    }

    /// Deletes `group`'s committed offsets of `topic`'s `partitions`.
    pub async fn delete_offsets(&self, group: &str, topic: &str, partitions: &[i32]) -> Result<()> {
        let parts =
            partitions.iter().map(|p| OffsetDeleteRequestPartition::default().with_partition_index(*p)).collect();
        let request = OffsetDeleteRequest::default()
            .with_group_id(group_id(group))
            .with_topics(vec![OffsetDeleteRequestTopic::default().with_name(topic_name(topic)).with_partitions(parts)]);
        self.on_coordinator(group, &request, |response: &OffsetDeleteResponse| {
            check(response.error_code, || Subject::Group(group.to_string()))?;
            response.topics.iter().try_for_each(|t| {
                t.partitions
                    .iter()
                    .try_for_each(|p| check(p.error_code, || Subject::Partition(topic.to_string(), p.partition_index)))
            })
        })
        .await
        .map(drop)
    }

    /// Sets and deletes users' SCRAM credentials (AlterUserScramCredentials,
    /// on the controller). The password never leaves the caller: a change
    /// carries its salt and salted password ([`ScramChange::Upsert`]).
    pub async fn alter_user_scram_credentials(&self, changes: &[ScramChange]) -> Result<()> {
        use kafka_protocol::messages::alter_user_scram_credentials_request::{
            ScramCredentialDeletion, ScramCredentialUpsertion,
        };
        let mut request = AlterUserScramCredentialsRequest::default();
        for change in changes {
            match change {
                ScramChange::Delete { user, mechanism } => request.deletions.push(
                    ScramCredentialDeletion::default().with_name(str_bytes(user)).with_mechanism(*mechanism),
                ),
                ScramChange::Upsert { user, mechanism, iterations, salt, salted_password } => {
                    request.upsertions.push(
                        ScramCredentialUpsertion::default()
                            .with_name(str_bytes(user))
                            .with_mechanism(*mechanism)
                            .with_iterations(*iterations)
                            .with_salt(salt.clone().into())
                            .with_salted_password(salted_password.clone().into()),
                    )
                }
            }
        }
        let response = self.on_controller(&request).await?;
        response.results.iter().try_for_each(|r| {
            check_message(r.error_code, r.error_message.as_ref(), || Subject::User(r.user.to_string()))
        })
    }

    /// The users with SCRAM credentials (all of them for an empty `users`),
    /// each with its mechanisms' codes and iterations.
    pub async fn describe_user_scram_credentials(&self, users: &[&str]) -> Result<Vec<ScramUser>> {
        use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
        let names = users.iter().map(|u| UserName::default().with_name(str_bytes(*u))).collect();
        let request = DescribeUserScramCredentialsRequest::default().with_users(Some(names));
        let response = self.retrying(|| async { self.any_broker().await?.send(&request).await }).await?;
        check_message(response.error_code, response.error_message.as_ref(), || {
            Subject::Request(ApiKey::DescribeUserScramCredentials)
        })?;
        response
            .results
            .into_iter()
            .map(|r| {
                check_message(r.error_code, r.error_message.as_ref(), || Subject::User(r.user.to_string()))?;
                let mechanisms = r.credential_infos.iter().map(|c| (c.mechanism, c.iterations)).collect();
                Ok(ScramUser { user: r.user.to_string(), mechanisms })
            })
            .collect()
    }

    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let response = self
            .retrying(|| async {
                let response = self.any_broker().await?.send(&DescribeClusterRequest::default()).await?;
                check_message(response.error_code, response.error_message.as_ref(), || {
                    Subject::Request(ApiKey::DescribeCluster)
                })?;
                Ok(response)
            })
            .await?;
        let mut brokers = response
            .brokers
            .into_iter()
            .map(|b| crate::metadata::broker_info(b.broker_id.0, &b.host, b.port, b.rack.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        brokers.sort_by_key(|b| b.id);
        Ok(ClusterDescription {
            cluster_id: response.cluster_id.to_string(),
            controller: (response.controller_id.0 >= 0).then_some(response.controller_id.0),
            brokers,
        })
    }

    /// Sends `request` to the controller, retried through NOT_CONTROLLER and
    /// connection failures (the answer's per-item errors are the caller's).
    async fn on_controller<R: kafka_protocol::protocol::Request>(&self, request: &R) -> Result<R::Response> {
        self.retrying(|| async { self.controller().await?.send(request).await }).await
    }

    /// Sends a config request where Kafka wants it: a broker's own configs to
    /// that broker, the rest to any.
    async fn on_config_broker<R: kafka_protocol::protocol::Request>(
        &self,
        resource: &ConfigResource,
        request: &R,
    ) -> Result<R::Response> {
        self.retrying(|| async {
            let connection = match resource {
                ConfigResource::Broker(id) => self.broker(*id).await?,
                _ => self.any_broker().await?,
            };
            connection.send(request).await
        })
        .await
    }

    /// Sends `request` to `group`'s coordinator until `check` passes its
    /// answer, retried through coordinator moves and loads.
    pub(crate) async fn on_coordinator<R, F>(&self, group: &str, request: &R, check: F) -> Result<R::Response>
    where
        R: kafka_protocol::protocol::Request,
        F: Fn(&R::Response) -> Result<()>,
    {
        self.retrying(|| async {
            let response = self.coordinator(group).await?.send(request).await?;
            check(&response)?;
            Ok(response)
        })
        .await
    }
}
