"""Listeners, TLS and SASL with real clients over real sockets: confluent-kafka
(librdkafka) and kafka-python against a broker with PLAINTEXT, SASL_PLAINTEXT,
SASL_SSL and SSL listeners; users made with `tributary user` and with the
Kafka admin API; wrong passwords, unauthenticated clients and the wrong
protocol on a port; certificates renewed while the broker runs."""

import socket
import subprocess
import ssl
import struct
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialDeletion,
                                   UserScramCredentialUpsertion)

import rawkafka
from conftest import binary
from secure import PASSWORD, SecureBroker, authentication_refused, make_certificates


@pytest.fixture
def secure(tmp_path):
    b = SecureBroker(tmp_path, security="failed_authentication_delay_ms = 200\nauthentication_timeout_ms = 2000")
    b.start()
    b.create_user()
    yield b
    b.stop()


def produce_and_consume(conf, topic, n=20, timeout_s=30):
    """Produces n records with `conf` and reads them back with a group: the values, in order."""
    errors = []
    producer = Producer({**conf, "acks": "all", "linger.ms": 5})
    for i in range(n):
        producer.produce(topic, key=b"k", value=f"v{i}".encode(), on_delivery=lambda e, m: e and errors.append(e))
    assert producer.flush(timeout_s) == 0, "every record delivered"
    assert errors == []
    consumer = Consumer({**conf, "group.id": f"g-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values, deadline = [], time.monotonic() + timeout_s
    while len(values) < n and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and m.error() is None:
            values.append(m.value().decode())
    consumer.close()
    return values


@pytest.mark.parametrize("protocol,mechanism", [
    ("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "PLAIN"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SSL", None),
])
def test_librdkafka_produces_and_consumes_on_every_secure_listener(secure, protocol, mechanism):
    conf = secure.librdkafka(protocol, mechanism)
    topic = f"sec-{protocol.lower()}-{(mechanism or 'tls').lower()}"
    assert produce_and_consume(conf, topic) == [f"v{i}" for i in range(20)]
    # Metadata names the broker at the address of the listener the client came in on.
    brokers = AdminClient(conf).list_topics(timeout=10).brokers
    port = int(conf["bootstrap.servers"].rsplit(":", 1)[1])
    assert [(b.host, b.port) for b in brokers.values()] == [("127.0.0.1", port)]


def test_a_wrong_password_fails_fast_with_sasl_authentication_failed(secure):
    seen = []
    conf = secure.librdkafka("SASL_SSL", "SCRAM-SHA-512", password="not-it", error_cb=seen.append)
    producer = Producer(conf)
    producer.produce("never", b"x")
    deadline = time.monotonic() + 20
    while not seen and time.monotonic() < deadline:
        producer.poll(0.2)
    assert seen, "the client was told"
    assert seen[0].code() == KafkaError._AUTHENTICATION
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in seen[0].str()
    assert producer.flush(1) == 1, "nothing was produced"
    # The raw exchange: SaslAuthenticate answers SASL_AUTHENTICATION_FAILED (58), then the broker closes.
    conn = rawkafka.Conn(f"127.0.0.1:{secure.sasl_port}")
    conn.send(rawkafka.request(17, 1, 1, rawkafka.string("PLAIN")))
    assert struct.unpack(">h", conn.recv_response()[4:6])[0] == 0
    token = b"\0alice\0wrong"
    conn.send(rawkafka.request(36, 1, 2, struct.pack(">i", len(token)) + token))
    answer = conn.recv_response()
    assert struct.unpack(">h", answer[4:6])[0] == 58
    assert conn.closed_by_peer()
    assert "SASL authentication failed" in secure.log()


def test_an_unauthenticated_client_on_a_sasl_port_gets_nothing_else(secure):
    # ApiVersions is answered before authentication ...
    conn = rawkafka.Conn(f"127.0.0.1:{secure.sasl_port}")
    conn.send(rawkafka.api_versions(1))
    assert struct.unpack(">h", conn.recv_response()[4:6])[0] == 0
    # ... anything else closes the connection unanswered.
    conn.send(rawkafka.request(3, 1, 2, struct.pack(">i", -1)))
    assert conn.closed_by_peer()
    # Before authenticating a frame may be 512 KiB at most (sasl.server.max.receive.size).
    big = rawkafka.Conn(f"127.0.0.1:{secure.sasl_port}")
    big.send(struct.pack(">i", 1 << 20) + b"x" * 64)
    assert big.closed_by_peer()
    assert "exceeds" in secure.log()
    assert "request before SASL authentication on a SASL listener" in secure.log()
    # A connection that never authenticates is closed after security.authentication_timeout_ms.
    idle = rawkafka.Conn(f"127.0.0.1:{secure.sasl_port}", timeout=15)
    assert idle.closed_by_peer()
    assert "not authenticated within security.authentication_timeout_ms" in secure.log()
    # The PLAINTEXT listener needs no authentication, and refuses the SASL exchange.
    plain = rawkafka.Conn(secure.bootstrap)
    plain.send(rawkafka.request(17, 1, 3, rawkafka.string("PLAIN")))
    assert struct.unpack(">h", plain.recv_response()[4:6])[0] == 34, "ILLEGAL_SASL_STATE"


def test_the_wrong_protocol_on_a_port_is_named_and_closed_fast(secure):
    # A plaintext Kafka client on the TLS port.
    conn = rawkafka.Conn(f"127.0.0.1:{secure.ssl_port}")
    conn.send(rawkafka.api_versions(1))
    assert conn.closed_by_peer()
    # A TLS client on the plaintext port.
    context = ssl.create_default_context(cafile=str(secure.certs / "ca.pem"))
    with socket.create_connection(("127.0.0.1", secure.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            context.wrap_socket(raw, server_hostname="localhost")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "on a plaintext Kafka listener" not in secure.log():
        time.sleep(0.1)
    log = secure.log()
    assert "the client did not start TLS on a TLS listener" in log
    assert "the client sent a TLS handshake on a plaintext Kafka listener" in log


def test_kafka_python_over_sasl_ssl_and_sasl_plaintext(secure):
    from kafka import KafkaConsumer, KafkaProducer
    topic = "sec-kafka-python"
    for protocol, port, mechanism in [("SASL_SSL", secure.sasl_ssl_port, "SCRAM-SHA-512"),
                                      ("SASL_PLAINTEXT", secure.sasl_port, "PLAIN")]:
        conf = dict(bootstrap_servers=f"127.0.0.1:{port}", security_protocol=protocol, sasl_mechanism=mechanism,
                    sasl_plain_username="alice", sasl_plain_password=PASSWORD)
        if protocol == "SASL_SSL":
            conf["ssl_cafile"] = str(secure.certs / "ca.pem")
        producer = KafkaProducer(acks="all", **conf)
        for i in range(5):
            producer.send(topic, f"{mechanism}-{i}".encode())
        producer.flush(30)
        producer.close()
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000,
                             bootstrap_servers=f"127.0.0.1:{secure.sasl_ssl_port}", security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="alice",
                             sasl_plain_password=PASSWORD, ssl_cafile=str(secure.certs / "ca.pem"))
    values = [m.value.decode() for _, m in zip(range(10), consumer)]
    consumer.close()
    assert values == [f"SCRAM-SHA-512-{i}" for i in range(5)] + [f"PLAIN-{i}" for i in range(5)]


def test_users_managed_through_the_admin_api_and_the_cli_survive_a_restart(secure):
    admin = AdminClient(secure.librdkafka("SASL_SSL", "SCRAM-SHA-512"))
    upsert = UserScramCredentialUpsertion("bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"bob-pw")
    too_few = UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 10), b"pw")
    futures = admin.alter_user_scram_credentials([upsert, too_few])
    futures["bob"].result(timeout=30)
    with pytest.raises(Exception, match="iterations"):
        futures["carol"].result(timeout=30)
    described = {user: f.result(timeout=30)
                 for user, f in admin.describe_user_scram_credentials(["alice", "bob"]).items()}
    assert {i.mechanism for i in described["alice"].scram_credential_infos} == {
        ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512}
    assert [(i.mechanism, i.iterations) for i in described["bob"].scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_256, 4096)]
    assert produce_and_consume(secure.librdkafka("SASL_SSL", "SCRAM-SHA-256", user="bob", password="bob-pw"),
                               "sec-bob", n=3) == ["v0", "v1", "v2"]
    listed = secure.cli("user", "list").stdout
    assert "alice" in listed and "bob" in listed and "carol" not in listed

    secure.restart()
    bob = secure.librdkafka("SASL_SSL", "SCRAM-SHA-256", user="bob", password="bob-pw")
    assert produce_and_consume(bob, "sec-bob-after", n=3) == ["v0", "v1", "v2"], "credentials survive a restart"

    secure.cli("user", "delete", "bob")
    assert "bob" not in secure.cli("user", "list").stdout
    futures = admin.alter_user_scram_credentials([UserScramCredentialDeletion("bob", ScramMechanism.SCRAM_SHA_256)])
    with pytest.raises(Exception, match="RESOURCE_NOT_FOUND|no SCRAM"):
        futures["bob"].result(timeout=30)
    assert authentication_refused(bob), "a deleted user cannot authenticate"


def test_client_certificates_are_required_when_configured_and_certificates_reload(tmp_path):
    b = SecureBroker(tmp_path, client_auth="required")
    b.start()
    try:
        with_cert = b.librdkafka("SSL", **{"ssl.certificate.location": str(b.certs / "client.pem"),
                                            "ssl.key.location": str(b.certs / "client.key")})
        assert produce_and_consume(with_cert, "sec-mtls", n=3) == ["v0", "v1", "v2"]
        # Without a certificate the handshake is refused.
        seen = []
        producer = Producer({**b.librdkafka("SSL"), "error_cb": seen.append})
        producer.produce("sec-mtls", b"x")
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            producer.poll(0.2)
        assert seen, "a client without a certificate is refused"
        assert "TLS handshake failed" in b.log()

        # A renewed certificate is served from the next connection on, without a restart.
        def served_subject():
            context = ssl.create_default_context(cafile=str(b.certs / "ca.pem"))
            context.load_cert_chain(str(b.certs / "client.pem"), str(b.certs / "client.key"))
            with socket.create_connection(("127.0.0.1", b.ssl_port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]

        assert served_subject() == "localhost"
        time.sleep(1.1)  # a modification time the broker can tell apart
        make_certificates(b.certs, broker_cn="renewed.localhost")
        assert served_subject() == "renewed.localhost"
        assert "TLS certificate reloaded" in b.log()
        assert produce_and_consume(with_cert, "sec-mtls-renewed", n=2) == ["v0", "v1"]
    finally:
        b.stop()


def test_the_cli_runs_over_sasl_ssl_with_a_client_properties_file(secure, tmp_path):
    props = tmp_path / "client.properties"
    props.write_text(f"""# as Kafka's tools take it (--command-config)
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="alice" password="{PASSWORD}";
ssl.ca.location={secure.certs / 'ca.pem'}
""")
    cli = lambda *args, **kw: subprocess.run(  # noqa: E731
        [str(binary()), "-b", f"127.0.0.1:{secure.sasl_ssl_port}", "--command-config", str(props), *args],
        capture_output=True, text=True, timeout=60, **kw)
    made = cli("topic", "create", "sec-cli", "-p", "2")
    assert made.returncode == 0, made.stderr
    assert "sec-cli" in cli("topic", "list").stdout
    produced = cli("produce", "sec-cli", input="one\ntwo\nthree\n")
    assert produced.returncode == 0, produced.stderr
    consumed = cli("consume", "sec-cli", "-n", "3")
    assert sorted(consumed.stdout.split()) == ["one", "three", "two"], consumed.stderr
    created = cli("user", "create", "dave", "--password", "dave-pw")
    assert created.returncode == 0, created.stderr
    assert "dave" in cli("user", "list").stdout

    props.write_text(props.read_text().replace(PASSWORD, "wrong"))
    refused = cli("topic", "list")
    assert refused.returncode != 0
    assert "SaslAuthenticationFailed" in refused.stderr and "invalid credentials" in refused.stderr, refused.stderr


def test_sessions_re_authenticate_before_max_reauth_ms_or_are_closed(tmp_path):
    """KIP-368: librdkafka re-authenticates on its connection before the
    session lifetime the broker gave it ends, and keeps producing; a client
    that does not is closed at its next request after the lifetime."""
    b = SecureBroker(tmp_path, security="max_reauth_ms = 2000")
    b.start()
    try:
        b.create_user()
        conf = b.librdkafka("SASL_PLAINTEXT", "SCRAM-SHA-512", **{"debug": "security"})
        errors, logs = [], []
        producer = Producer({**conf, "acks": "all", "logger": _Collect(logs)})
        deadline = time.monotonic() + 7
        sent = 0
        while time.monotonic() < deadline:
            producer.produce("sec-reauth", value=f"v{sent}".encode(), on_delivery=lambda e, m: e and errors.append(e))
            sent += 1
            producer.poll(0.05)
        assert producer.flush(30) == 0 and errors == []
        assert any("Received session lifetime 2000 ms" in line for line in logs), "the broker told the lifetime"
        reauths = [line for line in logs if "Auth in state REAUTH" in line]
        assert reauths, "librdkafka re-authenticated on its connection at least once in 7 s with a 2 s lifetime"

        # A raw client authenticated with SaslAuthenticate v2 is told the lifetime and cut off after it.
        conn = rawkafka.Conn(f"127.0.0.1:{b.sasl_port}")
        conn.send(rawkafka.request(17, 1, 1, rawkafka.string("PLAIN")))
        conn.recv_response()
        token = f"\0alice\0{PASSWORD}".encode()
        conn.send(rawkafka.request(36, 1, 2, struct.pack(">i", len(token)) + token))
        answer = conn.recv_response()
        assert struct.unpack(">h", answer[4:6])[0] == 0
        assert answer[-8:] == struct.pack(">q", 2000), "session_lifetime_ms"
        time.sleep(2.5)
        conn.send(rawkafka.request(3, 1, 3, struct.pack(">i", -1)))
        assert conn.closed_by_peer()
        assert "session expired (security.max_reauth_ms)" in b.log()

        # Starting a re-authentication does not open an expired session again.
        conn = rawkafka.Conn(f"127.0.0.1:{b.sasl_port}")
        conn.send(rawkafka.request(17, 1, 1, rawkafka.string("PLAIN")))
        conn.recv_response()
        conn.send(rawkafka.request(36, 1, 2, struct.pack(">i", len(token)) + token))
        conn.recv_response()
        time.sleep(2.5)
        conn.send(rawkafka.request(17, 1, 3, rawkafka.string("PLAIN")))
        assert struct.unpack(">h", conn.recv_response()[4:6])[0] == 0, "the re-authentication may begin"
        conn.send(rawkafka.request(3, 1, 4, struct.pack(">i", -1)))
        assert conn.closed_by_peer(), "but nothing else is served until it ends"
    finally:
        b.stop()


class _Collect:
    """A logging.Logger stand-in for librdkafka's log lines."""

    def __init__(self, lines):
        self.lines = lines

    def log(self, level, fmt, *args):
        self.lines.append(fmt % args if args else fmt)


def test_the_metrics_endpoint_can_require_tls_and_a_bearer_token(tmp_path):
    import urllib.error
    import urllib.request
    token_file = tmp_path / "metrics.token"
    token_file.write_text("s3cret-scrape-token\n")
    b = SecureBroker(tmp_path, security=f"[metrics]\ntls = true\nbearer_token_file = \"{token_file}\"")
    b.start()
    try:
        context = ssl.create_default_context(cafile=str(b.certs / "ca.pem"))
        url = f"https://127.0.0.1:{b.metrics_port}/metrics"

        def get(token=None):
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("WWW-Authenticate")

        assert get() == (401, "Bearer")
        assert get("wrong") == (401, "Bearer")
        status, body = get("s3cret-scrape-token")
        assert status == 200 and "tributary_connections" in body and "tributary_authentication_failures" in body
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/health", timeout=10).read()
    finally:
        b.stop()
