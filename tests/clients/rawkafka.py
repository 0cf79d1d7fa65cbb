"""Hand-built Kafka frames for bad-input tests. Deliberately minimal: only the
few request shapes the tests send, so malformed variants are easy to make."""

import socket
import struct

from kafka.record.default_records import DefaultRecordBatchBuilder


def string(s):
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def request(api_key, version, correlation_id, body, client_id="raw-test"):
    """A length-prefixed request with a v1 (non-flexible) header."""
    payload = struct.pack(">hhi", api_key, version, correlation_id) + string(client_id) + body
    return struct.pack(">i", len(payload)) + payload


def record_batch(values, timestamp=1_000):
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, v in enumerate(values):
        builder.append(i, timestamp=timestamp + i, key=None, value=v, headers=[])
    return bytes(builder.build())


def produce_v3(correlation_id, topic, partition, records, acks=-1, version=3):
    """Produce v3 to v8 share this request shape."""
    body = string(None) + struct.pack(">hi", acks, 10_000)
    body += struct.pack(">i", 1) + string(topic)
    body += struct.pack(">i", 1) + struct.pack(">i", partition) + struct.pack(">i", len(records)) + records
    return request(0, version, correlation_id, body)


def parse_produce_v5(resp):
    """(error_code, base_offset, log_start_offset) for a one-partition Produce v5 response."""
    at = 4 + 4  # correlation id, topic count
    (name_len,) = struct.unpack_from(">h", resp, at)
    at += 2 + name_len + 4  # name, partition count
    _, error_code, base_offset, _append_time, log_start = struct.unpack_from(">ihqqq", resp, at)
    return error_code, base_offset, log_start


def fetch_v5(correlation_id, topic, partitions, max_wait_ms=0, min_bytes=1, max_bytes=50 << 20):
    """Fetch v5 of one topic; `partitions` is [(partition, fetch_offset, partition_max_bytes)], in request order."""
    body = struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, 0)
    body += struct.pack(">i", 1) + string(topic) + struct.pack(">i", len(partitions))
    for partition, offset, partition_max in partitions:
        body += struct.pack(">iqqi", partition, offset, -1, partition_max)  # -1: the follower's log start (v5+)
    return request(1, 5, correlation_id, body)


def parse_fetch_v5(resp):
    """[(partition, error_code, high_watermark, log_start_offset, records bytes)] in response order."""
    at = 4 + 4  # correlation id, throttle time
    (topics,) = struct.unpack_from(">i", resp, at)
    at += 4
    out = []
    for _ in range(topics):
        (name_len,) = struct.unpack_from(">h", resp, at)
        at += 2 + name_len
        (count,) = struct.unpack_from(">i", resp, at)
        at += 4
        for _ in range(count):
            partition, error, hw, _lso, log_start, aborted = struct.unpack_from(">ihqqqi", resp, at)
            at += 4 + 2 + 8 + 8 + 8 + 4 + max(aborted, 0) * 16
            (size,) = struct.unpack_from(">i", resp, at)
            at += 4
            records = resp[at:at + max(size, 0)]
            at += max(size, 0)
            out.append((partition, error, hw, log_start, records))
    return out


def batches(records):
    """[(base_offset, record_count, length)] of the v2 batches in a records field."""
    out = []
    at = 0
    while at + 61 <= len(records):
        base, length = struct.unpack_from(">qi", records, at)
        (count,) = struct.unpack_from(">i", records, at + 57)
        out.append((base, count, 12 + length))
        at += 12 + length
    return out


def api_versions(correlation_id, version=0):
    return request(18, version, correlation_id, b"")


class Conn:
    def __init__(self, bootstrap, timeout=10):
        host, port = bootstrap.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)

    def send(self, data):
        self.sock.sendall(data)

    def recv_response(self):
        """Returns the response bytes after the length, or None if the broker closed the connection."""
        head = self._recv_exact(4)
        if head is None:
            return None
        (length,) = struct.unpack(">i", head)
        return self._recv_exact(length)

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, socket.timeout):
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def closed_by_peer(self):
        return self.recv_response() is None

    def close(self):
        self.sock.close()


def parse_produce_v3(resp):
    """(correlation_id, error_code, base_offset) for a one-partition response."""
    corr = struct.unpack_from(">i", resp, 0)[0]
    at = 4 + 4  # correlation id, topic count
    (name_len,) = struct.unpack_from(">h", resp, at)
    at += 2 + name_len + 4  # name, partition count
    _, error_code, base_offset = struct.unpack_from(">ihq", resp, at)
    return corr, error_code, base_offset
