"""Retention and record deletion through real clients: configs altered live
with AdminClient and kafka-python, DeleteRecords, and a data directory that
stops growing under steady produce once retention.bytes applies."""

import time

import kafka
import kafka.admin
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

import rawkafka
from helpers import consume_partitions, create_topic, fetch_error

FAST_RETENTION = "[topics]\nretention_check_interval_ms = 200\n"


def watermarks(bootstrap, topic, partition=0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def wait_until(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_time_retention_set_live_moves_the_log_start(broker_factory):
    b = broker_factory(FAST_RETENTION)
    create_topic(b.bootstrap, "aging", 1)
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0})
    old = int(time.time() * 1000) - 3_600_000
    for i in range(50):
        p.produce("aging", value=f"old-{i}", timestamp=old + i)  # an hour old
    p.flush(10)
    for i in range(20):
        p.produce("aging", value=f"new-{i}")
    assert p.flush(10) == 0
    assert watermarks(b.bootstrap, "aging") == (0, 70)

    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, "aging",
                              incremental_configs=[ConfigEntry("retention.ms", "600000",
                                                               incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(10)
    assert wait_until(lambda: watermarks(b.bootstrap, "aging")[0] == 50), watermarks(b.bootstrap, "aging")
    values = [m.value().decode() for m in consume_partitions(b.bootstrap, "aging", [0], 20, extra={"auto.offset.reset": "earliest"})[0]]
    assert values == [f"new-{i}" for i in range(20)]
    # Reading below the log start is OFFSET_OUT_OF_RANGE.
    err = fetch_error(b.bootstrap, "aging", 0, 10)
    assert err is not None and "out of range" in str(err).lower()


def test_size_retention_keeps_the_data_dir_from_growing(broker_factory):
    b = broker_factory(FAST_RETENTION)
    create_topic(b.bootstrap, "bounded", 1, config={"retention.bytes": str(2 * 1024 * 1024)})
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 5})
    payload = b"x" * 1000
    data_file = b.data_dir / "bounded-0" / "data.mdb"
    sizes = []
    for round_ in range(12):
        for _ in range(2000):  # ~2 MB a round
            p.produce("bounded", value=payload)
        assert p.flush(30) == 0
        time.sleep(0.6)  # a few retention ticks
        sizes.append(data_file.stat().st_size)
    low, high = watermarks(b.bootstrap, "bounded")
    assert high == 24_000 and low > 18_000, (low, high)
    # LMDB reuses the pages retention frees: after the first rounds the file stops growing.
    assert sizes[-1] <= sizes[3] * 1.25, sizes


def test_delete_records_and_alter_configs_from_kafka_python(broker):
    create_topic(broker.bootstrap, "trimmed", 2)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce("trimmed", value=str(i), partition=i % 2)
    assert p.flush(10) == 0
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    done = admin.delete_records([TopicPartition("trimmed", 0, 30), TopicPartition("trimmed", 1, -1)])
    results = {tp.partition: f.result(10) for tp, f in done.items()}
    assert results[0].low_watermark == 30 and results[1].low_watermark == 50
    assert watermarks(broker.bootstrap, "trimmed", 0) == (30, 50)
    assert watermarks(broker.bootstrap, "trimmed", 1) == (50, 50)

    ka = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    ka.alter_configs([kafka.admin.ConfigResource("TOPIC", "trimmed", configs={"cleanup.policy": "delete",
                                                                             "retention.ms": "123456"})])
    desc = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "trimmed")])
    configs = list(desc.values())[0].result(10)
    assert configs["retention.ms"].value == "123456"
    ka.close()


def test_compacted_topic_keeps_the_latest_value_per_key(broker_factory):
    b = broker_factory(FAST_RETENTION)
    create_topic(b.bootstrap, "latest", 1, config={"cleanup.policy": "compact", "delete.retention.ms": "0"})
    produced = {}

    def remember(err, msg):
        assert err is None
        produced[(msg.key(), msg.value())] = msg.offset()

    p = Producer({"bootstrap.servers": b.bootstrap, "compression.type": "lz4", "linger.ms": 5})
    for version in range(20):
        for k in range(10):
            p.produce("latest", key=f"k{k}", value=f"v{version}", on_delivery=remember)
        p.flush(10)  # several batches
    p.produce("latest", key="k9", value=None, on_delivery=remember)  # tombstone
    p.flush(10)
    p.produce("latest", key="tail", value="end", on_delivery=remember)  # the active batch, never compacted
    assert p.flush(10) == 0
    expected = [(f"k{k}".encode(), b"v19") for k in range(9)] + [(b"tail", b"end")]

    def compacted():
        got = consume_partitions(b.bootstrap, "latest", [0], 202, timeout_s=3)[0]
        return [(m.key(), m.value()) for m in got]

    assert wait_until(lambda: compacted() == expected, timeout=30), compacted()[:12]
    got = consume_partitions(b.bootstrap, "latest", [0], 10, timeout_s=5)[0]
    assert [m.offset() for m in got] == [produced[(m.key(), m.value())] for m in got], "offsets preserved"

    consumer = kafka.KafkaConsumer(bootstrap_servers=b.bootstrap, consumer_timeout_ms=3000)
    tp = kafka.TopicPartition("latest", 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    assert [(r.key, r.value) for r in consumer] == expected
    consumer.close()


def test_compacted_topic_refuses_records_without_a_key(broker):
    from confluent_kafka import KafkaError

    create_topic(broker.bootstrap, "keyed-only", 1, config={"cleanup.policy": "compact"})
    results = []
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("keyed-only", value=b"no key", on_delivery=lambda err, msg: results.append(err))
    p.flush(10)
    p.produce("keyed-only", key=b"k", value=b"keyed", on_delivery=lambda err, msg: results.append(err))
    assert p.flush(10) == 0
    assert results[0] is not None and results[0].code() == KafkaError.INVALID_RECORD
    assert results[1] is None
    assert [m.value() for m in consume_partitions(broker.bootstrap, "keyed-only", [0], 1)[0]] == [b"keyed"]


def test_dynamic_broker_configs_set_topic_defaults_and_persist(broker):
    from confluent_kafka import KafkaException

    create_topic(broker.bootstrap, "follows", 1)
    create_topic(broker.bootstrap, "own", 1, config={"retention.ms": "5000"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})

    def set_broker(name, value):
        resource = ConfigResource(ConfigResource.Type.BROKER, "0",
                                  incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
        admin.incremental_alter_configs([resource])[resource].result(10)

    def topic_config(topic, name):
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        return admin.describe_configs([resource])[resource].result(10)[name].value

    set_broker("log.retention.ms", "3600000")
    assert topic_config("follows", "retention.ms") == "3600000", "topics without an override follow the broker default"
    assert topic_config("own", "retention.ms") == "5000"
    broker_resource = ConfigResource(ConfigResource.Type.BROKER, "0")
    entry = admin.describe_configs([broker_resource])[broker_resource].result(10)["log.retention.ms"]
    assert entry.value == "3600000" and entry.source == 2  # DYNAMIC_BROKER_CONFIG

    try:
        set_broker("num.io.threads", "16")
        raise AssertionError("a static broker config changed")
    except KafkaException as e:
        assert e.args[0].name() == "INVALID_CONFIG"

    broker.restart()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert topic_config("follows", "retention.ms") == "3600000", "dynamic broker configs survive a restart"


def test_produce_responses_carry_the_log_start_offset(broker):
    """Produce v5+ answers with the partition's log start offset: 0 at first,
    where DeleteRecords moved it afterwards (a delete inside a batch included)."""
    create_topic(broker.bootstrap, "started", 1)
    conn = rawkafka.Conn(broker.bootstrap)

    def produce(n, version=5):
        conn.send(rawkafka.produce_v3(n, "started", 0, rawkafka.record_batch([b"a", b"b", b"c"]), version=version))
        return rawkafka.parse_produce_v5(conn.recv_response())

    assert produce(1) == (0, 0, 0)
    assert produce(2) == (0, 3, 0)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.delete_records([TopicPartition("started", 0, 4)]).values():
        assert f.result(10).low_watermark == 4
    assert produce(3) == (0, 6, 4), "the start DeleteRecords set, inside the second batch"
    assert produce(4, version=8) == (0, 9, 4)
    for f in admin.delete_records([TopicPartition("started", 0, -1)]).values():
        assert f.result(10).low_watermark == 12
    assert produce(5) == (0, 12, 12), "everything before the high watermark deleted"
    conn.close()
