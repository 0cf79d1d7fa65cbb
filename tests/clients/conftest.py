"""Fixtures that run the real `tributary` binary as a separate process on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20


def binary() -> Path:
    path = Path(os.environ.get("TRIBUTARY_BIN", ROOT / "target" / "release" / "tributary"))
    if not path.exists():
        pytest.fail(f"{path} not found: build it with `cargo build --release` (scripts/test.sh does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessControl:
    """Stopping a broker process (`self.proc`) gently or with kill -9, and its log (`self.log_path`)."""

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class BrokerProcess(ProcessControl):
    """One broker process; restartable over the same data dir and port."""

    def __init__(self, data_dir: Path, log_path: Path, extra_config: str = "", open_files=None):
        self.data_dir = data_dir
        # A limit on open files (soft and hard), to run the broker short of descriptors.
        self.open_files = open_files
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.log_path = log_path
        self.config_path = data_dir.parent / f"broker-{self.port}.toml"
        self.config_path.write_text(extra_config)
        self.proc = None

    def start(self):
        assert self.proc is None, "already running"
        log = open(self.log_path, "ab")
        env = dict(os.environ, TRIBUTARY_LOG=os.environ.get("TRIBUTARY_LOG", "info"))
        # A config that names its own listeners has the PLAINTEXT one at self.port.
        listen = [] if getattr(self, "own_listeners", False) else ["--listen", self.bootstrap]
        self.proc = subprocess.Popen(
            [str(binary()), "start", "--config", str(self.config_path),
             *listen, "--data-dir", str(self.data_dir),
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}"],
            stdout=log, stderr=log, env=env, preexec_fn=self._limit_files)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker did not listen within {START_TIMEOUT_S}s; see {self.log_path}")

    def _limit_files(self):
        if self.open_files is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def restart(self):
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

@pytest.fixture
def broker(tmp_path):
    b = BrokerProcess(tmp_path / "data", tmp_path / "broker.log")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def broker_factory(tmp_path):
    """For tests that need their own config."""
    made = []

    def make(extra_config: str = "", open_files=None) -> BrokerProcess:
        n = len(made)
        b = BrokerProcess(tmp_path / f"data{n}", tmp_path / f"broker{n}.log", extra_config, open_files)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()
