//! Which version of each API a connection speaks: the highest that both the
//! broker (its ApiVersions answer) and this client implement.
//!
//! Each range below is one the client's request builders are written for:
//! every field they set exists at every version in it (kafka-protocol's
//! per-field version annotations; where a field is newer, as SyncGroup's
//! protocol name, the builder sets it by version). The integration tests run
//! the requests at both ends of every range against the broker
//! (`ConnectionSettings::max_versions` pins the low end). The lower ends are Kafka 2.4's (KIP-896 keeps them in Kafka 4); the upper ends
//! stop where a request changes shape (Fetch v13 names topics by id,
//! FindCoordinator v4 batches keys, OffsetFetch v8 batches groups).

use std::collections::BTreeMap;

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiKey;

use crate::connector::BrokerAddress;
use crate::error::{Error, Result};

/// (API, lowest, highest) version this client implements.
pub const IMPLEMENTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 4, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 2, 7),
    (ApiKey::FindCoordinator, 1, 3),
    (ApiKey::JoinGroup, 1, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 3, 5),
    (ApiKey::SyncGroup, 1, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 1),
    // The transactional producer's; v4 is the brokers' batched verification form (KIP-890).
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    // Broker to broker: the markers.
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::AlterUserScramCredentials, 0, 0),
];

/// The ApiVersions version sent first; a broker that lacks it answers in v0
/// with UNSUPPORTED_VERSION and its ranges (KIP-511).
pub const API_VERSIONS_VERSION: i16 = 3;

/// One connection's negotiated versions.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    /// The broker's range per API key, as it answered.
    broker: BTreeMap<i16, (i16, i16)>,
    /// Highest versions the caller allows, per API key (`ConnectionSettings::max_versions`).
    caps: BTreeMap<i16, i16>,
}

impl Versions {
    pub fn new(broker: &[ApiVersion], caps: &[(ApiKey, i16)]) -> Versions {
        Versions {
            broker: broker.iter().map(|v| (v.api_key, (v.min_version, v.max_version))).collect(),
            caps: caps.iter().map(|(api, max)| (*api as i16, *max)).collect(),
        }
    }

    /// The version to send `api` at to the broker at `address`.
    pub fn get(&self, api: ApiKey, address: &BrokerAddress) -> Result<i16> {
        let (_, client_min, client_max) =
            *IMPLEMENTED.iter().find(|(key, _, _)| *key == api).expect("every API the client sends is implemented");
        let client_max = self.caps.get(&(api as i16)).map_or(client_max, |cap| client_max.min(*cap));
        let broker = self.broker.get(&(api as i16)).copied();
        let unsupported = || Error::Unsupported { api, address: address.clone(), client_min, client_max, broker };
        let (broker_min, broker_max) = broker.ok_or_else(unsupported)?;
        let version = client_max.min(broker_max);
        if version < client_min.max(broker_min) {
            return Err(unsupported());
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(ranges: &[(ApiKey, i16, i16)]) -> Versions {
        let keys: Vec<ApiVersion> = ranges
            .iter()
            .map(|(k, min, max)| {
                ApiVersion::default().with_api_key(*k as i16).with_min_version(*min).with_max_version(*max)
            })
            .collect();
        Versions::new(&keys, &[(ApiKey::Produce, 4)])
    }

    #[test]
    fn the_highest_common_version_is_chosen() {
        let at = BrokerAddress::new("b", 1);
        let v = broker(&[
            (ApiKey::Fetch, 0, 17),
            (ApiKey::Produce, 3, 5),
            (ApiKey::LeaveGroup, 0, 2),
            (ApiKey::Heartbeat, 0, 2),
        ]);
        assert_eq!(v.get(ApiKey::Heartbeat, &at).unwrap(), 2, "capped at what the broker has");
        assert_eq!(v.get(ApiKey::Fetch, &at).unwrap(), 12, "capped at what the client implements");
        assert_eq!(v.get(ApiKey::Produce, &at).unwrap(), 4, "capped by the caller, under what the broker has");
        assert!(matches!(v.get(ApiKey::LeaveGroup, &at), Err(Error::Unsupported { broker: Some((0, 2)), .. })));
        assert!(matches!(v.get(ApiKey::Metadata, &at), Err(Error::Unsupported { broker: None, .. })));
    }

    #[test]
    fn implemented_ranges_are_ordered_and_within_kafka_protocol() {
        for (api, min, max) in IMPLEMENTED {
            assert!(min <= max, "{api:?}");
            let known = api.valid_versions();
            assert!(known.min <= *min && *max <= known.max, "{api:?}: {min}..={max} outside {known:?}");
        }
    }
}
