"""The `tributary` CLI against a live broker: topics, produce/consume, groups,
cluster status; tables for people, --format json for scripts, clear errors."""

import json
import os
import subprocess

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import binary
from helpers import consume_partitions


def cli(broker, *args, stdin=None, check=True):
    run = subprocess.run([str(binary()), "--brokers", broker.bootstrap, *args], input=stdin,
                         capture_output=True, text=True, timeout=60)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def js(broker, *args, stdin=None):
    return json.loads(cli(broker, "--format", "json", *args, stdin=stdin).stdout)


def test_topic_lifecycle_with_tables_json_and_errors(broker):
    out = cli(broker, "topic", "create", "cli-topic", "-p", "3", "-c", "retention.ms=60000").stdout
    assert "created topic cli-topic" in out
    assert {"name": "cli-topic", "partitions": 3, "replicas": 1} in js(broker, "topic", "list")
    table = cli(broker, "topic", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "PARTITIONS", "REPLICAS"] and table[1].split() == ["cli-topic", "3", "1"]

    described = js(broker, "topic", "describe", "cli-topic")
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    assert described["configs"]["retention.ms"] == "60000"
    cli(broker, "topic", "alter", "cli-topic", "--set", "retention.ms=120000", "--set", "cleanup.policy=compact")
    assert js(broker, "topic", "describe", "cli-topic")["configs"]["retention.ms"] == "120000"
    cli(broker, "topic", "alter", "cli-topic", "--delete", "retention.ms")
    assert js(broker, "topic", "describe", "cli-topic")["configs"]["retention.ms"] == "604800000"

    again = cli(broker, "topic", "create", "cli-topic", check=False)
    assert again.returncode != 0 and "TopicAlreadyExists" in again.stderr
    bad = cli(broker, "topic", "alter", "cli-topic", "--set", "retention.ms=soon", check=False)
    assert bad.returncode != 0 and "InvalidConfig" in bad.stderr and "soon" in bad.stderr
    missing = cli(broker, "topic", "describe", "nope", check=False)
    assert missing.returncode != 0 and "UnknownTopicOrPartition" in missing.stderr

    cli(broker, "topic", "delete", "cli-topic")
    assert all(t["name"] != "cli-topic" for t in js(broker, "topic", "list"))


def test_produce_partitions_by_key_like_the_java_client_and_consume(broker):
    cli(broker, "topic", "create", "cli-data", "-p", "4")
    lines = "".join(f"user{i % 7}:event-{i}\n" for i in range(200))
    assert js(broker, "produce", "cli-data", "-k", ":", stdin=lines) == {"topic": "cli-data", "produced": 200}

    consumed = consume_partitions(broker.bootstrap, "cli-data", range(4), 200)
    cli_partition = {m.key(): p for p, msgs in consumed.items() for m in msgs}
    # librdkafka's murmur2_random partitioner is the Java client's: same keys, same partitions.
    placed = {}
    p = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    for k in range(7):
        p.produce("cli-data", key=f"user{k}", value=b"x", on_delivery=lambda err, msg: placed.__setitem__(msg.key(), msg.partition()))
    assert p.flush(10) == 0
    assert placed == cli_partition

    records = [json.loads(line) for line in cli(broker, "--format", "json", "consume", "cli-data", "-n", "500").stdout.splitlines()]
    assert len(records) == 207
    assert sorted(int(r["value"].split("-")[1]) for r in records if r["value"].startswith("event")) == list(range(200))
    text = cli(broker, "consume", "cli-data", "-k", "=", "-n", "3").stdout.splitlines()
    assert len(text) == 3 and all("=" in line for line in text)
    assert cli(broker, "consume", "cli-data", "--offset", "end").stdout == ""


def test_groups_and_cluster_status(broker):
    cli(broker, "topic", "create", "cli-grouped", "-p", "2")
    cli(broker, "produce", "cli-grouped", stdin="".join(f"{i}\n" for i in range(10)))
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "cli-readers"})
    c.commit(offsets=[TopicPartition("cli-grouped", 0, 2), TopicPartition("cli-grouped", 1, 1)], asynchronous=False)
    c.close()
    assert {"group": "cli-readers", "state": "Empty", "protocol_type": ""} in js(broker, "group", "list")
    described = js(broker, "group", "describe", "cli-readers")
    assert sum(o["lag"] for o in described["offsets"]) == 10 - 3
    assert "LAG" in cli(broker, "group", "describe", "cli-readers").stdout

    reset = js(broker, "group", "reset-offsets", "cli-readers", "--topic", "cli-grouped", "--to-earliest")
    assert [o["offset"] for o in reset["offsets"]] == [0, 0]
    assert sum(o["lag"] for o in js(broker, "group", "describe", "cli-readers")["offsets"]) == 10
    reset = js(broker, "group", "reset-offsets", "cli-readers", "--topic", "cli-grouped", "--to-offset", "1000")
    assert sum(o["offset"] for o in reset["offsets"]) == 10, "clamped to each partition's end"

    # A running group cannot be reset.
    busy = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "cli-readers", "session.timeout.ms": 6000})
    busy.subscribe(["cli-grouped"])
    for _ in range(100):
        busy.poll(0.1)
        if busy.assignment():
            break
    refused = cli(broker, "group", "reset-offsets", "cli-readers", "--topic", "cli-grouped", "--to-latest", check=False)
    busy.close()
    assert refused.returncode != 0 and "IllegalGeneration" in refused.stderr

    status = js(broker, "cluster", "status")
    assert status["brokers"] == [{"id": 0, "address": broker.bootstrap}]
    assert status["topics"] >= 1 and status["cluster_id"] == "tributary-local"
    unreachable = subprocess.run([str(binary()), "--brokers", "127.0.0.1:1", "cluster", "status"],
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode != 0 and "cannot connect to 127.0.0.1:1" in unreachable.stderr


def test_a_reader_that_leaves_ends_every_command_quietly(broker):
    """`tributary ... | head -1`: a closed stdout means the reader has seen
    enough, so every command exits 0 without a panic, as `ls | head` does."""
    cli(broker, "topic", "create", "cli-pipe", "-p", "2")
    cli(broker, "produce", "cli-pipe", stdin="".join(f"record-{i}\n" for i in range(20000)))
    commands = [("topic", "list"), ("topic", "describe", "cli-pipe"), ("consume", "cli-pipe"),
                ("--format", "json", "consume", "cli-pipe"), ("group", "list"), ("cluster", "status"),
                ("--format", "json", "topic", "list")]
    for args in commands:
        read, write = os.pipe()
        os.close(read)  # every write to stdout fails with EPIPE
        try:
            run = subprocess.run([str(binary()), "--brokers", broker.bootstrap, *args], stdout=write,
                                 stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(write)
        assert run.returncode == 0 and "panicked" not in run.stderr, (args, run.returncode, run.stderr)
    # As a shell pipeline, with more output than a pipe holds.
    run = subprocess.run(["bash", "-c", f"set -o pipefail; '{binary()}' --brokers {broker.bootstrap} consume cli-pipe | head -1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "panicked" not in run.stderr, run.stderr
    assert run.stdout.startswith("record-") and run.stdout.count("\n") == 1
