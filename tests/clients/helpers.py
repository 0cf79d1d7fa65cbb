"""Small client helpers shared by the tests: bounded loops only."""

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(bootstrap, name, partitions, config=None, timeout=15):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})], operation_timeout=timeout)
    futures[name].result(timeout)


def consume_partitions(bootstrap, topic, partitions, expected, timeout_s=60, extra=None):
    """Reads from offset 0 of each partition until `expected` records or the timeout.
    Returns {partition: [message, ...]} in the order consumed."""
    conf = {"bootstrap.servers": bootstrap, "group.id": "tests-unused", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100}
    conf.update(extra or {})
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out = {p: [] for p in partitions}
    got = 0
    deadline = time.monotonic() + timeout_s
    try:
        while got < expected and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10000, timeout=0.5)
            for m in batch:
                if m.error():
                    raise KafkaException(m.error())
                out[m.partition()].append(m)
                got += 1
    finally:
        consumer.close()
    return out


def fetch_error(bootstrap, topic, partition, offset, timeout_s=20):
    """The error a consumer assigned at `offset` gets (no offset reset), or None."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fetch-error", "auto.offset.reset": "error"})
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and m.error():
                return m.error()
        return None
    finally:
        consumer.close()
