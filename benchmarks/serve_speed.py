"""Speed of `llmsim serve` against baseline servers on the same stack, measured in one run.

    python benchmarks/serve_speed.py            # full run (~3 minutes on a quiet machine)
    python benchmarks/serve_speed.py --quick    # shorter phases (~100 s)

Everything runs on 127.0.0.1. The server under test is pinned to core 0 and the load generator
to core 1 (taskset); with --workers 2 the server has both cores and the load generator shares
them, so those figures are for scaling, not for the ratios. Phases:

  nonstream  wrk POSTs a 16-token request (`--profile instant`, max_tokens 16, ignore_eos) to
             llmsim and to a minimal Flask-on-gevent endpoint answering a fixed completion.
  stream     wrk POSTs a 100-token streamed request to llmsim and to a bare gevent WSGI loop that
             json.dumps each chunk; events/s = responses/s x SSE events per response (counted on
             a sample response, checked against wrk's bytes per response).
  timing     serve_timing.py (raw sockets, epoll, its own core) holds 500 and 1,000 concurrent
             streams of a server with TTFT 200 ms and 20 ms per token, stddev 0.
  rss        2,000 open slow streams: server RSS growth / streams.

Prints a table and, last, one JSON line (`SERVE_SPEED {...}`).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from types import FrameType
    from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
SERVER_CPU = "0"
CLIENT_CPU = "1"
BOTH = "0,1"
URL_RE = re.compile(r"http://127\.0\.0\.1:\d+")
MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]

GOALS = {
    "nonstream_ratio": 0.8,
    "stream_ratio": 1.0,
    "ttft_p99_ms": 205.0,
    "gap_p50_ms": (19.5, 20.5),
    "gap_p99_ms": 23.0,
    "rss_kb_per_stream": 64.0,
}


# --------------------------------------------------------------------------- processes


@dataclass
class Server:
    """A server under test, started by start_server in a process group of its own."""

    name: str
    proc: subprocess.Popen
    url: str
    log: Path

    def pids(self) -> list[int]:
        """The server's pid and all its descendants'; none once it has exited."""
        try:
            p = psutil.Process(self.proc.pid)
            return [p.pid] + [c.pid for c in p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[psutil.Process]:
        """The processes that serve: the children when there are any, else the process."""
        p = psutil.Process(self.proc.pid)
        return p.children(recursive=True) or [p]

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the server and its living descendants."""
        total = 0.0
        for pid in self.pids():
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int:
        """Resident memory (bytes) of the serving processes (`workers`)."""
        return sum(w.memory_info().rss for w in self.workers())

    def stop(self) -> None:
        """SIGTERM the process group (SIGKILL after 15 s) and close the server's stdout pipe."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()


RUNNING: list[Server] = []


def start_server(name: str, cmd: list[str], cpus: str, tmp: Path) -> Server:
    """Start `cmd` pinned to `cpus` (taskset), stderr to tmp/NAME.log, and wait up to 30 s for
    the URL on its stdout; kept in RUNNING for stop_all. RuntimeError (the log's tail) if none
    comes."""
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, *cmd],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        cwd=ROOT,
        start_new_session=True,  # its own process group: stop() ends it and its workers
        text=True,
    )
    server = Server(name, proc, "", log)
    RUNNING.append(server)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = URL_RE.search(line)
        if m:
            server.url = m.group(0)
            break
    if not server.url:
        server.stop()
        raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
    # Whatever the server prints later is read and dropped, so a full pipe can never block it.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return server


def _drain(stream: IO[str]) -> None:
    """Read `stream` to its end and drop what it says."""
    for _ in stream:
        pass


def llmsim_cmd(*extra: str, workers: int = 1) -> list[str]:
    """The command line of `llmsim serve` on a free port with `workers` workers and `extra`."""
    return [PY, "-m", "llmsim", "serve", "--port", "0", "--workers", str(workers), *extra]


def baseline_cmd(kind: str) -> list[str]:
    """The command line of serve_baselines.py's `kind` server (flask, sse or paced)."""
    return [PY, str(HERE / "serve_baselines.py"), kind]


def stop_all() -> None:
    """Stop every server still in RUNNING, the last started first."""
    while RUNNING:
        RUNNING.pop().stop()


# --------------------------------------------------------------------------- helpers


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, bytes]:
    """POST `body` to the server's /v1/chat/completions on a fresh connection: (status, the
    whole response body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def count_events(data: bytes) -> tuple[int, int]:
    """(SSE events, content chunks) in a streamed body."""
    events = [e for e in data.split(b"\n\n") if e.startswith(b"data: ")]
    content = sum(1 for e in events if b'"delta":{"content":' in e or b'"delta": {"content":' in e)
    return len(events), content


def warm(url: str, stream: bool, max_tokens: int, n: int = 8) -> None:
    """Send `n` chat requests of `max_tokens` tokens (streamed if `stream`) so first-use costs
    are paid before a measurement; RuntimeError on an answer that is not a 200."""
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": max_tokens, "ignore_eos": True}
    if stream:
        body["stream"] = True
    for _ in range(n):
        status, _ = post(url, body)
        if status != 200:
            raise RuntimeError(f"warm-up request to {url} answered {status}")


def lua_script(tmp: Path, body: dict) -> Path:
    """A wrk script in `tmp` that POSTs `body` as JSON (inlined in a Lua string, so the body
    may hold no quote or backslash)."""
    payload = json.dumps(body)
    assert "'" not in payload and "\\" not in payload
    path = tmp / f"post_{abs(hash(payload))}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{payload}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


def _size(text: str) -> float:
    m = re.match(r"([\d.]+)([KMGT]?B)", text)
    if not m:
        return 0.0
    mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}[m.group(2)]
    return float(m.group(1)) * mult


def run_wrk(url: str, lua: Path, conns: int, duration: float, cpus: str | None) -> dict:
    """One wrk run (one thread, `conns` connections, `duration` s, pinned to `cpus` if given)
    of `lua` against the chat endpoint: req/s, requests, bytes per request, mean latency (ms),
    non-2xx answers, socket errors, and wrk's own CPU (% of a core and s, from wait4)."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration:g}s",
        "-s",
        str(lua),
        url + "/v1/chat/completions",
    ]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed: {out}")
    reqs = re.search(r"(\d+) requests in ([\d.]+)(m?s), ([\d.]+[KMGT]?B) read", out)
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    n = int(reqs.group(1)) if reqs else 0
    wall = float(reqs.group(2)) / (1000 if reqs and reqs.group(3) == "ms" else 1) if reqs else 1
    lat_ms = None
    if lat:
        lat_ms = float(lat.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[lat.group(2)]
    return {
        "rps": float(m.group(1)),
        "requests": n,
        "bytes_per_request": round(_size(reqs.group(4)) / n) if reqs and n else None,
        "latency_mean_ms": lat_ms,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock_err.groups())) if sock_err else 0,
        "client_cpu_pct": round(100 * (ru.ru_utime + ru.ru_stime) / wall, 1),
        "client_cpu_s": ru.ru_utime + ru.ru_stime,
    }


def busy_s() -> float:
    """CPU seconds used on the whole machine so far (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


QUIET_WAIT_S = 30.0


def wait_quiet(limit_pct: float = 25.0) -> float:
    """Wait (up to QUIET_WAIT_S) until other processes use less than limit_pct of a core.

    The machine may be shared: a test run elsewhere steals the server's core and skews
    every figure. Returns the last load seen, in % of one core.
    """
    deadline = time.monotonic() + QUIET_WAIT_S
    while True:
        b0, t0 = busy_s(), time.monotonic()
        time.sleep(0.5)
        load = 100 * (busy_s() - b0) / (time.monotonic() - t0)
        if load < limit_pct or time.monotonic() >= deadline:
            return round(load, 1)


class Meter:
    """CPU use during a measurement: the server's, and everyone else's but the client's."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.quiet_before_pct = wait_quiet()
        self.c0, self.b0, self.t0 = server.cpu_s(), busy_s(), time.monotonic()

    def stop(self, client_cpu_s: float) -> dict:
        """The server's CPU (s, % of a core) since the start, other processes' (% of a core,
        less the client's `client_cpu_s`) and the load seen before the start."""
        cpu = self.server.cpu_s() - self.c0
        busy, wall = busy_s() - self.b0, time.monotonic() - self.t0
        return {
            "server_cpu_s": round(cpu, 3),
            "server_cpu_pct": round(100 * cpu / wall, 1),
            # Anything else that ran meanwhile (other processes on a shared machine).
            "other_cpu_pct": round(100 * max(0.0, busy - cpu - client_cpu_s) / wall, 1),
            "load_before_pct": self.quiet_before_pct,
        }


def measure_wrk(server: Server, lua: Path, conns: int, duration: float, cpus: str | None) -> dict:
    """A warm-up wrk run, then a measured one under a Meter: run_wrk's figures with the
    server's CPU and its CPU per request (us)."""
    run_wrk(server.url, lua, conns, min(2.0, duration / 2), cpus)  # warm-up
    meter = Meter(server)
    result = run_wrk(server.url, lua, conns, duration, cpus)
    result.update(meter.stop(result.pop("client_cpu_s")))
    # CPU time per request does not depend on what else the machine is doing; req/s does.
    result["server_cpu_us_per_request"] = round(
        1e6 * result["server_cpu_s"] / max(1, result["requests"]), 1
    )
    return result


def run_client(args: list[str], cpus: str | None, timeout: float) -> dict:
    """Run serve_timing.py; its JSON result plus the CPU seconds it used (client_cpu_s)."""
    cmd = [PY, str(HERE / "serve_timing.py"), *args]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            out = proc.stdout.read()
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"timing client failed: {err.read()[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["client_cpu_s"] = ru.ru_utime + ru.ru_stime
    return result


# --------------------------------------------------------------------------- phases


@dataclass
class Results:
    """The table rows (figure, value, goal) and the JSON data of a run."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def row(self, what: str, value: str, goal: str = "") -> None:
        """Add a row to the table and print it at once."""
        self.rows.append((what, value, goal))
        print(f"  {what:<58} {value:>22}  {goal}", flush=True)


def phase_nonstream(res: Results, tmp: Path, duration: float, conns: int, workers2: bool) -> None:
    """wrk's 16-token non-streamed requests to the minimal Flask baseline, then to llmsim (one
    worker; with `workers2` also two): req/s, server CPU per request, and llmsim / Flask."""
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 16, "ignore_eos": True}
    lua = lua_script(tmp, body)
    out: dict = {}
    base = start_server("flask-baseline", baseline_cmd("flask"), SERVER_CPU, tmp)
    try:
        warm(base.url, False, 16)
        out["baseline"] = measure_wrk(base, lua, conns, duration, CLIENT_CPU)
    finally:
        base.stop()
    sim = start_server("llmsim", llmsim_cmd("--profile", "instant"), SERVER_CPU, tmp)
    try:
        warm(sim.url, False, 16)
        status, data = post(sim.url, body)
        reply = json.loads(data)
        assert status == 200 and reply["usage"]["completion_tokens"] == 16, data
        out["llmsim"] = measure_wrk(sim, lua, conns, duration, CLIENT_CPU)
    finally:
        sim.stop()
    ratio = out["llmsim"]["rps"] / out["baseline"]["rps"]
    out["ratio"] = round(ratio, 3)
    res.row("non-stream req/s, minimal Flask on gevent (1 core)", f"{out['baseline']['rps']:,.0f}")
    res.row("non-stream req/s, llmsim 1 worker (1 core)", f"{out['llmsim']['rps']:,.0f}")
    res.row(
        "  server CPU us per request, Flask / llmsim",
        f"{out['baseline']['server_cpu_us_per_request']:.0f} / "
        f"{out['llmsim']['server_cpu_us_per_request']:.0f}",
        f"other processes {out['baseline']['other_cpu_pct']:.0f}% / "
        f"{out['llmsim']['other_cpu_pct']:.0f}% of a core",
    )
    res.row("  ratio llmsim / Flask", f"{ratio:.2f}x", f"goal >= {GOALS['nonstream_ratio']}x")
    if workers2:
        sim = start_server("llmsim-w2", llmsim_cmd("--profile", "instant", workers=2), BOTH, tmp)
        try:
            warm(sim.url, False, 16)
            out["llmsim_workers2"] = measure_wrk(sim, lua, conns, duration, None)
        finally:
            sim.stop()
        w2 = out["llmsim_workers2"]["rps"]
        res.row(
            "non-stream req/s, llmsim --workers 2 (2 cores, wrk shares)",
            f"{w2:,.0f}",
            f"{w2 / out['llmsim']['rps']:.2f}x 1 worker",
        )
    res.data["nonstream"] = out


def phase_stream(res: Results, tmp: Path, duration: float, conns: int, workers2: bool) -> None:
    """wrk's 100-token streamed requests to the bare gevent SSE loop, then to llmsim (with
    `workers2` also two workers): SSE events/s (responses/s x events in a sample response,
    checked against wrk's bytes per response), server CPU per event, and llmsim / bare loop."""
    tokens = 100
    body = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    lua = lua_script(tmp, body)
    out: dict = {}

    def one(server: Server, cpus: str | None) -> dict:
        warm(server.url, True, tokens)
        status, data = post(server.url, body)
        events, content = count_events(data)
        if status != 200 or content != tokens:
            raise RuntimeError(f"{server.name}: {content} content chunks, expected {tokens}")
        r = measure_wrk(server, lua, conns, duration, cpus)
        r["events_per_response"] = events
        r["sample_body_bytes"] = len(data)
        # wrk counts whole responses; they are the sample's size (give or take the random text,
        # headers and chunk framing) only if every response carried all its events.
        bpr = r["bytes_per_request"] or 0
        if not 0.8 * len(data) <= bpr <= 1.25 * len(data) + 2048:
            raise RuntimeError(
                f"{server.name}: wrk read {bpr} bytes per response, a full one has {len(data)}"
            )
        r["events_per_s"] = round(r["rps"] * events)
        return r

    base = start_server("sse-baseline", baseline_cmd("sse"), SERVER_CPU, tmp)
    try:
        out["baseline"] = one(base, CLIENT_CPU)
    finally:
        base.stop()
    sim = start_server("llmsim", llmsim_cmd("--profile", "instant"), SERVER_CPU, tmp)
    try:
        out["llmsim"] = one(sim, CLIENT_CPU)
    finally:
        sim.stop()
    ratio = out["llmsim"]["events_per_s"] / out["baseline"]["events_per_s"]
    out["ratio"] = round(ratio, 3)
    b, s = out["baseline"], out["llmsim"]
    res.row(
        "stream SSE events/s, bare gevent loop (1 core)",
        f"{b['events_per_s']:,} ({b['rps']:,.0f} r/s)",
    )
    res.row(
        "stream SSE events/s, llmsim 1 worker (1 core)",
        f"{s['events_per_s']:,} ({s['rps']:,.0f} r/s)",
    )
    res.row(
        "  server CPU us per event, bare loop / llmsim",
        f"{1e6 * b['server_cpu_s'] / (b['requests'] * b['events_per_response']):.2f} / "
        f"{1e6 * s['server_cpu_s'] / (s['requests'] * s['events_per_response']):.2f}",
        f"other processes {b['other_cpu_pct']:.0f}% / {s['other_cpu_pct']:.0f}% of a core",
    )
    res.row("  ratio llmsim / bare loop", f"{ratio:.2f}x", f"goal >= {GOALS['stream_ratio']}x")
    if workers2:
        sim = start_server("llmsim-w2", llmsim_cmd("--profile", "instant", workers=2), BOTH, tmp)
        try:
            out["llmsim_workers2"] = one(sim, None)
        finally:
            sim.stop()
        w2 = out["llmsim_workers2"]
        res.row(
            "stream SSE events/s, llmsim --workers 2 (2 cores, wrk shares)",
            f"{w2['events_per_s']:,} ({w2['rps']:,.0f} r/s)",
            f"{w2['events_per_s'] / s['events_per_s']:.2f}x 1 worker",
        )
    res.data["stream"] = out


TIMING_FLAGS = (
    "--ttft-ms",
    "200",
    "--ttft-stddev-ms",
    "0",
    "--tbt-ms",
    "20",
    "--tbt-stddev-ms",
    "0",
)


def phase_timing(
    res: Results, tmp: Path, streams_list: list[int], duration: float, workers: int
) -> None:
    """For each count of `streams_list`, serve_timing.py's closed-loop streams of 100 tokens
    against llmsim with TTFT 200 ms and 20 ms a token, `duration` s measured: TTFT and gap
    percentiles (ms), completed streams, errors, and client, server and others' CPU."""
    out = res.data.setdefault("timing", {})
    cpus, client_cpus = (SERVER_CPU, CLIENT_CPU) if workers == 1 else (BOTH, None)
    for streams in streams_list:
        sim = start_server(
            f"llmsim-timing-{streams}-w{workers}",
            llmsim_cmd(*TIMING_FLAGS, workers=workers),
            cpus,
            tmp,
        )
        try:
            warm(sim.url, True, 2, n=4)
            meter = Meter(sim)
            r = run_client(
                [
                    "timing",
                    "--url",
                    sim.url,
                    "--streams",
                    str(streams),
                    "--tokens",
                    "100",
                    "--ramp-s",
                    "2.2",
                    "--duration-s",
                    f"{duration:g}",
                ],
                client_cpus,
                timeout=duration + 60,
            )
            r.update(meter.stop(r["client_cpu_s"]))
            r["server_cpu_us_per_event"] = round(
                1e6 * r["server_cpu_s"] / max(1, r["events_total"]), 2
            )
        finally:
            sim.stop()
        key = f"{streams}_streams_workers{workers}"
        out[key] = r
        t, g = r["ttft_ms"], r["gap_ms"]
        label = f"{streams} streams, {workers} worker{'s' if workers > 1 else ''}"
        res.row(
            f"TTFT ms p50/p90/p99/max, {label}",
            f"{t['p50']:.1f}/{t['p90']:.1f}/{t['p99']:.1f}/{t['max']:.1f}",
            f"goal p99 <= {GOALS['ttft_p99_ms']:g}" if streams == 500 else "",
        )
        res.row(
            f"gap ms p50/p90/p99/max, {label}",
            f"{g['p50']:.2f}/{g['p90']:.2f}/{g['p99']:.2f}/{g['max']:.1f}",
            "goal p50 20+-0.5, p99 <= 23" if streams == 500 else "",
        )
        res.row(
            f"  streams done / errors, {label}",
            f"{r['streams_done']} / {r['errors']}",
            f"CPU: client {r['client_cpu_pct']:.0f}%, server {r['server_cpu_pct']:.0f}% "
            f"({r['server_cpu_us_per_event']:.1f} us/event), others {r['other_cpu_pct']:.0f}%",
        )


def phase_rss(res: Results, tmp: Path, streams: int, workers: int) -> None:
    """RSS per open stream (KB): the server's RSS after a warm-up, then while serve_timing.py
    holds `streams` slow streams (TTFT 50 ms, one token a second) open."""
    out = res.data.setdefault("rss", {})
    cpus, client_cpus = (SERVER_CPU, CLIENT_CPU) if workers == 1 else (BOTH, None)
    flags = ("--ttft-ms", "50", "--ttft-stddev-ms", "0", "--tbt-ms", "1000", "--tbt-stddev-ms", "0")
    sim = start_server(f"llmsim-rss-w{workers}", llmsim_cmd(*flags, workers=workers), cpus, tmp)
    client = None
    try:
        # Warm every worker: a few full streams and some concurrency, so first-use allocations
        # (encodings, imports, greenlet pool growth) are not counted as per-stream cost.
        run_client(
            [
                "timing",
                "--url",
                sim.url,
                "--streams",
                "50",
                "--tokens",
                "3",
                "--ramp-s",
                "0.2",
                "--duration-s",
                "1",
            ],
            client_cpus,
            timeout=60,
        )
        time.sleep(0.5)
        rss0 = sim.rss()
        cmd = [
            PY,
            str(HERE / "serve_timing.py"),
            "hold",
            "--url",
            sim.url,
            "--streams",
            str(streams),
            "--tokens",
            "1000",
            "--hold-s",
            "60",
        ]
        if client_cpus:
            cmd = ["taskset", "-c", client_cpus, *cmd]
        client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = client.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"hold client: {line!r}")
        live = int(line.split()[1])
        time.sleep(1.0)  # a tick or so of every stream
        rss1 = sim.rss()
        client.stdin.write("stop\n")
        client.stdin.flush()
        client.wait(timeout=30)
        client.stdout.close()
        client.stdin.close()
        client = None
    finally:
        if client is not None:
            client.kill()
            client.wait()
        sim.stop()
    per = (rss1 - rss0) / max(1, live) / 1024
    out[f"workers{workers}"] = {
        "streams": live,
        "rss_before_mb": round(rss0 / 2**20, 1),
        "rss_open_mb": round(rss1 / 2**20, 1),
        "kb_per_stream": round(per, 1),
    }
    res.row(
        f"RSS per open stream, {live} streams, {workers} worker{'s' if workers > 1 else ''}",
        f"{per:.1f} KB",
        f"goal <= {GOALS['rss_kb_per_stream']:g} KB ({rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MB)",
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the chosen phases and print the table and, last, the `SERVE_SPEED` line; returns 2
    without wrk, taskset or a second core. SIGTERM stops every server before exiting."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter phases (~2 minutes)")
    p.add_argument(
        "--only",
        default="nonstream,stream,timing,rss",
        help="comma-separated phases to run (nonstream, stream, timing, rss)",
    )
    p.add_argument("--no-workers2", action="store_true", help="skip the --workers 2 figures")
    p.add_argument("--wrk-s", type=float, default=None, help="seconds per wrk phase")
    p.add_argument("--timing-s", type=float, default=None, help="measured seconds per timing run")
    p.add_argument(
        "--quiet-wait-s",
        type=float,
        default=None,
        help="wait up to this long before each phase for other processes to go quiet "
        "(default 30, 5 with --quick)",
    )
    args = p.parse_args(argv)
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            print(f"serve_speed: {tool} is not installed", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print(
            "serve_speed: needs 2 cores (server on one, load generator on the other)",
            file=sys.stderr,
        )
        return 2
    wrk_s = args.wrk_s or (4.0 if args.quick else 10.0)
    timing_s = args.timing_s or (4.0 if args.quick else 10.0)
    global QUIET_WAIT_S
    if args.quiet_wait_s is not None:
        QUIET_WAIT_S = args.quiet_wait_s
    elif args.quick:
        QUIET_WAIT_S = 5.0
    phases = set(args.only.split(","))
    workers2 = not args.no_workers2
    res = Results()
    res.data["date"] = datetime.date.today().isoformat()
    res.data["command"] = "python benchmarks/serve_speed.py" + (" --quick" if args.quick else "")
    started = time.monotonic()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="serve_speed_") as d:
        tmp = Path(d)
        try:
            if "nonstream" in phases:
                print("non-streaming (wrk, 64 connections)", flush=True)
                phase_nonstream(res, tmp, wrk_s, 64, workers2)
            if "stream" in phases:
                print("streaming (wrk, 32 connections)", flush=True)
                phase_stream(res, tmp, wrk_s, 32, workers2)
            if "timing" in phases:
                print("timing under load (TTFT 200 ms, 20 ms/token, 100 tokens)", flush=True)
                phase_timing(res, tmp, [500, 1000], timing_s, 1)
                if workers2:
                    phase_timing(res, tmp, [500, 1000], timing_s, 2)
            if "rss" in phases:
                print("memory per open stream", flush=True)
                n = 2000
                phase_rss(res, tmp, n, 1)
                if workers2:
                    phase_rss(res, tmp, n, 2)
        finally:
            stop_all()
    res.data["elapsed_s"] = round(time.monotonic() - started, 1)
    print()
    print(f"llmsim serve speed, {res.data['date']}, {res.data['command']}")
    print(f"| {'figure':<62} | {'value':>24} | goal / note |")
    print(f"|{'-' * 64}|{'-' * 26}|------|")
    for what, value, goal in res.rows:
        print(f"| {what:<62} | {value:>24} | {goal} |")
    print("SERVE_SPEED " + json.dumps(res.data, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
