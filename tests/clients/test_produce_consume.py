"""Produce and consume with two independent client implementations:
librdkafka (confluent-kafka) and kafka-python."""

import zlib

import kafka
import pytest
from confluent_kafka import Producer

from helpers import consume_partitions, create_topic


def test_100k_keyed_records_over_6_partitions_read_back_in_order(broker):
    topic, n, keys = "orders", 100_000, 500
    create_topic(broker.bootstrap, topic, 6)
    acked = {}
    errors = []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            acked[int(msg.value())] = (msg.partition(), msg.offset(), msg.key())

    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(n):
        while True:
            try:
                producer.produce(topic, key=f"key-{i % keys}", value=str(i), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors
    assert len(acked) == n

    # Same key, same partition, every time.
    partition_of_key = {}
    for partition, _, key in acked.values():
        assert partition_of_key.setdefault(key, partition) == partition
    assert len(set(partition_of_key.values())) == 6, "500 keys spread over all 6 partitions"

    consumed = consume_partitions(broker.bootstrap, topic, range(6), n)
    assert sum(len(v) for v in consumed.values()) == n
    for partition, messages in consumed.items():
        offsets = [m.offset() for m in messages]
        assert offsets == list(range(len(messages))), f"partition {partition} read in offset order without gaps"
        # Per key, values (the produce order) are increasing: the partition kept the order written.
        last = {}
        for m in messages:
            value = int(m.value())
            assert acked[value][:2] == (partition, m.offset()), "consumed where the ack said"
            assert last.get(m.key(), -1) < value
            last[m.key()] = value

    # kafka-python, with its own protocol code, reads the same log.
    consumer = kafka.KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=5000,
                                   max_partition_fetch_bytes=4 << 20)
    tps = [kafka.TopicPartition(topic, p) for p in range(6)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = {p: [] for p in range(6)}
    for record in consumer:
        seen[record.partition].append((record.offset, int(record.value)))
        if sum(len(v) for v in seen.values()) == n:
            break
    consumer.close()
    for p in range(6):
        assert [(m.offset(), int(m.value())) for m in consumed[p]] == seen[p]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_round_trips(broker, codec):
    topic = f"codec-{codec}"
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec, "linger.ms": 20})
    values = [f"{codec}-{i}-".encode() * 20 for i in range(2000)]
    for v in values:
        producer.produce(topic, value=v)
    assert producer.flush(30) == 0
    consumed = consume_partitions(broker.bootstrap, topic, [0], len(values))[0]
    assert [m.value() for m in consumed] == values

    # kafka-python decompresses the same stored batches independently.
    consumer = kafka.KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=5000)
    tp = kafka.TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    for record in consumer:
        got.append(record.value)
        if len(got) == len(values):
            break
    consumer.close()
    assert got == values


def test_kafka_python_producer_with_gzip_and_librdkafka_consumer(broker):
    producer = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", compression_type="gzip")
    futures = [producer.send("kp-gzip", key=b"k", value=zlib.compress(str(i).encode())) for i in range(500)]
    producer.flush(30)
    metas = [f.get(timeout=10) for f in futures]
    assert [m.offset for m in metas] == list(range(500))
    producer.close()
    consumed = consume_partitions(broker.bootstrap, "kp-gzip", [0], 500)[0]
    assert [int(zlib.decompress(m.value())) for m in consumed] == list(range(500))


def test_headers_keys_and_timestamps_round_trip(broker):
    create_topic(broker.bootstrap, "meta", 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    sent = []
    for i in range(50):
        headers = [("trace", f"t{i}".encode()), ("dup", b"a"), ("dup", b"b"), ("empty", None)]
        ts = 1_600_000_000_000 + i * 1000
        key = None if i % 7 == 0 else f"k{i}".encode()
        producer.produce("meta", key=key, value=f"v{i}".encode(), headers=headers, timestamp=ts)
        sent.append((key, f"v{i}".encode(), headers, ts))
    assert producer.flush(10) == 0
    got = consume_partitions(broker.bootstrap, "meta", [0], 50)[0]
    assert len(got) == 50
    for m, (key, value, headers, ts) in zip(got, sent):
        assert m.key() == key and m.value() == value
        assert m.headers() == headers
        assert m.timestamp()[1] == ts


def test_log_append_time_topics_carry_the_broker_time(broker):
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME
    import time

    create_topic(broker.bootstrap, "appended", 1, config={"message.timestamp.type": "LogAppendTime"})
    before_ms = int(time.time() * 1000) - 1
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "zstd"})
    for i in range(20):
        producer.produce("appended", value=str(i), timestamp=1_000 + i)  # the client's time is overridden
    assert producer.flush(10) == 0
    after_ms = int(time.time() * 1000) + 1
    got = consume_partitions(broker.bootstrap, "appended", [0], 20)[0]
    assert [m.value() for m in got] == [str(i).encode() for i in range(20)]
    for m in got:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME and before_ms <= ts <= after_ms

    consumer = kafka.KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=5000)
    tp = kafka.TopicPartition("appended", 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records = [r for _, r in zip(range(20), consumer)]
    consumer.close()
    assert all(r.timestamp_type == 1 and before_ms <= r.timestamp <= after_ms for r in records)
