"""A fetch waiting for data is woken by the produce that brings it."""

import threading
import time

import kafka
from confluent_kafka import Producer

from helpers import create_topic


def test_waiting_fetch_is_woken_by_produce(broker):
    create_topic(broker.bootstrap, "wake", 1)
    # kafka-python: one fetch waits up to 20 s for at least one byte.
    consumer = kafka.KafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=20_000,
                                   fetch_min_bytes=1, request_timeout_ms=40_000)
    tp = kafka.TopicPartition("wake", 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    consumer.poll(timeout_ms=500)  # the first, empty fetch is now parked at the broker

    def produce_later():
        time.sleep(1.0)
        p = Producer({"bootstrap.servers": broker.bootstrap})
        p.produce("wake", value=b"ding")
        p.flush(10)

    threading.Thread(target=produce_later).start()
    started = time.monotonic()
    records = {}
    while not records and time.monotonic() - started < 30:
        records = consumer.poll(timeout_ms=1000)
    waited = time.monotonic() - started
    consumer.close()
    assert [r.value for r in records[tp]] == [b"ding"]
    # Woken by the produce, not by the 20 s max wait running out.
    assert waited < 15, f"fetch returned after {waited:.1f}s"
