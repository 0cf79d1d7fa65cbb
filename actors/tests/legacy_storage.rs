//! Data dirs written by release aaeadfb (no format versions) open with
//! today's code, upgraded in place, with every record as it was written.
//!
//! The fixtures and the values below come from scripts/make_storage_fixtures.py;
//! change the two together.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use heed::types::{Bytes, Str, U32};
use heed::{CommitOrAbort, EnvOpenOptions};
use kafka_protocol::records::Compression;
use tributary_actors::group_coordinator::GroupRequest;
use tributary_actors::offset_store::{CommittedOffset, GroupRecord};
use tributary_actors::stored::{CURRENT_FORMAT, FORMAT_DB, FORMAT_KEY};
use tributary_actors::{
    encode_batch, AllocateProducerId, Broker, GroupAnswer, MetadataSnapshot, NewRecord, OffsetQuery, OffsetStore,
    Sequenced, StorageConfig,
};

type FormatValue = U32<heed::byteorder::BigEndian>;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/storage-aaeadfb");
/// Written in November 2026 or later: stored times are at least this.
const WRITTEN_AFTER_MS: i64 = 1_790_000_000_000;

/// A copy of fixture `name` in a temp dir: tests never change the committed files.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(FIXTURES).join(name), dir.path());
    dir
}

/// `topic-ids.txt`: the id the broker gave each topic of `fixture`.
fn topic_ids(fixture: &str) -> BTreeMap<String, uuid::Uuid> {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("topic-ids.txt")).unwrap();
    text.lines()
        .filter_map(|line| {
            let [f, topic, id] = line.split(' ').collect::<Vec<_>>()[..] else { panic!("bad line {line:?}") };
            (f == fixture).then(|| (topic.to_string(), uuid::Uuid::parse_str(id).unwrap()))
        })
        .collect()
}

/// Nothing expires, compacts or is retained away while a test runs, however
/// old the fixture is.
fn config(dir: &Path) -> StorageConfig {
    let mut config = StorageConfig::new(dir);
    config.storage_threads = 0;
    config.retention_check_interval_ms = u64::MAX / 4;
    config.producer_id_expiration_ms = i64::MAX / 4;
    config.groups.offsets_retention_ms = i64::MAX / 4;
    config.groups.offsets_retention_check_interval_ms = u64::MAX / 4;
    config
}

/// Runs `check` on a broker over `dir` in a System of its own, which closes
/// every LMDB environment when it stops, as a broker process does on exit.
fn with_broker<F, Fut>(dir: &Path, check: F)
where
    F: FnOnce(Broker) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let config = config(dir);
    std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let broker = Broker::start(config).unwrap();
            check(broker).await;
        })
    })
    .join()
    .expect("the checks passed");
}

/// The format marker of the LMDB environment in `dir`; `None` for legacy data.
fn format_of(dir: &Path) -> Option<u32> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.max_dbs(8);
    // Safety: no broker has this environment open while the test reads it.
    let env = unsafe { options.open(dir) }.unwrap();
    let db = env
        .open_databases_and_commit(env.read_txn().unwrap(), |opener, rtxn| -> heed::Result<_> {
            Ok(CommitOrAbort::<_, ()>::Commit(opener.open_database::<Str, FormatValue>(rtxn, Some(FORMAT_DB))?))
        })
        .unwrap()
        .unwrap_commit();
    let rtxn = env.read_txn().unwrap();
    db.and_then(|db| db.get(&rtxn, FORMAT_KEY).unwrap())
}

fn environments(dir: &Path) -> Vec<PathBuf> {
    let mut envs: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    envs.sort();
    envs
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn text(bytes: &Option<bytes::Bytes>) -> Option<String> {
    bytes.as_ref().map(|b| String::from_utf8(b.to_vec()).unwrap())
}

/// `(key, value)` of every record of a partition, checking offsets run from 0.
async fn records(broker: &Broker, topic: &str, partition: i32) -> Vec<tributary_actors::Record> {
    let records = broker.fetch(topic, partition, 0, 1 << 20).await.unwrap();
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..records.len() as i64).collect::<Vec<_>>());
    records
}

async fn keys_and_values(broker: &Broker, topic: &str, partition: i32) -> Vec<(Option<String>, Option<String>)> {
    records(broker, topic, partition).await.iter().map(|r| (text(&r.key), text(&r.value))).collect()
}

fn check_single_metadata(snapshot: &MetadataSnapshot) {
    let ids = topic_ids("single");
    assert_eq!(
        snapshot.topics.keys().map(|t| t.to_string()).collect::<Vec<_>>(),
        ["compacted", "events", "idempotent"]
    );
    let expected = [
        ("events", 3, configs(&[("retention.ms", "3600000")])),
        (
            "compacted",
            1,
            configs(&[("cleanup.policy", "compact"), ("delete.retention.ms", "60000"), ("max.message.bytes", "65536")]),
        ),
        ("idempotent", 1, configs(&[])),
    ];
    for (name, partitions, overrides) in expected {
        let topic = snapshot.topic(name).unwrap();
        assert_eq!(topic.id, ids[name], "{name}'s id");
        assert_eq!(topic.partitions.len(), partitions, "{name}'s partitions");
        assert_eq!(topic.overrides, overrides, "{name}'s configs");
    }
    let broker_configs = configs(&[("max.message.bytes", "2097152"), ("retention.ms", "172800000")]);
    assert_eq!(snapshot.broker_overrides, broker_configs);
    assert_eq!((snapshot.defaults.retention_ms, snapshot.defaults.max_message_bytes), (172_800_000, 2_097_152));
    // Effective configs: the topic's own, then the dynamic broker configs.
    let idempotent = &snapshot.topic("idempotent").unwrap().config;
    assert_eq!((idempotent.retention_ms, idempotent.max_message_bytes), (172_800_000, 2_097_152));
    let events = &snapshot.topic("events").unwrap().config;
    assert_eq!((events.retention_ms, events.max_message_bytes), (3_600_000, 2_097_152));
    let compacted = &snapshot.topic("compacted").unwrap().config;
    assert_eq!((compacted.cleanup_policy.as_str(), compacted.delete_retention_ms), ("compact", 60_000));
    assert_eq!((compacted.retention_ms, compacted.max_message_bytes), (172_800_000, 65_536));
}

async fn check_single_records(broker: &Broker) {
    for p in 0..3 {
        let expected: Vec<_> =
            (0..p + 2).map(|i| (Some(format!("k{p}-{i}")), Some(format!("events-p{p}-{i}")))).collect();
        assert_eq!(keys_and_values(broker, "events", p).await, expected, "events-{p}");
    }
    let pair = |k: &str, v: &str| (Some(k.to_string()), Some(v.to_string()));
    assert_eq!(keys_and_values(broker, "compacted", 0).await, [pair("a", "a1"), pair("b", "b1"), pair("a", "a2")]);
    let idempotent = records(broker, "idempotent", 0).await;
    let seen: Vec<_> =
        idempotent.iter().map(|r| (r.producer_id, r.producer_epoch, r.sequence, text(&r.value))).collect();
    let expected: Vec<_> = (0..6).map(|i| (0, 0, i, Some(format!("idem-{i}")))).collect();
    assert_eq!(seen, expected, "one idempotent producer (id 0, epoch 0), one record per batch");
}

/// Producer 0's batch of sequence `seq`, sent again; returns its `(base, last)` offsets.
async fn idempotent_append(broker: &Broker, seq: i32) -> (i64, i64) {
    let batch = encode_batch(
        &[NewRecord::keyed("", format!("idem-{seq}"))],
        Compression::None,
        tributary_actors::now_ms(),
        Some(Sequenced { producer_id: 0, producer_epoch: 0, base_sequence: seq }),
    )
    .unwrap();
    let snapshot = broker.metadata();
    let topic = snapshot.topic("idempotent").unwrap();
    let append = topic.prepare_append(&batch).unwrap();
    let outcome = topic.partitions[0].addr.send(append).await.unwrap().unwrap();
    (outcome.base_offset, outcome.last_offset)
}

async fn check_single_producer(broker: &Broker) {
    // The producer state remembers the last five batches (sequences 1 to 5):
    // a retried one is answered with its first offsets and not written again.
    assert_eq!(idempotent_append(broker, 5).await, (5, 5));
    assert_eq!(idempotent_append(broker, 1).await, (1, 1));
    assert_eq!(broker.list_offset("idempotent", 0, OffsetQuery::Latest).await.unwrap(), Some((6, -1)));
}

/// The group's committed offsets, as `(partition, offset, epoch, metadata)`, and their commit times.
async fn committed_offsets(broker: &Broker) -> (Vec<(i32, i64, i32, Option<String>)>, Vec<i64>) {
    let answer = broker.group_request("fixture-group", false, GroupRequest::Fetch(None)).await.unwrap();
    let Some(GroupAnswer::Fetched(0, offsets)) = answer else { panic!("fetched {answer:?}") };
    let mut rows = Vec::new();
    let mut times = Vec::new();
    for ((topic, partition), committed) in offsets {
        assert_eq!(topic, "events");
        let CommittedOffset { offset, leader_epoch, metadata, commit_time_ms } = committed.unwrap();
        rows.push((partition, offset, leader_epoch, metadata));
        times.push(commit_time_ms);
    }
    (rows, times)
}

async fn check_single_group(broker: &Broker) -> Vec<i64> {
    let (rows, times) = committed_offsets(broker).await;
    // librdkafka sends a Python metadata string with its NUL terminator.
    let expected =
        vec![(0, 2, -1, Some("m0\0".to_string())), (1, 3, -1, Some(String::new())), (2, 1, -1, Some("\0".to_string()))];
    assert_eq!(rows, expected);
    assert!(times.iter().all(|t| *t > WRITTEN_AFTER_MS), "commit times {times:?}");
    times
}

fn check_single_group_record(dir: &Path) {
    let record = OffsetStore::open(dir).unwrap().group("fixture-group").unwrap().unwrap();
    let GroupRecord { protocol_type, generation, empty_since_ms } = record;
    // One member joined (generation 1) and left (generation 2, empty).
    assert_eq!((protocol_type.as_str(), generation), ("consumer", 2));
    assert!(empty_since_ms.is_some_and(|t| t > WRITTEN_AFTER_MS), "empty since {empty_since_ms:?}");
}

#[test]
fn a_legacy_single_broker_data_dir_is_upgraded_with_every_record_intact() {
    let dir = copy_fixture("single");
    let envs = environments(dir.path());
    assert_eq!(envs.len(), 7, "metadata, offsets and five partitions");
    assert!(envs.iter().all(|env| format_of(env).is_none()), "the fixture is legacy data");
    let mut commit_times = Vec::new();
    for pass in ["legacy", "upgraded"] {
        let (sender, times) = std::sync::mpsc::channel();
        with_broker(dir.path(), move |broker| async move {
            check_single_metadata(&broker.metadata());
            check_single_records(&broker).await;
            check_single_producer(&broker).await;
            sender.send(check_single_group(&broker).await).unwrap();
        });
        commit_times.push(times.recv().unwrap());
        check_single_group_record(dir.path());
        for env in &envs {
            assert_eq!(format_of(env), Some(CURRENT_FORMAT), "{} after the {pass} pass", env.display());
        }
    }
    assert_eq!(commit_times[0], commit_times[1], "commit times survive the upgrade");
    // Upgraded data takes new writes: the producer's next sequence, a new producer id.
    with_broker(dir.path(), |broker| async move {
        assert_eq!(idempotent_append(&broker, 6).await, (6, 6));
        assert_eq!(broker.registry().send(AllocateProducerId).await.unwrap(), Ok(1));
    });
    with_broker(dir.path(), |broker| async move {
        assert_eq!(idempotent_append(&broker, 6).await, (6, 6), "sequence 6 is now a duplicate");
        assert_eq!(broker.registry().send(AllocateProducerId).await.unwrap(), Ok(2));
    });
}

#[test]
fn a_legacy_cluster_brokers_local_stores_are_upgraded_with_every_record_intact() {
    let dir = copy_fixture("cluster");
    let ids = topic_ids("cluster");
    for _pass in ["legacy", "upgraded"] {
        let id = ids["replicated"];
        with_broker(dir.path(), move |broker| async move {
            let snapshot = broker.metadata();
            let topic = snapshot.topic("replicated").unwrap();
            assert_eq!((topic.id, topic.partitions.len()), (id, 2));
            assert_eq!(topic.overrides, configs(&[("min.insync.replicas", "2"), ("retention.ms", "86400000")]));
            for p in 0..2 {
                let expected: Vec<_> =
                    (0..3).map(|i| (Some(format!("r{p}-{i}")), Some(format!("replicated-p{p}-{i}")))).collect();
                assert_eq!(keys_and_values(&broker, "replicated", p).await, expected, "replicated-{p}");
            }
        });
    }
    for env in environments(dir.path()).iter().filter(|e| !e.ends_with("__cluster_raft")) {
        assert_eq!(format_of(env), Some(CURRENT_FORMAT), "{}", env.display());
    }
}

#[test]
fn an_environment_of_an_unknown_format_is_refused_with_its_number() {
    let dir = copy_fixture("single");
    let env_dir = dir.path().join("idempotent-0");
    {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.max_dbs(8);
        // Safety: nothing else has this environment open.
        let env = unsafe { options.open(&env_dir) }.unwrap();
        env.create_databases_and_commit(env.write_txn().unwrap(), |opener, wtxn| -> heed::Result<_> {
            let db = opener.create_database::<Str, FormatValue>(wtxn, Some(FORMAT_DB))?;
            db.put(wtxn, FORMAT_KEY, &(CURRENT_FORMAT + 1))?;
            Ok(CommitOrAbort::<(), ()>::Commit(()))
        })
        .unwrap();
    }
    let log = tributary_actors::partition_log::PartitionLog::open(&env_dir, &config(dir.path()));
    let error = log.err().expect("an unknown format is refused").to_string();
    assert!(error.contains("partition log is in storage format 2"), "{error}");
}

/// Every value of database `name` in the environment at `dir`, raw.
fn raw_values(dir: &Path, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.max_dbs(8);
    // Safety: nothing else has this environment open.
    let env = unsafe { options.open(dir) }.unwrap();
    let db = env
        .open_databases_and_commit(env.read_txn().unwrap(), |opener, rtxn| -> heed::Result<_> {
            Ok(CommitOrAbort::<_, ()>::Commit(opener.open_database::<Bytes, Bytes>(rtxn, Some(name))?.unwrap()))
        })
        .unwrap()
        .unwrap_commit();
    let rtxn = env.read_txn().unwrap();
    db.iter(&rtxn).unwrap().map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect()
}

#[test]
fn an_upgrade_that_meets_a_bad_value_changes_nothing_and_names_it() {
    let dir = copy_fixture("single");
    let env_dir = dir.path().join("__consumer_offsets");
    let offsets_before = raw_values(&env_dir, "offsets");
    {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.max_dbs(8);
        // Safety: nothing else has this environment open.
        let env = unsafe { options.open(&env_dir) }.unwrap();
        env.create_databases_and_commit(env.write_txn().unwrap(), |opener, wtxn| -> heed::Result<_> {
            let groups = opener.create_database::<Str, Bytes>(wtxn, Some("groups"))?;
            // A group record cut short: its generation and empty time are gone.
            groups.put(wtxn, "fixture-group", b"\x08consumer")?;
            Ok(CommitOrAbort::<(), ()>::Commit(()))
        })
        .unwrap();
    }
    let error = OffsetStore::open(dir.path()).err().expect("a bad legacy value stops the upgrade").to_string();
    assert_eq!(
        error,
        "offset store, key fixture-group: group record does not decode as the unversioned legacy layout: \
         Hit the end of buffer, expected more data"
    );
    // The offsets were rewritten before the bad record was met, in the same
    // transaction: aborted, so they are still the legacy bytes, unmarked.
    assert_eq!(raw_values(&env_dir, "offsets"), offsets_before);
    assert_eq!(format_of(&env_dir), None);
}
