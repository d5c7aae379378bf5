"""Every failure kind we can provoke is classified, reported, and never stops the user."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator

import pytest

from test_load_locust import REPO, locust_env, run_locust

from conftest import free_port

EXPECTED = {
    "http_500": "http_500",
    "http_429": "http_429",
    "no_done": "incomplete_stream",
    "malformed": "malformed_chunk",
    "error_event": "stream_error_event",
    "error_object": "stream_error_event",
    "not_sse": "not_sse",
    "drop": "connection",
    "hangup": "connection",
    "slow": "timeout",
    "refused": "connection",
    "no_accept": "timeout",  # connecting never completes: --llm-timeout bounds it too
}
PER_USER = 3


@pytest.fixture
def fake_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmsim.load.fakeserver", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=locust_env(),
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A listener that never accepts, its queue filled by one connection: the kernel drops
    every further SYN, so a client's connect hangs until its own timeout (loopback only)."""
    with socket.socket() as srv, socket.socket() as filler:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        filler.connect(srv.getsockname())
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/v1"


def test_each_fault_kind_is_classified(fake_server, full_backlog, tmp_path):
    classes = []
    for mode in [*EXPECTED, "ok", "no_usage"]:
        host = {
            "refused": f"http://127.0.0.1:{free_port()}/v1",
            "no_accept": full_backlog,
        }.get(mode, fake_server)
        classes.append(
            f"""
            class U_{mode}(OpenAIChatUser):
                fixed_count = 1
                host = {host!r}
                model = {mode!r}
                request_name = {mode!r}
                timeout = 0.5
                max_tokens = 5
                requests_per_user = {PER_USER}
            """
        )
    locustfile = tmp_path / "faults.py"
    locustfile.write_text(
        "from llmsim.locust import OpenAIChatUser\n" + "".join(textwrap.dedent(c) for c in classes)
    )
    users = str(len(classes))
    run = run_locust(locustfile, "", tmp_path, "-u", users, "-r", users, "-t", "4s")
    assert run.returncode == 1  # Locust's exit code when requests failed
    by_name: dict[str, Counter] = {}
    for row in run.rows:
        by_name.setdefault(row["name"], Counter())[row["error_kind"] or "ok"] += 1
    for mode, kind in EXPECTED.items():
        # every request of a faulty user failed with its kind, and the user went on
        assert by_name.get(mode) == Counter({kind: PER_USER}), (mode, by_name.get(mode))
    assert by_name["ok"] == Counter({"ok": PER_USER})
    assert by_name["no_usage"] == Counter({"ok": PER_USER})
    assert {r["token_source"] for r in run.rows if r["name"] == "no_usage"} == {"counted"}

    errors = run.summary["errors"]
    assert errors == dict(Counter(k for k in EXPECTED.values() for _ in range(PER_USER)))
    assert run.summary["requests"]["failed"] == len(EXPECTED) * PER_USER

    # Locust's failures table: one line per (name, message), the message starting with the kind.
    messages = {(f["Name"], f["Error"]) for f in run.failures}
    for mode, kind in EXPECTED.items():
        assert any(n == mode and e.startswith(kind) for n, e in messages), (mode, messages)
    assert ("http_500", "http_500: fake 500 (fake_error)") in messages
    assert "Traceback" not in run.output


def test_fake_server_counts_every_event_it_sends(fake_server):
    """Benchmarks divide client CPU by /fake/stats' count: burst and drop streams count too,
    each event the client receives once ([DONE] is not an event)."""
    import httpx

    def stats() -> int:
        r = httpx.post(fake_server + "/chat/completions", json={"model": "__stats__"})
        return r.json()["events"]

    received = 0
    before = stats()
    for mode in ("ok", "burst", "drop"):
        body = {"model": mode, "max_tokens": 6, "stream": True}
        raw = b""
        try:
            with httpx.stream("POST", fake_server + "/chat/completions", json=body) as r:
                for piece in r.iter_raw():
                    raw += piece
        except httpx.HTTPError:
            assert mode == "drop"
        events = raw.count(b"data: {")
        assert events >= (3 if mode == "drop" else 6), (mode, raw)
        received += events
    assert stats() - before == received
