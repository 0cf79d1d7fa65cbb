"""Jepsen-style: three real broker processes, each in a network namespace the
test creates, a real librdkafka producer and consumer group, and a seeded
schedule of real faults (kill -9 and restart, partitions, one-way links, link
down, packet loss, delay). After healing, the same invariants as the
simulation's checker: every acknowledged record is there exactly once, at its
offset, in order, and committed group offsets never went backwards.

The schedule comes from TRIBUTARY_JEPSEN_SEED (printed, so a failure can be
replayed). Delay and loss use tc netem where the kernel has it; where it does
not (some VM kernels), loss is iptables' statistic match and delay is a
narrow token-bucket link.
"""

import os
import random
import threading
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from cluster import Cluster
from test_cluster import Workload, check_acked_exactly_once_in_order, create, read_all

TOPIC = "jepsen"
PARTITIONS = 3
FAULTS = 7
FAULT_S = (4.0, 7.0)
GAP_S = (2.0, 4.0)


class CommittingConsumer:
    """A group member that commits after every batch and reads its commits
    back; a committed offset below one acknowledged earlier is a violation."""

    def __init__(self, bootstrap):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "jepsen-group",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "session.timeout.ms": 10_000})
        self.acked = {}  # partition -> highest acknowledged commit
        self.regressions = []
        self.commits = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        self.consumer.subscribe([TOPIC])
        last_check = time.monotonic()
        while not self.stopping.is_set():
            msgs = self.consumer.consume(500, timeout=0.5)
            if msgs:
                try:
                    for tp in self.consumer.commit(asynchronous=False) or []:
                        if tp.error is None and tp.offset >= 0:
                            self.acked[tp.partition] = max(self.acked.get(tp.partition, -1), tp.offset)
                    self.commits += 1
                except KafkaException:
                    pass  # no coordinator during a fault: the next batch commits again
            if time.monotonic() - last_check > 2:
                last_check = time.monotonic()
                self.check_committed()
        self.consumer.close()

    def check_committed(self):
        before = dict(self.acked)
        try:
            committed = self.consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=5)
        except KafkaException:
            return
        for tp in committed:
            if tp.error is None and tp.offset >= 0 and tp.offset < before.get(tp.partition, -1):
                self.regressions.append((tp.partition, tp.offset, before[tp.partition]))

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=60)


def leader_of(c, partition):
    try:
        leader, _, _ = c.partition_state(TOPIC, partition)
        return leader if leader > 0 else None
    except Exception:
        return None


def test_a_seeded_fault_schedule_loses_nothing_acknowledged(tmp_path):
    seed = int(os.environ.get("TRIBUTARY_JEPSEN_SEED", random.SystemRandom().randrange(1, 1_000_000)))
    print(f"jepsen seed {seed} (replay with TRIBUTARY_JEPSEN_SEED={seed})")
    rng = random.Random(seed)
    c = Cluster(tmp_path, netns=True)
    log = []
    try:
        c.start()
        create(c, TOPIC, PARTITIONS, 3, {"min.insync.replicas": "2"})
        netem = c.net.netem_available()
        work = Workload(c.bootstrap, TOPIC).start()
        group = CommittingConsumer(c.bootstrap).start()
        time.sleep(3)
        kinds = ["kill", "isolate-leader", "one-way", "link-down", "loss", "delay"]
        for n in range(FAULTS):
            kind = kinds[n] if n < len(kinds) else rng.choice(kinds)
            length = rng.uniform(*FAULT_S)
            victim = leader_of(c, rng.randrange(PARTITIONS)) or rng.randint(1, 3)
            other = rng.choice([j for j in (1, 2, 3) if j != victim])
            log.append(f"{time.strftime('%X')} {kind} on broker {victim} for {length:.1f}s")
            if kind == "kill":
                c.broker(victim).kill9()
                time.sleep(length)
                c.broker(victim).start()
            else:
                if kind == "isolate-leader":
                    c.net.isolate(victim)
                elif kind == "one-way":
                    c.net.one_way(victim, other)
                elif kind == "link-down":
                    c.net.link(victim, up=False)
                elif kind == "loss":
                    if netem:
                        c.net.netem(victim, 5, 5, 15)
                    else:
                        c.net.loss(victim, 15)
                elif kind == "delay":
                    if netem:
                        c.net.netem(victim, 80, 40, 0)
                    else:
                        c.net.slow_link(victim)
                time.sleep(length)
                c.net.heal_all()
            time.sleep(rng.uniform(*GAP_S))
        log.append(f"{time.strftime('%X')} healed")
        # Recovery: every replica back in every ISR (bounded), then the producer drains.
        for p in range(PARTITIONS):
            c.wait_for(f"full ISR of partition {p}", lambda l, r, isr: l > 0 and len(isr) == 3,
                       timeout_s=90, topic=TOPIC, partition=p)
        work.stop()
        time.sleep(3)
        group.stop()
        assert not work.failed, f"deliveries failed: {work.failed[:3]} (seed {seed}; faults {log})"
        got = read_all(c.bootstrap, TOPIC, PARTITIONS, work.acked_count())
        check_acked_exactly_once_in_order(work.acked, got)
        assert not group.regressions, f"committed offsets went back: {group.regressions[:3]} (seed {seed})"
        assert group.commits > 0, "the consumer group never committed"
        print(f"{work.acked_count()} records acknowledged and checked, {group.commits} commits; "
              f"{'netem' if netem else 'iptables/tbf'} faults: {log}")
    finally:
        c.stop()
