//! Records in and out: v2 record batches built with kafka-protocol's encoder
//! and read back with its decoder.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::error::{Error, Result};

/// Records one batch may hold (Kafka has no such cap; this is the client's own).
pub const MAX_BATCH_RECORDS: usize = 1 << 20;

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; `None` takes the client's clock.
    pub timestamp: Option<i64>,
}

impl NewRecord {
    pub fn value(value: impl Into<Bytes>) -> NewRecord {
        NewRecord { value: Some(value.into()), ..NewRecord::default() }
    }

    pub fn keyed(key: impl Into<Bytes>, value: impl Into<Bytes>) -> NewRecord {
        NewRecord { key: Some(key.into()), value: Some(value.into()), ..NewRecord::default() }
    }
}

/// A record as fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// An idempotent producer's identity and the batch's first sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequenced {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// How many records `records` makes as one batch: 1 to [`MAX_BATCH_RECORDS`],
/// else [`Error::BatchSize`].
pub fn batch_len(records: &[NewRecord]) -> Result<i32> {
    match records.len() {
        0 => Err(Error::BatchSize { records: 0 }),
        n if n > MAX_BATCH_RECORDS => Err(Error::BatchSize { records: n }),
        n => Ok(i32::try_from(n).expect("MAX_BATCH_RECORDS fits an i32")),
    }
}

/// Encodes `records` as one v2 batch (1 to [`MAX_BATCH_RECORDS`] of them).
pub fn encode_batch(
    records: &[NewRecord],
    compression: Compression,
    now_ms: i64,
    producer: Option<Sequenced>,
) -> Result<Bytes> {
    encode(records, compression, now_ms, producer, false)
}

/// Encodes `records` as one transactional v2 batch of `producer`'s open transaction.
pub fn encode_transactional_batch(
    records: &[NewRecord],
    compression: Compression,
    now_ms: i64,
    producer: Sequenced,
) -> Result<Bytes> {
    encode(records, compression, now_ms, Some(producer), true)
}

fn encode(
    records: &[NewRecord],
    compression: Compression,
    now_ms: i64,
    producer: Option<Sequenced>,
    transactional: bool,
) -> Result<Bytes> {
    batch_len(records)?;
    let producer = producer.unwrap_or(Sequenced { producer_id: -1, producer_epoch: -1, base_sequence: -1 });
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.producer_id,
            producer_epoch: producer.producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever offset - sequence
            // changes, so the sequence counts up from the base even without
            // a producer (base -1, as the batch header then says). A batch
            // that wrapped would be split here; the producer takes a new
            // producer id before its sequences reach i32::MAX.
            sequence: producer.base_sequence.wrapping_add(i as i32),
            timestamp: r.timestamp.unwrap_or(now_ms),
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.iter().map(|(k, v)| (k.clone().into(), v.clone())).collect(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression };
    RecordBatchEncoder::encode(&mut buf, encoded.iter(), &options).map_err(|e| Error::Encode {
        api: kafka_protocol::messages::ApiKey::Produce,
        version: 2,
        source: e.into(),
    })?;
    Ok(buf.freeze())
}

/// Records decoded from a fetch answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub records: Vec<ConsumedRecord>,
    /// The offset after the last whole batch, which may be past the last
    /// record (control records, records compacted away, aborted records).
    pub next_offset: Option<i64>,
}

/// A transaction a read_committed fetch says was aborted: its producer and
/// the offset its records start at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
}

/// The records of a fetch answer at or past `from`, skipping control
/// records. A batch cut short at the end (a broker may end an answer
/// mid-batch at its byte limit) is left for the next fetch.
pub fn decode_batches(topic: &str, partition: i32, data: Bytes, from: i64) -> Result<Decoded> {
    decode_committed(topic, partition, data, from, &[])
}

/// As [`decode_batches`], also skipping the records of `aborted`
/// transactions (a read_committed answer's list), as Kafka's consumer does:
/// a producer's transaction is aborted from its first offset until the abort
/// marker that ends it.
pub fn decode_committed(
    topic: &str,
    partition: i32,
    mut data: Bytes,
    from: i64,
    aborted: &[AbortedTxn],
) -> Result<Decoded> {
    let mut out = Vec::new();
    let mut next_offset = None;
    let mut pending: Vec<AbortedTxn> = aborted.to_vec();
    pending.sort_by_key(|a| std::cmp::Reverse(a.first_offset));
    // Producers whose aborted transaction has begun and not yet met its marker.
    let mut aborting: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
    // Bounded: each turn consumes one whole batch.
    while let Some(size) = whole_batch_size(&data) {
        let mut batch = data.split_to(size);
        let end = batch_end(&batch);
        next_offset = Some(end);
        while pending.last().is_some_and(|a| a.first_offset < end) {
            aborting.insert(pending.pop().expect("checked").producer_id);
        }
        let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| Error::Records {
            topic: topic.to_string(),
            partition,
            source: e.into(),
        })?;
        let Some(first) = set.records.first() else { continue };
        let (producer, transactional, control) = (first.producer_id, first.transactional, first.control);
        if control {
            if set.records.iter().any(|r| is_abort_marker(r.key.as_deref())) {
                aborting.remove(&producer);
            }
            continue;
        }
        if transactional && aborting.contains(&producer) {
            continue;
        }
        out.extend(set.records.into_iter().filter(|r| r.offset >= from).map(|r| ConsumedRecord {
            partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }));
    }
    Ok(Decoded { records: out, next_offset })
}

/// A control record's key is its version (2 bytes) and type (2 bytes: 0 abort, 1 commit).
fn is_abort_marker(key: Option<&[u8]>) -> bool {
    key.and_then(|k| k.get(2..4)).is_some_and(|t| t == [0, 0])
}

/// The offset after a whole v2 batch: its base offset plus its last offset
/// delta (header bytes 23..27) plus one.
fn batch_end(batch: &[u8]) -> i64 {
    let base = i64::from_be_bytes(batch[0..8].try_into().expect("8 bytes"));
    let last_delta = batch.get(23..27).map_or(0, |b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
    base + i64::from(last_delta) + 1
}

/// The size of the batch at the start of `data` if all of it is there: the
/// base offset (8 bytes) and length (4) are followed by `length` bytes.
fn whole_batch_size(data: &Bytes) -> Option<usize> {
    if data.remaining() < 12 {
        return None;
    }
    let length = i32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    let size = 12 + usize::try_from(length).ok()?;
    (size <= data.len()).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_make_one_batch_with_or_without_a_producer() {
        let records: Vec<NewRecord> = (0..5).map(|i| NewRecord::keyed(format!("k{i}"), "v")).collect();
        let producer = Sequenced { producer_id: 5, producer_epoch: 1, base_sequence: 7 };
        for sequenced in [None, Some(producer)] {
            let batch = encode_batch(&records, Compression::None, 1000, sequenced).unwrap();
            let size = whole_batch_size(&batch).unwrap();
            assert_eq!(size, batch.len(), "{sequenced:?}: one batch, not one per record");
            let base_sequence = i32::from_be_bytes(batch[53..57].try_into().unwrap());
            assert_eq!(base_sequence, sequenced.map_or(-1, |p| p.base_sequence));
            assert_eq!(decode_batches("t", 0, batch, 0).unwrap().records.len(), 5);
        }
        assert!(matches!(encode_batch(&[], Compression::None, 0, None), Err(Error::BatchSize { records: 0 })));
    }

    #[test]
    fn batches_round_trip_and_a_cut_batch_waits() {
        let records = vec![
            NewRecord::keyed("k", "v"),
            NewRecord {
                headers: vec![("h".into(), Some(Bytes::from("x")))],
                timestamp: Some(7),
                ..NewRecord::value("w")
            },
        ];
        let producer = Sequenced { producer_id: 5, producer_epoch: 0, base_sequence: 3 };
        let batch = encode_batch(&records, Compression::None, 1000, Some(producer)).unwrap();
        let mut two = BytesMut::from(&batch[..]);
        two.extend_from_slice(&batch[..batch.len() - 1]);
        let decoded = decode_batches("t", 0, two.freeze(), 1).unwrap();
        assert_eq!(decoded.next_offset, Some(2));
        let got = decoded.records;
        assert_eq!(got.len(), 1, "offset 0 is skipped and the cut copy waits");
        assert_eq!((got[0].offset, got[0].timestamp, got[0].value.as_deref()), (1, 7, Some(&b"w"[..])));
        assert_eq!(got[0].headers, vec![("h".to_string(), Some(Bytes::from("x")))]);
    }

    /// A control batch of `producer` at `offset`: a commit or abort marker.
    fn marker(producer: i64, offset: i64, commit: bool) -> Bytes {
        let record = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from(vec![0, 0, 0, u8::from(commit)])),
            value: Some(Bytes::from(vec![0, 0, 0, 0, 0, 0])),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, [record].iter(), &options).unwrap();
        buf.freeze()
    }

    /// A transactional batch of `producer` whose records are `values`, at `offset`.
    fn txn_batch(producer: i64, offset: i64, values: &[&str]) -> Bytes {
        let records: Vec<NewRecord> = values.iter().map(|v| NewRecord::value(v.to_string())).collect();
        let sequenced = Sequenced { producer_id: producer, producer_epoch: 0, base_sequence: offset as i32 };
        let batch = encode_transactional_batch(&records, Compression::None, 0, sequenced).unwrap();
        let mut bytes = BytesMut::from(&batch[..]);
        bytes[0..8].copy_from_slice(&offset.to_be_bytes());
        bytes.freeze()
    }

    #[test]
    fn read_committed_skips_aborted_transactions_and_markers() {
        let mut log = BytesMut::new();
        for part in [
            txn_batch(7, 0, &["a0", "a1"]),
            txn_batch(8, 2, &["b2"]),
            marker(7, 3, false),
            txn_batch(7, 4, &["c4"]),
            marker(8, 5, true),
            marker(7, 6, true),
        ] {
            log.extend_from_slice(&part);
        }
        let aborted = [AbortedTxn { producer_id: 7, first_offset: 0 }];
        let decoded = decode_committed("t", 0, log.clone().freeze(), 0, &aborted).unwrap();
        let values: Vec<&[u8]> = decoded.records.iter().map(|r| r.value.as_deref().unwrap()).collect();
        assert_eq!(values, vec![&b"b2"[..], b"c4"], "the aborted a0, a1 and every marker are skipped");
        assert_eq!(decoded.next_offset, Some(7));
        let all = decode_batches("t", 0, log.freeze(), 0).unwrap();
        assert_eq!(all.records.len(), 4, "read_uncommitted skips only the markers");
    }
}
