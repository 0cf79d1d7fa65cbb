"""Prometheus metrics and /health over HTTP, after real client traffic."""

import re
import socket
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import consume_partitions, create_topic


def scrape(broker, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}{path}", timeout=10) as r:
        return r.status, r.read().decode()


def value(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.M)
    assert found, f"{name}{{{want}}} not in metrics"
    return float(found.group(1))


def test_metrics_count_traffic_latency_and_group_lag(broker):
    create_topic(broker.bootstrap, "metered", 1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce("metered", value=b"v" * 100)
    assert p.flush(10) == 0
    assert len(consume_partitions(broker.bootstrap, "metered", [0], 10)[0]) == 10
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "lagging"})
    c.commit(offsets=[TopicPartition("metered", 0, 4)], asynchronous=False)
    c.close()

    status, text = scrape(broker)
    assert status == 200
    assert value(text, "tributary_records_in_total", topic="metered") == 10
    assert value(text, "tributary_bytes_in_total", topic="metered") > 1000
    assert value(text, "tributary_records_out_total", topic="metered") >= 10
    assert value(text, "tributary_request_seconds_count", api="Produce") >= 1
    assert value(text, "tributary_request_seconds_count", api="Fetch") >= 1
    assert value(text, "tributary_consumer_group_lag", group="lagging", topic="metered", partition="0") == 6
    assert value(text, "tributary_partitions") == 1
    assert text.rstrip().endswith("# EOF")

    assert scrape(broker, "/health") == (200, '{"status":"ok"}\n')
    try:
        scrape(broker, "/nope")
        raise AssertionError("unknown path answered")
    except urllib.error.HTTPError as e:
        assert e.code == 404
    # Not GET, or an oversized head: refused, and the endpoint keeps serving.
    with socket.create_connection(("127.0.0.1", broker.metrics_port), timeout=10) as s:
        s.sendall(b"POST /metrics HTTP/1.1\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", broker.metrics_port), timeout=10) as s:
        s.sendall(b"GET /" + b"a" * 20_000)
        assert s.recv(64).startswith(b"HTTP/1.1 400")
    assert scrape(broker, "/health")[0] == 200
