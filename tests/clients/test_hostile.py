"""Hostile and careless clients against a real broker process: each abuse
runs while a well-behaved librdkafka client keeps producing and consuming,
and what was stored before reads back unchanged."""

import socket
import struct
import threading
import time

from confluent_kafka import Producer

from helpers import consume_partitions, create_topic


def seed(broker, topic="victim", n=20):
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(n):
        producer.produce(topic, value=f"kept-{i}")
    assert producer.flush(10) == 0


def bystander_round_trip(broker, tag, timeout_s=10):
    """A new librdkafka producer gets 5 records acknowledged within `timeout_s`."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": timeout_s * 1000})
    errors = []
    started = time.monotonic()
    for i in range(5):
        producer.produce("victim", value=f"{tag}-{i}", on_delivery=lambda err, _msg: err and errors.append(err))
    left = producer.flush(timeout_s + 2)
    assert left == 0 and not errors, f"{tag}: {left} unacknowledged, errors {errors}"
    return time.monotonic() - started


def connect(broker):
    host, port = broker.bootstrap.split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_within(sock, seconds):
    """Whether the broker closes `sock` within `seconds` (reads return EOF or reset)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_declared_frames_that_never_or_slowly_arrive_do_not_stall_others(broker):
    """Finding 1: the reader took a frame's declared size from the broker-wide
    budget before its body came, so 101 connections declaring a legal 1 MiB
    and sending nothing, or one declaring 100 MB and sending a byte a second,
    blocked every other client for the idle timeout (600 s)."""
    seed(broker)
    silent = []
    for _ in range(101):
        sock = connect(broker)
        sock.sendall(struct.pack(">i", 1 << 20))
        silent.append(sock)
    trickler = connect(broker)
    trickler.sendall(struct.pack(">i", 104857600) + b"\x00")
    stop = threading.Event()

    def trickle():
        for _ in range(60):
            if stop.wait(1):
                return
            try:
                trickler.sendall(b"\x00")
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        took = bystander_round_trip(broker, "during")
        assert took < 8, f"a bystander waited {took:.1f} s"
        # The slow and the silent connections are cut off, not left to idle out.
        assert closed_within(trickler, 20), "the trickling connection was not closed"
        assert all(closed_within(sock, 10) for sock in silent), "a silent connection was not closed"
    finally:
        stop.set()
        thread.join(5)
        for sock in silent + [trickler]:
            sock.close()
    log = broker.log()
    assert "arrived too slowly" in log
    assert broker.alive()
    bystander_round_trip(broker, "after")
    values = [m.value().decode() for m in consume_partitions(broker.bootstrap, "victim", [0], 30)[0]]
    assert values == [f"kept-{i}" for i in range(20)] + [f"during-{i}" for i in range(5)] + [
        f"after-{i}" for i in range(5)
    ]
