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
    batch_len(records)?;
    let producer = producer.unwrap_or(Sequenced { producer_id: -1, producer_epoch: -1, base_sequence: -1 });
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
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
    /// record (control records, records compacted away).
    pub next_offset: Option<i64>,
}

/// The records of a fetch answer at or past `from`, skipping control
/// records. A batch cut short at the end (a broker may end an answer
/// mid-batch at its byte limit) is left for the next fetch.
pub fn decode_batches(topic: &str, partition: i32, mut data: Bytes, from: i64) -> Result<Decoded> {
    let mut out = Vec::new();
    let mut next_offset = None;
    // Bounded: each turn consumes one whole batch.
    while let Some(size) = whole_batch_size(&data) {
        let mut batch = data.split_to(size);
        next_offset = Some(batch_end(&batch));
        let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| Error::Records {
            topic: topic.to_string(),
            partition,
            source: e.into(),
        })?;
        out.extend(set.records.into_iter().filter(|r| !r.control && r.offset >= from).map(|r| ConsumedRecord {
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
}
