"""Restarts and kill -9 with real processes: nothing acknowledged is lost,
offsets and order stay as they were acknowledged."""

import threading
import time

import pytest
from confluent_kafka import Producer

from helpers import consume_partitions, create_topic


def test_graceful_restart_keeps_everything(broker):
    create_topic(broker.bootstrap, "kept", 3)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(3000):
        producer.produce("kept", key=str(i % 17), value=str(i))
    assert producer.flush(30) == 0
    before = consume_partitions(broker.bootstrap, "kept", range(3), 3000)
    assert broker.stop() == 0, "SIGTERM is a clean shutdown"
    assert "stopped" in broker.log()
    broker.start()
    after = consume_partitions(broker.bootstrap, "kept", range(3), 3000)
    for p in range(3):
        assert [(m.offset(), m.key(), m.value()) for m in before[p]] == [(m.offset(), m.key(), m.value()) for m in after[p]]
    assert sum(len(v) for v in after.values()) == 3000


@pytest.mark.parametrize("durability", ["fsync", "interval"])
def test_kill_9_during_produce_stream_loses_no_acknowledged_record(broker_factory, durability):
    # Under "interval" acknowledged records are in the page cache, not yet
    # fsynced: a process crash (unlike a machine crash) must still lose none.
    broker = broker_factory(f'[storage]\ndurability = "{durability}"\nflush_interval_ms = 60000\n')
    create_topic(broker.bootstrap, "stream", 2)
    acked = {}  # value -> (partition, offset)
    lock = threading.Lock()
    stop = threading.Event()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked[msg.value().decode()] = (msg.partition(), msg.offset())

    def produce_forever():
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 2,
                             "message.timeout.ms": 5000, "retries": 0})
        i = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                producer.produce("stream", key=str(i % 31), value=f"r{i}", on_delivery=on_delivery)
                i += 1
            except BufferError:
                pass
            producer.poll(0.001 if i % 100 == 0 else 0)
        producer.flush(8)

    writer = threading.Thread(target=produce_forever)
    writer.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 20_000:
                break
        time.sleep(0.05)
    broker.kill9()  # mid-stream: requests are in flight
    stop.set()
    writer.join(30)
    with lock:
        snapshot = dict(acked)
    assert len(snapshot) >= 20_000, "the producer was acknowledged before the kill"

    broker.start()
    by_partition = {0: {}, 1: {}}
    for value, (p, offset) in snapshot.items():
        by_partition[p][offset] = value
    highest = {p: max(offsets) for p, offsets in by_partition.items() if offsets}
    consumed = consume_partitions(broker.bootstrap, "stream", [0, 1], sum(h + 1 for h in highest.values()))
    for p, offsets in by_partition.items():
        stored = {m.offset(): m.value().decode() for m in consumed[p]}
        missing = [o for o in offsets if stored.get(o) != offsets[o]]
        assert not missing, f"partition {p}: {len(missing)} acknowledged records missing or changed, e.g. offset {missing[:3]}"
        ordered = [m.offset() for m in consumed[p]]
        assert ordered == list(range(len(ordered))), "offsets contiguous from 0"
