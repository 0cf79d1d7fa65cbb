"""Consumer groups with real clients in real processes: balanced assignment,
failover after kill -9, resuming from committed offsets across a broker restart,
auto.offset.reset, cooperative-sticky, static membership, group admin."""

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import kafka
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from helpers import create_topic

WORKER = Path(__file__).with_name("group_worker.py")


class Worker:
    """A group_worker.py process and the lines it printed."""

    def __init__(self, bootstrap, group, topic, *extra):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), bootstrap, group, topic, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines = queue.Queue()
        self.assigned = []
        self.records = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def drain(self):
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return
            if "assigned" in item:
                self.assigned = item["assigned"]
            else:
                self.records.append((item["p"], item["o"], item["v"]))

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def wait_for(condition, workers, timeout=45):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            w.drain()
        if condition():
            return True
        time.sleep(0.1)
    return False


def produce(bootstrap, topic, start, count):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        p.produce(topic, key=str(i), value=str(i))
    assert p.flush(30) == 0


def test_three_members_share_six_partitions_and_take_over_from_a_killed_one(broker):
    create_topic(broker.bootstrap, "shared", 6)
    produce(broker.bootstrap, "shared", 0, 1200)
    workers = [Worker(broker.bootstrap, "trio", "shared") for _ in range(3)]
    try:
        assert wait_for(lambda: sorted(len(w.assigned) for w in workers) == [2, 2, 2]
                        and sorted(p for w in workers for p in w.assigned) == list(range(6)), workers), \
            [w.assigned for w in workers]
        assert wait_for(lambda: sum(len(w.records) for w in workers) >= 1200, workers)
        values = sorted(int(v) for w in workers for _, _, v in w.records)
        assert values == list(range(1200)), "every record read exactly once"

        victim, survivors = workers[0], workers[1:]
        orphaned = set(victim.assigned)
        victim.kill9()
        produce(broker.bootstrap, "shared", 1200, 600)
        # Within the 6 s session timeout (plus a rebalance) the survivors own all six partitions.
        assert wait_for(lambda: sorted(p for w in survivors for p in w.assigned) == list(range(6)), survivors), \
            [w.assigned for w in survivors]
        assert wait_for(lambda: {int(v) for w in survivors for _, _, v in w.records} >= set(range(1200, 1800)),
                        survivors)
        # Nothing skipped: the victim committed everything it printed, and the
        # survivors continued its partitions from exactly those offsets.
        for p in orphaned:
            victim_offsets = [o for (vp, o, _) in victim.records if vp == p]
            taken_over = sorted(o for w in survivors for (wp, o, _) in w.records if wp == p)
            start = max(victim_offsets) + 1 if victim_offsets else 0
            assert taken_over[0] == start, f"partition {p} resumed at {taken_over[0]}, committed {start}"
            assert taken_over == list(range(start, start + len(taken_over)))
    finally:
        for w in workers:
            w.stop()


def test_consumer_resumes_from_committed_offset_after_broker_restart(broker):
    create_topic(broker.bootstrap, "resume", 1)
    produce(broker.bootstrap, "resume", 0, 200)
    conf = {"bootstrap.servers": broker.bootstrap, "group.id": "resumers", "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}
    c = Consumer(conf)
    c.subscribe(["resume"])
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < 120 and time.monotonic() < deadline:
        seen += [m for m in c.consume(200, 0.5) if not m.error()]
    committed_to = seen[119].offset() + 1
    c.commit(offsets=[TopicPartition("resume", 0, committed_to)], asynchronous=False)
    c.close()

    broker.restart()
    c = Consumer(conf)
    c.subscribe(["resume"])
    rest = []
    deadline = time.monotonic() + 30
    while len(rest) < 200 - committed_to and time.monotonic() < deadline:
        rest += [m for m in c.consume(200, 0.5) if not m.error()]
    c.close()
    assert [m.offset() for m in rest] == list(range(committed_to, 200))


def test_auto_offset_reset_earliest_and_latest(broker):
    create_topic(broker.bootstrap, "reset", 1)
    produce(broker.bootstrap, "reset", 0, 50)

    def first_value(group, reset, produce_after_assign):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": reset})
        c.subscribe(["reset"])
        deadline = time.monotonic() + 30
        produced = False
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if c.assignment() and produce_after_assign and not produced:
                time.sleep(1.0)  # let the consumer resolve "latest" before new data lands
                produce(broker.bootstrap, "reset", 1000, 1)
                produced = True
            if m is not None and not m.error():
                c.close()
                return int(m.value())
        c.close()
        return None

    assert first_value("from-earliest", "earliest", False) == 0
    assert first_value("from-latest", "latest", True) == 1000


def test_cooperative_sticky_rebalancing_with_librdkafka(broker):
    create_topic(broker.bootstrap, "coop", 4)
    produce(broker.bootstrap, "coop", 0, 400)
    extra = ["partition.assignment.strategy=cooperative-sticky"]
    first = Worker(broker.bootstrap, "cooperators", "coop", *extra)
    workers = [first]
    try:
        assert wait_for(lambda: first.assigned == [0, 1, 2, 3], workers)
        assert wait_for(lambda: len(first.records) >= 400, workers)
        second = Worker(broker.bootstrap, "cooperators", "coop", *extra)
        workers.append(second)
        assert wait_for(lambda: len(first.assigned) == 2 and len(second.assigned) == 2
                        and sorted(first.assigned + second.assigned) == [0, 1, 2, 3], workers)
        produce(broker.bootstrap, "coop", 400, 400)
        assert wait_for(lambda: sorted(int(v) for w in workers for _, _, v in w.records) == list(range(800)), workers)
    finally:
        for w in workers:
            w.stop()


def test_static_member_restart_keeps_its_partitions_without_rebalance(broker):
    create_topic(broker.bootstrap, "static", 2)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    extra = ["group.instance.id=worker-a", "session.timeout.ms=30000"]
    a = Worker(broker.bootstrap, "statics", "static", *extra)
    b = Worker(broker.bootstrap, "statics", "static", "group.instance.id=worker-b", "session.timeout.ms=30000")
    try:
        assert wait_for(lambda: len(a.assigned) == 1 and len(b.assigned) == 1, [a, b])
        before = a.assigned
        generation = describe_generation_free_state(admin, "statics")
        a.kill9()  # a static member leaves no LeaveGroup behind; its slot is kept
        a = Worker(broker.bootstrap, "statics", "static", *extra)
        assert wait_for(lambda: a.assigned == before, [a, b])
        assert b.assigned and sorted(a.assigned + b.assigned) == [0, 1]
        assert describe_generation_free_state(admin, "statics") == generation == "Stable"
    finally:
        a.stop()
        b.stop()


def describe_generation_free_state(admin, group):
    return admin.describe_consumer_groups([group])[group].result(10).state.name.title().replace("_", "")


def test_group_admin_with_confluent_and_kafka_python(broker):
    create_topic(broker.bootstrap, "admin-groups", 2)
    produce(broker.bootstrap, "admin-groups", 0, 20)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "listed", "auto.offset.reset": "earliest"})
    c.subscribe(["admin-groups"])
    got = 0
    deadline = time.monotonic() + 30
    while got < 20 and time.monotonic() < deadline:
        got += len([m for m in c.consume(50, 0.3) if not m.error()])
    c.commit(asynchronous=False)

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = admin.list_consumer_groups().result(10)
    assert "listed" in {g.group_id for g in listed.valid}
    desc = admin.describe_consumer_groups(["listed"])["listed"].result(10)
    assert desc.state.name == "STABLE" and len(desc.members) == 1
    assert sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions) == [0, 1]

    ka = kafka.admin.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    offsets = ka.list_group_offsets({"listed": None})["listed"]
    assert sum(meta.offset for meta in offsets.values()) == 20
    assert ka.describe_groups(["listed"])["listed"]["group_state"] == "Stable"
    assert ka.delete_groups(["listed"])["listed"] != "OK", "a group with members cannot be deleted"
    c.close()
    assert ka.delete_groups(["listed", "never-was"]) == {"listed": "OK", "never-was": "GroupIdNotFoundError"}
    assert "listed" not in {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    assert ka.list_group_offsets({"listed": None})["listed"] == {}
    ka.close()


def test_kafka_python_group_consumer_commits_and_resumes(broker):
    create_topic(broker.bootstrap, "kp-group", 3)
    produce(broker.bootstrap, "kp-group", 0, 300)
    c = kafka.KafkaConsumer("kp-group", bootstrap_servers=broker.bootstrap, group_id="kp",
                            auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=8000)
    values = []
    for record in c:
        values.append(int(record.value))
        if len(values) == 150:
            break
    c.commit()
    c.close()
    c = kafka.KafkaConsumer("kp-group", bootstrap_servers=broker.bootstrap, group_id="kp",
                            auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=8000)
    values += [int(r.value) for r in c]
    c.close()
    assert sorted(values) == list(range(300)), "the second consumer resumed where the first committed"


def test_offsets_of_an_empty_group_expire(broker_factory):
    b = broker_factory("[groups]\noffsets_retention_ms = 1500\noffsets_retention_check_interval_ms = 200\n")
    create_topic(b.bootstrap, "expiring", 1)
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "fleeting"})
    c.commit(offsets=[TopicPartition("expiring", 0, 0)], asynchronous=False)
    assert c.committed([TopicPartition("expiring", 0)], timeout=10)[0].offset == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if c.committed([TopicPartition("expiring", 0)], timeout=10)[0].offset < 0:
            break
        time.sleep(0.3)
    assert c.committed([TopicPartition("expiring", 0)], timeout=10)[0].offset < 0
    c.close()
