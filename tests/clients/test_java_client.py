"""Apache Kafka's own Java client (kafka-clients 4.4.0, tests/java/pom.xml, its jars
fetched by scripts/test.sh with Maven): transactions with KafkaProducer and a
read_committed KafkaConsumer, run as a single-file Java program."""

import json
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
