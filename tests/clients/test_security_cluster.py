"""SASL in a three-broker cluster: credentials are cluster metadata, so a user
created through one broker authenticates on every broker, Metadata names each
broker at its SASL listener, and users made while the controller is down (a
new controller elected) reach a broker that was away when it returns."""

import subprocess
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import Cluster
from conftest import binary


def sasl_conf(broker, user, password):
    return {"bootstrap.servers": f"{broker.host}:{broker.sasl_port}", "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password}


def create_user(broker, user, password):
    subprocess.run([str(binary()), "-b", broker.bootstrap, "user", "create", user, "--password", password],
                   check=True, capture_output=True, timeout=60)


def authenticates(conf, timeout_s=30):
    """Whether a client with `conf` gets metadata (authenticated) within the time, bounded retries."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        failed = []
        admin = AdminClient({**conf, "error_cb": failed.append})
        try:
            admin.list_topics(timeout=3)
            return True
        except Exception:
            pass
        if any(e.code() == KafkaError._AUTHENTICATION for e in failed):
            time.sleep(0.5)  # not there yet: the broker has not applied the credential
    return False


def test_credentials_follow_the_cluster_metadata_through_a_controller_change(tmp_path):
    cluster = Cluster(tmp_path, sasl=True)
    cluster.start()
    try:
        create_user(cluster.broker(1), "alice", "alice-pw")
        for broker in cluster.brokers:
            assert authenticates(sasl_conf(broker, "alice", "alice-pw")), f"alice on broker {broker.node_id}"
        conf = sasl_conf(cluster.broker(2), "alice", "alice-pw")
        md = AdminClient(conf).list_topics(timeout=10)
        assert sorted((b.id, b.host, b.port) for b in md.brokers.values()) == sorted(
            (b.node_id, b.host, b.sasl_port) for b in cluster.brokers), "every broker at its SASL listener"

        admin = AdminClient(conf)
        admin.create_topics([NewTopic("sec-rf3", 3, 3)])["sec-rf3"].result(timeout=30)
        producer = Producer({**conf, "acks": "all"})
        for i in range(30):
            producer.produce("sec-rf3", key=str(i).encode(), value=f"v{i}".encode())
        assert producer.flush(30) == 0
        consumer = Consumer({**conf, "group.id": f"g-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
        consumer.subscribe(["sec-rf3"])
        values, deadline = set(), time.monotonic() + 60
        while len(values) < 30 and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                values.add(m.value().decode())
        consumer.close()
        assert values == {f"v{i}" for i in range(30)}, "produced and consumed across the brokers over SASL"

        # The controller goes; a user made under the new one reaches the old one when it is back.
        controller = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(timeout=10).controller_id
        gone = cluster.broker(controller)
        gone.kill9()
        survivor = next(b for b in cluster.brokers if b is not gone)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            made = subprocess.run([str(binary()), "-b", survivor.bootstrap, "user", "create", "bob", "--password",
                                   "bob-pw"], capture_output=True, timeout=60)
            if made.returncode == 0:
                break
            time.sleep(1)
        assert made.returncode == 0, made.stderr
        for broker in cluster.brokers:
            if broker is not gone:
                assert authenticates(sasl_conf(broker, "bob", "bob-pw")), f"bob on broker {broker.node_id}"
        gone.start()
        assert authenticates(sasl_conf(gone, "bob", "bob-pw"), timeout_s=60), "the returning broker caught up"
        assert authenticates(sasl_conf(gone, "alice", "alice-pw"))
        assert not authenticates(sasl_conf(gone, "bob", "wrong"), timeout_s=3)
    finally:
        for b in cluster.brokers:
            b.stop()
