#!/usr/bin/env python3
"""Tributary side by side with its peers, measured the same way in one run.

Runs the same workloads, through the same client binary (bench/client: librdkafka for the
Kafka-compatible brokers, async-nats for NATS), against

  tributary           this repository's release build, default durability (fsync per batch)
  tributary-interval  the same with storage.durability = "interval" (fsync every second)
  tansu               Tansu from crates.io on its SQLite engine (WAL, synchronous=normal:
                      no fsync per commit)
  tansu-memory        Tansu on its in-memory engine (nothing on disk: Tansu's upper bound)
  nats                NATS JetStream (Debian's nats-server), a file stream with one replica
                      (fsync on its sync interval, two minutes by default)

plus a 3-broker Tributary cluster at replication factor 3. Each workload gets a fresh broker
process and data directory. Workloads: produce 1M x 1 KiB (acks=-1, linger 5 ms) without
compression and with lz4; consume them; end-to-end latency at a fixed 20 MB/s; 100 producers
on 100 partitions. References measured in the same run: loopback TCP and the data disk's
sequential and synced write rates. Peak RSS (VmHWM) of every broker process.

Writes bench/results/peers.{json,md,png}. Set-up: bench/setup.sh. A benchmark, not a test:
nothing here asserts a speed.

    python3 bench/peers.py [--records 1000000] [--only tributary,tansu] [--skip-cluster]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLIENT = Path(os.environ.get("BENCH_CLIENT", ROOT / "bench" / "client" / "target" / "release" / "tributary-bench"))
TRIBUTARY = Path(os.environ.get("TRIBUTARY_BIN", ROOT / "target" / "release" / "tributary"))
TANSU = Path(os.environ.get("TANSU_BIN", ROOT / "bench" / ".peers" / "bin" / "tansu"))
NATS = Path(os.environ.get("NATS_SERVER_BIN", shutil.which("nats-server") or "/usr/sbin/nats-server"))
PARTITIONS = 6
# Bounds on everything the script waits for.
START_LIMIT_S = 30
WORKLOAD_LIMIT_S = 900


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host, port, proc, log):
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"broker exited with {proc.returncode}; see {log}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"broker did not listen on {host}:{port} within {START_LIMIT_S}s; see {log}")


def status_mib(pid, field):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def peak_rss_mib(pid):
    return status_mib(pid, "VmHWM")


class AnonSampler:
    """Peak anonymous RSS (the heap; VmHWM also counts mapped file pages, which
    LMDB's read-only map adds), sampled every 100 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(0.1):
            self.peak = max(self.peak, status_mib(self.pid, "RssAnon") or 0.0)

    def stop(self):
        self.done.set()
        self.thread.join(5)
        return self.peak


class Broker:
    """One broker process on a fresh data directory."""

    kind = "kafka"

    def __init__(self, workdir):
        self.workdir = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{self.name}-"))
        self.port = free_port()
        self.log = self.workdir / "broker.log"
        self.proc = None

    def command(self):
        raise NotImplementedError

    def start(self):
        # Let the last workload's writeback finish so it is not billed to this one.
        os.sync()
        time.sleep(1)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
                                     cwd=self.workdir)
        wait_for_port("127.0.0.1", self.port, self.proc, self.log)
        self.anon = AnonSampler(self.proc.pid)
        return self

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        """Returns the process's peak RSS and peak anonymous RSS in MiB."""
        rss = (peak_rss_mib(self.proc.pid), self.anon.stop())
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return rss


class Tributary(Broker):
    name = "tributary"
    durability = "fsync"

    def command(self):
        config = self.workdir / "bench.toml"
        config.write_text(f'[storage]\ndurability = "{self.durability}"\n')
        return [str(TRIBUTARY), "start", "--listen", self.address, "--data-dir", str(self.workdir / "data"),
                "--metrics-listen", "", "--config", str(config)]


class TributaryInterval(Tributary):
    name = "tributary-interval"
    durability = "interval"


class TributaryBaseline(Tributary):
    """Another build of Tributary (TRIBUTARY_BASELINE_BIN), default durability: a change's
    before and after in one run (`--only tributary-baseline,tributary`)."""

    name = "tributary-baseline"

    def command(self):
        baseline = os.environ.get("TRIBUTARY_BASELINE_BIN")
        if not baseline or not Path(baseline).exists():
            raise SystemExit("tributary-baseline needs TRIBUTARY_BASELINE_BIN, the path of the other build")
        return [baseline] + super().command()[1:]


class TributaryTls(Tributary):
    """Tributary with one SSL listener (certificates from openssl, made once a
    run): TLS beside plaintext in one run (`--only tributary,tributary-tls`)."""

    name = "tributary-tls"
    certs = None

    @classmethod
    def client_env(cls):
        if cls.certs is None:
            cls.certs = Path(tempfile.mkdtemp(prefix="tributary-tls-certs-"))
            run = lambda *a: subprocess.run(["openssl", *a], cwd=cls.certs, check=True, capture_output=True)  # noqa: E731
            run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=bench-ca")
            (cls.certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
            run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj",
                "/CN=127.0.0.1")
            run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "broker.pem", "-days", "2", "-extfile", "san.cnf")
        return {"TRIBUTARY_BENCH_KAFKA_OPTIONS": f"security.protocol=SSL;ssl.ca.location={cls.certs / 'ca.pem'}"}

    def command(self):
        self.client_env()
        config = self.workdir / "bench.toml"
        config.write_text(f'[broker]\nlisteners = ["SSL://{self.address}"]\n'
                          f'[storage]\ndurability = "{self.durability}"\n'
                          f'[security]\ntls_cert_file = "{self.certs / "broker.pem"}"\n'
                          f'tls_key_file = "{self.certs / "broker.key"}"\n')
        return [str(TRIBUTARY), "start", "--data-dir", str(self.workdir / "data"), "--metrics-listen", "",
                "--config", str(config)]


class Tansu(Broker):
    name = "tansu"

    def command(self):
        url = f"tcp://{self.address}"
        return [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage]

    # Relative to the working directory, which is the broker's own directory.
    storage = "sqlite://tansu.db"


class TansuMemory(Tansu):
    """Tansu's in-memory engine: nothing reaches the disk, an upper bound for Tansu."""

    name = "tansu-memory"
    storage = "memory://tansu/"


class Nats(Broker):
    name = "nats"
    kind = "nats"

    def command(self):
        return [str(NATS), "-js", "-sd", str(self.workdir / "jetstream"), "-a", "127.0.0.1", "-p", str(self.port)]

    @property
    def address(self):
        return f"nats://127.0.0.1:{self.port}"


BROKERS = {b.name: b for b in (Tributary, TributaryInterval, TributaryBaseline, TributaryTls, Tansu, TansuMemory,
                                Nats)}


# librdkafka settings of the broker under test (`TributaryTls.client_env`).
CLIENT_ENV = {}


def client(*args):
    """Runs one workload in the bench client; returns its JSON, or {"error": ...}."""
    cmd = [str(CLIENT), *map(str, args)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKLOAD_LIMIT_S,
                             env={**os.environ, **CLIENT_ENV})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKLOAD_LIMIT_S}s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip() or f"exit {out.returncode}")[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def kafka_workloads(broker_cls, workdir, args):
    """Every workload for one Kafka-compatible broker, each on a fresh process."""
    results, rss = {}, []
    common = ["--size", args.size, "--linger-ms", args.linger_ms]
    CLIENT_ENV.clear()
    CLIENT_ENV.update(broker_cls.client_env() if hasattr(broker_cls, "client_env") else {})

    def fresh(topic, partitions):
        b = broker_cls(workdir).start()
        made = client("kafka-create-topic", "--bootstrap", b.address, "--topic", topic, "--partitions", partitions)
        return b, made

    def run(name, fn):
        print(f"  {broker_cls.name}: {name} ...", flush=True)
        t = time.monotonic()
        fn()
        print(f"  {broker_cls.name}: {name} done in {time.monotonic() - t:.0f}s: "
              f"{json.dumps({k: results.get(k) for k in results if k.startswith(name.split()[0])})[:300]}",
              flush=True)

    def produce_consume():
        b, made = fresh("bench", PARTITIONS)
        if "error" in made:
            results["produce_none"] = results["consume"] = made
        else:
            results["produce_none"] = client("kafka-produce", "--bootstrap", b.address, "--topic", "bench",
                                             "--records", args.records, "--compression", "none", *common)
            if "error" not in results["produce_none"]:
                results["consume"] = client("kafka-consume", "--bootstrap", b.address, "--topic", "bench",
                                            "--partitions", PARTITIONS, "--records", args.records)
        rss.append(b.stop())

    def produce_lz4():
        b, made = fresh("bench", PARTITIONS)
        results["produce_lz4"] = made if "error" in made else client(
            "kafka-produce", "--bootstrap", b.address, "--topic", "bench", "--records", args.records,
            "--compression", "lz4", *common)
        rss.append(b.stop())

    def transactional():
        b, made = fresh("txn", PARTITIONS)
        if "error" in made:
            results["produce_txn"] = results["consume_txn"] = made
        else:
            results["produce_txn"] = client("kafka-produce", "--bootstrap", b.address, "--topic", "txn",
                                            "--records", args.records, "--compression", "none",
                                            "--transactional-id", "bench-txn", "--commit-ms", 100, *common)
            if "error" not in results["produce_txn"]:
                results["consume_txn"] = client("kafka-consume", "--bootstrap", b.address, "--topic", "txn",
                                                "--partitions", PARTITIONS, "--records", args.records)
        rss.append(b.stop())

    def latency():
        b, made = fresh("latency", PARTITIONS)
        results["latency"] = made if "error" in made else client(
            "kafka-latency", "--bootstrap", b.address, "--topic", "latency", "--partitions", PARTITIONS,
            "--rate-mb", args.rate_mb, "--seconds", args.latency_seconds, *common)
        rss.append(b.stop())

    def many():
        b, made = fresh("many", args.producers)
        results["produce_many"] = made if "error" in made else client(
            "kafka-produce-many", "--bootstrap", b.address, "--topic", "many", "--producers", args.producers,
            "--records", args.records, *common)
        rss.append(b.stop())

    run("produce_none + consume", produce_consume)
    run("produce_lz4", produce_lz4)
    run("latency", latency)
    run("produce_many", many)
    run("produce_txn + consume_txn", transactional)
    return summarise_rss(results, rss, ["produce_none + consume", "produce_lz4", "latency", "produce_many",
                                        "produce_txn + consume_txn"])


def nats_workloads(workdir, args):
    results, rss = {}, []
    common = ["--size", args.size, "--window", args.nats_window]

    def fresh():
        b = Nats(workdir).start()
        made = client("nats-reset-stream", "--url", b.address)
        return b, made

    print("  nats: produce + consume ...", flush=True)
    b, made = fresh()
    results["produce_none"] = made if "error" in made else client(
        "nats-produce", "--url", b.address, "--records", args.records, *common)
    if "error" not in results["produce_none"]:
        results["consume"] = client("nats-consume", "--url", b.address, "--records", args.records, "--size",
                                    args.size)
    rss.append(b.stop())
    results["produce_lz4"] = {"error": "not applicable: JetStream 2.9 has no client-side batch compression"}
    results["produce_txn"] = results["consume_txn"] = {"error": "not applicable: JetStream has no Kafka transactions"}
    print("  nats: latency ...", flush=True)
    b, made = fresh()
    results["latency"] = made if "error" in made else client(
        "nats-latency", "--url", b.address, "--rate-mb", args.rate_mb, "--seconds", args.latency_seconds, *common)
    rss.append(b.stop())
    print("  nats: produce_many ...", flush=True)
    b, made = fresh()
    results["produce_many"] = made if "error" in made else client(
        "nats-produce-many", "--url", b.address, "--producers", args.producers, "--records", args.records,
        "--size", args.size, "--window", args.nats_many_window)
    rss.append(b.stop())
    return summarise_rss(results, rss, ["produce_none + consume", "latency", "produce_many"])


def summarise_rss(results, rss, names):
    results["rss_by_workload"] = {n: {"peak_rss_mib": r[0], "peak_anon_rss_mib": r[1]} for n, r in zip(names, rss)}
    results["peak_rss_mib"] = max((r[0] for r in rss if r[0] is not None), default=None)
    results["peak_anon_rss_mib"] = max((r[1] for r in rss if r[1] is not None), default=None)
    return results


def cluster_workloads(workdir, args):
    """Three Tributary processes on 127.0.0.1-3, topics at replication factor 3."""
    sys.path.insert(0, str(ROOT / "tests" / "clients"))
    from cluster import Cluster  # the test suite's real-process cluster

    results = {}
    common = ["--size", args.size, "--linger-ms", args.linger_ms]
    for name, topic in (("produce_none", "bench"), ("latency", "latency")):
        tmp = Path(tempfile.mkdtemp(dir=workdir, prefix="cluster-"))
        c = Cluster(tmp)
        try:
            c.start()
            made = client("kafka-create-topic", "--bootstrap", c.bootstrap, "--topic", topic, "--partitions",
                          PARTITIONS, "--replication", 3)
            print(f"  tributary-cluster: {name} ...", flush=True)
            if "error" in made:
                results[name] = made
            elif name == "produce_none":
                results[name] = client("kafka-produce", "--bootstrap", c.bootstrap, "--topic", topic, "--records",
                                       args.records, "--compression", "none", *common)
                if "error" not in results[name]:
                    results["consume"] = client("kafka-consume", "--bootstrap", c.bootstrap, "--topic", topic,
                                                "--partitions", PARTITIONS, "--records", args.records)
            else:
                results[name] = client("kafka-latency", "--bootstrap", c.bootstrap, "--topic", topic,
                                       "--partitions", PARTITIONS, "--rate-mb", args.rate_mb, "--seconds",
                                       args.latency_seconds, *common)
            rss = [peak_rss_mib(b.proc.pid) for b in c.brokers if b.proc is not None]
            results.setdefault("peak_rss_mib_each", []).append(rss)
        finally:
            c.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    results["peak_rss_mib"] = max((r for run in results.pop("peak_rss_mib_each") for r in run if r), default=None)
    return results


def versions():
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    lock = (ROOT / "bench" / "client" / "Cargo.lock")
    rdkafka = None
    if lock.exists():
        text = lock.read_text()
        i = text.find('name = "rdkafka-sys"')
        rdkafka = text[i:].splitlines()[1].split('"')[1] if i >= 0 else None
    return {
        "tributary": out(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "tansu": out([str(TANSU), "--version"]),
        "nats": out([str(NATS), "--version"]),
        "rdkafka_sys (librdkafka)": rdkafka,
        "cores": os.cpu_count(),
    }


# -- report -----------------------------------------------------------------------------------

ROWS = [
    ("produce 1 KiB, none (MB/s)", "produce_none", "mb_s", "higher"),
    ("produce 1 KiB, lz4 (MB/s)", "produce_lz4", "mb_s", "higher"),
    ("consume (MB/s)", "consume", "mb_s", "higher"),
    ("100 producers x 100 partitions (MB/s)", "produce_many", "mb_s", "higher"),
    ("produce 1 KiB in transactions, a commit every 100 ms (MB/s)", "produce_txn", "mb_s", "higher"),
    ("consume them read_committed (MB/s)", "consume_txn", "mb_s", "higher"),
    ("e2e latency p50 at 20 MB/s (ms)", "latency", "e2e_latency.p50_ms", "lower"),
    ("e2e latency p99 at 20 MB/s (ms)", "latency", "e2e_latency.p99_ms", "lower"),
    ("e2e latency p99.9 at 20 MB/s (ms)", "latency", "e2e_latency.p999_ms", "lower"),
    ("produce ack latency p99 at 20 MB/s (ms)", "latency", "ack_latency.p99_ms", "lower"),
    ("peak RSS (MiB)", "peak_rss_mib", "", "lower"),
    ("peak anonymous RSS (MiB)", "peak_anon_rss_mib", "", "lower"),
]


# Durability-matched pairs: Tansu's SQLite engine and JetStream do not fsync each write either.
RATIOS = [("tributary", "tansu"), ("tributary-interval", "tansu"), ("tributary", "tansu-memory"),
          ("tributary-interval", "nats"), ("tributary", "tributary-baseline"), ("tributary-tls", "tributary")]


def pick(results, workload, path):
    value = results.get(workload)
    for part in filter(None, path.split(".")):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if isinstance(value, (int, float)) else None


def fmt(v):
    return "n/a" if v is None else (f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}")


def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.3g}x"


def report(data):
    brokers = list(data["brokers"])
    lines = [f"# Tributary and its peers ({data['date']})", "",
             f"Same client binary for all (librdkafka {data['versions'].get('rdkafka_sys (librdkafka)')} "
             f"for Kafka brokers, async-nats for NATS); {data['args']['records']:,} x {data['args']['size']} B "
             f"records, acks=-1, linger {data['args']['linger_ms']} ms, {PARTITIONS} partitions; "
             f"{data['versions']['cores']} cores shared by client and brokers.", "",
             "| figure | " + " | ".join(brokers) + " | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |",
             "|---|" + "---|" * (len(brokers) + len(RATIOS))]
    for label, workload, path, better in ROWS:
        vals = {b: pick(data["brokers"][b], workload, path) for b in brokers}
        lines.append(f"| {label} ({better} is better) | " + " | ".join(fmt(vals[b]) for b in brokers) + " | "
                     + " | ".join(ratio(vals.get(x), vals.get(y)) for x, y in RATIOS) + " |")
    lines += ["", "References measured in the same run:", ""]
    for k, v in data["reference"].items():
        lines.append(f"- {k}: {json.dumps(v) if isinstance(v, dict) else fmt(v)}")
    errors = [(b, w, r["error"]) for b in brokers for w, r in data["brokers"][b].items()
              if isinstance(r, dict) and "error" in r]
    if errors:
        lines += ["", "Not measured:", ""] + [f"- {b} {w}: {e}" for b, w, e in errors]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()), ""]
    return "\n".join(lines)


def plot(data, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (bench/setup.sh installs it); no plot", file=sys.stderr)
        return
    brokers = list(data["brokers"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    groups = [("produce none", "produce_none", "mb_s"), ("produce lz4", "produce_lz4", "mb_s"),
              ("consume", "consume", "mb_s"), ("100 producers", "produce_many", "mb_s")]
    width = 0.8 / len(brokers)
    for i, b in enumerate(brokers):
        vals = [pick(data["brokers"][b], w, p) or 0 for _, w, p in groups]
        bars = left.bar([g + i * width for g in range(len(groups))], vals, width, label=b)
        left.bar_label(bars, fmt="%.0f", fontsize=6)
    left.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [g[0] for g in groups])
    left.set_ylabel("MB/s (1 KiB records)")
    left.set_title("Throughput (higher is better)")
    left.legend()
    pcts = [("p50", "e2e_latency.p50_ms"), ("p99", "e2e_latency.p99_ms"), ("p99.9", "e2e_latency.p999_ms")]
    for i, b in enumerate(brokers):
        vals = [pick(data["brokers"][b], "latency", p) or 0 for _, p in pcts]
        bars = right.bar([g + i * width for g in range(len(pcts))], vals, width, label=b)
        right.bar_label(bars, fmt="%.0f", fontsize=6)
    right.set_xticks([g + 0.4 - width / 2 for g in range(len(pcts))], [p[0] for p in pcts])
    right.set_yscale("log")
    right.set_ylabel("ms, log scale")
    right.set_title(f"End-to-end latency at {data['args']['rate_mb']} MB/s (lower is better)")
    right.legend()
    fig.suptitle(f"Tributary and peers, {data['date']}, {data['versions']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--rate-mb", type=int, default=20)
    ap.add_argument("--latency-seconds", type=int, default=20)
    ap.add_argument("--producers", type=int, default=100)
    ap.add_argument("--nats-window", type=int, default=1024, help="JetStream acks outstanding per publisher")
    ap.add_argument("--nats-many-window", type=int, default=256,
                    help="acks outstanding per publisher with 100 publishers")
    ap.add_argument("--only", default=",".join(b for b in BROKERS if b != "tributary-baseline"),
                    help="comma-separated brokers to run")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--workdir", help="where data directories go (default: a temp dir under /tmp)")
    ap.add_argument("--out", default=str(RESULTS / "peers"))
    ap.add_argument("--report-only", metavar="JSON", help="write the table and plot from an earlier run's JSON")
    args = ap.parse_args()
    if args.report_only:
        data = json.loads(Path(args.report_only).read_text())
        out = Path(args.out)
        out.with_suffix(".md").write_text(report(data))
        plot(data, out.with_suffix(".png"))
        print(report(data))
        return

    for what, path in (("bench client", CLIENT), ("tributary", TRIBUTARY)):
        if not path.exists():
            raise SystemExit(f"{what} not found at {path}; run bench/setup.sh")
    workdir = Path(tempfile.mkdtemp(prefix="tributary-peers-", dir=args.workdir))
    data = {"date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args), "versions": versions(),
            "reference": {}, "brokers": {}}
    try:
        print("references ...", flush=True)
        data["reference"].update(client("loopback"))
        data["reference"].update(client("disk", "--dir", workdir / "disk"))
        for name in args.only.split(","):
            if name not in BROKERS:
                raise SystemExit(f"unknown broker {name!r}; known: {', '.join(BROKERS)}")
            if name.startswith("tansu") and not TANSU.exists():
                data["brokers"][name] = {"produce_none": {"error": f"tansu not found at {TANSU}"}}
                continue
            print(f"{name} ...", flush=True)
            if name == "nats":
                data["brokers"][name] = nats_workloads(workdir, args)
            else:
                data["brokers"][name] = kafka_workloads(BROKERS[name], workdir, args)
        if not args.skip_cluster:
            print("tributary-cluster ...", flush=True)
            data["brokers"]["tributary-cluster"] = cluster_workloads(workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    text = report(data)
    out.with_suffix(".md").write_text(text)
    plot(data, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
