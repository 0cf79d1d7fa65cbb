"""A data dir written by release aaeadfb (a single broker with its own topic
store, before the control plane) opened by today's binary: it starts as a
cluster of one, adopts every topic with its id, partitions and configs, and the
dynamic broker configs, and every record and committed offset reads back the
same, through real clients. The fixture and what it holds:
scripts/make_storage_fixtures.py."""

import shutil
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from conftest import BrokerProcess

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "storage-aaeadfb"


def topic_ids():
    ids = {}
    for line in (FIXTURES / "topic-ids.txt").read_text().splitlines():
        fixture, topic, hex_id = line.split()
        if fixture == "single":
            ids[topic] = hex_id
    return ids


def hex_id(uuid):
    bits = (uuid.get_most_significant_bits() % 2**64) << 64 | uuid.get_least_significant_bits() % 2**64
    return f"{bits:032x}"


def read_all(bootstrap, topic, partition, expected):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}-{partition}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, partition, 0)])
    got = []
    for _ in range(200):
        if len(got) >= expected:
            break
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            got.append((message.offset(), message.key(), message.value()))
    consumer.close()
    return got


def check_everything(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    md = admin.list_topics(timeout=10)
    assert {"events", "compacted", "idempotent"} <= set(md.topics)
    assert len(md.topics["events"].partitions) == 3
    assert all(p.leader == 0 for p in md.topics["events"].partitions.values())

    described = admin.describe_topics(TopicCollection(["events", "compacted", "idempotent"]))
    ids = {name: hex_id(f.result(timeout=10).topic_id) for name, f in described.items()}
    assert ids == topic_ids(), "adopted topics keep their ids"

    def topic_config(name):
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        return admin.describe_configs([resource])[resource].result(10)

    assert topic_config("events")["retention.ms"].value == "3600000"
    compacted = topic_config("compacted")
    assert compacted["cleanup.policy"].value == "compact"
    assert compacted["delete.retention.ms"].value == "60000"
    assert compacted["max.message.bytes"].value == "65536"
    # Dynamic broker configs became cluster metadata: topics without overrides follow them.
    assert topic_config("idempotent")["retention.ms"].value == "172800000"
    assert topic_config("idempotent")["max.message.bytes"].value == "2097152"

    for p in range(3):
        got = read_all(broker.bootstrap, "events", p, p + 2)
        assert got == [(i, f"k{p}-{i}".encode(), f"events-p{p}-{i}".encode()) for i in range(p + 2)]
    compacted_records = read_all(broker.bootstrap, "compacted", 0, 3)
    assert [(k, v) for _, k, v in compacted_records][-1] == (b"a", b"a2")
    idem = read_all(broker.bootstrap, "idempotent", 0, 6)
    assert [v for _, _, v in idem] == [f"idem-{i}".encode() for i in range(6)]

    offsets = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions("fixture-group")])["fixture-group"].result(10)
    committed = {tp.partition: tp.offset for tp in offsets.topic_partitions if tp.topic == "events"}
    assert committed == {0: 2, 1: 3, 2: 1}


def test_a_pre_control_plane_data_dir_is_adopted_with_every_record(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "single", data)
    broker = BrokerProcess(data, tmp_path / "broker.log")
    broker.start()
    try:
        check_everything(broker)
        assert "topic adopted by the control plane" in broker.log()
        # Writes go on where the old log ended.
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        producer.produce("events", key=b"new", value=b"after-upgrade", partition=0)
        assert producer.flush(10) == 0
        assert read_all(broker.bootstrap, "events", 0, 3)[-1] == (2, b"new", b"after-upgrade")

        # A restart adopts nothing again and keeps it all.
        broker.restart()
        check_everything(broker)
        assert broker.log().count("topic adopted by the control plane") == 3
    finally:
        broker.stop()
