"""Bad input over a real socket: the offending connection gets an error
response or is closed, the broker keeps serving, stored data stays intact."""

import os
import struct

from confluent_kafka import Producer

from helpers import consume_partitions, create_topic
from rawkafka import Conn, api_versions, parse_produce_v3, produce_v3, record_batch, request

CORRUPT_MESSAGE = 2
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_VERSION = 35


def seed(broker, n=20):
    create_topic(broker.bootstrap, "victim", 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(n):
        producer.produce("victim", value=f"kept-{i}")
    assert producer.flush(10) == 0


def assert_intact(broker, n=20, extra=()):
    values = [m.value().decode() for m in consume_partitions(broker.bootstrap, "victim", [0], n + len(extra))[0]]
    assert values == [f"kept-{i}" for i in range(n)] + list(extra)


def test_garbage_frames_close_only_their_connection(broker):
    seed(broker)
    bystander = Conn(broker.bootstrap)
    cases = {
        "random bytes": os.urandom(4096),
        "frame over the size limit": struct.pack(">i", 200 * 1024 * 1024) + b"x" * 100,
        "negative length": struct.pack(">i", -5),
        "header shorter than a header": struct.pack(">i", 3) + b"abc",
        "unknown api key": request(999, 0, 1, b""),
        "unsupported produce version": request(0, 2, 1, b"\x00" * 20),
        "produce body cut short": produce_v3(7, "victim", 0, record_batch([b"x"]))[:-30],
    }
    for name, payload in cases.items():
        conn = Conn(broker.bootstrap)
        if name == "produce body cut short":
            # Fix the length prefix so the frame itself is whole but its body is truncated.
            payload = struct.pack(">i", len(payload) - 4) + payload[4:]
        conn.send(payload)
        assert conn.closed_by_peer(), f"{name}: connection should be closed"
        conn.close()
        assert broker.alive(), f"broker died on: {name}"
        # A well-behaved connection opened before the abuse still works.
        bystander.send(api_versions(42))
        resp = bystander.recv_response()
        assert resp is not None and struct.unpack_from(">i", resp)[0] == 42
    bystander.close()
    assert "closing connection" in broker.log()
    assert_intact(broker)


def test_truncated_frame_then_disconnect(broker):
    seed(broker)
    conn = Conn(broker.bootstrap)
    conn.send(struct.pack(">i", 1000) + b"only a little")
    conn.close()
    assert broker.alive()
    assert_intact(broker)


def test_bad_batches_get_error_codes_and_are_not_stored(broker):
    seed(broker)
    conn = Conn(broker.bootstrap)
    good = record_batch([b"raw-good"])

    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    conn.send(produce_v3(1, "victim", 0, bytes(bad_crc)))
    assert parse_produce_v3(conn.recv_response())[:2] == (1, CORRUPT_MESSAGE)

    legacy = bytearray(good)
    legacy[16] = 1  # magic 1: a legacy message set
    conn.send(produce_v3(2, "victim", 0, bytes(legacy)))
    assert parse_produce_v3(conn.recv_response())[:2] == (2, UNSUPPORTED_FOR_MESSAGE_FORMAT)

    conn.send(produce_v3(3, "victim", 0, good[:-5]))
    assert parse_produce_v3(conn.recv_response())[:2] == (3, CORRUPT_MESSAGE)

    conn.send(produce_v3(4, "victim", 0, good, acks=7))
    assert parse_produce_v3(conn.recv_response())[:2] == (4, INVALID_REQUIRED_ACKS)

    # The same connection still produces a good batch, at the next offset.
    conn.send(produce_v3(5, "victim", 0, good))
    assert parse_produce_v3(conn.recv_response()) == (5, 0, 20)
    conn.close()
    assert_intact(broker, extra=["raw-good"])


def test_api_versions_newer_than_supported_is_answered_in_v0(broker):
    conn = Conn(broker.bootstrap)
    conn.send(api_versions(9, version=99))
    resp = conn.recv_response()
    corr, error_code = struct.unpack_from(">ih", resp)
    assert (corr, error_code) == (9, UNSUPPORTED_VERSION)
    (count,) = struct.unpack_from(">i", resp, 6)
    keys = {struct.unpack_from(">hhh", resp, 10 + 6 * i)[0] for i in range(count)}
    assert {0, 1, 2, 3, 18} <= keys  # Produce, Fetch, ListOffsets, Metadata, ApiVersions
    conn.close()


def test_batch_over_max_message_bytes_is_refused(broker):
    from confluent_kafka import KafkaError

    from helpers import create_topic as make
    make(broker.bootstrap, "tiny", 1, config={"max.message.bytes": "2048"})
    errors = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 100_000})
    producer.produce("tiny", value=b"x" * 10_000, on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)  # separate batches: the batch is what is accepted or refused
    producer.produce("tiny", value=b"small", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    codes = sorted(e.code() if e else 0 for e in errors)
    assert codes == sorted([0, KafkaError.MSG_SIZE_TOO_LARGE])
    assert [m.value() for m in consume_partitions(broker.bootstrap, "tiny", [0], 1)[0]] == [b"small"]


INVALID_RECORD = 87


def lying_compressed_batch(codec):
    """A 79-byte batch with codec `codec` that claims 2^31-1 records, garbage
    inside and a correct CRC: what librdkafka then loops on if it is stored."""
    from kafka.record.util import calc_crc32c

    body = b"\x42" * 18
    attributes = codec
    after_crc = struct.pack(">hiqqqhi", attributes, 2**31 - 2, 1_000, 1_000, -1, -1, -1)
    after_crc += struct.pack(">i", 2**31 - 1) + body
    crc = calc_crc32c(after_crc)
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, the rest
    batch = struct.pack(">qiib", 0, batch_length, -1, 2) + struct.pack(">I", crc) + after_crc
    assert len(batch) == 79
    return batch


def test_compressed_batches_that_lie_about_their_records_are_refused(broker):
    seed(broker)
    conn = Conn(broker.bootstrap)
    for n, codec in enumerate([1, 2, 3, 4], start=1):  # gzip, snappy, lz4, zstd
        conn.send(produce_v3(n, "victim", 0, lying_compressed_batch(codec)))
        assert parse_produce_v3(conn.recv_response())[:2] == (n, INVALID_RECORD), f"codec {codec}"
    # The log end did not move: the next good batch lands at offset 20, and a
    # consumer reads everything back.
    conn.send(produce_v3(9, "victim", 0, record_batch([b"after-the-liars"])))
    assert parse_produce_v3(conn.recv_response()) == (9, 0, 20)
    conn.close()
    assert_intact(broker, extra=["after-the-liars"])
