"""Listeners, TLS and SASL with three more independent clients: kafkajs (pure
JavaScript), Apache Kafka's own Java client (kafka-clients) and kcat. Each
authenticates to the broker's SASL_SSL listener with SCRAM-SHA-512 as a user
made with `tributary user create`, creates or auto-creates a topic, produces
and reads its records back (kafkajs and Java in a consumer group that
commits); kafkajs and Java also over SASL_PLAINTEXT with PLAIN, and are
refused a wrong password with their own SASL authentication error; Java also
over SSL with a PEM client certificate the broker requires. Metadata names the
broker at the port of the listener the client came in on.
(test_security.py does the same with librdkafka and kafka-python.)"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from secure import PASSWORD, SecureBroker

TESTS = Path(__file__).resolve().parents[1]
JS = TESTS / "js"
JAVA = TESTS / "java"
LIB = JAVA / "target" / "lib"

# A quick answer to a wrong password, and groups that form at once (they wait
# for more members, 3 s by default). The [groups] table follows [security] in
# the broker's config.
SETTINGS = "failed_authentication_delay_ms = 200\n\n[groups]\ninitial_rebalance_delay_ms = 0\n"

needs_kafkajs = pytest.mark.skipif(not (JS / "node_modules" / "kafkajs").exists() or shutil.which("node") is None,
                                   reason="scripts/test.sh installs kafkajs with npm ci")
needs_java = pytest.mark.skipif(not any(LIB.glob("kafka-clients-*.jar")) or shutil.which("java") is None,
                                reason="scripts/test.sh fetches the Java client with mvn dependency:copy-dependencies")
needs_kcat = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is installed by scripts/test.sh")


@pytest.fixture
def secure(tmp_path):
    b = SecureBroker(tmp_path, security=SETTINGS)
    b.start()
    b.create_user()
    yield b
    b.stop()


def last_json_line(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


# kafkajs ---------------------------------------------------------------------

def kafkajs(broker, protocol, mechanism, topic, count, password=PASSWORD):
    """Runs tests/js/sasl.mjs against one of `broker`'s SASL listeners: its JSON line."""
    port = broker.sasl_ssl_port if protocol == "SASL_SSL" else broker.sasl_port
    ca = str(broker.certs / "ca.pem") if protocol == "SASL_SSL" else "-"
    run = subprocess.run(["node", str(JS / "sasl.mjs"), f"127.0.0.1:{port}", mechanism, "alice", password, ca,
                          topic, str(count)], capture_output=True, text=True, timeout=90)
    return last_json_line(run)


@needs_kafkajs
@pytest.mark.parametrize("protocol,mechanism", [("SASL_SSL", "scram-sha-512"), ("SASL_PLAINTEXT", "plain")])
def test_kafkajs_creates_produces_and_consumes_in_a_group_over_sasl(secure, protocol, mechanism):
    n = 50
    topic = f"js-{protocol.lower()}-{mechanism}"
    seen = kafkajs(secure, protocol, mechanism, topic, n)
    assert "error" not in seen, seen.get("error")
    assert seen["created"] is True
    port = secure.sasl_ssl_port if protocol == "SASL_SSL" else secure.sasl_port
    assert [(b["host"], b["port"]) for b in seen["brokers"]] == [("127.0.0.1", port)]
    assert all(r["errorCode"] == 0 for r in seen["sent"])
    # Every record, once, and in order within each partition.
    assert sorted(int(v["value"].rsplit("-", 1)[1]) for v in seen["values"]) == list(range(n))
    assert all(v["value"].startswith(f"{mechanism}-") for v in seen["values"])
    ends = {}
    for v in seen["values"]:
        assert v["offset"] == ends.get(v["partition"], 0), "offsets read in order, none skipped"
        ends[v["partition"]] = v["offset"] + 1
    committed = {int(p["partition"]): int(p["offset"]) for p in seen["committed"]}
    assert {p: o for p, o in committed.items() if p in ends} == ends, "the group committed the end of what it read"


@needs_kafkajs
@pytest.mark.parametrize("protocol,mechanism,prefix", [
    ("SASL_SSL", "scram-sha-512", "SASL SCRAM SHA512 authentication failed"),
    ("SASL_PLAINTEXT", "plain", "SASL PLAIN authentication failed"),
])
def test_kafkajs_is_refused_a_wrong_password_with_a_sasl_authentication_error(secure, protocol, mechanism, prefix):
    started = time.monotonic()
    seen = kafkajs(secure, protocol, mechanism, "js-never", 1, password="not-it")
    elapsed = time.monotonic() - started
    error = seen.get("error")
    assert error, f"kafkajs got through with a wrong password: {seen}"
    names = [error["name"]] + [c["name"] for c in error["causes"]]
    assert "KafkaJSSASLAuthenticationError" in names, error
    # kafkajs's prefix, then the broker's own words from SaslAuthenticate.
    assert error["message"].startswith(prefix), error
    assert f"invalid credentials with SASL mechanism {mechanism.upper()}" in error["message"], error
    # No retries and a 200 ms failed_authentication_delay_ms: node's start-up is most of it.
    assert elapsed < 15, f"refused, but only after {elapsed:.1f} s"
    assert "SASL authentication failed" in secure.log()
    assert "js-never" not in secure.cli("topic", "list").stdout


# Java (kafka-clients) --------------------------------------------------------

def java(broker, port, topic, count, **props):
    """Runs tests/java/Sasl.java against `broker`'s listener at `port` with client `props`: its JSON line."""
    settings = [f"{k.replace('_', '.')}={v}" for k, v in props.items()]
    run = subprocess.run(["java", "-cp", str(LIB / "*"), str(JAVA / "Sasl.java"), f"127.0.0.1:{port}", topic,
                          str(count), *settings], capture_output=True, text=True, timeout=180)
    return last_json_line(run)


def jaas(mechanism, password=PASSWORD):
    module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if mechanism == "PLAIN"
              else "org.apache.kafka.common.security.scram.ScramLoginModule")
    return f'{module} required username="alice" password="{password}";'


def java_sasl(broker, protocol, mechanism, topic, count, password=PASSWORD):
    port = broker.sasl_ssl_port if protocol == "SASL_SSL" else broker.sasl_port
    props = {"security_protocol": protocol, "sasl_mechanism": mechanism, "sasl_jaas_config": jaas(mechanism, password)}
    if protocol == "SASL_SSL":
        props.update(ssl_truststore_type="PEM", ssl_truststore_location=broker.certs / "ca.pem")
    return java(broker, port, topic, count, **props)


def check_java_round_trip(seen, port, n):
    assert "error" not in seen, seen
    assert seen["nodes"] == [f"127.0.0.1:{port}"], "the broker, at the listener the client came in on"
    assert sorted(seen["values"], key=lambda v: int(v.split("-")[1])) == [f"java-{i}" for i in range(n)]
    assert seen["committed"] == n, "the group committed every record it read"


@needs_java
@pytest.mark.parametrize("protocol,mechanism", [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "PLAIN")])
def test_java_client_creates_produces_and_consumes_in_a_group_over_sasl(secure, protocol, mechanism):
    n = 40
    seen = java_sasl(secure, protocol, mechanism, f"java-{protocol.lower()}-{mechanism.lower()}", n)
    check_java_round_trip(seen, secure.sasl_ssl_port if protocol == "SASL_SSL" else secure.sasl_port, n)


@needs_java
@pytest.mark.parametrize("protocol,mechanism", [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "PLAIN")])
def test_java_client_is_refused_a_wrong_password_with_sasl_authentication_exception(secure, protocol, mechanism):
    seen = java_sasl(secure, protocol, mechanism, "java-never", 1, password="not-it")
    assert seen.get("error") == "SaslAuthenticationException", seen
    assert f"invalid credentials with SASL mechanism {mechanism}" in seen["message"], seen["message"]
    assert "SASL authentication failed" in secure.log()
    assert "java-never" not in secure.cli("topic", "list").stdout


@needs_java
def test_java_client_over_ssl_with_a_pem_client_certificate(tmp_path):
    # The broker requires a client certificate: the handshake succeeding shows Java presented it.
    b = SecureBroker(tmp_path, client_auth="required", security=SETTINGS)
    b.start()
    try:
        assert (b.certs / "client.key").read_text().startswith("-----BEGIN PRIVATE KEY-----"), "PKCS#8, as Java wants"
        n = 30
        seen = java(b, b.ssl_port, "java-ssl", n, security_protocol="SSL",
                    ssl_truststore_type="PEM", ssl_truststore_location=b.certs / "ca.pem",
                    ssl_keystore_type="PEM", ssl_keystore_certificate_chain=f"@{b.certs / 'client.pem'}",
                    ssl_keystore_key=f"@{b.certs / 'client.key'}")
        check_java_round_trip(seen, b.ssl_port, n)
        assert "TLS handshake failed" not in b.log()
    finally:
        b.stop()


# kcat ------------------------------------------------------------------------

@needs_kcat
def test_kcat_produces_lists_and_consumes_over_sasl_ssl_with_scram_sha_512(secure):
    auth = ["-b", f"127.0.0.1:{secure.sasl_ssl_port}", "-X", "security.protocol=SASL_SSL",
            "-X", "sasl.mechanisms=SCRAM-SHA-512", "-X", "sasl.username=alice", "-X", f"sasl.password={PASSWORD}",
            "-X", f"ssl.ca.location={secure.certs / 'ca.pem'}"]

    def kcat(*args, stdin=None):
        run = subprocess.run(["kcat", *auth, *args], input=stdin, capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        return run.stdout.decode()

    lines = [f"user{i % 3}:event-{i}" for i in range(200)]
    kcat("-P", "-t", "kcat-sasl", "-K:", stdin="".join(f"{line}\n" for line in lines).encode())
    listing = kcat("-L", "-t", "kcat-sasl")
    assert f"at 127.0.0.1:{secure.sasl_ssl_port}" in listing, listing
    assert 'topic "kcat-sasl" with 1 partitions' in listing, listing
    out = kcat("-C", "-t", "kcat-sasl", "-o", "beginning", "-e", "-f", "%o %k:%s\n")
    assert out.splitlines() == [f"{i} {line}" for i, line in enumerate(lines)]
