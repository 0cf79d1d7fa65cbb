"""A broker with every kind of listener, and the certificates it needs, for
the security tests: PLAINTEXT (where the tests create users), SASL_PLAINTEXT,
SASL_SSL and SSL. Certificates are made with the openssl command, fresh for
each test: a CA, the broker's (for 127.0.0.1 and localhost) and a client's."""

import subprocess
import time
from pathlib import Path

from confluent_kafka import KafkaError, Producer

from conftest import BrokerProcess, binary, free_port

PASSWORD = "alice-secret"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path, broker_cn="localhost"):
    """ca.pem, broker.pem/broker.key and client.pem/client.key in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "ca.pem").exists():
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-days", "2", "-subj", "/CN=tributary-test-ca", cwd=directory)
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key.new", "-out", "broker.csr",
            "-subj", f"/CN={broker_cn}", cwd=directory)
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "broker.pem.new", "-days", "2", "-extfile", "san.cnf", cwd=directory)
    # Replaced whole, key first: a reader never sees a certificate without its key.
    (directory / "broker.key.new").replace(directory / "broker.key")
    (directory / "broker.pem.new").replace(directory / "broker.pem")
    if not (directory / "client.pem").exists():
        # Extensions make it an X.509 v3 certificate: rustls (webpki) refuses v1 ones.
        (directory / "client.cnf").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
                "-subj", "/O=Example/OU=eng/CN=alice-client", cwd=directory)
        openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "client.pem", "-days", "2", "-extfile", "client.cnf", cwd=directory)


class SecureBroker(BrokerProcess):
    """Ports: `port` PLAINTEXT, `sasl_port` SASL_PLAINTEXT, `sasl_ssl_port`, `ssl_port`."""

    own_listeners = True

    def __init__(self, tmp: Path, client_auth="requested", security="", name="secure"):
        self.certs = tmp / "certs"
        make_certificates(self.certs)
        super().__init__(tmp / f"data-{name}", tmp / f"{name}.log")
        self.sasl_port, self.sasl_ssl_port, self.ssl_port = free_port(), free_port(), free_port()
        self.config_path.write_text(f"""
[broker]
listeners = ["PLAINTEXT://127.0.0.1:{self.port}", "SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
             "SASL_SSL://127.0.0.1:{self.sasl_ssl_port}", "SSL://127.0.0.1:{self.ssl_port}"]
[security]
tls_cert_file = "{self.certs / 'broker.pem'}"
tls_key_file = "{self.certs / 'broker.key'}"
tls_client_ca_file = "{self.certs / 'ca.pem'}"
tls_client_auth = "{client_auth}"
{security}
""")

    def cli(self, *args, check=True):
        return subprocess.run([str(binary()), "-b", self.bootstrap, *args], capture_output=True, text=True,
                              timeout=60, check=check)

    def create_user(self, name="alice", password=PASSWORD, *extra):
        self.cli("user", "create", name, "--password", password, *extra)

    def librdkafka(self, protocol, mechanism=None, user="alice", password=PASSWORD, **extra):
        """confluent-kafka settings for one of the listeners."""
        port = {"SASL_PLAINTEXT": self.sasl_port, "SASL_SSL": self.sasl_ssl_port, "SSL": self.ssl_port,
                "PLAINTEXT": self.port}[protocol]
        conf = {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": protocol}
        if mechanism:
            conf.update({"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
        if "SSL" in protocol:
            conf["ssl.ca.location"] = str(self.certs / "ca.pem")
        conf.update(extra)
        return conf


def authentication_refused(conf, timeout_s=20):
    """Whether a librdkafka producer with `conf` is told its authentication
    failed (and not merely that it cannot connect), within the time."""
    seen = []
    producer = Producer({**conf, "error_cb": seen.append})
    producer.produce("never", b"x")
    deadline = time.monotonic() + timeout_s
    while not seen and time.monotonic() < deadline:
        producer.poll(0.2)
    return bool(seen) and seen[0].code() == KafkaError._AUTHENTICATION
