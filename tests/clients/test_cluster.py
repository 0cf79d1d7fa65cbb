"""Three real broker processes forming one cluster: membership, the cluster
key, replication, leader failover under kill -9, and a network partition."""

import struct
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

import rawkafka
from cluster import Cluster, ClusterBroker, free_port_on


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    c.start()
    yield c
    c.stop()


def create(cluster, topic, partitions, rf, config=None):
    admin = cluster.admin()  # kept alive until the result is in
    fs = admin.create_topics([NewTopic(topic, partitions, rf, config=config or {})], request_timeout=20)
    fs[topic].result(timeout=30)


class Workload:
    """An idempotent acks=all producer writing value n (n = 0, 1, ...) with
    keys spread over the partitions, from a thread, recording what is acked."""

    def __init__(self, bootstrap, topic, extra=None):
        config = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 120_000, "retry.backoff.ms": 100}
        config.update(extra or {})
        self.producer = Producer(config)
        self.topic = topic
        self.acked = {}  # partition -> [(offset, n)] in ack order
        self.failed = []
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def on_delivery(self, err, msg):
        if err is not None:
            self.failed.append(str(err))
        else:
            self.acked.setdefault(msg.partition(), []).append((msg.offset(), int(msg.value())))

    def run(self):
        while not self.stopping.is_set() and self.sent < 2_000_000:
            try:
                self.producer.produce(self.topic, key=str(self.sent % 64), value=str(self.sent),
                                      on_delivery=self.on_delivery)
                self.sent += 1
            except BufferError:
                self.producer.poll(0.05)
            if self.sent % 200 == 0:
                self.producer.poll(0)
                time.sleep(0.005)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=30)
        remaining = self.producer.flush(150)
        assert remaining == 0, f"{remaining} records still unacknowledged after 150 s"

    def acked_count(self):
        return sum(len(v) for v in self.acked.values())


def read_all(bootstrap, topic, partitions, expected, timeout_s=90):
    """Every record of the topic: partition -> [(offset, n)]."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "checker", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {}
    deadline = time.monotonic() + timeout_s
    while sum(len(v) for v in got.values()) < expected and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=1):
            if m.error() is None:
                got.setdefault(m.partition(), []).append((m.offset(), int(m.value())))
    c.close()
    return got


def check_acked_exactly_once_in_order(acked, got):
    """Every acknowledged record is read exactly once, at its acknowledged
    offset; each partition holds its values in the order they were produced."""
    for partition, records in got.items():
        offsets = [o for o, _ in records]
        assert offsets == sorted(set(offsets)), f"partition {partition}: offsets repeat or go back"
        values = [n for _, n in records]
        assert values == sorted(values), f"partition {partition}: values out of produce order"
        assert len(values) == len(set(values)), f"partition {partition}: a record appears twice"
    for partition, records in acked.items():
        stored = dict(got.get(partition, []))
        missing = [(o, n) for o, n in records if stored.get(o) != n]
        assert not missing, f"partition {partition}: {len(missing)} acknowledged records missing, first {missing[:3]}"


def test_three_brokers_form_one_cluster_with_racks_and_replication(cluster):
    admin = cluster.admin()
    md = admin.list_topics(timeout=10)
    assert sorted(md.brokers) == [1, 2, 3]
    assert md.controller_id in (1, 2, 3)
    desc = admin.describe_cluster(request_timeout=10).result()
    assert sorted(n.id for n in desc.nodes) == [1, 2, 3]
    assert {n.rack for n in desc.nodes} == {"rack1", "rack2", "rack3"}

    create(cluster, "replicated", 6, 3)
    md = admin.list_topics(topic="replicated", timeout=10)
    leaders = set()
    for p in md.topics["replicated"].partitions.values():
        assert sorted(p.replicas) == [1, 2, 3] and sorted(p.isrs) == [1, 2, 3]
        leaders.add(p.leader)
    assert leaders == {1, 2, 3}, "leadership is spread over the brokers"

    fs = admin.create_topics([NewTopic("too-wide", 1, 4)], request_timeout=20)
    with pytest.raises(KafkaException) as e:
        fs["too-wide"].result(timeout=30)
    assert e.value.args[0].name() == "INVALID_REPLICATION_FACTOR"

    # Every broker holds every record, and consumers see the same on each.
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(3000):
        p.produce("replicated", key=str(i), value=str(i))
    assert p.flush(30) == 0
    got = read_all(cluster.bootstrap, "replicated", 6, 3000)
    assert sum(len(v) for v in got.values()) == 3000

    # A request to a broker that does not lead the partition is refused with NOT_LEADER_OR_FOLLOWER.
    leader, replicas, _ = cluster.partition_state("replicated", 0)
    follower = cluster.broker(next(r for r in replicas if r != leader))
    conn = rawkafka.Conn(follower.bootstrap)
    conn.send(rawkafka.produce_v3(7, "replicated", 0, rawkafka.record_batch([b"x"]), acks=-1))
    _, code, _ = rawkafka.parse_produce_v3(conn.recv_response())
    assert code == 6


def test_a_broker_without_the_cluster_key_is_refused(cluster, tmp_path):
    rogue = ClusterBroker(cluster, 4, "127.0.0.4", free_port_on("127.0.0.4"), free_port_on("127.0.0.4"),
                          tmp_path / "rogue", tmp_path / "rogue.log")
    # It knows the voters' addresses and dials them, but holds another key.
    rogue.write_config(key="11" * 32)
    rogue.start()
    try:
        # A handshake with the wrong key fails at once or at the 10 s upgrade timeout.
        refused = lambda: sum(b.log().count("refused a cluster connection") for b in cluster.brokers)  # noqa: E731
        deadline = time.monotonic() + 30
        while refused() == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert refused() > 0, "the members refused the rogue's connections"
        md = cluster.admin(cluster.brokers[0].bootstrap).list_topics(timeout=10)
        assert sorted(md.brokers) == [1, 2, 3], "the rogue broker was not admitted"
        assert "broker seen" not in rogue.log(), "the rogue heard the cluster's gossip"
    finally:
        rogue.stop()


def test_leader_killed_mid_stream_fails_over_and_nothing_acknowledged_is_lost(cluster):
    topic = "failover"
    create(cluster, topic, 3, 3)
    work = Workload(cluster.bootstrap, topic).start()
    time.sleep(3)
    leader, _, _ = cluster.partition_state(topic, 0)
    victim = cluster.broker(leader)
    acked_before = work.acked_count()
    killed_at = time.monotonic()
    victim.kill9()
    # Another in-sync replica leads within 20 s: a session timeout (6 s) after the
    # controller last heard the victim, or, when the victim was the controller
    # too, a Raft election plus a full session from the new controller's start.
    cluster.wait_for("new leader", lambda l, r, isr: l not in (leader, -1), timeout_s=20,
                     via=",".join(b.bootstrap for b in cluster.brokers if b is not victim), topic=topic)
    failover_s = time.monotonic() - killed_at
    time.sleep(4)
    assert work.acked_count() > acked_before, "the producer continued after the kill"
    survivors = [b for b in cluster.brokers if b is not victim]
    under = sum(b.metric("tributary_under_replicated_partitions") for b in survivors)
    assert under == 3, f"with one of three brokers down every partition is under-replicated: {under}"
    # The killed broker comes back, catches up and rejoins the ISR of every partition.
    victim.start()
    for p in range(3):
        cluster.wait_for(f"broker {leader} back in the ISR of partition {p}", lambda l, r, isr: leader in isr,
                         timeout_s=40, topic=topic, partition=p)
    deadline = time.monotonic() + 10
    while sum(b.metric("tributary_under_replicated_partitions") for b in cluster.brokers) > 0:
        assert time.monotonic() < deadline, "partitions still under-replicated after the broker rejoined"
        time.sleep(0.2)
    work.stop()
    assert not work.failed, f"deliveries failed: {work.failed[:3]}"
    got = read_all(cluster.bootstrap, topic, 3, work.acked_count())
    check_acked_exactly_once_in_order(work.acked, got)
    print(f"failover took {failover_s:.1f}s; {work.acked_count()} records acknowledged")


def test_a_follower_killed_while_caught_up_does_not_stall_acks_all(cluster):
    """A follower that dies caught up and idle still looks caught up to its
    leader. The leader must not keep proposing it back into the ISR (the
    controller refuses a fenced broker) and count it meanwhile: that held the
    high watermark at the dead follower's end, so every acks=all produce timed
    out (found through a transaction coordinator's broker killed -9)."""
    topic = "dead-follower"
    create(cluster, topic, 1, 3)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "message.timeout.ms": 20_000})
    for i in range(100):
        p.produce(topic, value=str(i))
    assert p.flush(30) == 0
    leader, replicas, _ = cluster.partition_state(topic, 0)
    follower = next(r for r in replicas if r != leader)
    cluster.broker(follower).kill9()
    via = ",".join(b.bootstrap for b in cluster.brokers if b.node_id != follower)
    cluster.wait_for(f"broker {follower} out of the ISR", lambda l, r, isr: follower not in isr and l == leader,
                     timeout_s=30, via=via, topic=topic)
    failed = []
    for i in range(100, 200):
        p.produce(topic, value=str(i), on_delivery=lambda err, _m: err and failed.append(str(err)))
    assert p.flush(30) == 0, "acks=all records still unacknowledged"
    assert not failed, f"deliveries failed: {failed[:3]}"


def test_a_consumer_with_client_rack_reads_from_the_same_rack_follower(cluster):
    """KIP-392: the leader sends a consumer with `client.rack` to the in-sync
    follower in that rack, which serves exactly the leader's records."""
    topic = "follow"
    create(cluster, topic, 1, 3)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(2000):
        p.produce(topic, value=str(i))
    assert p.flush(30) == 0
    leader, replicas, _ = cluster.partition_state(topic, 0)
    follower = next(r for r in replicas if r != leader)
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "rack-reader", "auto.offset.reset": "earliest",
                  "client.rack": f"rack{follower}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    values = []
    deadline = time.monotonic() + 30
    while len(values) < 2000 and time.monotonic() < deadline:
        for m in c.consume(500, timeout=1):
            if m.error() is None:
                values.append(int(m.value()))
    c.close()
    assert values == list(range(2000))
    served = {b.node_id: b.metric("tributary_bytes_out_total", topic=topic) for b in cluster.brokers}
    assert served[follower] > 0, f"the same-rack follower served no bytes: {served}"
    assert served[leader] == 0, f"the leader served the records itself: {served}"


def test_a_partitioned_leader_stops_acknowledging_and_steps_down(tmp_path):
    c = Cluster(tmp_path, netns=True)
    try:
        c.start()
        topic = "partitioned"
        create(c, topic, 3, 3)
        work = Workload(c.bootstrap, topic).start()
        time.sleep(3)
        leader, _, _ = c.partition_state(topic, 0)
        isolated = c.broker(leader)
        c.net.isolate(leader)
        cut_at = time.monotonic()
        # The isolated broker still takes connections, but no acks=-1 write commits there.
        conn = rawkafka.Conn(isolated.bootstrap, timeout=30)
        conn.send(rawkafka.produce_v3(1, topic, 0, rawkafka.record_batch([b"999999999"]), acks=-1))
        _, code, _ = rawkafka.parse_produce_v3(conn.recv_response())
        assert code in (6, 7, 19), f"an isolated leader answered acks=-1 with error {code}"
        others = ",".join(b.bootstrap for b in c.brokers if b is not isolated)
        c.wait_for("a new leader on the majority side", lambda l, r, isr: l not in (leader, -1), timeout_s=20,
                   via=others, topic=topic)
        # It steps down: it stops claiming the leadership itself.
        deadline = time.monotonic() + 20
        while "follower of None" not in isolated.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "follower of None" in isolated.log(), "the isolated broker kept leading"
        time.sleep(max(0.0, 12 - (time.monotonic() - cut_at)))
        c.net.heal()
        for p in range(3):
            c.wait_for(f"broker {leader} back in the ISR of partition {p}", lambda l, r, isr: leader in isr,
                       timeout_s=60, topic=topic, partition=p)
        work.stop()
        got = read_all(c.bootstrap, topic, 3, work.acked_count())
        check_acked_exactly_once_in_order(work.acked, got)
        assert all(n != 999999999 for recs in got.values() for _, n in recs), \
            "a write the isolated leader never acknowledged survived the heal"
    finally:
        c.stop()


def test_the_cli_follows_leaders_and_coordinators_in_a_cluster(cluster):
    from test_cli import cli, js
    entry = cluster.broker(1)
    assert "created topic cli-rep" in cli(entry, "topic", "create", "cli-rep", "-p", "3", "-r", "3").stdout
    lines = "".join(f"k{i}:v{i}\n" for i in range(3000))
    cli(entry, "produce", "cli-rep", "-k", ":", stdin=lines)
    described = js(entry, "topic", "describe", "cli-rep")
    assert {p["leader"] for p in described["partitions"]} == {1, 2, 3}, "leaders spread over the brokers"
    assert sum(p["high_watermark"] for p in described["partitions"]) == 3000
    out = cli(entry, "consume", "cli-rep", "-k", ":").stdout.splitlines()
    assert sorted(out) == sorted(f"k{i}:v{i}" for i in range(3000))
    # A config change through one broker is seen through another.
    cli(entry, "topic", "alter", "cli-rep", "--set", "retention.ms=120000")
    deadline = time.monotonic() + 10
    while js(cluster.broker(3), "topic", "describe", "cli-rep")["configs"]["retention.ms"] != "120000":
        assert time.monotonic() < deadline, "the config change did not reach broker 3"
        time.sleep(0.2)
    status = js(entry, "cluster", "status")
    assert sorted(b["id"] for b in status["brokers"]) == [1, 2, 3]
    # A group's offsets live on its coordinator; the CLI finds it from any broker.
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "cli-group", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe(["cli-rep"])
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 3000 and time.monotonic() < deadline:
        seen += sum(1 for m in c.consume(500, timeout=1) if m.error() is None)
    c.commit(asynchronous=False)
    c.close()
    for via in cluster.brokers:
        described = js(via, "group", "describe", "cli-group")
        assert sum(p["lag"] for p in described["offsets"]) == 0, described
    assert "cli-group" in cli(cluster.broker(2), "group", "list").stdout


def test_acks_all_needs_min_insync_replicas(cluster):
    topic = "strict"
    create(cluster, topic, 1, 3, {"min.insync.replicas": "3"})
    leader, replicas, _ = cluster.partition_state(topic, 0)
    conn = rawkafka.Conn(cluster.broker(leader).bootstrap)
    conn.send(rawkafka.produce_v3(1, topic, 0, rawkafka.record_batch([b"all three"]), acks=-1))
    assert rawkafka.parse_produce_v3(conn.recv_response())[1] == 0
    # One follower stops (cleanly): the controller fences it and the ISR shrinks to two.
    follower = cluster.broker(next(r for r in replicas if r != leader))
    follower.stop()
    cluster.wait_for("ISR of two", lambda l, r, isr: len(isr) == 2, timeout_s=20, via=cluster.broker(leader).bootstrap,
                     topic=topic)
    conn.send(rawkafka.produce_v3(2, topic, 0, rawkafka.record_batch([b"refused"]), acks=-1))
    assert rawkafka.parse_produce_v3(conn.recv_response())[1] == 19, "NOT_ENOUGH_REPLICAS"
    conn.send(rawkafka.produce_v3(3, topic, 0, rawkafka.record_batch([b"leader only"]), acks=1))
    _, code, offset = rawkafka.parse_produce_v3(conn.recv_response())
    assert code == 0 and offset == 1, "acks=1 needs only the leader"
    # Back with three in sync, acks=-1 works again.
    follower.start()
    cluster.wait_for("ISR of three", lambda l, r, isr: len(isr) == 3, timeout_s=30, topic=topic)
    conn.send(rawkafka.produce_v3(4, topic, 0, rawkafka.record_batch([b"all three again"]), acks=-1))
    assert rawkafka.parse_produce_v3(conn.recv_response())[1] == 0


def test_topic_admin_rules_hold_through_the_controller(cluster):
    """APPEND and SUBTRACT on list configs, and the '.'/'_' name collision rule,
    go through the controller as on one broker."""
    for node in (1, 2, 3):  # every broker counts three live ones, so any may take rf=3
        cluster.wait_for_brokers(3, via=cluster.broker(node).bootstrap)
    create(cluster, "lists", 1, 3)
    resource = lambda *changes: ConfigResource(  # noqa: E731
        ConfigResource.Type.TOPIC, "lists",
        incremental_configs=[ConfigEntry(n, v, incremental_operation=op) for n, v, op in changes])

    def policy(expected):
        """The policy described, once every broker has applied the change (bounded wait)."""
        plain = ConfigResource(ConfigResource.Type.TOPIC, "lists")
        admins = [cluster.admin(cluster.broker(n).bootstrap) for n in (1, 2, 3)]  # alive until answered
        deadline = time.monotonic() + 15
        while True:
            got = [a.describe_configs([plain])[plain].result(10)["cleanup.policy"].value for a in admins]
            if got == [expected] * 3 or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    admin = cluster.admin(cluster.broker(2).bootstrap)
    r = resource(("cleanup.policy", "compact", AlterConfigOpType.APPEND))
    admin.incremental_alter_configs([r])[r].result(20)
    assert policy("compact,delete") == ["compact,delete"] * 3
    r = resource(("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT))
    admin.incremental_alter_configs([r])[r].result(20)
    assert policy("compact") == ["compact"] * 3
    r = resource(("min.insync.replicas", "2", AlterConfigOpType.APPEND))
    with pytest.raises(KafkaException) as not_a_list:
        admin.incremental_alter_configs([r])[r].result(20)
    assert not_a_list.value.args[0].name() == "INVALID_REQUEST"

    create(cluster, "lists.v1", 1, 3)
    with pytest.raises(KafkaException) as collided:
        create(cluster, "lists_v1", 1, 3)
    assert collided.value.args[0].name() == "TOPIC_EXCEPTION" and "collides" in collided.value.args[0].str()

    # Old configs are dropped before the controller sees them, so every broker's
    # topic matches the metadata and is not re-configured on each reconcile.
    create(cluster, "lists-legacy", 1, 3, {"message.format.version": "2.8", "retention.ms": "60000"})
    time.sleep(3)
    for node in (1, 2, 3):
        altered = [line for line in cluster.broker(node).log().splitlines()
                   if "altered topic config" in line and "lists-legacy" in line]
        assert not altered, f"broker {node} re-configured it: {altered[:2]}"
