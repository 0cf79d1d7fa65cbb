"""Transactions in a three-broker cluster: the coordinator's broker is killed
-9 between transactions and mid-transaction; its state partition's new leader
takes the transactional id over, committed transactions are all visible to
read_committed consumers, aborted ones never, and nothing hangs."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from test_cluster import cluster  # noqa: F401 (the three-broker fixture)

STATE_TOPIC = "__transaction_state"
STATE_PARTITIONS = 8  # transactions.state_partitions (the default config)
TOPIC = "tx-cluster"
PARTITIONS = 3


def java_hash(s):
    h = 0
    for ch in s.encode("utf-16-be").decode("utf-16-be"):
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def state_partition(transactional_id):
    return abs(java_hash(transactional_id)) % STATE_PARTITIONS


def producer(cluster, transactional_id):
    p = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": transactional_id,
                  "transaction.timeout.ms": 30_000, "message.timeout.ms": 30_000, "linger.ms": 5})
    p.init_transactions(60)
    return p


def run_transaction(p, values, commit, attempts=20):
    """Produces `values` (keyed over the partitions) in one transaction and
    commits or aborts it, retrying through coordinator and leader failover.
    Answers whether a transaction with these values was committed."""
    for _ in range(attempts):
        try:
            p.begin_transaction()
            for v in values:
                p.produce(TOPIC, key=str(v % 16), value=str(v))
            p.flush(60)
            if commit:
                p.commit_transaction(60)
            else:
                p.abort_transaction(60)
            return commit
        except KafkaException as e:
            err = e.args[0]
            if err.fatal():
                raise
            if err.txn_requires_abort():
                p.abort_transaction(60)
                continue
            if err.retriable():
                # The outcome of a retried commit is the commit's: try it again.
                for _ in range(attempts):
                    try:
                        (p.commit_transaction if commit else p.abort_transaction)(60)
                        return commit
                    except KafkaException as again:
                        if not again.args[0].retriable():
                            raise
                        time.sleep(0.5)
            time.sleep(0.5)
    raise AssertionError(f"transaction not finished after {attempts} attempts")


def read_committed(cluster, deadline_s=60):
    """Every record of TOPIC below the read_committed end, per partition in order."""
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "unused", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    try:
        ends = {}
        deadline = time.monotonic() + deadline_s
        for p in range(PARTITIONS):
            while True:
                try:
                    ends[p] = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=5, cached=False)[1]
                    break
                except KafkaException:
                    assert time.monotonic() < deadline, "no watermark"
                    time.sleep(0.5)
        c.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        seen = {p: [] for p in range(PARTITIONS)}
        positions = {p: 0 for p in range(PARTITIONS)}
        while any(positions[p] < ends[p] for p in range(PARTITIONS)):
            assert time.monotonic() < deadline, f"read_committed stalled at {positions} of {ends}"
            m = c.poll(1.0)
            if m is None:
                for tp in c.position([TopicPartition(TOPIC, p) for p in range(PARTITIONS)]):
                    if tp.offset >= 0:
                        positions[tp.partition] = tp.offset
                continue
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                continue
            seen[m.partition()].append(int(m.value()))
            positions[m.partition()] = m.offset() + 1
        return seen
    finally:
        c.close()


def coordinator_of(cluster, transactional_id):
    leader, _, _ = cluster.partition_state(STATE_TOPIC, state_partition(transactional_id))
    return leader


def test_coordinator_failover_keeps_every_committed_transaction_and_no_aborted_one(cluster):
    admin = cluster.admin()
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)], request_timeout=20)[TOPIC].result(timeout=30)
    tid = "cluster-txn"
    p = producer(cluster, tid)
    committed, aborted = [], []
    n = 0

    def batch(size=40):
        nonlocal n
        values = list(range(n, n + size))
        n += size
        return values

    for i in range(4):
        values = batch()
        (committed if run_transaction(p, values, commit=(i != 1)) else aborted).extend(values)

    coordinator = coordinator_of(cluster, tid)
    assert coordinator in (1, 2, 3), coordinator
    # Mid-transaction: records produced and flushed, then the coordinator's broker dies.
    values = batch()
    p.begin_transaction()
    for v in values:
        p.produce(TOPIC, key=str(v % 16), value=str(v))
    p.flush(60)
    cluster.broker(coordinator).kill9()
    cluster.wait_for(f"{STATE_TOPIC} moves off broker {coordinator}",
                     lambda leader, _r, _i: leader not in (None, -1, coordinator),
                     topic=STATE_TOPIC, partition=state_partition(tid),
                     via=",".join(b.bootstrap for b in cluster.brokers if b.node_id != coordinator))
    try:
        p.commit_transaction(60)
        committed.extend(values)
    except KafkaException as e:
        err = e.args[0]
        assert not err.fatal(), err
        if err.txn_requires_abort():
            p.abort_transaction(60)
            aborted.extend(values)
        else:
            # A retriable failure: the commit's outcome is decided by retrying it.
            p.commit_transaction(60)
            committed.extend(values)

    for i in range(4):
        values = batch()
        (committed if run_transaction(p, values, commit=(i != 2)) else aborted).extend(values)
    cluster.broker(coordinator).start()
    cluster.wait_for_brokers(3)
    p.flush(10)

    seen = read_committed(cluster)
    everything = sorted(v for vs in seen.values() for v in vs)
    assert everything == sorted(committed), "read_committed sees exactly the committed transactions"
    assert not set(everything) & set(aborted)
    for part, vs in seen.items():
        assert vs == sorted(vs), f"partition {part} in produce order"

    # No transaction hangs: the id's coordinator answers and a new producer takes the id over.
    q = producer(cluster, tid)
    values = batch(10)
    assert run_transaction(q, values, commit=True)
    assert sorted(v for vs in read_committed(cluster).values() for v in vs) == sorted(committed + values)
