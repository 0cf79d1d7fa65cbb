"""A fetch waiting for data is woken by the produce that brings it; a fetch
over several partitions shares its byte budget in request order."""

import re
import threading
import time
import urllib.request

import kafka
from confluent_kafka import Producer

import rawkafka
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


def produce_to(broker, topic, partition, values):
    conn = rawkafka.Conn(broker.bootstrap)
    conn.send(rawkafka.produce_v3(1, topic, partition, rawkafka.record_batch(values)))
    assert rawkafka.parse_produce_v3(conn.recv_response())[1] == 0
    conn.close()


def records_out(broker, topic):
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(rf'^tributary_records_out_total\{{topic="{topic}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0


def fetch(broker, topic, partitions, **kwargs):
    conn = rawkafka.Conn(broker.bootstrap, timeout=30)
    started = time.monotonic()
    conn.send(rawkafka.fetch_v5(1, topic, partitions, **kwargs))
    answer = rawkafka.parse_fetch_v5(conn.recv_response())
    conn.close()
    return answer, time.monotonic() - started


def test_a_fetch_over_partitions_where_one_has_data_and_the_others_wait(broker):
    create_topic(broker.bootstrap, "spread", 4)
    produce_to(broker, "spread", 2, [b"early"] * 3)
    order = [3, 2, 1, 0]
    wanted = [(p, 0, 1 << 20) for p in order]

    # Data in one partition answers at once, in request order, the others empty.
    answer, took = fetch(broker, "spread", wanted, max_wait_ms=10_000, min_bytes=1)
    assert took < 5 and [a[0] for a in answer] == order
    assert [(p, e, hw, [c for _, c, _ in rawkafka.batches(r)]) for p, e, hw, _, r in answer] == \
        [(3, 0, 0, []), (2, 0, 3, [3]), (1, 0, 0, []), (0, 0, 0, [])]

    # Asked for more than there is: the fetch waits until max_wait; produces to a
    # waiting partition and to the one that had data join the answer, each batch
    # once, and the fetch metrics count what was answered.
    def later():
        time.sleep(1.0)
        produce_to(broker, "spread", 0, [b"late"] * 2)
        time.sleep(0.5)
        produce_to(broker, "spread", 2, [b"more"])
    threading.Thread(target=later).start()
    before = records_out(broker, "spread")
    answer, took = fetch(broker, "spread", wanted, max_wait_ms=4_000, min_bytes=1 << 20)
    assert 3.5 < took < 8, f"answered after {took:.1f}s, not at max_wait"
    got = {p: [(base, count) for base, count, _ in rawkafka.batches(r)] for p, _, _, _, r in answer}
    assert got == {3: [], 2: [(0, 3), (3, 1)], 1: [], 0: [(0, 2)]}, got
    assert records_out(broker, "spread") - before == 3 + 1 + 2, "records counted as answered, once"

    # max_bytes is shared in request order, as if the partitions were read one after another:
    # with room for partition 1's batch and partition 0's, partition 3's (in between) does not fit.
    produce_to(broker, "spread", 1, [b"x" * 500])
    produce_to(broker, "spread", 3, [b"y" * 500])
    size = {p: rawkafka.batches(r)[0][2]
            for p, _, _, _, r in fetch(broker, "spread", [(p, 0, 1 << 20) for p in (0, 1, 3)])[0]}
    assert size[3] > size[0]
    answer, _ = fetch(broker, "spread", [(p, 0, 1 << 20) for p in (1, 3, 0)], max_bytes=size[1] + size[0])
    assert [(p, len(rawkafka.batches(r))) for p, _, _, _, r in answer] == [(1, 1), (3, 0), (0, 1)]

    # The first batch of a response is returned whole even over partition_max_bytes, so a consumer
    # progresses; the partitions after it keep their limit.
    answer, _ = fetch(broker, "spread", [(0, 0, 10), (1, 0, 10), (2, 0, 10)])
    assert [(p, len(rawkafka.batches(r))) for p, _, _, _, r in answer] == [(0, 1), (1, 0), (2, 0)]
    answer, _ = fetch(broker, "spread", [(0, 2, 10), (1, 0, 10), (2, 0, 10)], max_wait_ms=0)
    assert [(p, len(rawkafka.batches(r))) for p, _, _, _, r in answer] == [(0, 0), (1, 1), (2, 0)], \
        "the first partition with data gets its first batch whole"
    # That batch counts against max_bytes: what was read meanwhile for later partitions and no longer fits
    # is left out, as if they had been read after it.
    answer, _ = fetch(broker, "spread", [(0, 0, 10), (1, 0, 1 << 20)], max_bytes=size[1])
    assert [(p, len(rawkafka.batches(r))) for p, _, _, _, r in answer] == [(0, 1), (1, 0)]
    answer, _ = fetch(broker, "spread", [(0, 0, 10), (1, 0, 1 << 20)], max_bytes=size[0] + size[1])
    assert [(p, len(rawkafka.batches(r))) for p, _, _, _, r in answer] == [(0, 1), (1, 1)]
