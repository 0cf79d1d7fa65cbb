"""kafkajs, a third independent protocol implementation (pure JavaScript).
It has no assign-style consumer, so it covers the admin and producer paths
here; a librdkafka consumer checks what it wrote."""

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
