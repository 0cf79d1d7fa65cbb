//! Kafka record batches (magic v2): header parsing and validation.
//!
//! The broker stores batches exactly as the producer sent them; it only
//! rewrites the base offset and partition leader epoch, which sit outside the
//! CRC. So validation reads the 61-byte header, checks the CRC32C over the
//! rest, and for uncompressed batches walks the record lengths. Compressed
//! batches are never decompressed on the produce path.

use bytes::Bytes;

use crate::record_walk::{self, RecordProblem};

/// Base offset (8) + batch length (4): the part of a batch not counted in `batch_length`.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed v2 batch header, up to and including the record count.
pub const BATCH_HEADER_LEN: usize = 61;

const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
pub(crate) const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
/// The CRC-32C of a batch covers everything from its attributes on.
pub const CRC_COVERS_FROM: usize = ATTRIBUTES_OFFSET;
const MAX_TIMESTAMP_OFFSET: usize = 35;

/// Attribute bits of a v2 batch.
const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a batch was refused. Each maps to one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or than the batch length claims.
    Truncated {
        needed: usize,
        available: usize,
    },
    /// Magic 0 or 1 (legacy message sets): not accepted, see README.
    UnsupportedMagic(i8),
    /// Any other magic byte.
    InvalidMagic(i8),
    BadCrc {
        stored: u32,
        computed: u32,
    },
    InvalidLength(i32),
    /// Record count does not agree with `last_offset_delta` or the records present.
    InvalidRecordCount {
        declared: i32,
        detail: &'static str,
    },
    InvalidCompression(i16),
    /// The batch is larger than the topic's `max.message.bytes`.
    TooLarge {
        size: usize,
        limit: usize,
    },
    /// A produce request carried no records at all.
    Empty,
    /// A record without a key, for a compacted topic.
    MissingKey,
    /// The records inside could not be decoded (bad compression or record framing).
    Undecodable(String),
    /// The records, decompressed if need be, are not what the header declares.
    InvalidRecords(RecordProblem),
    /// A control batch (a transaction marker) from a producer: only the broker writes those.
    ControlBatch,
}

impl BatchError {
    /// The Kafka error code a produce response carries for this error.
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            BatchError::UnsupportedMagic(_) => E::UnsupportedForMessageFormat.code(),
            BatchError::TooLarge { .. } => E::MessageTooLarge.code(),
            BatchError::InvalidRecordCount { .. }
            | BatchError::InvalidRecords(_)
            | BatchError::Empty
            | BatchError::ControlBatch
            | BatchError::MissingKey => E::InvalidRecord.code(),
            _ => E::CorruptMessage.code(),
        }
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Truncated { needed, available } => {
                write!(f, "record batch truncated: needs {needed} bytes, {available} present")
            }
            BatchError::UnsupportedMagic(m) => {
                write!(f, "record batch magic {m} is not supported; use magic 2 (Kafka 0.11+ clients)")
            }
            BatchError::InvalidMagic(m) => write!(f, "record batch magic {m} is invalid"),
            BatchError::BadCrc { stored, computed } => {
                write!(f, "record batch CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            BatchError::InvalidLength(l) => write!(f, "record batch length {l} is invalid"),
            BatchError::InvalidRecordCount { declared, detail } => {
                write!(f, "record count {declared} is invalid: {detail}")
            }
            BatchError::InvalidCompression(c) => write!(f, "compression codec {c} is unknown"),
            BatchError::TooLarge { size, limit } => {
                write!(f, "record batch of {size} bytes exceeds max.message.bytes {limit}")
            }
            BatchError::Empty => write!(f, "produce request carried no record batch"),
            BatchError::MissingKey => write!(f, "compacted topic cannot accept a record without a key"),
            BatchError::Undecodable(e) => write!(f, "records cannot be decoded: {e}"),
            BatchError::InvalidRecords(problem) => write!(f, "{problem}"),
            BatchError::ControlBatch => write!(f, "control batches are written by the broker, not produced"),
        }
    }
}

impl std::error::Error for BatchError {}

/// The fixed header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Reads the header fields. Only the length of `buf` is checked here.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            // Magic sits at byte 16: a short legacy message set still says what it is.
            if buf.len() > MAGIC_OFFSET && (buf[MAGIC_OFFSET] as i8) < 2 && (buf[MAGIC_OFFSET] as i8) >= 0 {
                return Err(BatchError::UnsupportedMagic(buf[MAGIC_OFFSET] as i8));
            }
            return Err(BatchError::Truncated { needed: BATCH_HEADER_LEN, available: buf.len() });
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH_OFFSET),
            magic: buf[MAGIC_OFFSET] as i8,
            crc: be_i32(buf, CRC_OFFSET) as u32,
            attributes: be_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// Bytes the whole batch occupies, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// Offset of the last record, given the base offset stored in the header.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
}

/// A batch that passed validation: the header and the exact bytes received.
#[derive(Debug, Clone)]
pub struct ValidatedBatch {
    pub header: BatchHeader,
    pub bytes: Bytes,
}

impl ValidatedBatch {
    /// Records in the batch (`last_offset_delta + 1`, checked equal to the count).
    pub fn record_count(&self) -> i64 {
        self.header.last_offset_delta as i64 + 1
    }
}

/// Splits the `records` field of a produce request into batches and validates
/// each. `max_batch_bytes` is the topic's `max.message.bytes`.
pub fn validate_batches(records: &Bytes, max_batch_bytes: usize) -> Result<Vec<ValidatedBatch>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut batches = Vec::new();
    let mut at = 0usize;
    while at < records.len() {
        let rest = &records[at..];
        let header = BatchHeader::parse(rest)?;
        let total = validate_one(rest, &header, max_batch_bytes)?;
        batches.push(ValidatedBatch { header, bytes: records.slice(at..at + total) });
        at += total;
    }
    Ok(batches)
}

fn validate_one(buf: &[u8], header: &BatchHeader, max_batch_bytes: usize) -> Result<usize, BatchError> {
    match header.magic {
        2 => {}
        0 | 1 => return Err(BatchError::UnsupportedMagic(header.magic)),
        m => return Err(BatchError::InvalidMagic(m)),
    }
    let min_batch_length = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;
    if header.batch_length < min_batch_length {
        return Err(BatchError::InvalidLength(header.batch_length));
    }
    let total = header.total_len();
    if total > buf.len() {
        return Err(BatchError::Truncated { needed: total, available: buf.len() });
    }
    if total > max_batch_bytes {
        return Err(BatchError::TooLarge { size: total, limit: max_batch_bytes });
    }
    let computed = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..total]);
    if computed != header.crc {
        return Err(BatchError::BadCrc { stored: header.crc, computed });
    }
    if header.compression() > 4 {
        return Err(BatchError::InvalidCompression(header.compression()));
    }
    if header.record_count <= 0 {
        return Err(BatchError::InvalidRecordCount {
            declared: header.record_count,
            detail: "a batch needs at least one record",
        });
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::InvalidRecordCount {
            declared: header.record_count,
            detail: "last offset delta must be record count - 1",
        });
    }
    let body = &buf[BATCH_HEADER_LEN..total];
    let walked = match header.compression() {
        0 => record_walk::check_uncompressed(body, header.record_count),
        codec => record_walk::check_compressed(codec, body, header.record_count),
    };
    walked.map_err(BatchError::InvalidRecords)?;
    Ok(total)
}

/// The first 16 bytes a stored batch begins with: the broker's base offset and
/// leader epoch around the producer's batch length. Both fields sit before the
/// CRC'd region, so `prefix ++ batch[16..]` is still a valid batch.
pub fn stored_prefix(batch: &[u8], base_offset: i64, leader_epoch: i32) -> [u8; MAGIC_OFFSET] {
    assert!(batch.len() >= BATCH_HEADER_LEN, "a stored batch has a full header");
    let mut prefix = [0u8; MAGIC_OFFSET];
    prefix[..8].copy_from_slice(&base_offset.to_be_bytes());
    prefix[8..PARTITION_LEADER_EPOCH_OFFSET].copy_from_slice(&batch[8..PARTITION_LEADER_EPOCH_OFFSET]);
    prefix[PARTITION_LEADER_EPOCH_OFFSET..].copy_from_slice(&leader_epoch.to_be_bytes());
    prefix
}

/// Compacted topics need a key on every record; Kafka refuses the batch otherwise.
/// Decodes (and decompresses) the records, so it is only run for such topics.
pub fn require_keys(batches: &[ValidatedBatch]) -> Result<(), BatchError> {
    for batch in batches {
        let mut buf = batch.bytes.clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
            .map_err(|e| BatchError::Undecodable(e.to_string()))?;
        if set.records.iter().any(|r| r.key.is_none()) {
            return Err(BatchError::MissingKey);
        }
    }
    Ok(())
}

/// Stamps a stored batch with the broker's append time, as Kafka does for
/// topics with `message.timestamp.type=LogAppendTime`: sets the timestamp-type
/// attribute and the max timestamp (which consumers then read as every
/// record's timestamp) and recomputes the CRC over the changed region.
pub fn stamp_log_append_time(batch: &mut [u8], append_time: i64) {
    assert!(batch.len() >= BATCH_HEADER_LEN, "a stored batch has a full header");
    let attributes = be_i16(batch, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&append_time.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Bytes of a batch after the prefix that `stored_prefix` replaces.
pub fn after_prefix(batch: &[u8]) -> &[u8] {
    &batch[MAGIC_OFFSET..]
}

/// The offset after the last record of concatenated whole `batches` (0 if none).
pub fn end_of(mut batches: &[u8]) -> i64 {
    let mut end = 0;
    // Bounded by the bytes: every header parsed consumes at least a header's worth.
    while let Ok(header) = BatchHeader::parse(batches) {
        end = header.last_offset() + 1;
        let len = header.total_len().max(BATCH_HEADER_LEN);
        if len > batches.len() {
            break;
        }
        batches = &batches[len..];
    }
    end
}

/// A transaction marker: the control record that ends one producer's
/// transaction on a partition (Kafka's `EndTransactionMarker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// Control record type of a commit marker (an abort is 0).
const CONTROL_TYPE_COMMIT: i16 = 1;

impl Marker {
    /// The marker as a one-record control batch at offset 0, validated like
    /// any batch (the broker's base offset replaces 0 when it is stored).
    pub fn batch(&self, timestamp: i64) -> ValidatedBatch {
        use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        let mut key = Vec::with_capacity(4);
        key.extend_from_slice(&0i16.to_be_bytes());
        key.extend_from_slice(&(if self.commit { CONTROL_TYPE_COMMIT } else { 0 }).to_be_bytes());
        let mut value = Vec::with_capacity(6);
        value.extend_from_slice(&0i16.to_be_bytes());
        value.extend_from_slice(&self.coordinator_epoch.to_be_bytes());
        let record = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp,
            key: Some(Bytes::from(key)),
            value: Some(Bytes::from(value)),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, std::iter::once(&record), &options).expect("a marker encodes");
        let bytes = buf.freeze();
        let mut batches = validate_batches(&bytes, usize::MAX).expect("a marker is a valid batch");
        assert_eq!(batches.len(), 1, "one marker, one batch");
        batches.pop().expect("one batch")
    }

    /// Reads the marker a stored control batch holds; `None` if `batch` is
    /// not a control batch or its record is not a transaction marker.
    pub fn parse(header: &BatchHeader, batch: &[u8]) -> Option<Marker> {
        if !header.is_control() || header.compression() != 0 || batch.len() < BATCH_HEADER_LEN {
            return None;
        }
        // One uncompressed record: length, attributes, timestamp delta, offset delta, key, value.
        let varint = |at: &mut usize| -> Option<i64> {
            let (value, used) = record_walk::read_varint(batch.get(*at..)?)?;
            *at += used;
            Some(value)
        };
        let mut at = BATCH_HEADER_LEN;
        varint(&mut at)?; // record length
        at += 1; // attributes
        varint(&mut at)?; // timestamp delta
        varint(&mut at)?; // offset delta
        let key_len = usize::try_from(varint(&mut at)?).ok()?;
        let key = batch.get(at..at + key_len)?;
        at += key_len;
        if key_len < 4 {
            return None;
        }
        let kind = be_i16(key, 2);
        let value_len = usize::try_from(varint(&mut at)?).ok()?;
        let value = batch.get(at..at + value_len)?;
        let coordinator_epoch = if value.len() >= 6 { be_i32(value, 2) } else { -1 };
        (kind == 0 || kind == CONTROL_TYPE_COMMIT).then_some(Marker {
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            commit: kind == CONTROL_TYPE_COMMIT,
            coordinator_epoch,
        })
    }
}

/// A record to produce: what a producer sets, before the broker assigns
/// offsets, and the one encoder of produced batches. The client crate's,
/// so the embedded API and Kafka clients built on `tributary-client` hand
/// the same records around and encode them the same way.
pub use tributary_client::{encode_batch, NewRecord, Sequenced};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::Compression;

    pub(crate) fn encode(n: usize, compression: Compression) -> Bytes {
        let records: Vec<NewRecord> = (0..n)
            .map(|i| NewRecord {
                timestamp: Some(1_000 + i as i64),
                ..NewRecord::keyed(format!("k{i}"), vec![b'v'; 100])
            })
            .collect();
        encode_batch(&records, compression, 0, None).unwrap()
    }

    #[test]
    fn accepts_valid_batches_of_every_codec() {
        for c in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let b = encode(10, c);
            let v = validate_batches(&b, 1 << 20).unwrap();
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].record_count(), 10);
            assert_eq!(v[0].header.max_timestamp, 1_009);
        }
    }

    #[test]
    fn splits_concatenated_batches() {
        let mut both = BytesMut::new();
        both.extend_from_slice(&encode(3, Compression::None));
        both.extend_from_slice(&encode(4, Compression::None));
        let v = validate_batches(&both.freeze(), 1 << 20).unwrap();
        assert_eq!(v.iter().map(|b| b.record_count()).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn rejects_bad_crc_truncation_magic_and_size() {
        let good = encode(5, Compression::None);
        let mut bad = BytesMut::from(&good[..]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(validate_batches(&bad.freeze(), 1 << 20), Err(BatchError::BadCrc { .. })));
        assert!(matches!(validate_batches(&good.slice(..good.len() - 3), 1 << 20), Err(BatchError::Truncated { .. })));
        assert!(matches!(validate_batches(&good.slice(..20), 1 << 20), Err(BatchError::Truncated { .. })));
        let mut v1 = BytesMut::from(&good[..]);
        v1[MAGIC_OFFSET] = 1;
        assert!(matches!(validate_batches(&v1.freeze(), 1 << 20), Err(BatchError::UnsupportedMagic(1))));
        assert!(matches!(validate_batches(&good, 100), Err(BatchError::TooLarge { .. })));
        assert_eq!(validate_batches(&Bytes::new(), 100).unwrap_err(), BatchError::Empty);
    }

    #[test]
    fn rejects_record_count_mismatch_even_with_valid_crc() {
        let good = encode(5, Compression::None);
        let mut b = BytesMut::from(&good[..]);
        b[57..61].copy_from_slice(&4i32.to_be_bytes());
        b[23..27].copy_from_slice(&3i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        let refused = validate_batches(&b.freeze(), 1 << 20);
        assert!(
            matches!(refused, Err(BatchError::InvalidRecords(RecordProblem::Count { declared: 4, .. }))),
            "{refused:?}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 4096, ..Default::default() })]

        /// Fuzzing batch validation, every codec: valid batches with bytes
        /// flipped (the CRC then fixed or not) and cut short never panic, and
        /// a batch that is accepted decodes (kafka-protocol's decoder, as a
        /// consumer's) to exactly the records its header counts.
        #[test]
        fn mutated_batches_are_refused_or_decode_as_declared(
            codec in 0usize..5,
            records in 1usize..12,
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 0..6),
            fix_crc in proptest::prelude::any::<bool>(),
            cut in proptest::option::of(0usize..400),
        ) {
            let codecs = [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];
            let mut b = BytesMut::from(&encode(records, codecs[codec])[..]);
            for (at, mask) in flips {
                let at = at % b.len();
                b[at] ^= mask;
            }
            if let Some(cut) = cut {
                let keep = b.len().saturating_sub(cut).max(1);
                b.truncate(keep);
            }
            if fix_crc && b.len() > BATCH_HEADER_LEN {
                let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
                b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
            }
            if let Ok(batches) = validate_batches(&b.freeze(), 1 << 20) {
                for batch in batches {
                    let mut bytes = batch.bytes.clone();
                    let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes);
                    let decoded = decoded.map_err(|e| proptest::test_runner::TestCaseError::fail(format!("accepted but undecodable: {e}")))?;
                    proptest::prop_assert_eq!(decoded.records.len(), batch.record_count() as usize);
                }
            }
        }
    }

    /// A compressed batch that claims 2^31-1 records with garbage inside (CRC
    /// correct) is refused, not stored with its claim moving the log end.
    #[test]
    fn a_compressed_batch_with_a_false_count_is_refused() {
        for (codec, compression) in [(1, Compression::Gzip), (4, Compression::Zstd), (3, Compression::Lz4)] {
            let good = encode(2, compression);
            let mut b = BytesMut::from(&good[..BATCH_HEADER_LEN]);
            b.extend_from_slice(&[0x42; 18]);
            let len = (b.len() - LOG_OVERHEAD) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
            b[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
            assert_eq!(be_i16(&b, ATTRIBUTES_OFFSET) & 0x07, codec);
            let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
            b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
            let refused = validate_batches(&b.freeze(), 1 << 20);
            assert!(matches!(refused, Err(BatchError::InvalidRecords(_))), "{compression:?}: {refused:?}");
            assert_eq!(refused.unwrap_err().error_code(), kafka_protocol::ResponseError::InvalidRecord.code());
        }
    }

    #[test]
    fn compacted_topics_need_keys() {
        let keyed = validate_batches(&encode(3, Compression::Zstd), 1 << 20).unwrap();
        assert_eq!(require_keys(&keyed), Ok(()));
        let keyless = encode_batch(
            &[NewRecord { value: Some(Bytes::from_static(b"v")), ..NewRecord::default() }],
            Compression::Gzip,
            0,
            None,
        );
        let keyless = validate_batches(&keyless.unwrap(), 1 << 20).unwrap();
        assert_eq!(require_keys(&keyless), Err(BatchError::MissingKey));
    }

    #[test]
    fn log_append_time_stamping_keeps_the_batch_valid() {
        let mut batch = encode(3, Compression::Gzip).to_vec();
        stamp_log_append_time(&mut batch, 99_000);
        let v = validate_batches(&Bytes::from(batch), 1 << 20).unwrap();
        assert!(v[0].header.is_log_append_time());
        assert_eq!(v[0].header.max_timestamp, 99_000);
    }

    #[test]
    fn rewriting_the_base_offset_keeps_the_crc_valid() {
        let good = encode(5, Compression::Lz4);
        let mut out = stored_prefix(&good, 42, 7).to_vec();
        out.extend_from_slice(after_prefix(&good));
        let stored = Bytes::from(out);
        let v = validate_batches(&stored, 1 << 20).unwrap();
        assert_eq!(v[0].header.base_offset, 42);
        assert_eq!(v[0].header.partition_leader_epoch, 7);
    }
}
