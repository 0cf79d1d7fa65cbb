"""kafkajs, a third independent protocol implementation (pure JavaScript):
admin and producer paths checked by a librdkafka consumer, and a kafkajs
consumer group reading it all back and committing."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import consume_partitions

JS = Path(__file__).resolve().parents[1] / "js"


@pytest.mark.skipif(not (JS / "node_modules" / "kafkajs").exists() or shutil.which("node") is None,
                    reason="scripts/test.sh installs kafkajs with npm ci")
def test_kafkajs_admin_and_producer(broker):
    n = 900
    run = subprocess.run(["node", str(JS / "producer_admin.mjs"), broker.bootstrap, "js-topic", str(n)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["created"] is True
    assert "js-topic" in seen["listed"]
    assert seen["partitions"] == 3
    produced = [o for o in seen["offsets"] if "partition" in o]
    assert all(o["errorCode"] == 0 for o in produced)
    # kafkajs retries UNKNOWN_TOPIC_OR_PARTITION, then reports its message.
    assert seen["deleteError"] == "This server does not host this topic-partition", seen["deleteError"]
    ends = {int(e["partition"]): int(e["offset"]) for e in seen["ends"]}
    assert sum(ends.values()) == n

    consumed = consume_partitions(broker.bootstrap, "js-topic", range(3), n)
    values = sorted(int(m.value().decode().split("-")[1]) for msgs in consumed.values() for m in msgs)
    assert values == list(range(n))
    for msgs in consumed.values():
        for m in msgs:
            assert m.headers() == [("source", b"kafkajs")]
            assert m.timestamp()[1] == 1_650_000_000_000 + int(m.value().decode().split("-")[1])
    # By-timestamp lookup per partition: the first record at or after the midpoint.
    for entry in seen["byTime"]:
        p, offset = int(entry["partition"]), int(entry["offset"])
        stamps = [m.timestamp()[1] for m in consumed[p]]
        expected = next((i for i, t in enumerate(stamps) if t >= 1_650_000_000_000 + n // 2), len(stamps))
        assert offset == expected, f"partition {p}"


@pytest.mark.skipif(not (JS / "node_modules" / "kafkajs").exists() or shutil.which("node") is None,
                    reason="scripts/test.sh installs kafkajs with npm ci")
def test_kafkajs_consumer_group(broker):
    from confluent_kafka import Producer

    from helpers import create_topic
    create_topic(broker.bootstrap, "js-group", 3)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(600):
        p.produce("js-group", key=str(i % 7), value=f"g-{i}")
    assert p.flush(30) == 0
    run = subprocess.run(["node", str(JS / "consumer_group.mjs"), broker.bootstrap, "js-group", "js-readers", "600"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(int(v["value"].split("-")[1]) for v in seen["values"]) == list(range(600))
    ends = {}
    for v in seen["values"]:
        ends[v["partition"]] = max(ends.get(v["partition"], -1), v["offset"] + 1)
    committed = {int(p["partition"]): int(p["offset"]) for p in seen["committed"][0]["partitions"]}
    assert {p: o for p, o in committed.items() if p in ends} == ends, "kafkajs committed the end of what it read"
    assert all(o == -1 for p, o in committed.items() if p not in ends), "nothing committed where nothing was read"
