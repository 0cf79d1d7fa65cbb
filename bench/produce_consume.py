#!/usr/bin/env python3
"""Produce/consume benchmark with librdkafka (confluent-kafka) against a real broker.

Starts `target/release/tributary` on a free 127.0.0.1 port with a fresh data
dir (or uses --bootstrap), produces N records of SIZE bytes with acks=-1 and
linger 5 ms, consumes them back, and prints produce MB/s, consume MB/s,
p50/p99/p99.9 produce latency (librdkafka's per-message latency: produce()
call to acknowledgement) and the broker's peak RSS.

This is a benchmark, not a test: it asserts nothing about speed.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(data_dir, extra_args):
    port = free_port()
    binary = os.environ.get("TRIBUTARY_BIN", str(ROOT / "target" / "release" / "tributary"))
    proc = subprocess.Popen([binary, "start", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                             "--metrics-listen", "", *extra_args],
                            stdout=subprocess.DEVNULL, stderr=open(Path(data_dir).parent / "broker.log", "wb"))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("broker did not start")


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def produce(bootstrap, topic, count, size, compression):
    payload = os.urandom(size // 2).hex().encode()[:size]
    latencies = []

    def on_delivery(err, msg):
        if err is not None:
            raise SystemExit(f"delivery failed: {err}")
        latencies.append(msg.latency())

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "batch.size": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                         "queue.buffering.max.messages": 1_000_000, "compression.type": compression})
    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, value=payload, key=str(i % 1024).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.005)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(300)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "produce_mb_s": count * size / elapsed / 1e6,
        "produce_records_s": count / elapsed,
        "latency_ms_p50": percentile(latencies, 0.50) * 1000,
        "latency_ms_p99": percentile(latencies, 0.99) * 1000,
        "latency_ms_p999": percentile(latencies, 0.999) * 1000,
    }


def consume(bootstrap, topic, partitions, count, size):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False,
                         "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760,
                         "queued.max.messages.kbytes": 1_048_576})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    started = time.perf_counter()
    deadline = started + 300
    while got < count and time.perf_counter() < deadline:
        got += sum(1 for m in consumer.consume(num_messages=10_000, timeout=1.0) if not m.error())
    elapsed = time.perf_counter() - started
    consumer.close()
    return {"consume_mb_s": got * size / elapsed / 1e6, "consumed": got}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--bootstrap", help="use a running broker instead of starting one")
    ap.add_argument("--durability", choices=["fsync", "interval"], default="fsync")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    proc = None
    workdir = tempfile.mkdtemp(prefix="tributary-bench-")
    bootstrap = args.bootstrap
    if bootstrap is None:
        config = Path(workdir) / "bench.toml"
        config.write_text(f'[storage]\ndurability = "{args.durability}"\n')
        proc, bootstrap = start_broker(str(Path(workdir) / "data"), ["--config", str(config)])
    try:
        topic = f"bench-{int(time.time())}"
        admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
        admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(30)
        result = {"records": args.records, "size": args.size, "partitions": args.partitions,
                  "compression": args.compression, "durability": args.durability}
        result.update(produce(bootstrap, topic, args.records, args.size, args.compression))
        result.update(consume(bootstrap, topic, args.partitions, args.records, args.size))
        if proc is not None:
            result["broker_peak_rss_mib"] = peak_rss_mib(proc.pid)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v:.1f}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
