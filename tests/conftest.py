"""Shared fixtures: real `llmsim serve` processes on free loopback ports, always cleaned up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmsim.bench.preflight import free_port  # noqa: F401  (tests import it from here)


@pytest.fixture(autouse=True)
def _no_gevent_patching_in_pytest() -> Iterator[None]:
    """Fail the test that imports Locust (or anything that monkey-patches) into this process.

    Locust's import patches the whole process with gevent: every later test's threads become
    greenlets and run one at a time (a concurrency test then failed far from its cause), and
    the interpreter's exit prints a traceback. Locust runs in subprocesses instead.
    """
    yield
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        assert not monkey.is_module_patched("threading"), (
            "this test monkey-patched the pytest process (imported locust?): run that code "
            "in a subprocess"
        )


REPO = Path(__file__).resolve().parent.parent
OPENAPI = REPO.parent / "shared" / "openai" / "openapi.yaml"
_URL = re.compile(r"(https?://\S+?)/v1\b")


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    lines: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> ServerProcess:
    """Start `python -m llmsim serve --port 0 ARGS…` and wait for its start-up line."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSIM_")}
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "llmsim", "serve", "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=REPO,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = _URL.search(line)
        if m:
            return ServerProcess(proc, m.group(1), lines)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"llmsim serve did not start: {''.join(lines)}")


@pytest.fixture
def llmsim_server() -> Iterator:
    """Factory: llmsim_server("--profile", "fast") -> ServerProcess; all stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = start_server(*args, env=env)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
        if server.proc.stdout:
            server.proc.stdout.close()


@pytest.fixture(scope="module")
def fast_server() -> Iterator[ServerProcess]:
    """One shared server with exact, fast timing for tests that only check shapes."""
    server = start_server(
        "--ttft-ms", "5", "--ttft-stddev-ms", "0", "--tbt-ms", "1", "--tbt-stddev-ms", "0"
    )
    yield server
    server.stop()
    if server.proc.stdout:
        server.proc.stdout.close()


def self_signed_cert(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made now (nothing secret is kept in the repository)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmsim test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
