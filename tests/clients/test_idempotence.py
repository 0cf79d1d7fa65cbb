"""The idempotent producer across a broker crash: librdkafka with
enable.idempotence=true retries whatever was in flight when the broker was
killed; the broker recognises batches it already committed, so the log holds
every record exactly once, in order."""

import threading
import time

import kafka
from confluent_kafka import Producer

from helpers import consume_partitions, create_topic


def test_idempotent_producer_through_kill_9_writes_every_record_exactly_once(broker):
    create_topic(broker.bootstrap, "exactly-once", 2)
    n = 30_000
    errors = []
    delivered = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 2,
                         "message.timeout.ms": 60_000, "retry.backoff.ms": 100})

    def on_delivery(err, msg):
        (errors if err else delivered).append(err or msg.value())

    def crash_midway():
        deadline = time.monotonic() + 30
        while len(delivered) < n // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        broker.kill9()  # produce requests are in flight: some committed, not yet acknowledged
        broker.start()

    crasher = threading.Thread(target=crash_midway)
    crasher.start()
    for i in range(n):
        while True:
            try:
                producer.produce("exactly-once", key=str(i % 13), value=str(i), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    crasher.join(60)
    assert producer.flush(90) == 0
    assert not errors, errors[:3]
    assert len(delivered) == n

    consumed = consume_partitions(broker.bootstrap, "exactly-once", [0, 1], n)
    values = [int(m.value()) for msgs in consumed.values() for m in msgs]
    assert sorted(values) == list(range(n)), f"{len(values) - len(set(values))} duplicates"
    for msgs in consumed.values():
        per_partition = [int(m.value()) for m in msgs]
        assert per_partition == sorted(per_partition), "one producer's records stay in order"


def test_kafka_python_default_idempotent_producer(broker):
    create_topic(broker.bootstrap, "kp-idem", 1)
    producer = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap)  # idempotence on by default in 3.x
    futures = [producer.send("kp-idem", value=str(i).encode()) for i in range(300)]
    producer.flush(30)
    assert [f.get(timeout=10).offset for f in futures] == list(range(300))
    producer.close()
