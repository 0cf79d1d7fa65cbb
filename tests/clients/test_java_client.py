"""Apache Kafka's own Java client (kafka-clients 4.4.0, tests/java/pom.xml, its jars
fetched by scripts/test.sh with Maven): transactions with KafkaProducer and a
read_committed KafkaConsumer, run as a single-file Java program."""

import json
import time
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import create_topic

JAVA = Path(__file__).resolve().parents[1] / "java"
LIB = JAVA / "target" / "lib"


@pytest.mark.skipif(not any(LIB.glob("kafka-clients-*.jar")) or shutil.which("java") is None,
                    reason="scripts/test.sh fetches the Java client with mvn dependency:copy-dependencies")
def test_java_client_transactions_offsets_and_fencing(broker_factory):
    broker = broker_factory("[groups]\ninitial_rebalance_delay_ms = 0\n")
    create_topic(broker.bootstrap, "java-txn", 3)
    run = subprocess.run(["java", "-cp", str(LIB / "*"), str(JAVA / "Transactions.java"), broker.bootstrap,
                          "java-txn", "java-group"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["fenced"] in ("ProducerFencedException", "InvalidProducerEpochException"), result["fenced"]
    assert sorted(result["seen"]) == sorted([f"kept-{i}" for i in range(30)] + ["from-b"]), result["seen"]
    assert result["committed_offset"] == 5, "the committed transaction's offset; the aborted one's never"


def read_committed_latest(bootstrap, topic, partitions, timeout_s):
    """Every record of `topic` (read_committed), in order per partition: [(key, value)]."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wc-check", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in partitions}
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        out = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=10_000, timeout=0.3):
                if not m.error():
                    out.append((m.key().decode(), m.value().decode()))
            positions = {tp.partition: tp.offset for tp in c.position([TopicPartition(topic, p) for p in partitions])}
            if all(ends[p] == 0 or positions[p] >= ends[p] for p in partitions):
                break
        return out
    finally:
        c.close()


@pytest.mark.skipif(not any(LIB.glob("kafka-streams-*.jar")) or shutil.which("java") is None,
                    reason="scripts/test.sh fetches Kafka Streams with mvn dependency:copy-dependencies")
def test_kafka_streams_exactly_once_word_count_survives_an_instance_killed_9(broker_factory, tmp_path):
    """Kafka Streams with exactly_once_v2, two instances; one is killed -9 while
    it counts. The other takes its tasks over from the last committed
    transaction, so the final counts are exact: no word counted twice or lost,
    and no count read_committed ever passes the final one."""
    from confluent_kafka import Producer
    broker = broker_factory("[groups]\ninitial_rebalance_delay_ms = 0\n")
    create_topic(broker.bootstrap, "wc-in", 3)
    create_topic(broker.bootstrap, "wc-out", 3)
    words = [f"w{i}" for i in range(25)]
    expected = {w: 0 for w in words}
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 5})

    def produce_lines(start, count):
        for n in range(start, start + count):
            line = " ".join(words[(n * 7 + j * 3) % len(words)] for j in range(1 + n % 4))
            for w in line.split():
                expected[w] += 1
            producer.produce("wc-in", key=str(n), value=line)
        assert producer.flush(30) == 0

    def instance(name):
        log = open(tmp_path / f"{name}.log", "w")
        return subprocess.Popen(["java", "-cp", str(LIB / "*"), str(JAVA / "WordCount.java"), broker.bootstrap,
                                 "wc-in", "wc-out", str(tmp_path / f"state-{name}")], stdout=log, stderr=subprocess.STDOUT)

    produce_lines(0, 2000)
    a, b = instance("a"), instance("b")
    try:
        deadline = time.monotonic() + 90
        while not read_committed_latest(broker.bootstrap, "wc-out", range(3), 5):
            assert time.monotonic() < deadline, (tmp_path / "a.log").read_text()[-3000:]
            assert a.poll() is None and b.poll() is None, "an instance exited"
            time.sleep(1)
        produce_lines(2000, 2000)
        time.sleep(0.5)
        a.kill()  # SIGKILL: no close, its open transaction is left to the broker
        a.wait(10)
        produce_lines(4000, 2000)
        final = {}
        deadline = time.monotonic() + 120
        while True:
            out = read_committed_latest(broker.bootstrap, "wc-out", range(3), 10)
            final = {}
            for key, value in out:
                assert int(value) <= expected[key], f"{key} counted {value} times, {expected[key]} produced"
                final[key] = int(value)
            if final == expected:
                break
            assert time.monotonic() < deadline, f"counts not exact: {sorted(final.items())[:5]} vs {sorted(expected.items())[:5]}\n" + (tmp_path / "b.log").read_text()[-3000:]
            assert b.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
            time.sleep(2)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
