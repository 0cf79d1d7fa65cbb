"""OAUTHBEARER with real clients: librdkafka (an oauth_cb handing it tokens)
and kafkajs (an oauthBearerProvider) authenticate with RS256 JWTs that the
broker checks against a JWKS file; tokens signed by another key, expired, or
for another audience are refused with SASL_AUTHENTICATION_FAILED. The RSA
keys come from the openssl command and tokens are signed with it, so nothing
here shares code with the broker's JWT checks."""

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from secure import SecureBroker, authentication_refused
from test_security import produce_and_consume

JS = Path(__file__).resolve().parents[1] / "js"
AUDIENCE = "tributary-test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An RSA key pair (openssl) and the JWKS of its public half."""

    def __init__(self, directory: Path, kid: str):
        self.key, self.kid = directory / f"{kid}.pem", kid
        subprocess.run(["openssl", "genrsa", "-out", str(self.key), "2048"], check=True, capture_output=True)
        modulus = subprocess.run(["openssl", "rsa", "-in", str(self.key), "-noout", "-modulus"], check=True,
                                 capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        self.jwk = {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                    "n": b64url(bytes.fromhex(modulus)), "e": b64url((65537).to_bytes(3, "big"))}

    def token(self, sub="alice", lifetime_s=300, audience=AUDIENCE, kid=None):
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or self.kid}
        now = int(time.time())
        claims = {"sub": sub, "iat": now, "exp": now + lifetime_s, "aud": audience, "iss": "test-issuer"}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                                   check=True, capture_output=True).stdout
        return f"{signing_input}.{b64url(signature)}"


@pytest.fixture
def oauth(tmp_path):
    issuer, stranger = Issuer(tmp_path, "trusted"), Issuer(tmp_path, "stranger")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [issuer.jwk]}))
    broker = SecureBroker(tmp_path, security=f"""
sasl_mechanisms = ["SCRAM-SHA-512", "OAUTHBEARER"]
oauth_jwks_file = "{jwks}"
oauth_audience = "{AUDIENCE}"
oauth_issuer = "test-issuer"
failed_authentication_delay_ms = 50
""")
    broker.start()
    yield broker, issuer, stranger
    broker.stop()


def oauth_conf(broker, token, protocol="SASL_SSL", **extra):
    conf = broker.librdkafka(protocol, "OAUTHBEARER", **extra)
    for key in ("sasl.username", "sasl.password"):
        conf.pop(key)
    conf["oauth_cb"] = lambda _config: (token, time.time() + 300)
    return conf


def test_librdkafka_authenticates_with_a_signed_jwt(oauth):
    broker, issuer, _ = oauth
    for protocol in ["SASL_SSL", "SASL_PLAINTEXT"]:
        conf = oauth_conf(broker, issuer.token(), protocol)
        assert produce_and_consume(conf, f"oauth-{protocol.lower()}", n=10) == [f"v{i}" for i in range(10)]
    md = AdminClient(oauth_conf(broker, issuer.token())).list_topics(timeout=10)
    assert [b.port for b in md.brokers.values()] == [broker.sasl_ssl_port]


def test_tokens_from_another_key_expired_or_for_another_audience_are_refused(oauth):
    broker, issuer, stranger = oauth
    assert authentication_refused(oauth_conf(broker, stranger.token(kid="trusted"))), "signed by a key the JWKS does not hold"
    assert authentication_refused(oauth_conf(broker, issuer.token(lifetime_s=-120))), "expired (past the 30 s clock skew)"
    assert authentication_refused(oauth_conf(broker, issuer.token(audience="someone-else"))), "another audience"
    assert authentication_refused(oauth_conf(broker, issuer.token(sub=""))), "no principal"
    log = broker.log()
    assert "the token is not valid" in log and "SASL authentication failed" in log


@pytest.mark.skipif(not (JS / "node_modules" / "kafkajs").exists() or shutil.which("node") is None,
                    reason="scripts/test.sh installs kafkajs with npm ci")
def test_kafkajs_authenticates_with_a_signed_jwt_and_is_refused_a_forged_one(oauth):
    broker, issuer, stranger = oauth

    def run(token, topic):
        done = subprocess.run(["node", str(JS / "sasl.mjs"), f"127.0.0.1:{broker.sasl_ssl_port}", "oauthbearer", "-",
                               token, str(broker.certs / "ca.pem"), topic, "20"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    seen = run(issuer.token(), "oauth-kafkajs")
    assert "error" not in seen, seen
    assert sorted(v["value"] for v in seen["values"]) == sorted(f"oauthbearer-{i}" for i in range(20))
    forged = run(stranger.token(kid="trusted"), "oauth-kafkajs-forged")
    assert forged["error"]["name"] == "KafkaJSSASLAuthenticationError", forged
