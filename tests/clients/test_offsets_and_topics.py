"""ListOffsets, topic administration and their errors, through AdminClient,
the consumer's offset lookups, and kafka-python's admin client."""

import kafka
import kafka.admin
import kafka.errors
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic

from helpers import consume_partitions, create_topic, fetch_error


def test_list_offsets_earliest_latest_and_by_timestamp(broker):
    create_topic(broker.bootstrap, "timed", 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    base = 1_700_000_000_000
    for i in range(100):
        producer.produce("timed", value=str(i), timestamp=base + i * 10)
        if i % 10 == 9:
            producer.flush(10)  # several batches, so the lookup crosses batch boundaries
    assert producer.flush(10) == 0

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "offsets-test"})
    low, high = consumer.get_watermark_offsets(TopicPartition("timed", 0), timeout=10)
    assert (low, high) == (0, 100)
    query = [TopicPartition("timed", 0, base + 555)]  # between record 55 and 56
    assert consumer.offsets_for_times(query, timeout=10)[0].offset == 56
    query = [TopicPartition("timed", 0, base)]
    assert consumer.offsets_for_times(query, timeout=10)[0].offset == 0
    query = [TopicPartition("timed", 0, base + 10_000)]  # after every record: the end (-1 from the broker)
    assert consumer.offsets_for_times(query, timeout=10)[0].offset in (-1, 100)
    consumer.close()

    # kafka-python asks with ListOffsets at its own versions.
    kc = kafka.KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tp = kafka.TopicPartition("timed", 0)
    assert kc.beginning_offsets([tp])[tp] == 0
    assert kc.end_offsets([tp])[tp] == 100
    found = kc.offsets_for_times({tp: base + 301})[tp]
    assert (found.offset, found.timestamp) == (31, base + 310)
    kc.close()


def test_create_describe_grow_and_delete_topics(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic("admin-a", 3, 1, config={"retention.ms": "60000"}),
                                   NewTopic("admin-b", 2, 1)])
    for f in futures.values():
        f.result(10)

    md = admin.list_topics(timeout=10)
    assert {"admin-a", "admin-b"} <= set(md.topics)
    assert len(md.topics["admin-a"].partitions) == 3

    resource = ConfigResource(ConfigResource.Type.TOPIC, "admin-a")
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "60000"
    assert configs["cleanup.policy"].value == "delete"

    admin.create_partitions([NewPartitions("admin-a", 5)])["admin-a"].result(10)
    assert len(admin.list_topics("admin-a", timeout=10).topics["admin-a"].partitions) == 5

    # Errors carry Kafka's codes.
    with pytest.raises(KafkaException) as exists:
        admin.create_topics([NewTopic("admin-a", 1, 1)])["admin-a"].result(10)
    assert exists.value.args[0].name() == "TOPIC_ALREADY_EXISTS"
    with pytest.raises(KafkaException) as bad_rf:
        admin.create_topics([NewTopic("admin-rf", 1, 3)])["admin-rf"].result(10)
    assert bad_rf.value.args[0].name() == "INVALID_REPLICATION_FACTOR"
    with pytest.raises(KafkaException) as bad_name:
        admin.create_topics([NewTopic("bad/name", 1, 1)])["bad/name"].result(10)
    assert bad_name.value.args[0].name() == "TOPIC_EXCEPTION"  # librdkafka's name for INVALID_TOPIC_EXCEPTION (17)
    with pytest.raises(KafkaException) as bad_config:
        admin.create_topics([NewTopic("admin-c", 1, 1, config={"retention.ms": "soon"})])["admin-c"].result(10)
    assert bad_config.value.args[0].name() == "INVALID_CONFIG"
    with pytest.raises(KafkaException) as shrink:
        admin.create_partitions([NewPartitions("admin-a", 2)])["admin-a"].result(10)
    assert shrink.value.args[0].name() == "INVALID_PARTITIONS"

    admin.delete_topics(["admin-a"])["admin-a"].result(10)
    assert "admin-a" not in admin.list_topics(timeout=10).topics
    assert not (broker.data_dir / "admin-a-0").exists()
    with pytest.raises(KafkaException) as unknown:
        admin.delete_topics(["admin-a"])["admin-a"].result(10)
    assert unknown.value.args[0].name() == "UNKNOWN_TOPIC_OR_PART"


def test_kafka_python_admin_client(broker):
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([kafka.admin.NewTopic("kpa", num_partitions=4, replication_factor=1)])
    assert "kpa" in admin.list_topics()
    with pytest.raises(kafka.errors.TopicAlreadyExistsError):
        admin.create_topics([kafka.admin.NewTopic("kpa", num_partitions=1, replication_factor=1)])
    admin.delete_topics(["kpa"])
    assert "kpa" not in admin.list_topics()
    admin.close()


def test_auto_create_on_metadata_and_produce(broker_factory):
    on = broker_factory("[topics]\nauto_create = true\nnum_partitions = 3\n")
    producer = Producer({"bootstrap.servers": on.bootstrap})
    producer.produce("made-by-produce", value=b"x")
    assert producer.flush(10) == 0
    md = AdminClient({"bootstrap.servers": on.bootstrap}).list_topics(timeout=10)
    assert len(md.topics["made-by-produce"].partitions) == 3

    off = broker_factory("[topics]\nauto_create = false\n")
    md = AdminClient({"bootstrap.servers": off.bootstrap}).list_topics("never-made", timeout=10)
    assert md.topics["never-made"].error.name() == "UNKNOWN_TOPIC_OR_PART"
    assert not (off.data_dir / "never-made-0").exists()


def test_fetch_out_of_range_and_unknown_partition(broker):
    create_topic(broker.bootstrap, "small", 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(5):
        producer.produce("small", value=str(i))
    producer.flush(10)
    err = fetch_error(broker.bootstrap, "small", 0, 50)
    assert err is not None and "out of range" in str(err).lower()
    # The log itself is untouched.
    assert len(consume_partitions(broker.bootstrap, "small", [0], 5)[0]) == 5


def test_describe_cluster_and_log_dirs(broker):
    create_topic(broker.bootstrap, "sized", 2)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce("sized", value=b"z" * 100, partition=i % 2)
    assert p.flush(10) == 0
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    cluster = admin.describe_cluster().result(10)
    assert [n.id for n in cluster.nodes] == [0] and cluster.controller.id == 0
    assert cluster.cluster_id == "tributary-local"

    ka = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    dirs = ka.describe_log_dirs()
    ka.close()
    text = repr(dirs)
    assert "sized" in text and str(broker.data_dir.resolve()) in text, text[:500]


def test_list_offsets_by_max_timestamp_with_admin_client(broker):
    from confluent_kafka.admin import OffsetSpec

    create_topic(broker.bootstrap, "peak", 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    stamps = [1_700_000_000_000 + s for s in (5, 90, 40, 90, 10)]  # the peak first appears at offset 1
    for ts in stamps:
        p.produce("peak", value=b"x", timestamp=ts)
        p.flush(10)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    tp = TopicPartition("peak", 0)
    result = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(10)
    assert (result.offset, result.timestamp) == (1, stamps[1])
    earliest = admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(10)
    latest = admin.list_offsets({tp: OffsetSpec.latest()})[tp].result(10)
    assert (earliest.offset, latest.offset) == (0, 5)


def alter(admin, resource_type, name, *changes):
    """IncrementalAlterConfigs of (config, value, op) on one resource; its future."""
    entries = [ConfigEntry(n, v, incremental_operation=op) for n, v, op in changes]
    resource = ConfigResource(resource_type, name, incremental_configs=entries)
    return admin.incremental_alter_configs([resource])[resource]


def described(admin, resource_type, name, config):
    resource = ConfigResource(resource_type, name)
    return admin.describe_configs([resource])[resource].result(10)[config].value


def test_incremental_alter_configs_appends_to_and_subtracts_from_list_configs(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = ConfigResource.Type.TOPIC
    create_topic(broker.bootstrap, "listed", 1)
    append, subtract = AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT

    alter(admin, topic, "listed", ("cleanup.policy", "compact", append)).result(10)
    assert described(admin, topic, "listed", "cleanup.policy") == "compact,delete", "appended to the default"
    alter(admin, topic, "listed", ("cleanup.policy", "compact", append)).result(10)
    assert described(admin, topic, "listed", "cleanup.policy") == "compact,delete", "a value present is not added"
    alter(admin, topic, "listed", ("cleanup.policy", "delete", subtract)).result(10)
    assert described(admin, topic, "listed", "cleanup.policy") == "compact"

    with pytest.raises(KafkaException) as emptied:
        alter(admin, topic, "listed", ("cleanup.policy", "compact", subtract)).result(10)
    assert emptied.value.args[0].name() == "INVALID_CONFIG" and "cleanup.policy" in emptied.value.args[0].str()
    with pytest.raises(KafkaException) as not_a_list:
        alter(admin, topic, "listed", ("retention.ms", "1000", append)).result(10)
    error = not_a_list.value.args[0]
    assert error.name() == "INVALID_REQUEST", "Kafka's code for APPEND on a non-list config"
    assert "not allowed for config key: retention.ms" in error.str()
    with pytest.raises(KafkaException) as unknown:
        alter(admin, topic, "listed", ("no.such.config", "x", subtract)).result(10)
    assert unknown.value.args[0].name() == "INVALID_CONFIG"
    assert described(admin, topic, "listed", "cleanup.policy") == "compact", "refused changes changed nothing"

    # The broker-wide default is a list too; new topics follow it.
    broker_resource = ConfigResource.Type.BROKER
    alter(admin, broker_resource, "0", ("log.cleanup.policy", "compact", append)).result(10)
    assert described(admin, broker_resource, "0", "log.cleanup.policy") == "compact,delete"
    create_topic(broker.bootstrap, "listed-later", 1)
    assert described(admin, topic, "listed-later", "cleanup.policy") == "compact,delete"
    alter(admin, broker_resource, "0", ("log.cleanup.policy", "compact", subtract)).result(10)
    assert described(admin, topic, "listed-later", "cleanup.policy") == "delete"


def test_names_that_differ_only_in_dot_or_underscore_collide(broker):
    """Kafka's metric names make '.' and '_' one: foo.bar and foo_bar cannot both exist."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create_topic(broker.bootstrap, "clicks.eu", 1)
    for validate_only in (True, False):
        with pytest.raises(KafkaException) as collided:
            admin.create_topics([NewTopic("clicks_eu", 1, 1)], validate_only=validate_only)["clicks_eu"].result(10)
        error = collided.value.args[0]
        assert error.name() == "TOPIC_EXCEPTION", "INVALID_TOPIC_EXCEPTION (17)"
        assert "collides with existing topic 'clicks.eu'" in error.str()
    assert "clicks_eu" not in admin.list_topics(timeout=10).topics
    # Auto-creation by a producer is refused the same way.
    kp = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, max_block_ms=3000)
    with pytest.raises(kafka.errors.KafkaError):
        kp.send("clicks_eu", b"x").get(timeout=10)
    kp.close()
    assert "clicks_eu" not in admin.list_topics(timeout=10).topics
    # Once the first is gone, the other name is free.
    admin.delete_topics(["clicks.eu"])["clicks.eu"].result(10)
    create_topic(broker.bootstrap, "clicks_eu", 1)


def test_old_topic_configs_are_accepted_and_ignored(broker):
    """message.format.version and message.downconversion.enable, which old tools
    still send: accepted with a valid value, kept nowhere, not described."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    old = {"message.format.version": "0.10.2-IV0", "message.downconversion.enable": "false"}
    admin.create_topics([NewTopic("legacy", 1, 1, config={**old, "retention.ms": "60000"})])["legacy"].result(10)
    resource = ConfigResource(ConfigResource.Type.TOPIC, "legacy")
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "60000"
    assert not set(old) & set(configs), "ignored configs are not described"

    set_op, delete_op = AlterConfigOpType.SET, AlterConfigOpType.DELETE
    alter(admin, ConfigResource.Type.TOPIC, "legacy", ("message.downconversion.enable", "true", set_op),
          ("message.format.version", "", delete_op)).result(10)
    assert admin.describe_configs([resource])[resource].result(10)["retention.ms"].value == "60000"

    # A bad value is still refused, naming the config.
    for name, bad in (("message.format.version", "banana"), ("message.downconversion.enable", "sometimes")):
        with pytest.raises(KafkaException) as refused:
            admin.create_topics([NewTopic("legacy-bad", 1, 1, config={name: bad})])["legacy-bad"].result(10)
        assert refused.value.args[0].name() == "INVALID_CONFIG" and name in refused.value.args[0].str()

    # kafka-python's admin client, as an old tool would send them.
    ka = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    ka.create_topics([kafka.admin.NewTopic("legacy-kp", num_partitions=1, replication_factor=1,
                                           topic_configs={"message.format.version": "2.8"})])
    assert "legacy-kp" in ka.list_topics()
    ka.close()
    # And the data path is unchanged: v2 batches in, v2 batches out.
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("legacy", value=b"still v2")
    assert p.flush(10) == 0
    assert [m.value() for m in consume_partitions(broker.bootstrap, "legacy", [0], 1)[0]] == [b"still v2"]
