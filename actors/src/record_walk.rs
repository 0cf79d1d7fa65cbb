//! Walks every record of a v2 batch, decompressing when the batch is
//! compressed, and checks that the records are what the header says: as many
//! as declared, offset deltas 0, 1, 2, ... in order, and each record's fields
//! (attributes, timestamp delta, offset delta, key, value, headers) tiling its
//! bytes exactly. Kafka's broker does the same before it stores a batch; a
//! batch that lies about its records would otherwise move the log end by its
//! claim and leave consumers looping on records they cannot decode.
//!
//! Decompression is streamed and bounded: at most 256 times a batch's
//! compressed size (64 KiB at least, 64 MiB at most) comes out of it, one
//! record is held at a time, zstd's window is capped and a snappy block may
//! not claim more than snappy can expand to, so a small batch that inflates
//! without end (a compression bomb) costs memory and CPU in proportion to
//! the bytes sent, and is refused.

use std::io::{self, Read};

/// Bytes one batch may decompress to: at most `MAX_RATIO` times its
/// compressed size (at least `MIN_DECOMPRESSED_BYTES`), and never more than
/// `MAX_DECOMPRESSED_BYTES`. The decompression work a client can cause is
/// then proportional to the bytes it sends, whatever topic configs it set.
const MAX_DECOMPRESSED_BYTES: u64 = 64 << 20;
const MIN_DECOMPRESSED_BYTES: u64 = 64 << 10;
const MAX_RATIO: u64 = 256;
/// Snappy expands at most about 21 times (a 3-byte copy tag writes 64 bytes).
const SNAPPY_MAX_RATIO: usize = 24;
/// zstd frames may ask for windows up to 2^this bytes (16 MiB) of decoder memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// xerial snappy framing (Kafka's snappy): a header (this magic, version 1,
/// compatible version 1), then [u32 length][raw block]...
const SNAPPY_XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const SNAPPY_XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// Why a batch's records are not what its header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// The compressed data does not decompress (with its codec), or inflates past the bound.
    Decompression(String),
    /// Record `index` (0-based) is malformed.
    Record { index: i32, detail: &'static str },
    /// The records present do not number the count the header declares.
    Count { declared: i32, detail: &'static str },
}

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordProblem::Decompression(e) => write!(f, "compressed records do not decompress: {e}"),
            RecordProblem::Record { index, detail } => write!(f, "record {index} is malformed: {detail}"),
            RecordProblem::Count { declared, detail } => write!(f, "record count {declared} is invalid: {detail}"),
        }
    }
}

/// Checks the records of an uncompressed batch body in place.
pub fn check_uncompressed(mut body: &[u8], declared: i32) -> Result<(), RecordProblem> {
    let mut index = 0i32;
    // Bounded by the body: each turn consumes one record of at least one byte.
    while !body.is_empty() {
        if index == declared {
            return Err(RecordProblem::Count { declared, detail: "more records present than declared" });
        }
        let (len, used) =
            read_varint(body).ok_or(RecordProblem::Record { index, detail: "length varint is malformed" })?;
        if len <= 0 || len as u64 > (body.len() - used) as u64 {
            return Err(RecordProblem::Record { index, detail: "length runs past the batch" });
        }
        let end = used + len as usize;
        check_record(&body[used..end], index)?;
        body = &body[end..];
        index += 1;
    }
    if index != declared {
        return Err(RecordProblem::Count { declared, detail: "fewer records present than declared" });
    }
    Ok(())
}

/// Checks the records of a compressed batch body (`codec`: 1 gzip, 2
/// snappy, 3 lz4, 4 zstd), decompressing at most the bound above.
pub fn check_compressed(codec: i16, body: &[u8], declared: i32) -> Result<(), RecordProblem> {
    let limit = (body.len() as u64).saturating_mul(MAX_RATIO).clamp(MIN_DECOMPRESSED_BYTES, MAX_DECOMPRESSED_BYTES);
    let decompression = |e: io::Error| RecordProblem::Decompression(e.to_string());
    let reader: Box<dyn Read + '_> = match codec {
        // Every member of a gzip stream, as Java's GZIPInputStream reads them.
        1 => Box::new(flate2::read::MultiGzDecoder::new(body)),
        2 => Box::new(Snappy::new(body, limit).map_err(decompression)?),
        3 => Box::new(lz4::Decoder::new(body).map_err(decompression)?),
        4 => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(decompression)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(decompression)?;
            Box::new(decoder)
        }
        other => unreachable!("codec {other} is refused before the records are walked"),
    };
    walk_stream(&mut Bounded { inner: reader, left: limit }, declared)
}

/// Reads records one at a time from decompressed bytes.
fn walk_stream(stream: &mut impl Read, declared: i32) -> Result<(), RecordProblem> {
    let decompression = |e: io::Error| RecordProblem::Decompression(e.to_string());
    let mut record = Vec::new();
    let mut index = 0i32;
    // Bounded by `Bounded`: each turn consumes at least one decompressed byte, or ends.
    loop {
        let len = match read_stream_varint(stream, index)? {
            None => break,
            Some(len) => len,
        };
        if index == declared {
            return Err(RecordProblem::Count { declared, detail: "more records present than declared" });
        }
        if len <= 0 || len > i64::from(i32::MAX) {
            return Err(RecordProblem::Record { index, detail: "length is not positive" });
        }
        record.clear();
        let read = stream.by_ref().take(len as u64).read_to_end(&mut record).map_err(decompression)?;
        if read as i64 != len {
            return Err(RecordProblem::Record { index, detail: "length runs past the records" });
        }
        check_record(&record, index)?;
        index += 1;
    }
    if index != declared {
        return Err(RecordProblem::Count { declared, detail: "fewer records present than declared" });
    }
    Ok(())
}

/// A record length varint from the stream; `None` at a clean end.
fn read_stream_varint(stream: &mut impl Read, index: i32) -> Result<Option<i64>, RecordProblem> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).map_err(|e| RecordProblem::Decompression(e.to_string()))?;
        if n == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(RecordProblem::Record { index, detail: "length varint is cut short" });
        }
        raw |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some(((raw >> 1) as i64) ^ -((raw & 1) as i64)));
        }
    }
    Err(RecordProblem::Record { index, detail: "length varint is malformed" })
}

/// One record's fields, after its length: attributes (1 byte), timestamp
/// delta, offset delta (must be `index`), key, value, headers; nothing after.
fn check_record(record: &[u8], index: i32) -> Result<(), RecordProblem> {
    let bad = |detail| RecordProblem::Record { index, detail };
    let mut at = Cursor { buf: record, pos: 0 };
    at.skip(1).ok_or(bad("attributes missing"))?;
    at.varint().ok_or(bad("timestamp delta is malformed"))?;
    let offset_delta = at.varint().ok_or(bad("offset delta is malformed"))?;
    if offset_delta != i64::from(index) {
        return Err(bad("offset delta is not the record's position in the batch"));
    }
    at.bytes(true).ok_or(bad("key runs past the record"))?;
    at.bytes(true).ok_or(bad("value runs past the record"))?;
    let headers = at.varint().ok_or(bad("header count is malformed"))?;
    if headers < 0 || headers as u64 > record.len() as u64 {
        return Err(bad("header count is invalid"));
    }
    for _ in 0..headers {
        at.bytes(false).ok_or(bad("header key runs past the record"))?;
        at.bytes(true).ok_or(bad("header value runs past the record"))?;
    }
    if at.pos != record.len() {
        return Err(bad("bytes left after the headers"));
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        (self.buf.len() - self.pos >= n).then(|| self.pos += n)
    }

    fn varint(&mut self) -> Option<i64> {
        let (value, used) = read_varint(&self.buf[self.pos..])?;
        self.pos += used;
        Some(value)
    }

    /// A length-prefixed field; length -1 is null where `nullable`.
    fn bytes(&mut self, nullable: bool) -> Option<()> {
        match self.varint()? {
            -1 if nullable => Some(()),
            len if len < 0 => None,
            len => self.skip(usize::try_from(len).ok()?),
        }
    }
}

/// Reads a zigzag varint (Kafka's record encoding): the value and bytes used.
pub fn read_varint(buf: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, byte) in buf.iter().take(10).enumerate() {
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((value, i + 1));
        }
    }
    None
}

/// Fails once more than `left` bytes have been read through it.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more means the bound is passed; zero means the stream really ended.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, "decompresses past the bound for one batch")),
            };
        }
        let room = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..room])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Kafka's snappy: xerial framing (a 16-byte header, then blocks of
/// [u32 length][raw snappy]), or one raw snappy block without the header,
/// as Kafka's Java client reads either. Each block's claimed length is
/// checked against what is left of the bound before anything is allocated.
struct Snappy<'a> {
    rest: &'a [u8],
    framed: bool,
    block: Vec<u8>,
    at: usize,
    left: u64,
}

impl<'a> Snappy<'a> {
    fn new(body: &'a [u8], limit: u64) -> io::Result<Snappy<'a>> {
        let framed = body.starts_with(SNAPPY_XERIAL_MAGIC);
        // The magic with another header (version fields) is neither framing for
        // certain: refused, so no reader takes it one way and another the other.
        if framed && !body.starts_with(SNAPPY_XERIAL_HEADER) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snappy: unknown xerial header version"));
        }
        let rest = if framed { &body[SNAPPY_XERIAL_HEADER.len()..] } else { body };
        Ok(Snappy { rest, framed, block: Vec::new(), at: 0, left: limit })
    }

    /// Decompresses the next block into `self.block`; `false` at the end.
    fn next_block(&mut self) -> io::Result<bool> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snappy: {what}"));
        if self.rest.is_empty() {
            return Ok(false);
        }
        let compressed = if self.framed {
            let len = self.rest.get(..4).ok_or_else(|| invalid("block length cut short"))?;
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            let block = self.rest.get(4..4 + len).ok_or_else(|| invalid("block runs past the batch"))?;
            self.rest = &self.rest[4 + len..];
            block
        } else {
            std::mem::take(&mut self.rest)
        };
        let claimed = snap::raw::decompress_len(compressed).map_err(|e| invalid(&e.to_string()))?;
        if claimed > compressed.len().saturating_mul(SNAPPY_MAX_RATIO) + 64 {
            return Err(invalid("a block claims more than snappy can expand to"));
        }
        if claimed as u64 > self.left {
            return Err(invalid("decompresses past the bound for one batch"));
        }
        self.left -= claimed as u64;
        self.block.resize(claimed, 0);
        let n =
            snap::raw::Decoder::new().decompress(compressed, &mut self.block).map_err(|e| invalid(&e.to_string()))?;
        self.block.truncate(n);
        self.at = 0;
        Ok(true)
    }
}

impl Read for Snappy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bounded by the blocks: each turn decompresses one.
        while self.at == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::BATCH_HEADER_LEN;
    use kafka_protocol::records::Compression;
    use tributary_client::{encode_batch, NewRecord};

    fn batch(n: usize, compression: Compression) -> Vec<u8> {
        let records: Vec<NewRecord> = (0..n).map(|i| NewRecord::keyed(format!("k{i}"), vec![b'v'; 200])).collect();
        encode_batch(&records, compression, 1_000, None).unwrap().to_vec()
    }

    #[test]
    fn every_codec_walks_its_records() {
        for (codec, compression) in
            [(1, Compression::Gzip), (2, Compression::Snappy), (3, Compression::Lz4), (4, Compression::Zstd)]
        {
            let b = batch(50, compression);
            let body = &b[BATCH_HEADER_LEN..];
            assert_eq!(check_compressed(codec, body, 50), Ok(()), "{compression:?}");
            let wrong = check_compressed(codec, body, 51);
            assert!(matches!(wrong, Err(RecordProblem::Count { .. })), "{compression:?}: {wrong:?}");
            let claim = check_compressed(codec, body, i32::MAX);
            assert!(matches!(claim, Err(RecordProblem::Count { .. })), "{compression:?}: {claim:?}");
            let garbage = check_compressed(codec, &[0x55; 64], 1);
            assert!(garbage.is_err(), "{compression:?}: garbage accepted");
        }
        let plain = batch(5, Compression::None);
        assert_eq!(check_uncompressed(&plain[BATCH_HEADER_LEN..], 5), Ok(()));
    }

    #[test]
    fn offset_deltas_and_fields_are_checked() {
        let plain = batch(3, Compression::None);
        let mut body = plain[BATCH_HEADER_LEN..].to_vec();
        // Record 0: its length varint, attributes, timestamp delta 0 (one byte), offset delta 0.
        let (_, used) = read_varint(&body).unwrap();
        let offset_delta = used + 2;
        assert_eq!(body[offset_delta], 0, "record 0's offset delta");
        body[offset_delta] = 2 << 1;
        let moved = check_uncompressed(&body, 3);
        assert!(matches!(moved, Err(RecordProblem::Record { index: 0, .. })), "{moved:?}");
        let cut = &plain[BATCH_HEADER_LEN..plain.len() - 1];
        assert!(check_uncompressed(cut, 3).is_err());
    }

    #[test]
    fn a_compression_bomb_is_refused_within_the_bound() {
        // One record whose 100 MB value is zeros: a tiny gzip stream.
        let bomb = gzip_record(100 << 20);
        assert!(bomb.len() < 200_000, "the bomb is small: {} bytes", bomb.len());
        let refused = check_compressed(1, &bomb, 1);
        assert!(matches!(refused, Err(RecordProblem::Decompression(_))), "{refused:?}");
        // Under the 64 KiB floor any ratio is fine; above it, 256:1 is the most.
        assert_eq!(check_compressed(1, &gzip_record(60 << 10), 1), Ok(()));
        let refused = check_compressed(1, &gzip_record(1 << 20), 1);
        assert!(matches!(refused, Err(RecordProblem::Decompression(_))), "1 MiB of zeros is about 1 KiB of gzip");
    }

    /// One record (offset delta 0) whose value is `value_len` zeros, gzipped.
    fn gzip_record(value_len: i64) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut record = vec![0u8, 0, 0]; // attributes, timestamp delta, offset delta
        record.push(1); // key length -1 (null)
        push_varint(&mut record, value_len);
        let len = record.len() as i64 + value_len + 1;
        let mut head = Vec::new();
        push_varint(&mut head, len);
        io::Write::write_all(&mut encoder, &head).unwrap();
        io::Write::write_all(&mut encoder, &record).unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut left = value_len as usize;
        while left > 0 {
            let n = left.min(zeros.len());
            io::Write::write_all(&mut encoder, &zeros[..n]).unwrap();
            left -= n;
        }
        io::Write::write_all(&mut encoder, &[0]).unwrap(); // no headers
        encoder.finish().unwrap()
    }

    fn push_varint(out: &mut Vec<u8>, value: i64) {
        let mut raw = ((value << 1) ^ (value >> 63)) as u64;
        while raw >= 0x80 {
            out.push((raw as u8) | 0x80);
            raw >>= 7;
        }
        out.push(raw as u8);
    }
}
