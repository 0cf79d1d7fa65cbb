#!/usr/bin/env python3
"""How a 3-broker cluster behaves with many partitions (default 1,000 at
replication factor 3): startup, topic creation until every ISR is full, idle
CPU and RSS, produce throughput, failover after kill -9 of a broker, and its
catch-up after restart.

Runs the release binary (cargo build --release) on 127.0.0.1-3. Prints a table
and writes bench/results/cluster_scale.json.

    python3 bench/cluster_scale.py [--partitions 1000] [--records 200000]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "clients"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import NewTopic  # noqa: E402

from cluster import Cluster  # noqa: E402

TOPIC = "scale"


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def all_partitions(cluster, via=None):
    md = cluster.admin(via).list_topics(topic=TOPIC, timeout=30)
    return md.topics[TOPIC].partitions.values()


def wait(what, predicate, timeout_s, poll_s=0.25):
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:
            pass
        time.sleep(poll_s)
    raise SystemExit(f"{what}: not within {timeout_s}s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--durability", choices=["fsync", "interval"], default="fsync")
    args = ap.parse_args()
    n = args.partitions
    results = {"partitions": n, "replication_factor": 3}
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(Path(tmp), extra_config=f'[storage]\ndurability = "{args.durability}"\n')
        results["durability"] = args.durability
        try:
            t = time.monotonic()
            c.start()
            results["cluster_start_s"] = round(time.monotonic() - t, 2)

            t = time.monotonic()
            admin = c.admin()
            admin.create_topics([NewTopic(TOPIC, n, 3)], request_timeout=120)[TOPIC].result(timeout=180)
            results["create_acked_s"] = round(time.monotonic() - t, 2)
            full = lambda: all(len(p.isrs) == 3 and p.leader >= 0 for p in all_partitions(c))  # noqa: E731
            wait("all ISRs full", full, 300)
            results["create_until_isr_full_s"] = round(time.monotonic() - t, 2)

            pids = [b.proc.pid for b in c.brokers]
            time.sleep(5)
            cpu0 = [cpu_seconds(p) for p in pids]
            time.sleep(10)
            results["idle_cpu_percent_per_broker"] = [round((cpu_seconds(p) - c0) * 10, 1) for p, c0 in zip(pids, cpu0)]
            results["idle_rss_mib_per_broker"] = [round(rss_mib(p)) for p in pids]

            producer = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "linger.ms": 5,
                                 "queue.buffering.max.messages": 1_000_000})
            value = b"x" * 1024
            t = time.monotonic()
            for i in range(args.records):
                while True:
                    try:
                        producer.produce(TOPIC, key=str(i).encode(), value=value)
                        break
                    except BufferError:
                        producer.poll(0.01)
            assert producer.flush(300) == 0
            secs = time.monotonic() - t
            results["produce_acks_all_records_per_s"] = round(args.records / secs)
            results["produce_acks_all_mb_per_s"] = round(args.records * 1024 / secs / 1e6, 1)
            results["rss_mib_after_produce"] = [round(rss_mib(p)) for p in pids]

            victim = c.broker(2)
            led = sum(1 for p in all_partitions(c) if p.leader == 2)
            t = time.monotonic()
            victim.kill9()
            others = ",".join(b.bootstrap for b in c.brokers if b is not victim)
            moved = lambda: all(p.leader not in (2, -1) for p in all_partitions(c, others))  # noqa: E731
            wait("leaders moved off the killed broker", moved, 120)
            results["failover_partitions_moved"] = led
            results["failover_s"] = round(time.monotonic() - t, 2)

            t = time.monotonic()
            victim.start()
            wait("the restarted broker back in every ISR", full, 600)
            results["rejoin_until_isr_full_s"] = round(time.monotonic() - t, 2)
        finally:
            c.stop()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "cluster_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
