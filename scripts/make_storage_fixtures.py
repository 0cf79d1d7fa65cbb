"""Writes the legacy storage fixtures (tests/fixtures/storage-aaeadfb/) with a real broker binary.

Run by scripts/make-storage-fixtures.sh, which builds the binary of release
aaeadfb (the last one that stored records without a format version). Every
value written here is one the Rust tests read back (actors/tests/legacy_storage.rs,
src/cluster/raft.rs), so change both together.

- single/: one broker (node 0): topics `events` (3 partitions, retention.ms
  altered after creation), `compacted` (compact, with configs) and
  `idempotent` (six one-record batches from one idempotent producer); dynamic
  broker configs set by IncrementalAlterConfigs; group `fixture-group`, which
  joined once, committed offsets with metadata, and left.
- cluster/: the data dir of node 1 of a three-broker cluster (all voters):
  topic `replicated` (2 partitions, RF=3, acks=all records) and enough
  AlterConfigs that Raft took a snapshot and purged the log before it, so the
  log, the vote, the committed and purged ids and the snapshot are all there.
- topic-ids.txt: `<fixture> <topic> <uuid as 32 hex digits>` as the broker reported them.

Offset-commit metadata strings are stored with a trailing NUL: librdkafka
sends the Python string's C terminator too. The fixtures keep what it sent.

LMDB files are compacted with `mdb_copy -c` (same keys and values, free pages
dropped) and lock files removed, so the fixtures stay small.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic,
                                   ResourceType)

SINGLE_LISTEN = "127.0.0.1:39092"
# Node i listens on 127.0.0.i: Kafka on 39192, cluster on 39193.
CLUSTER_KEY = "5f" * 32
KAFKA_PORT, CLUSTER_PORT = 39192, 39193
# Entries past openraft's default snapshot threshold (5000), so a snapshot is built and the log purged.
ALTERS_FOR_SNAPSHOT = 5200


class Broker:
    def __init__(self, binary, config_path, listen, log_path):
        self.binary, self.config_path, self.listen, self.log_path = binary, config_path, listen, log_path
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        env = dict(os.environ, TRIBUTARY_LOG="info,openraft=warn")
        self.proc = subprocess.Popen([str(self.binary), "start", "--config", str(self.config_path)],
                                     stdout=log, stderr=log, env=env)
        host, port = self.listen.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"broker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection((host, int(port)), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"broker on {self.listen} did not listen; see {self.log_path}")

    def stop(self):
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        assert code == 0, f"broker on {self.listen} exited with {code}; see {self.log_path}"


def check(futures, what):
    for key, future in futures.items():
        try:
            future.result(timeout=60)
        except Exception as e:
            sys.exit(f"{what} {key}: {e}")


def create_topics(admin, topics):
    check(admin.create_topics(topics, operation_timeout=30), "create topic")


def set_configs(admin, kind, name, configs):
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()]
    check(admin.incremental_alter_configs([ConfigResource(kind, name, incremental_configs=entries)]), "alter configs")


def topic_ids(admin, names):
    from confluent_kafka import TopicCollection
    described = admin.describe_topics(TopicCollection(names))
    def hex_id(uuid):
        bits = (uuid.get_most_significant_bits() % 2**64) << 64 | uuid.get_least_significant_bits() % 2**64
        return f"{bits:032x}"
    return {name: hex_id(f.result(timeout=30).topic_id) for name, f in described.items()}


def produce(bootstrap, records, **config):
    """`records`: (topic, partition, key, value); each is flushed alone, so each is one batch."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, **config})
    for topic, partition, key, value in records:
        producer.produce(topic, value=value, key=key, partition=partition)
        assert producer.flush(30) == 0, f"undelivered record to {topic}-{partition}"


def write_single(binary, work, out):
    data = work / "single"
    config = work / "single.toml"
    config.write_text(f"""
[broker]
listen = "{SINGLE_LISTEN}"
data_dir = "{data}"
[metrics]
listen = ""
""")
    broker = Broker(binary, config, SINGLE_LISTEN, work / "single.log")
    broker.start()
    admin = AdminClient({"bootstrap.servers": SINGLE_LISTEN})
    create_topics(admin, [
        NewTopic("events", 3, 1),
        NewTopic("compacted", 1, 1, config={"cleanup.policy": "compact", "delete.retention.ms": "60000",
                                            "max.message.bytes": "65536"}),
        NewTopic("idempotent", 1, 1),
    ])
    set_configs(admin, ResourceType.TOPIC, "events", {"retention.ms": "3600000"})
    set_configs(admin, ResourceType.BROKER, "0", {"log.retention.ms": "172800000", "message.max.bytes": "2097152"})
    produce(SINGLE_LISTEN, [("events", p, f"k{p}-{i}".encode(), f"events-p{p}-{i}".encode())
                            for p in range(3) for i in range(p + 2)])
    produce(SINGLE_LISTEN, [("compacted", 0, k, v) for k, v in [(b"a", b"a1"), (b"b", b"b1"), (b"a", b"a2")]])
    produce(SINGLE_LISTEN, [("idempotent", 0, None, f"idem-{i}".encode()) for i in range(6)],
            **{"enable.idempotence": True})
    consumer = Consumer({"bootstrap.servers": SINGLE_LISTEN, "group.id": "fixture-group",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe(["events"])
    deadline = time.monotonic() + 60
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never got an assignment"
        consumer.poll(0.2)
    consumer.commit(offsets=[TopicPartition("events", 0, 2, metadata="m0"), TopicPartition("events", 1, 3),
                             TopicPartition("events", 2, 1, metadata="")], asynchronous=False)
    consumer.close()
    ids = topic_ids(admin, ["events", "compacted", "idempotent"])
    broker.stop()
    save(data, out / "single")
    return {("single", t): i for t, i in ids.items()}


def write_cluster(binary, work, out):
    voters = ", ".join(f'"{i}@127.0.0.{i}:{CLUSTER_PORT}"' for i in (1, 2, 3))
    brokers = []
    for i in (1, 2, 3):
        config = work / f"node{i}.toml"
        config.write_text(f"""
[broker]
node_id = {i}
listen = "127.0.0.{i}:{KAFKA_PORT}"
data_dir = "{work / f'node{i}'}"
[metrics]
listen = ""
[cluster]
voters = [{voters}]
listen = "127.0.0.{i}:{CLUSTER_PORT}"
key = "{CLUSTER_KEY}"
rack = "rack{i}"
""")
        brokers.append(Broker(binary, config, f"127.0.0.{i}:{KAFKA_PORT}", work / f"node{i}.log"))
    for b in brokers:
        b.start()
    bootstrap = ",".join(b.listen for b in brokers)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 60
    while len(admin.list_topics(timeout=10).brokers) < 3:
        assert time.monotonic() < deadline, "the cluster never listed three brokers"
        time.sleep(0.3)
    create_topics(admin, [NewTopic("replicated", 2, 3, config={"min.insync.replicas": "2"})])
    deadline = time.monotonic() + 60
    while any(len(p.isrs) < 3 for p in admin.list_topics("replicated", timeout=10).topics["replicated"]
              .partitions.values()):
        assert time.monotonic() < deadline, "replicated never had three in-sync replicas"
        time.sleep(0.3)
    produce(bootstrap, [("replicated", p, f"r{p}-{i}".encode(), f"replicated-p{p}-{i}".encode())
                        for p in range(2) for i in range(3)])
    resource = ConfigResource(ResourceType.TOPIC, "replicated")
    for start in range(0, ALTERS_FOR_SNAPSHOT, 50):
        futures = []
        for i in range(start, start + 50):
            entry = ConfigEntry("retention.ms", str(1_000_000 + i), incremental_operation=AlterConfigOpType.SET)
            futures.append(admin.incremental_alter_configs(
                [ConfigResource(ResourceType.TOPIC, "replicated", incremental_configs=[entry])])[resource])
        for f in futures:
            f.result(timeout=60)
    # The last change alone, so the final value is known whatever order the others landed in.
    set_configs(admin, ResourceType.TOPIC, "replicated", {"retention.ms": "86400000"})
    ids = topic_ids(admin, ["replicated"])
    for b in reversed(brokers):
        b.stop()
    save(work / "node1", out / "cluster")
    meta = subprocess.run(["mdb_dump", "-p", "-s", "meta", str(out / "cluster" / "__cluster_raft")],
                          check=True, capture_output=True, text=True).stdout
    for key in ("vote", "committed", "last_purged", "snapshot"):
        assert f" {key}\n" in meta, f"node 1's raft store has no '{key}': raise ALTERS_FOR_SNAPSHOT"
    return {("cluster", t): i for t, i in ids.items()}


def save(data, dest):
    """Copies every LMDB environment under `data` to `dest`, compacted, without lock files."""
    if dest.exists():
        shutil.rmtree(dest)
    for env in sorted(p.parent for p in data.rglob("data.mdb")):
        target = dest / env.relative_to(data)
        target.mkdir(parents=True)
        subprocess.run(["mdb_copy", "-c", str(env), str(target)], check=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            ids = write_single(args.binary, work, args.out)
            ids.update(write_cluster(args.binary, work, args.out))
        except BaseException:
            for log in sorted(work.glob("*.log")):
                print(f"== {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    lines = [f"{fixture} {topic} {uuid}\n" for (fixture, topic), uuid in sorted(ids.items())]
    (args.out / "topic-ids.txt").write_text("".join(lines))
    for lock in args.out.rglob("lock.mdb"):
        lock.unlink()


if __name__ == "__main__":
    main()
