"""Kafka transactions with real clients over real sockets: librdkafka
(confluent-kafka) and kafkajs transactional producers, read_committed
consumers held at the last stable offset and skipping aborted records,
consume-transform-produce with offsets committed in the transaction, zombie
fencing, misuse answered with error codes, the transaction timeout, and
kill -9 of the broker and of a producer mid-transaction.

librdkafka's own default is isolation.level=read_committed; every consumer
here spells its isolation level out."""

import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from helpers import create_topic
from rawkafka import Conn, api_versions, request, string

JS = Path(__file__).resolve().parents[1] / "js"
READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"
# librdkafka reports both broker fencing codes as its own _FENCED.
FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
NO_REBALANCE_DELAY = "[groups]\ninitial_rebalance_delay_ms = 0\n"
# Kafka's transaction.max.timeout.ms, which the broker keeps.
MAX_TXN_TIMEOUT_MS = 900_000
# How soon after a transaction's timeout the broker must have aborted it (3 s timeout + margin).
ABORT_WITHIN_S = 20

# Kafka error codes the raw-request tests expect.
COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, CONCURRENT_TRANSACTIONS = 14, 15, 51
INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE, INVALID_PRODUCER_ID_MAPPING, PRODUCER_FENCED = 47, 48, 49, 90
INIT_PRODUCER_ID, ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, TXN_OFFSET_COMMIT = 22, 24, 25, 26, 28


# ---------------------------------------------------------------- helpers


def txn_producer(bootstrap, transactional_id, **extra):
    conf = {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "linger.ms": 5}
    conf.update({k.replace("_", "."): v for k, v in extra.items()})
    return Producer(conf)


def produce(producer, topic, values, partition=None):
    """Produces `values` (keyed, over the topic's partitions, unless `partition`), flushes,
    and returns what was delivered: [(partition, offset, key, value)]."""
    delivered, errors = [], []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset(), msg.key().decode(), msg.value().decode()))

    for i, value in enumerate(values):
        where = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=str(i % 30), value=value, on_delivery=on_delivery, **where)
    assert producer.flush(30) == 0, "every record delivered within 30 s"
    assert not errors, errors[:3]
    assert len(delivered) == len(values)
    return delivered


def by_partition(records, partitions):
    """{partition: [(offset, key, value)]} in offset order, from [(partition, offset, key, value)]."""
    out = {p: [] for p in partitions}
    for p, offset, key, value in sorted(records, key=lambda r: (r[0], r[1])):
        out[p].append((offset, key, value))
    return out


def reader_conf(bootstrap, isolation, **extra):
    conf = {"bootstrap.servers": bootstrap, "group.id": "txn-tests-unused", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": isolation, "fetch.wait.max.ms": 100}
    conf.update(extra)
    return conf


def end_offsets(bootstrap, topic, partitions, isolation):
    """ListOffsets(latest) at an isolation level: the high watermark for read_uncommitted,
    the last stable offset for read_committed (librdkafka sends its isolation.level)."""
    consumer = Consumer(reader_conf(bootstrap, isolation))
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in partitions}
    finally:
        consumer.close()


def read_to_end(bootstrap, topic, partitions, isolation, timeout_s=30):
    """Reads every partition from offset 0 until the reader's position is at the partition's
    current high watermark: past the last record and the last transaction marker, so
    no transaction on the partition is still open. Returns ([(partition, offset, key, value)]
    in the order read, reached) where `reached` says whether that happened within `timeout_s`."""
    reader = Consumer(reader_conf(bootstrap, isolation))
    probe = Consumer(reader_conf(bootstrap, READ_UNCOMMITTED))
    reader.assign([TopicPartition(topic, p, 0) for p in partitions])
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for m in reader.consume(num_messages=10_000, timeout=0.3):
                if m.error():
                    raise KafkaException(m.error())
                key = m.key().decode() if m.key() is not None else None
                records.append((m.partition(), m.offset(), key, m.value().decode()))
            ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
                    for p in partitions}
            positions = {tp.partition: tp.offset for tp in reader.position([TopicPartition(topic, p) for p in partitions])}
            if all(ends[p] == 0 or positions[p] >= ends[p] for p in partitions):
                return records, True
        return records, False
    finally:
        reader.close()
        probe.close()


def values_of(records):
    return [r[3] for r in records]


def committed_offsets(bootstrap, group, topic, partitions):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "isolation.level": READ_COMMITTED})
    try:
        return {tp.partition: tp.offset
                for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)}
    finally:
        consumer.close()


# A transactional producer in its own process, so it can die by kill -9 with
# its transaction open: no abort on close, no destructor, nothing sent after.
TXN_CHILD = r"""
import json, sys, time
from confluent_kafka import Producer
bootstrap, topic, txid, timeout_ms, committed, still_open = sys.argv[1:7]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txid,
              "transaction.timeout.ms": int(timeout_ms), "linger.ms": 5})
delivered = {"committed": [], "open": []}
errors = []
def on_delivery(kind):
    def report(err, msg):
        if err:
            errors.append(str(err))
        else:
            delivered[kind].append([msg.partition(), msg.offset(), msg.key().decode(), msg.value().decode()])
    return report
p.init_transactions(30)
if int(committed):
    p.begin_transaction()
    for i in range(int(committed)):
        p.produce(topic, key=str(i % 30), value=f"committed-{i}", on_delivery=on_delivery("committed"))
    p.flush(30)
    p.commit_transaction(30)
p.begin_transaction()
for i in range(int(still_open)):
    p.produce(topic, key=str(i % 30), value=f"open-{i}", on_delivery=on_delivery("open"))
left = p.flush(30)
print(json.dumps({"ready": left == 0 and not errors, "errors": errors, **delivered}), flush=True)
time.sleep(120)  # the transaction stays open, neither committed nor aborted, until this process is killed
"""


class TxnChild:
    def __init__(self, bootstrap, topic, transactional_id, timeout_ms, committed, still_open, log_path):
        self.log_path = log_path
        log = open(log_path, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TXN_CHILD, bootstrap, topic, transactional_id, str(timeout_ms),
             str(committed), str(still_open)],
            stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def ready(self, timeout=60):
        """The child's report once its open transaction's records are all delivered."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the producer process reported nothing within {timeout}s: {self.log_path.read_text()[-3000:]}")
        if line is None:
            pytest.fail(f"the producer process exited with {self.proc.wait(10)}: {self.log_path.read_text()[-3000:]}")
        report = json.loads(line)
        assert report["ready"], report
        return report

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def as_records(rows):
    return [tuple(r) for r in rows]


# ---------------------------------------------------------------- commit, abort, last stable offset


def test_committed_transaction_is_read_committed_in_partition_order(broker):
    topic, partitions, n = "txn-commit", range(3), 600
    create_topic(broker.bootstrap, topic, 3)
    producer = txn_producer(broker.bootstrap, "txn-commit-id")
    producer.init_transactions(30)
    producer.begin_transaction()
    delivered = produce(producer, topic, [f"v-{i}" for i in range(n)])
    expected = by_partition(delivered, partitions)
    assert all(expected[p] for p in partitions), "the keys spread the transaction over all three partitions"

    # Written, but not yet visible: the last stable offset is the open transaction's first offset.
    assert sum(end_offsets(broker.bootstrap, topic, partitions, READ_UNCOMMITTED).values()) == n
    assert end_offsets(broker.bootstrap, topic, partitions, READ_COMMITTED) == {p: 0 for p in partitions}

    producer.commit_transaction(30)
    records, reached = read_to_end(broker.bootstrap, topic, partitions, READ_COMMITTED)
    assert reached, "the read_committed consumer reaches the end after the commit"
    assert len(records) == n
    assert by_partition(records, partitions) == expected, "exactly the delivered records, at their offsets"
    for p in partitions:
        assert [r[1:] for r in records if r[0] == p] == expected[p], f"partition {p} is read in offset order"
    # Each partition ends with the transaction's commit marker, which takes one offset.
    hw = end_offsets(broker.bootstrap, topic, partitions, READ_UNCOMMITTED)
    assert hw == {p: len(expected[p]) + 1 for p in partitions}
    assert end_offsets(broker.bootstrap, topic, partitions, READ_COMMITTED) == hw, "nothing open: LSO = HW"


def test_aborted_transactions_are_in_the_log_but_not_read_committed(broker):
    topic, partitions = "txn-abort", range(3)
    create_topic(broker.bootstrap, topic, 3)
    producer = txn_producer(broker.bootstrap, "txn-abort-id")
    producer.init_transactions(30)
    transactions = []  # (delivered, committed?)
    for name, count, commit in [("aborted-first", 90, False), ("committed", 90, True), ("aborted-last", 60, False)]:
        producer.begin_transaction()
        # Flushed before the abort, so the aborted records really are in the log.
        delivered = produce(producer, topic, [f"{name}-{i}" for i in range(count)])
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
        transactions.append((delivered, commit))

    committed = [r for delivered, commit in transactions if commit for r in delivered]
    everything = [r for delivered, _ in transactions for r in delivered]
    # The log ends with an aborted transaction: the reader must step over its records and markers.
    records, reached = read_to_end(broker.bootstrap, topic, partitions, READ_COMMITTED, timeout_s=30)
    assert reached, "the read_committed consumer's position passes the abort markers to the high watermark"
    assert not [v for v in values_of(records) if v.startswith("aborted")], "no aborted record is read_committed"
    assert by_partition(records, partitions) == by_partition(committed, partitions)

    uncommitted, reached = read_to_end(broker.bootstrap, topic, partitions, READ_UNCOMMITTED)
    assert reached
    assert by_partition(uncommitted, partitions) == by_partition(everything, partitions), \
        "read_uncommitted sees the aborted records too: they are in the log"
    # One marker per partition per transaction that wrote to it.
    markers = {p: sum(1 for delivered, _ in transactions if any(r[0] == p for r in delivered)) for p in partitions}
    hw = end_offsets(broker.bootstrap, topic, partitions, READ_UNCOMMITTED)
    assert hw == {p: len(by_partition(everything, partitions)[p]) + markers[p] for p in partitions}


def test_open_transaction_holds_read_committed_at_its_first_record(broker):
    topic = "txn-lso"
    create_topic(broker.bootstrap, topic, 1)
    plain = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 2})
    before = produce(plain, topic, [f"before-{i}" for i in range(5)], partition=0)
    txn = txn_producer(broker.bootstrap, "txn-lso-id")
    txn.init_transactions(30)
    txn.begin_transaction()
    first_open = produce(txn, topic, ["open-0"], partition=0)
    after = produce(plain, topic, [f"after-{i}" for i in range(20)], partition=0)
    last_open = produce(txn, topic, ["open-1"], partition=0)
    lso = first_open[0][1]
    assert lso == 5
    assert end_offsets(broker.bootstrap, topic, [0], READ_UNCOMMITTED) == {0: 27}
    assert end_offsets(broker.bootstrap, topic, [0], READ_COMMITTED) == {0: lso}, \
        "ListOffsets read_committed answers the last stable offset"

    # read_committed gets what precedes the open transaction, then nothing: not the
    # idempotent producer's committed records either, while the transaction is open.
    reader = Consumer(reader_conf(broker.bootstrap, READ_COMMITTED))
    reader.assign([TopicPartition(topic, 0, 0)])
    seen = []
    try:
        deadline = time.monotonic() + 15
        while len(seen) < 5 and time.monotonic() < deadline:
            seen += reader.consume(100, timeout=0.3)
        window_end = time.monotonic() + 2  # watched for 2 s: nothing at or past the LSO arrives
        while time.monotonic() < window_end:
            seen += reader.consume(100, timeout=0.3)
        errors = [m.error() for m in seen if m.error()]
        assert not errors, errors
        assert [m.value().decode() for m in seen] == values_of(before)
        assert reader.position([TopicPartition(topic, 0)])[0].offset == lso
    finally:
        reader.close()
    uncommitted, reached = read_to_end(broker.bootstrap, topic, [0], READ_UNCOMMITTED)
    assert reached and len(uncommitted) == 27, "read_uncommitted is not held back"

    txn.commit_transaction(30)
    records, reached = read_to_end(broker.bootstrap, topic, [0], READ_COMMITTED)
    assert reached
    assert values_of(records) == values_of(before + first_open + after + last_open)
    assert [r[1] for r in records] == list(range(27)), "the commit marker comes after offset 26"


# ---------------------------------------------------------------- offsets in transactions


def test_consume_transform_produce_commits_output_and_offsets_together(broker_factory):
    broker = broker_factory(NO_REBALANCE_DELAY)
    source, sink, group, partitions, m = "ctp-in", "ctp-out", "ctp-group", range(3), 300
    create_topic(broker.bootstrap, source, 3)
    create_topic(broker.bootstrap, sink, 3)
    plain = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 2})
    produce(plain, source, [f"in-{i}" for i in range(m)])
    source_ends = end_offsets(broker.bootstrap, source, partitions, READ_UNCOMMITTED)
    assert sum(source_ends.values()) == m

    producer = txn_producer(broker.bootstrap, "ctp-txn")
    producer.init_transactions(30)

    def group_consumer():
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False,
                      "isolation.level": READ_COMMITTED, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100})
        c.subscribe([source])
        return c

    def process(consumer, batch, end):
        producer.begin_transaction()
        for msg in batch:
            assert not msg.error(), msg.error()
            producer.produce(sink, key=msg.key(), value=b"out-" + msg.value())
        assert producer.flush(30) == 0  # the output is in the log before the transaction ends
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                             consumer.consumer_group_metadata(), 30)
        (producer.commit_transaction if end == "commit" else producer.abort_transaction)(30)

    # A processed batch whose transaction is aborted: neither its output nor its offsets count.
    consumer = group_consumer()
    try:
        batch, deadline = [], time.monotonic() + 30
        while not batch and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=50, timeout=0.5)
        assert batch, "the group consumer got records within 30 s"
        process(consumer, batch, "abort")
    finally:
        consumer.close()
    assert committed_offsets(broker.bootstrap, group, source, partitions) == {p: OFFSET_INVALID for p in partitions}, \
        "an aborted transaction's offsets are not committed"

    # The real loop, from the group's committed offsets (none: earliest).
    consumer = group_consumer()
    processed, transactions = 0, 0
    try:
        deadline = time.monotonic() + 60
        while processed < m and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=50, timeout=0.5)
            if batch:
                process(consumer, batch, "commit")
                processed += len(batch)
                transactions += 1
    finally:
        consumer.close()
    assert processed == m, f"processed {processed} of {m} records"
    assert transactions > 1, "several transactions, each with its batch's offsets"

    out, reached = read_to_end(broker.bootstrap, sink, partitions, READ_COMMITTED)
    assert reached
    assert sorted(values_of(out)) == sorted(f"out-in-{i}" for i in range(m)), "each input exactly once in the output"
    deadline = time.monotonic() + 15
    committed = committed_offsets(broker.bootstrap, group, source, partitions)
    while committed != source_ends and time.monotonic() < deadline:
        time.sleep(0.2)
        committed = committed_offsets(broker.bootstrap, group, source, partitions)
    assert committed == source_ends, "the group's committed offsets are the input's end offsets"

    # An aborted transaction that would rewind the offsets leaves them where they are.
    idle = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        producer.begin_transaction()
        producer.send_offsets_to_transaction([TopicPartition(source, p, 1) for p in partitions],
                                             idle.consumer_group_metadata(), 30)
        producer.abort_transaction(30)
    finally:
        idle.close()
    assert committed_offsets(broker.bootstrap, group, source, partitions) == source_ends


# ---------------------------------------------------------------- fencing and misuse


def test_new_producer_with_the_same_transactional_id_fences_the_old_one(broker):
    topic = "txn-fence"
    create_topic(broker.bootstrap, topic, 1)
    zombie = txn_producer(broker.bootstrap, "fence-id")
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie_records = produce(zombie, topic, [f"zombie-{i}" for i in range(10)], partition=0)

    successor = txn_producer(broker.bootstrap, "fence-id")
    successor.init_transactions(30)  # bumps the epoch and aborts the zombie's open transaction

    with pytest.raises(KafkaException) as fenced:
        zombie.commit_transaction(15)
    err = fenced.value.args[0]
    assert err.fatal(), f"fencing is fatal for the old producer: {err}"
    assert err.code() in FENCED, err
    with pytest.raises(KafkaException):
        zombie.begin_transaction()  # and it stays unusable

    successor.begin_transaction()
    successor_records = produce(successor, topic, [f"successor-{i}" for i in range(10)], partition=0)
    successor.commit_transaction(30)

    records, reached = read_to_end(broker.bootstrap, topic, [0], READ_COMMITTED)
    assert reached
    assert values_of(records) == values_of(successor_records), "the zombie's records are never read_committed"
    uncommitted, _ = read_to_end(broker.bootstrap, topic, [0], READ_UNCOMMITTED)
    assert values_of(uncommitted) == values_of(zombie_records + successor_records)


def test_transaction_timeout_above_the_broker_maximum_is_refused(broker):
    too_long = txn_producer(broker.bootstrap, "too-long-id", transaction_timeout_ms=MAX_TXN_TIMEOUT_MS + 1)
    with pytest.raises(KafkaException) as refused:
        too_long.init_transactions(30)
    err = refused.value.args[0]
    assert err.code() == KafkaError.INVALID_TRANSACTION_TIMEOUT, err
    assert err.fatal(), err

    at_max = txn_producer(broker.bootstrap, "at-max-id", transaction_timeout_ms=MAX_TXN_TIMEOUT_MS)
    at_max.init_transactions(30)  # the maximum itself is allowed
    at_max.begin_transaction()
    at_max.abort_transaction(30)


def init_producer_id_v1(correlation_id, transactional_id, timeout_ms):
    return request(INIT_PRODUCER_ID, 1, correlation_id, string(transactional_id) + struct.pack(">i", timeout_ms))


def end_txn_v1(correlation_id, transactional_id, producer_id, epoch, commit):
    return request(END_TXN, 1, correlation_id, string(transactional_id) + struct.pack(">qh?", producer_id, epoch, commit))


def call(conn, frame, correlation_id):
    conn.send(frame)
    resp = conn.recv_response()
    assert resp is not None, "the broker answers instead of closing the connection"
    assert struct.unpack_from(">i", resp)[0] == correlation_id
    return resp


def raw_init(conn, transactional_id, correlation_id):
    """InitProducerId v1 with a transactional id, retried while the coordinator is busy: (producer_id, epoch)."""
    deadline = time.monotonic() + 15
    while True:
        resp = call(conn, init_producer_id_v1(correlation_id, transactional_id, 60_000), correlation_id)
        _throttle, error, producer_id, epoch = struct.unpack_from(">ihqh", resp, 4)
        if error in (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, CONCURRENT_TRANSACTIONS) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        assert error == 0, f"InitProducerId error {error}"
        return producer_id, epoch


def raw_end_txn(conn, transactional_id, producer_id, epoch, commit, correlation_id):
    resp = call(conn, end_txn_v1(correlation_id, transactional_id, producer_id, epoch, commit), correlation_id)
    return struct.unpack_from(">ih", resp, 4)[1]


def test_end_txn_without_a_transaction_gets_an_error_code_and_the_broker_keeps_serving(broker):
    create_topic(broker.bootstrap, "txn-raw", 1)
    conn = Conn(broker.bootstrap)
    resp = call(conn, api_versions(1), 1)
    (error,) = struct.unpack_from(">h", resp, 4)
    (count,) = struct.unpack_from(">i", resp, 6)
    advertised = {k: (lo, hi) for k, lo, hi in (struct.unpack_from(">hhh", resp, 10 + 6 * i) for i in range(count))}
    assert error == 0
    for api in (INIT_PRODUCER_ID, ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, TXN_OFFSET_COMMIT):
        assert api in advertised, f"ApiVersions advertises api key {api}"
    assert advertised[INIT_PRODUCER_ID][0] <= 1 <= advertised[INIT_PRODUCER_ID][1]
    assert advertised[END_TXN][0] <= 1 <= advertised[END_TXN][1]

    no_txn = {INVALID_TXN_STATE, INVALID_PRODUCER_ID_MAPPING}
    # A transactional id nobody initialised.
    for commit in (True, False):
        code = raw_end_txn(conn, "never-initialised", 4242, 0, commit, 2)
        assert code in no_txn, f"EndTxn(commit={commit}) for an unknown transactional id: error {code}"
    # An initialised transactional id with no transaction begun, with its own producer id and epoch...
    producer_id, epoch = raw_init(conn, "raw-txn", 3)
    assert producer_id >= 0 and epoch >= 0
    for commit in (True, False):
        code = raw_end_txn(conn, "raw-txn", producer_id, epoch, commit, 4)
        assert code in no_txn, f"EndTxn(commit={commit}) with no transaction: error {code}"
    # ...and with a producer id that is not the one mapped to it.
    code = raw_end_txn(conn, "raw-txn", producer_id + 1, epoch, True, 5)
    assert code in no_txn, f"EndTxn with another producer id: error {code}"
    assert broker.alive()

    # The broker keeps serving: a client producer takes the transactional id over and commits.
    producer = txn_producer(broker.bootstrap, "raw-txn")
    producer.init_transactions(30)
    producer.begin_transaction()
    delivered = produce(producer, "txn-raw", ["after-misuse"], partition=0)
    producer.commit_transaction(30)
    records, reached = read_to_end(broker.bootstrap, "txn-raw", [0], READ_COMMITTED)
    assert reached and values_of(records) == values_of(delivered)
    # The raw producer's epoch is now stale.
    code = raw_end_txn(conn, "raw-txn", producer_id, epoch, True, 6)
    assert code in {INVALID_PRODUCER_EPOCH, PRODUCER_FENCED, INVALID_PRODUCER_ID_MAPPING}, \
        f"EndTxn with a fenced epoch: error {code}"
    assert struct.unpack_from(">i", call(conn, api_versions(7), 7))[0] == 7
    conn.close()
    assert broker.alive()


# ---------------------------------------------------------------- timeouts and crashes


def test_abandoned_transaction_is_aborted_after_its_timeout(broker, tmp_path):
    topic, timeout_ms = "txn-abandoned", 3000
    create_topic(broker.bootstrap, topic, 1)
    child = TxnChild(broker.bootstrap, topic, "abandoned-id", timeout_ms, 0, 20, tmp_path / "child.log")
    try:
        report = child.ready()
    finally:
        child.kill9()  # gone without committing or aborting
    killed_at = time.monotonic()
    abandoned = as_records(report["open"])
    assert len(abandoned) == 20

    plain = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 2})
    after = produce(plain, topic, [f"after-{i}" for i in range(10)], partition=0)
    lso = end_offsets(broker.bootstrap, topic, [0], READ_COMMITTED)[0]
    # The transaction began after the child started, so it cannot have timed out before this:
    if time.monotonic() < child.started + timeout_ms / 1000:
        assert lso == 0, "the abandoned transaction still holds the last stable offset"

    # Kafka checks for expired transactions every 10 s (transaction.abort.timed.out.transaction.cleanup.interval.ms).
    records, reached = read_to_end(broker.bootstrap, topic, [0], READ_COMMITTED,
                                   timeout_s=ABORT_WITHIN_S - (time.monotonic() - killed_at))
    assert reached, f"the broker aborts the abandoned transaction within {ABORT_WITHIN_S} s of the kill"
    assert values_of(records) == values_of(after), "the records after it become visible; its own never do"
    uncommitted, _ = read_to_end(broker.bootstrap, topic, [0], READ_UNCOMMITTED)
    assert sorted(values_of(uncommitted)) == sorted(values_of(abandoned + after))

    # The transactional id is usable again.
    successor = txn_producer(broker.bootstrap, "abandoned-id")
    successor.init_transactions(30)
    successor.begin_transaction()
    later = produce(successor, topic, ["next-0"], partition=0)
    successor.commit_transaction(30)
    records, reached = read_to_end(broker.bootstrap, topic, [0], READ_COMMITTED)
    assert reached and values_of(records) == values_of(after + later)


def test_broker_kill_9_mid_transaction_keeps_the_committed_one_and_aborts_the_open_one(broker, tmp_path):
    topic, partitions, txid = "txn-crash", range(3), "crash-id"
    create_topic(broker.bootstrap, topic, 3)
    child = TxnChild(broker.bootstrap, topic, txid, 5000, 60, 30, tmp_path / "child.log")
    try:
        report = child.ready()
        broker.kill9()  # the second transaction is open, its records acknowledged
    finally:
        child.kill9()
    committed, still_open = as_records(report["committed"]), as_records(report["open"])
    assert len(committed) == 60 and len(still_open) == 30
    broker.start()

    records, reached = read_to_end(broker.bootstrap, topic, partitions, READ_COMMITTED, timeout_s=30)
    assert reached, "after the restart the open transaction is aborted (by its timeout) within 30 s"
    assert by_partition(records, partitions) == by_partition(committed, partitions), \
        "the committed transaction survives whole; the open one is never visible"
    uncommitted, _ = read_to_end(broker.bootstrap, topic, partitions, READ_UNCOMMITTED)
    assert by_partition(uncommitted, partitions) == by_partition(committed + still_open, partitions), \
        "acknowledged records survive kill -9, aborted or not"

    successor = txn_producer(broker.bootstrap, txid)
    successor.init_transactions(30)
    successor.begin_transaction()
    later = produce(successor, topic, [f"after-restart-{i}" for i in range(15)])
    successor.commit_transaction(30)
    records, reached = read_to_end(broker.bootstrap, topic, partitions, READ_COMMITTED)
    assert reached
    assert by_partition(records, partitions) == by_partition(committed + later, partitions)


# ---------------------------------------------------------------- kafkajs


@pytest.mark.skipif(not (JS / "node_modules" / "kafkajs").exists() or shutil.which("node") is None,
                    reason="scripts/test.sh installs kafkajs with npm ci")
def test_kafkajs_transactions_and_send_offsets(broker_factory):
    broker = broker_factory(NO_REBALANCE_DELAY)
    topic, offsets_topic, offsets_group = "js-txn", "js-txn-in", "js-txn-offsets"
    create_topic(broker.bootstrap, topic, 3)
    create_topic(broker.bootstrap, offsets_topic, 2)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for p in (0, 1):
        produce(plain, offsets_topic, [f"in-{p}-{i}" for i in range(30)], partition=p)

    run = subprocess.run(["node", str(JS / "transactions.mjs"), broker.bootstrap, topic, offsets_topic,
                          "js-txn-id", offsets_group, "js-txn-readers"],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1"))
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])

    expected = sorted([f"committed-{i}" for i in range(40)] + [f"late-{i}" for i in range(20)])
    assert sorted(v["value"] for v in seen["values"]) == expected, "kafkajs readUncommitted=false skips the aborted"
    for p in range(3):
        offsets = [v["offset"] for v in seen["values"] if v["partition"] == p]
        assert offsets == sorted(offsets), f"partition {p} read in order"
    js_committed = {int(x["partition"]): int(x["offset"]) for x in seen["committed"][0]["partitions"]}
    assert js_committed == {0: 10, 1: 20}, "sendOffsets commits with its transaction, not with the aborted one"

    # The same from librdkafka: its read_committed view, and the aborted records in the log.
    records, reached = read_to_end(broker.bootstrap, topic, range(3), READ_COMMITTED)
    assert reached and sorted(values_of(records)) == expected
    uncommitted, _ = read_to_end(broker.bootstrap, topic, range(3), READ_UNCOMMITTED)
    assert sorted(values_of(uncommitted)) == sorted(expected + [f"aborted-{i}" for i in range(30)])
    assert committed_offsets(broker.bootstrap, offsets_group, offsets_topic, (0, 1)) == {0: 10, 1: 20}


# ---------------------------------------------------------------- the CLI


def cli(broker, *args, check=True):
    from conftest import binary
    run = subprocess.run([str(binary()), "--brokers", broker.bootstrap, "--format", "json", *args],
                         capture_output=True, text=True, timeout=60)
    if check:
        assert run.returncode == 0, f"{args}: {run.stderr}"
    return run


def test_cli_lists_describes_and_aborts_a_hanging_transaction(broker):
    """`tributary transactions list|describe|producers|find-hanging|abort`: an open
    transaction is listed and described; its partition names where it
    started; aborting it there with a marker (as kafka-transactions.sh
    abort does for a transaction its coordinator lost) frees read_committed
    consumers, and its records are never visible."""
    topic = "txn-cli"
    create_topic(broker.bootstrap, topic, 1)
    before = produce(Producer({"bootstrap.servers": broker.bootstrap}), topic, ["plain-0", "plain-1"], partition=0)
    p = txn_producer(broker.bootstrap, "cli-txn", transaction_timeout_ms=300_000)
    p.init_transactions(30)
    p.begin_transaction()
    produce(p, topic, [f"open-{i}" for i in range(5)], partition=0)

    listed = json.loads(cli(broker, "transactions", "list").stdout)
    mine = [t for t in listed if t["transactional_id"] == "cli-txn"]
    assert len(mine) == 1 and mine[0]["state"] == "Ongoing", listed
    described = json.loads(cli(broker, "transactions", "describe", "cli-txn").stdout)
    assert described["state"] == "Ongoing" and described["partitions"] == [f"{topic}-0"], described
    producers = json.loads(cli(broker, "transactions", "producers", "--topic", topic, "--partition", "0").stdout)
    open_ones = [x for x in producers if x["current_txn_start_offset"] >= 0]
    assert len(open_ones) == 1 and open_ones[0]["current_txn_start_offset"] == len(before), producers
    assert end_offsets(broker.bootstrap, topic, [0], READ_COMMITTED)[0] == len(before), "held at the open transaction"
    hanging = json.loads(cli(broker, "transactions", "find-hanging", "--topic", topic).stdout)
    assert hanging == [], f"an open transaction its coordinator knows is not hanging: {hanging}"

    producer_id = str(open_ones[0]["producer_id"])
    cli(broker, "transactions", "abort", "--topic", topic, "--partition", "0", "--producer-id", producer_id)
    ends = end_offsets(broker.bootstrap, topic, [0], READ_COMMITTED)
    assert ends == end_offsets(broker.bootstrap, topic, [0], READ_UNCOMMITTED), "the stable offset caught up"
    records, reached = read_to_end(broker.bootstrap, topic, [0], READ_COMMITTED)
    assert reached and values_of(records) == ["plain-0", "plain-1"], records
    again = cli(broker, "transactions", "abort", "--topic", topic, "--partition", "0", "--producer-id", producer_id,
                check=False)
    assert again.returncode != 0 and "no open transaction" in again.stderr, again.stderr
    unknown = cli(broker, "transactions", "describe", "nobody", check=False)
    assert unknown.returncode != 0 and "nobody" in unknown.stderr, unknown.stderr


def test_clients_cannot_write_or_delete_the_transaction_state_topic(broker):
    """__transaction_state is written by the coordinators alone: a client's
    produce, topic deletion or DeleteRecords there is refused, and
    transactions go on working."""
    from confluent_kafka.admin import AdminClient
    p = txn_producer(broker.bootstrap, "guard")
    p.init_transactions(30)  # creates the state topic
    plain = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 5000, "retries": 0})
    failed = []
    plain.produce("__transaction_state", value=b"forged", on_delivery=lambda err, _m: failed.append(err))
    plain.flush(10)
    assert failed and failed[0] is not None and failed[0].code() == KafkaError.TOPIC_EXCEPTION, failed
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    with pytest.raises(KafkaException) as refused:
        admin.delete_topics(["__transaction_state"], operation_timeout=10)["__transaction_state"].result(timeout=15)
    assert refused.value.args[0].code() == KafkaError.TOPIC_EXCEPTION
    with pytest.raises(KafkaException):
        admin.delete_records([TopicPartition("__transaction_state", 0, -1)])[TopicPartition("__transaction_state", 0, -1)].result(timeout=15)
    create_topic(broker.bootstrap, "guarded", 1)
    p.begin_transaction()
    produce(p, "guarded", ["after"], partition=0)
    p.commit_transaction(30)
    records, reached = read_to_end(broker.bootstrap, "guarded", [0], READ_COMMITTED)
    assert reached and values_of(records) == ["after"]


def test_aiokafka_transactions_commit_abort_and_send_offsets(broker_factory):
    """aiokafka (asyncio, its own protocol code): a committed and an aborted
    transaction, the committed one with send_offsets_to_transaction; its
    read_committed consumer sees only the committed records, and the group's
    offsets are the committed transaction's."""
    import asyncio
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition as AioTP

    broker = broker_factory("[groups]\ninitial_rebalance_delay_ms = 0\n")
    topic, group = "txn-aiokafka", "aio-group"
    create_topic(broker.bootstrap, topic, 2)

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="aio-txn",
                                    enable_idempotence=True)
        await producer.start()
        try:
            async with producer.transaction():
                for i in range(20):
                    await producer.send(topic, value=f"kept-{i}".encode(), partition=i % 2)
                await producer.send_offsets_to_transaction({AioTP(topic, 0): 7, AioTP(topic, 1): 9}, group)
            await producer.begin_transaction()
            for i in range(10):
                await producer.send(topic, value=f"dropped-{i}".encode(), partition=i % 2)
            await producer.send_offsets_to_transaction({AioTP(topic, 0): 100, AioTP(topic, 1): 100}, group)
            await producer.abort_transaction()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed",
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        seen = []
        try:
            consumer.assign([AioTP(topic, 0), AioTP(topic, 1)])
            deadline = time.monotonic() + 30
            while len(seen) < 20 and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen.extend(r.value.decode() for r in records)
            # Nothing more arrives: the aborted records stay hidden.
            extra = await consumer.getmany(timeout_ms=1500)
            seen.extend(r.value.decode() for records in extra.values() for r in records)
        finally:
            await consumer.stop()
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert sorted(seen) == sorted(f"kept-{i}" for i in range(20)), seen
    assert committed_offsets(broker.bootstrap, group, topic, [0, 1]) == {0: 7, 1: 9}
