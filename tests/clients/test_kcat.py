"""kcat, librdkafka's command-line client, as a newcomer would use it first."""

import shutil
import subprocess

import pytest


def kcat(*args, stdin=None):
    return subprocess.run(["kcat", *args], input=stdin, capture_output=True, timeout=60, check=True)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is installed by scripts/test.sh")
def test_kcat_produce_list_and_consume(broker):
    lines = "".join(f"user{i % 3}:event-{i}\n" for i in range(300)).encode()
    kcat("-b", broker.bootstrap, "-P", "-t", "clicks", "-K:", "-z", "lz4", stdin=lines)
    listing = kcat("-b", broker.bootstrap, "-L", "-t", "clicks").stdout.decode()
    assert 'topic "clicks" with 1 partitions' in listing
    out = kcat("-b", broker.bootstrap, "-C", "-t", "clicks", "-o", "beginning", "-e", "-f", "%o %k %s\n").stdout.decode()
    rows = [line.split() for line in out.splitlines()]
    assert rows == [[str(i), f"user{i % 3}", f"event-{i}"] for i in range(300)]
