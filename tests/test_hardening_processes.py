"""Issue 11's process rows: dead workers, dead lock holders, shutdown, descriptors, rate limits.

Real servers (and a real fork for the lock), bounded in time; the accounting rows use the app
without a server, where an engine failure can be injected.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from llmsim.engine.faults import MAX_TRACKED_KEYS, FaultInjector, ScriptRule
from llmsim.engine.limits import RateLimiter
from llmsim.engine.shared import ProcessLock
from llmsim.engine.stats import Stats
from llmsim.server.app import create_app
from llmsim.settings import Settings

from conftest import REPO, start_server
from hardening_support import past_the_descriptor_limit, start_with_fd_limit, status_of

PACED = ("--ttft-ms", "20", "--ttft-stddev-ms", "0", "--tbt-ms", "20", "--tbt-stddev-ms", "0")
LONG_STREAM = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 100,  # 2 s at 20 ms a token
    "ignore_eos": True,
    "stream": True,
}


def _stream(url: str, body: dict, out: list, started: threading.Event | None = None) -> None:
    """Read one stream to its end; append (tokens, done, error). `started`: set at token 1."""
    tokens, done, error = 0, False, None
    try:
        with httpx.Client(timeout=30) as c, c.stream("POST", url + "/v1/chat/completions",
                                                     json=body) as r:  # fmt: skip
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    tokens += bool(choices[0].get("delta", {}).get("content"))
                    if tokens and started is not None:
                        started.set()
    except httpx.HTTPError as exc:
        error = repr(exc)
    out.append((tokens, done, error))


def _drain_output(server) -> list[str]:
    """Keep reading the server's output (a full pipe would block it); the lines so far."""
    lines = server.lines

    def pump():
        for line in server.proc.stdout:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_a_killed_worker_is_restarted_and_the_others_keep_serving():
    server = start_server("--workers", "2", *PACED)
    lines = _drain_output(server)
    try:
        parent = psutil.Process(server.proc.pid)
        deadline = time.monotonic() + 10
        while len(parent.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = {c.pid for c in parent.children()}
        results: list = []
        threads = [
            threading.Thread(target=_stream, args=(server.url, LONG_STREAM, results))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(0.6)  # streams are under way on both workers
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < 5:
            now = {c.pid for c in parent.children()}
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.02)
        restarted_s = time.monotonic() - killed
        assert len(now) == 2 and victim not in now, "the dead worker was not replaced"
        assert restarted_s < 1.5  # within a second, plus a loaded machine's slack
        for t in threads:
            t.join(30)
        finished = [r for r in results if r[1] and r[0] == 100]
        assert finished, f"no stream survived on the other worker: {results}"
        with httpx.Client(timeout=5) as c:
            for _ in range(10):  # both workers answer again
                assert c.get(server.url + "/health").status_code == 200
        assert server.proc.poll() is None
    finally:
        code = server.stop()
    assert code == 0
    assert any(f"(pid {victim}) was killed by signal 9; restarted" in ln for ln in lines), lines


def test_a_lock_held_by_a_dead_process_is_free():
    lock = ProcessLock()
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies holding it
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    got = threading.Event()

    def take():
        lock.acquire()
        got.set()
        lock.release()

    threading.Thread(target=take, daemon=True).start()
    assert got.wait(5), "the dead holder's lock stayed held"


def test_grace_period_lets_a_stream_longer_than_a_second_finish():
    server = start_server(*PACED, "--grace-period-s", "10")
    _drain_output(server)
    results: list = []
    started = threading.Event()
    t = threading.Thread(target=_stream, args=(server.url, LONG_STREAM, results, started))
    t.start()
    assert started.wait(15)  # in flight (a fixed sleep was too short on a loaded machine)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    took = time.monotonic() - start
    t.join(10)
    assert results and results[0][:2] == (100, True), results  # cut after 1 s before the fix
    assert 1.0 < took < 8


def test_grace_period_cuts_streams_at_its_end():
    server = start_server(*PACED, "--grace-period-s", "1.5")
    _drain_output(server)
    results: list = []
    body = {**LONG_STREAM, "max_tokens": 1000}  # 20 s
    started = threading.Event()
    t = threading.Thread(target=_stream, args=(server.url, body, results, started))
    t.start()
    assert started.wait(15)  # in flight (a fixed sleep was too short on a loaded machine)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    took = time.monotonic() - start
    t.join(10)
    assert 1.4 < took < 5, took
    assert results and not results[0][1]  # cut, not finished


def test_at_the_descriptor_limit_clients_get_503_and_the_server_recovers():
    limit = 96
    proc, url, lines = start_with_fd_limit(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--profile", "instant",
         "--header-timeout-s", "30"],
        limit, r"base_url=(\S+)/v1", cwd=REPO,
    )  # fmt: skip
    try:
        u = urlsplit(url)
        answers = past_the_descriptor_limit(u.hostname, u.port, limit)
        assert any(status_of(a) == 503 for a in answers), answers
        time.sleep(0.5)
        with httpx.Client(timeout=5) as c:
            assert c.get(url + "/health").status_code == 200  # recovered
        time.sleep(0.7)
        with httpx.Client(timeout=5) as c:
            assert c.get(url + "/health").status_code == 200
        text = "".join(lines)
        assert text.count("file-descriptor limit reached") == 1, text[-2000:]
        assert "Traceback" not in text
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout:
            proc.stdout.close()


def test_rate_limits_are_exact_for_many_keys():
    server = start_server("--profile", "instant", "--rpm", "3")
    _drain_output(server)
    try:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        got: dict[str, int] = {}
        with httpx.Client(timeout=10) as c:
            # 60 keys end to end (test_many_keys_never_share_a_bucket checks 5,000 in-process).
            for i in range(60):
                key = f"key-{i}"
                for _ in range(4):
                    r = c.post(server.url + "/v1/chat/completions", json=body,
                               headers={"authorization": f"Bearer {key}"})  # fmt: skip
                    got[key] = got.get(key, 0) + (r.status_code == 200)
            headers = r.headers
            stats = c.get(server.url + "/llmsim/stats").json()
        assert set(got.values()) == {3}, {v: list(got.values()).count(v) for v in set(got.values())}
        for name in ("limit", "remaining", "reset"):
            for kind in ("requests", "tokens"):  # all six with only --rpm set
                assert f"x-ratelimit-{name}-{kind}" in headers
        assert stats["rate_limits"]["table_full"] == 0
    finally:
        server.stop()


def test_rate_limit_table_full_is_said_not_silently_reset(monkeypatch, caplog):
    from llmsim.engine import limits

    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    rl = RateLimiter(slots=16)
    for i in range(16):  # every slot in use this minute
        assert rl.check(f"k{i}", "m", 1, rpm=1, tpm=None).allowed
    with caplog.at_level("WARNING", "llmsim.server"):
        assert rl.check("new", "m", 1, rpm=1, tpm=None).allowed  # unmetered, but said
    assert rl.snapshot()["table_full"] == 1 and "rate-limit table full" in caplog.text
    for i in range(16):  # nobody's bucket was reset by the newcomer
        assert not rl.check(f"k{i}", "m", 1, rpm=1, tpm=None).allowed
    now[0] += 61  # a minute on, every bucket is full again: slots are reused exactly
    for i in range(16, 32):
        assert rl.check(f"k{i}", "m", 1, rpm=1, tpm=None).allowed
        assert not rl.check(f"k{i}", "m", 1, rpm=1, tpm=None).allowed


def test_many_keys_never_share_a_bucket():
    rl = RateLimiter(slots=8192)
    keys = [f"k{random.random()}" for _ in range(5000)]
    assert all(rl.check(k, "m", 1, rpm=1, tpm=None).allowed for k in keys)
    assert not any(rl.check(k, "m", 1, rpm=1, tpm=None).allowed for k in keys)


def _client(**kw):
    app = create_app(Settings(profile="instant", **kw))
    return app, app.test_client()


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.mark.parametrize("exc", [RuntimeError("boom"), MemoryError()], ids=["runtime", "memory"])
def test_an_engine_failure_is_one_json_500_counted_once(exc, monkeypatch):
    app, c = _client()
    state = app.extensions["llmsim.state"]

    def broken(*a, **k):
        raise exc

    monkeypatch.setattr(state.engine, "plan", broken)
    r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500 and r.get_json()["error"]["type"] == "server_error"
    snap = state.stats.snapshot()
    assert snap["errors"] == {"server_error": 1}, snap["errors"]
    r = c.post("/v1/messages", json={**CHAT, "model": "claude-sonnet-4", "max_tokens": 5})
    assert r.status_code == 500 and r.get_json()["type"] == "error"  # Anthropic's shape


def test_fault_header_can_be_turned_off():
    _, on = _client()
    assert (
        on.post("/v1/chat/completions", json=CHAT, headers={"x-llmsim-fault": "500"}).status_code
        == 500
    )
    _, off = _client(allow_fault_header=False)
    assert (
        off.post("/v1/chat/completions", json=CHAT, headers={"x-llmsim-fault": "500"}).status_code
        == 200
    )


def test_fault_script_positions_are_bounded():
    inj = FaultInjector({}, [ScriptRule(("500", "ok"), repeat=True)], random.Random(1))
    for i in range(MAX_TRACKED_KEYS + 5000):
        inj.decide("m", f"key{i}")
    assert len(inj._positions) <= MAX_TRACKED_KEYS
    assert inj.decide("m", "again") == "500" and inj.decide("m", "again") is None


def test_stats_names_expire_when_the_table_is_full(monkeypatch):
    from llmsim.engine import stats as stats_mod

    now = [1_000_000.0]
    monkeypatch.setattr(stats_mod.time, "time", lambda: now[0])
    st = Stats(1, max_models=4, name_ttl_s=60)
    for name in ("junk1", "junk2", "junk3", "junk4"):
        slot = st.request_started(name, False)
        st.request_succeeded(slot, 1, 1, 0.01, 0.02, "stop")
    assert st.model_slot("real") == st._other  # full, nobody idle long enough
    now[0] += 61
    slot = st.model_slot("real")
    assert slot != st._other
    names = dict(st.models())
    assert "real" in names and len(names) == 5  # four named + __other__
    assert st.model_values(slot)[st.layout.m["requests"]] == 0  # starts from zero
