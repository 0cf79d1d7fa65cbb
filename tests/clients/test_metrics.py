"""Prometheus metrics and /health over HTTP, after real client traffic."""

import http.client
import re
import socket
import time
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
    # Not GET: 405 with what is allowed; the endpoint keeps serving.
    with socket.create_connection(("127.0.0.1", broker.metrics_port), timeout=10) as s:
        s.sendall(b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 405") and b"allow: get\r\n" in head.lower()
    assert scrape(broker, "/health")[0] == 200


def status_of(port, data):
    """Sends raw bytes; the status line answered, or b"" if the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(4096).split(b"\r\n")[0]


def test_http_limits_head_size_slow_clients_connections_and_keep_alive(broker):
    port = broker.metrics_port
    # Heads over 8 KiB: 431, whether a long header or a request line that never ends.
    assert status_of(port, b"GET /health HTTP/1.1\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n") == \
        b"HTTP/1.1 431 Request Header Fields Too Large"
    assert status_of(port, b"GET /" + b"a" * 20_000) == b"HTTP/1.1 431 Request Header Fields Too Large"

    # Keep-alive: two requests on one connection.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for path in ("/health", "/metrics"):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    conn.request("HEAD", "/health")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"", "HEAD: the GET route's head, no body"
    conn.close()

    # A client that starts a request and stalls is cut off after 5 s.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        started = time.monotonic()
        assert s.recv(4096) == b""
        assert 4 < time.monotonic() - started < 10

    # 64 connections at once; the next is answered 503 and closed; once they go, it serves again.
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
    try:
        time.sleep(0.5)  # all accepted
        assert status_of(port, b"") == b"HTTP/1.1 503 Service Unavailable"
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while status_of(port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n") != b"HTTP/1.1 200 OK":
        assert time.monotonic() < deadline, "slots not given back"
        time.sleep(0.1)


def test_the_http_server_stops_with_the_broker(broker):
    """An idle kept-alive connection does not hold up a graceful shutdown."""
    with socket.create_connection(("127.0.0.1", broker.metrics_port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert broker.stop() == 0
        assert time.monotonic() - started < 4, "waited for the idle connection"
        assert s.recv(4096) == b"", "the server closed it"
