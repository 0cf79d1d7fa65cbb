"""A consumer-group member as its own process, so tests can kill it for real.

Usage: group_worker.py <bootstrap> <group> <topic> [extra librdkafka config as key=value ...]
Prints one JSON object per line on stdout:
  {"assigned": [partitions]}             after every rebalance
  {"p": partition, "o": offset, "v": value}  for every record, printed only
                                         after its offset was committed (sync)
Runs until killed, or for at most 120 s.
"""

import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition

bootstrap, group, topic, *extra = sys.argv[1:]
conf = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100}
conf.update(kv.split("=", 1) for kv in extra)
consumer = Consumer(conf)
assigned = set()


def say(obj):
    print(json.dumps(obj), flush=True)


def on_assign(c, partitions):
    assigned.update(p.partition for p in partitions)
    say({"assigned": sorted(assigned)})


def on_revoke(c, partitions):
    assigned.difference_update(p.partition for p in partitions)
    say({"assigned": sorted(assigned)})


consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    batch = consumer.consume(num_messages=500, timeout=0.2)
    records = [m for m in batch if not m.error()]
    if not records:
        continue
    commits = {}
    for m in records:
        commits[m.partition()] = m.offset() + 1
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in commits.items()], asynchronous=False)
    for m in records:
        say({"p": m.partition(), "o": m.offset(), "v": m.value().decode()})
consumer.close()
