"""Real multi-broker clusters for tests: N `tributary` processes, each a voter.

Two layouts:
- loopback: broker i listens on 127.0.0.i (Kafka and cluster ports), no setup;
- netns: broker i runs in its own network namespace at 10.77.X.i, joined by
  veth pairs to a bridge the test creates; the test process reaches every
  broker through the bridge. Partitions are made with blackhole routes inside
  the namespaces, so brokers lose each other while clients still reach them.
"""

import os
import re
import urllib.request
import secrets
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from conftest import ProcessControl, binary

START_TIMEOUT_S = 30


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def free_port_on(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Net:
    """Namespaces tb<tag>n<i>, a bridge tb<tag>br at 10.77.<net>.254."""

    def __init__(self, n):
        self.tag = f"{os.getpid() % 10000}{secrets.randbelow(100)}"
        self.net = 10 + secrets.randbelow(200)
        self.n = n
        self.bridge = f"tb{self.tag}br"
        self.blackholes = []
        sh(f"ip link add {self.bridge} type bridge")
        sh(f"ip addr add 10.77.{self.net}.254/24 dev {self.bridge}")
        sh(f"ip link set {self.bridge} up")
        for i in range(1, n + 1):
            ns, veth = self.ns(i), f"tb{self.tag}v{i}"
            sh(f"ip netns add {ns}")
            sh(f"ip link add {veth} type veth peer name eth0 netns {ns}")
            sh(f"ip link set {veth} master {self.bridge} up")
            sh(f"ip netns exec {ns} ip addr add {self.host(i)}/24 dev eth0")
            sh(f"ip netns exec {ns} ip link set eth0 up")
            sh(f"ip netns exec {ns} ip link set lo up")

    def ns(self, i):
        return f"tb{self.tag}n{i}"

    def host(self, i):
        return f"10.77.{self.net}.{i}"

    def isolate(self, i):
        """Cuts broker i off from every other broker (both directions); clients still reach all."""
        for j in range(1, self.n + 1):
            if j != i:
                sh(f"ip netns exec {self.ns(i)} ip route add blackhole {self.host(j)}/32")
                sh(f"ip netns exec {self.ns(j)} ip route add blackhole {self.host(i)}/32")
                self.blackholes += [(i, j), (j, i)]

    def heal(self):
        for a, b in self.blackholes:
            subprocess.run(f"ip netns exec {self.ns(a)} ip route del blackhole {self.host(b)}/32", shell=True,
                           stderr=subprocess.DEVNULL)
        self.blackholes = []

    # Faults for the Jepsen-style test. Each lives inside one broker's namespace.

    def netem_available(self):
        """Whether the kernel has tc netem (some VM kernels ship without it)."""
        probe = subprocess.run(f"ip netns exec {self.ns(1)} tc qdisc add dev eth0 root netem delay 1ms",
                               shell=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        subprocess.run(f"ip netns exec {self.ns(1)} tc qdisc del dev eth0 root", shell=True,
                       stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return probe.returncode == 0

    def netem(self, i, delay_ms, jitter_ms, loss_pct):
        """Delay, jitter (which reorders) and loss on everything broker i sends."""
        sh(f"ip netns exec {self.ns(i)} tc qdisc replace dev eth0 root netem "
           f"delay {delay_ms}ms {jitter_ms}ms loss {loss_pct}%")

    def slow_link(self, i, rate="2mbit", latency_ms=300):
        """A narrow link (token bucket): what broker i sends queues up, which delays it."""
        sh(f"ip netns exec {self.ns(i)} tc qdisc replace dev eth0 root tbf rate {rate} burst 32kbit "
           f"latency {latency_ms}ms")

    def loss(self, i, percent):
        """Random loss of what broker i receives from the other brokers (iptables statistic)."""
        for j in range(1, self.n + 1):
            if j != i:
                sh(f"ip netns exec {self.ns(i)} iptables -A INPUT -s {self.host(j)} -m statistic "
                   f"--mode random --probability {percent / 100:.3f} -j DROP")

    def one_way(self, i, j):
        """Broker i's packets to broker j are dropped; j still reaches i."""
        sh(f"ip netns exec {self.ns(i)} iptables -A OUTPUT -d {self.host(j)} -j DROP")

    def link(self, i, up):
        sh(f"ip netns exec {self.ns(i)} ip link set eth0 {'up' if up else 'down'}")

    def heal_all(self):
        """Every fault above off, and every blackhole gone."""
        self.heal()
        for i in range(1, self.n + 1):
            quiet = dict(shell=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            subprocess.run(f"ip netns exec {self.ns(i)} ip link set eth0 up", **quiet)
            subprocess.run(f"ip netns exec {self.ns(i)} tc qdisc del dev eth0 root", **quiet)
            subprocess.run(f"ip netns exec {self.ns(i)} iptables -F", **quiet)

    def destroy(self):
        for i in range(1, self.n + 1):
            subprocess.run(f"ip netns del {self.ns(i)}", shell=True, stderr=subprocess.DEVNULL)
        subprocess.run(f"ip link del {self.bridge}", shell=True, stderr=subprocess.DEVNULL)


class ClusterBroker(ProcessControl):
    def __init__(self, cluster, node_id, host, kafka_port, cluster_port, data_dir, log_path):
        self.cluster, self.node_id, self.host = cluster, node_id, host
        self.kafka_port, self.cluster_port = kafka_port, cluster_port
        self.bootstrap = f"{host}:{kafka_port}"
        self.metrics_port = 9644 if cluster.net else free_port_on(host)
        self.sasl_port = 9094 if cluster.net else free_port_on(host)
        self.data_dir, self.log_path = data_dir, log_path
        self.config_path = data_dir.parent / f"node{node_id}.toml"
        self.proc = None

    def write_config(self, key=None):
        """Every broker is a voter; a broker outside `cluster.brokers` lists them but is not one."""
        c = self.cluster
        voters = ", ".join(f'"{b.node_id}@{b.host}:{b.cluster_port}"' for b in c.brokers)
        # With `sasl`, a SASL_PLAINTEXT listener beside the PLAINTEXT one brokers use.
        listen = f'listen = "{self.host}:{self.kafka_port}"'
        if c.sasl:
            listen = (f'listeners = ["PLAINTEXT://{self.host}:{self.kafka_port}", '
                      f'"SASL_PLAINTEXT://{self.host}:{self.sasl_port}"]')
        self.config_path.write_text(f"""
[broker]
node_id = {self.node_id}
{listen}
data_dir = "{self.data_dir}"
[metrics]
listen = "{self.host}:{self.metrics_port}"
[cluster]
voters = [{voters}]
listen = "{self.host}:{self.cluster_port}"
key = "{key or c.key}"
rack = "rack{self.node_id}"
{c.extra_cluster_config}
{c.extra_config}
""")

    def start(self):
        assert self.proc is None, "already running"
        log = open(self.log_path, "ab")
        env = dict(os.environ, TRIBUTARY_LOG=os.environ.get("TRIBUTARY_LOG", "info,openraft=warn"))
        cmd = [str(binary()), "start", "--config", str(self.config_path)]
        if self.cluster.net:
            cmd = ["ip", "netns", "exec", self.cluster.net.ns(self.node_id)] + cmd
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker {self.node_id} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection((self.host, self.kafka_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker {self.node_id} did not listen within {START_TIMEOUT_S}s")

    def metric(self, name, **labels):
        """A counter or gauge from this broker's /metrics, 0 if absent."""
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        labels_part = rf"\{{{re.escape(want)}\}}" if labels else ""
        found = re.search(rf"^{re.escape(name)}{labels_part} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0


class Cluster:
    def __init__(self, tmp_path, n=3, netns=False, extra_cluster_config="", extra_config="", sasl=False):
        self.key = secrets.token_hex(32)
        self.sasl = sasl
        self.extra_cluster_config = extra_cluster_config
        self.extra_config = extra_config
        self.net = Net(n) if netns else None
        self.brokers = []
        for i in range(1, n + 1):
            host = self.net.host(i) if self.net else f"127.0.0.{i}"
            # In a namespace every broker has its own address space: fixed ports are free.
            kafka_port = 9092 if self.net else free_port_on(host)
            cluster_port = 9093 if self.net else free_port_on(host)
            self.brokers.append(ClusterBroker(self, i, host, kafka_port, cluster_port, tmp_path / f"data{i}",
                                              tmp_path / f"broker{i}.log"))
        for b in self.brokers:
            b.write_config()

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.brokers)

    def broker(self, node_id):
        return self.brokers[node_id - 1]

    def start(self):
        for b in self.brokers:
            b.start()
        self.wait_for_brokers(len(self.brokers))

    def admin(self, bootstrap=None):
        return AdminClient({"bootstrap.servers": bootstrap or self.bootstrap})

    def wait_for_brokers(self, count, timeout_s=30, via=None):
        """Until Metadata (through `via`, or any live broker) lists `count` brokers."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            try:
                md = self.admin(via).list_topics(timeout=5)
                seen = sorted(md.brokers)
                if len(seen) == count:
                    return seen
            except Exception as e:  # a broker just killed: try again
                seen = repr(e)
            time.sleep(0.3)
        raise AssertionError(f"cluster did not list {count} brokers within {timeout_s}s (last saw {seen})")

    def partition_state(self, topic, partition, via=None):
        md = self.admin(via).list_topics(topic=topic, timeout=5)
        p = md.topics[topic].partitions[partition]
        return p.leader, list(p.replicas), list(p.isrs)

    def wait_for(self, what, predicate, timeout_s=30, via=None, topic=None, partition=0):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.partition_state(topic, partition, via)
                if predicate(*last):
                    return last
            except Exception as e:
                last = repr(e)
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout_s}s (last state {last})")

    def stop(self):
        for b in self.brokers:
            b.stop()
        if self.net:
            self.net.heal_all()
            self.net.destroy()
