"""`llmsim bench` end to end: real simulator, real Locust, exact timing, every report file.

Timing is exact (TTFT 50 ms, 5 ms per token, no jitter) so figures can be checked tightly; runs
are a few seconds and a few users so the whole file stays around a minute on two cores.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
EXACT = ["--ttft-ms", "50", "--ttft-stddev-ms", "0", "--tbt-ms", "5", "--tbt-stddev-ms", "0"]
WORKLOAD = ["--max-tokens", "20", "--prompt-tokens", "64"]
# 50 ms to the first token, then 19 more tokens 5 ms apart.
E2E_MS = 50 + 19 * 5


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSIM_")}
    env.pop("OPENAI_API_KEY", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


class Bench:
    """Starts `llmsim bench …` (and `llmsim worker …`) and makes sure nothing outlives a test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.reports = tmp_path / "reports"
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, cmd: str = "bench") -> subprocess.Popen:
        extra = ["--reports-dir", str(self.reports), "--no-progress"] if cmd == "bench" else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmsim", cmd, *extra, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tmp,
            env=_env(),
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 60) -> tuple[int, str, str]:
        proc = self.start(*args)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def run_dir(self) -> Path:
        dirs = sorted(p for p in self.reports.iterdir() if p.is_dir())
        assert len(dirs) == 1, dirs
        return dirs[0]

    def cleanup(self) -> None:
        for proc in self.procs:
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                family = []
            if proc.poll() is None:
                proc.kill()
            for child in family:
                try:
                    child.kill()
                except psutil.Error:
                    pass
            proc.wait(10)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path)
    yield b
    b.cleanup()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# --------------------------------------------------------------------------- headless run


def test_headless_run_writes_every_report_with_exact_figures(bench: Bench) -> None:
    code, out, err = bench.run(
        "--users", "4", "--spawn-rate", "4", "--duration", "4s", *EXACT, *WORKLOAD,
        "--slo", "ttft_p50<=60ms", "--slo", "error_rate<=1%", "--label", "exact",
        "--json", "--", "--llm-ignore-eos",
    )  # fmt: skip
    assert code == 0, err
    run_dir = bench.run_dir()
    assert run_dir.name.endswith("-exact")
    summary = read_summary(run_dir)
    assert json.loads(out) == summary  # --json: stdout is the summary and nothing else

    # Every file the README promises.
    for name in (
        "summary.json", "summary.md", "requests.csv", "timeseries.csv", "report.html",
        "llm_metrics.json", "locust_stats.csv", "locust_stats_history.csv",
        "locust_failures.csv", "locust_report.html", "locust_stats.json", "locust.log",
        "server.log",
    ):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert sorted(summary["files"]) == sorted(p.name for p in run_dir.iterdir())

    # Figures: the simulator's timing is exact, so the client's must be too.
    ttft, tpot, e2e, itl = (summary[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms"))
    for block in (ttft, tpot, e2e, itl):
        assert set(block) == {"p50", "p90", "p95", "p99", "mean", "min", "max", "count"}
    # 50 ms planned; up to 3 ms on a quiet machine. With a load average of 8 on 2 cores from
    # other work, main's code measured 53.1 too: the bound leaves room for that.
    assert 50 <= ttft["p50"] <= 56, ttft
    assert 4.8 <= tpot["p50"] <= 5.3, tpot
    assert E2E_MS <= e2e["p50"] <= E2E_MS + 5, e2e
    assert 4.5 <= itl["p50"] <= 5.5 and itl["count"] >= 19 * ttft["count"] * 0.9, itl
    req, tok = summary["requests"], summary["tokens"]
    # 4 users back to back for ~4 s at ~146 ms per request: about 100 requests.
    assert 60 <= req["total"] <= 120 and req["failed"] == 0, req
    assert tok["output_total"] == 20 * req["total"] and tok["source"] == "usage"
    assert tok["input_total"] == 64 * req["total"]
    # About its --duration: a loaded machine stretches it by up to a second (4.6 s seen at a
    # load average above 5), while a run that waited out --stop-timeout (5 s) would be ~9 s.
    assert 3.4 <= summary["duration_s"] <= 5.5, summary["duration_s"]
    # Rates are over the measured window (--duration from the start): the requests that
    # ended in it, not those finishing during the wind-down after it.
    assert summary["window"]["start_s"] == 0 and summary["window"]["duration_s"] == 4
    t0 = dt.datetime.fromisoformat(summary["started_at"]).timestamp()
    rows = read_csv(run_dir / "requests.csv")
    ended = sum(1 for r in rows if t0 <= float(r["end_time"]) < t0 + 4)
    assert req["per_s"] == pytest.approx(ended / 4, abs=0.3)
    assert tok["output_per_s"] == pytest.approx(20 * req["per_s"], rel=1e-2)
    assert summary["whole_run"]["requests"]["total"] == req["total"]
    assert summary["target_kind"] == "embedded" and summary["target"].startswith("http://127.")
    assert summary["users"] == 4 and summary["users_peak"] == 4
    assert summary["errors"] == {}
    fid = summary["fidelity"]
    # Measured minus planned first token: a few ms on a quiet machine; the bound leaves room for a
    # loaded one (3.2 ms was seen with another test suite sharing the 2 cores).
    assert fid["planned_ttft_ms"]["p50"] == 50 and 0 <= fid["ttft_ms"]["p50"] <= 8, fid
    assert abs(fid["ttft_p50_error_pct"]) <= 6
    # The simulator's own share, from its /llmsim/stats: every stream's first event counted.
    own = fid["simulator_lateness_ms"]["first_event"]
    assert own["count"] >= summary["whole_run"]["requests"]["total"], fid
    assert own["p50_ms"] <= 5, fid
    assert summary["slo"]["passed"] and summary["status"] == "passed"
    assert summary["exit_code"] == 0
    assert summary["config"]["simulator"]["ttft_ms"] == 50
    # The address the embedded simulator really listened on (it said serve's default, 8080).
    sim_host, sim_port = summary["target"].removeprefix("http://").split("/")[0].split(":")
    assert summary["config"]["simulator"]["port"] == int(sim_port) != 8080
    assert summary["config"]["simulator"]["host"] == sim_host
    assert summary["config"]["locust_args"] == ["--llm-ignore-eos"]
    # What the user class actually sent, as resolved inside Locust.
    workload = summary["config"]["workload"]["ChatUser"]
    assert workload["max_tokens"] == "20" and workload["ignore_eos"] is True
    assert summary["model"] == workload["model"]
    roles = {p["role"] for p in summary["client"]["processes"]}
    assert {"simulator", "locust", "bench"} <= roles

    # requests.csv: one row per request.
    rows = read_csv(run_dir / "requests.csv")
    assert len(rows) == req["total"]
    assert {r["status"] for r in rows} == {"ok"} and {r["output_tokens"] for r in rows} == {"20"}

    # timeseries.csv: one row per second, adding up to the totals.
    series = read_csv(run_dir / "timeseries.csv")
    assert 4 <= len(series) <= 6
    assert sum(int(r["requests_per_s"]) for r in series) == req["total"]
    assert sum(float(r["output_tokens_per_s"]) for r in series) == pytest.approx(
        tok["output_total"], abs=1
    )
    assert max(int(r["users"]) for r in series) == 4
    # Users and in-flight are both each second's end (users lagged a second behind): a closed
    # loop never has more requests in flight than users. Seconds 0-2 end before the run does
    # (at the wind-down a user stops a moment after its request ends, and the sample is late).
    assert all(int(r["users"]) >= int(r["in_flight"]) for r in series[:3]), series
    full = [r for r in series[1:-1] if r["ttft_p50_ms"]]
    assert full and all(50 <= float(r["ttft_p50_ms"]) <= 55 for r in full)

    md = (run_dir / "summary.md").read_text()
    assert "## Latency" in md and "| TTFT |" in md and "| ttft_p50<=60ms |" in md
    page = (run_dir / "report.html").read_text()
    assert page.count("<svg") >= 5 and "<script" not in page
    assert "all SLOs met" in page
    # ITL is drawn as a histogram from llm_metrics.json's bucket counts, not a percentile ladder.
    assert "ITL distribution" in page and "ITL distribution (percentiles)" not in page
    llm = json.loads((run_dir / "llm_metrics.json").read_text())
    assert sum(c for _, c in llm["histograms"]["itl_ms"]) == llm["metrics"]["itl_ms"]["count"]


def test_slo_failure_exits_1_against_a_separate_target(bench: Bench, llmsim_server) -> None:
    server = llmsim_server(*EXACT)
    code, out, err = bench.run(
        "--target", server.base_url, "--users", "2", "--duration", "2s", *WORKLOAD,
        "--slo", "ttft_p50<=20ms", "--slo", "error_rate<=1%",
    )  # fmt: skip
    assert code == 1, err
    summary = read_summary(bench.run_dir())
    assert summary["target"] == server.base_url and summary["target_kind"] == "external"
    assert summary["status"] == "slo_failed" and summary["slo"]["passed"] is False
    results = {r["slo"]: r["passed"] for r in summary["slo"]["results"]}
    assert results == {"ttft_p50<=20ms": False, "error_rate<=1%": True}
    assert summary["fidelity"] is not None  # the target is llmsim: it sends its plan
    # See the headless test; through the recorder bench runs in front of a target: one more
    # loopback hop, and a process of its own to schedule on a loaded machine.
    assert 50 <= summary["ttft_ms"]["p50"] <= 75  # 63 ms seen on a loaded machine
    assert "FAIL" in out and "SLO FAILED" in out
    assert server.proc.poll() is None  # bench never stops a target it did not start
    # Against a --target bench records every request through llmsim record by default.
    lines = (bench.run_dir() / "recording.jsonl").read_text().splitlines()
    recorded = [json.loads(x) for x in lines]
    assert len(recorded) >= summary["requests"]["total"] > 0
    ttfts = sorted(x["ttft_ms"] for x in recorded if x["ttft_ms"] is not None)
    assert 50 <= ttfts[len(ttfts) // 2] <= 60  # the recorder saw the first token, unbuffered


def test_embeddings_report_shows_what_was_sent(bench: Bench) -> None:
    # The workload said stream: true and max_tokens 128, though an embeddings body has neither.
    code, _, err = bench.run("--api", "embeddings", "--users", "2", "--duration", "1s")
    assert code == 0, err
    run_dir = bench.run_dir()
    summary = read_summary(run_dir)
    assert summary["requests"]["total"] > 0 and summary["requests"]["failed"] == 0
    workload = summary["config"]["workload"]["EmbeddingsUser"]
    assert workload["stream"] is False and workload["max_tokens"] is None, workload
    assert workload["ignore_eos"] is None and workload["include_usage"] is None, workload
    page = (run_dir / "report.html").read_text()
    assert "workload.EmbeddingsUser.stream</td><td>false" in page
    assert "workload.EmbeddingsUser.max_tokens" not in page


# --------------------------------------------------------------------------- distributed


def _check_merged(summary: dict, run_dir: Path) -> None:
    req = summary["requests"]
    # Workers join late on a busy machine (their warm-up), so a 4 s run may hold fewer requests;
    # what this checks is that both workers' figures are merged, not the machine's speed.
    assert req["total"] >= 20 and req["failed"] == 0, req
    assert 50 <= summary["ttft_ms"]["p50"] <= 60
    assert 4.8 <= summary["tpot_ms"]["p50"] <= 5.6
    assert summary["tokens"]["output_total"] == 20 * req["total"]
    rows = read_csv(run_dir / "requests.csv")
    assert len(rows) == req["total"]
    assert summary["itl_ms"]["count"] >= 19 * req["total"] * 0.9


def test_processes_2_merges_both_workers(bench: Bench) -> None:
    code, _, err = bench.run(
        "--users", "4", "--spawn-rate", "4", "--duration", "4s", "--processes", "2",
        *EXACT, *WORKLOAD, "--", "--llm-ignore-eos",
    )  # fmt: skip
    assert code == 0, err
    run_dir = bench.run_dir()
    summary = read_summary(run_dir)
    _check_merged(summary, run_dir)
    children = [p for p in summary["client"]["processes"] if p["role"] == "locust child"]
    assert len(children) == 2


def test_master_with_two_workers_on_loopback(bench: Bench) -> None:
    port = free_port()
    master = bench.start(
        "--users", "4", "--spawn-rate", "4", "--duration", "4s", "--master",
        "--expect-workers", "2", "--master-bind-host", "127.0.0.1",
        "--master-bind-port", str(port), *EXACT, *WORKLOAD, "--", "--llm-ignore-eos",
    )  # fmt: skip
    time.sleep(1.0)
    workers = [
        bench.start("--master-host", "127.0.0.1", "--master-port", str(port), cmd="worker")
        for _ in range(2)
    ]
    out, err = master.communicate(timeout=60)
    assert master.returncode == 0, err
    for w in workers:
        assert w.wait(20) == 0
    run_dir = bench.run_dir()
    _check_merged(read_summary(run_dir), run_dir)
    assert "2 workers" in out


# --------------------------------------------------------------------------- web UI and Ctrl-C


def _post(url: str, data: bytes = b"") -> dict:
    req = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _wait_for(predicate, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _web_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/stats/requests", timeout=1):
            return True
    except OSError:
        return False


def test_web_mode_run_started_and_stopped_over_http(bench: Bench) -> None:
    port = free_port()
    proc = bench.start("--web", "--web-port", str(port), *EXACT, *WORKLOAD)
    ui = f"http://127.0.0.1:{port}"
    _wait_for(lambda: _web_up(ui), what="the web UI")
    started = _post(ui + "/swarm", b"user_count=3&spawn_rate=3")
    assert started["success"], started
    time.sleep(2.5)
    assert _post(ui + "/stop")["success"]
    # The run's reports are written when it stops, while the UI stays up for another run.
    run_dir = bench.reports
    _wait_for(lambda: any(run_dir.glob("*/summary.json")), what="the reports after /stop")
    assert proc.poll() is None and _web_up(ui)
    summary = read_summary(bench.run_dir())
    assert summary["requests"]["total"] > 10 and not summary["interrupted"]
    assert 50 <= summary["ttft_ms"]["p50"] <= 56  # as in the headless test: room for load
    proc.send_signal(signal.SIGINT)  # Ctrl-C quits; the reports are rewritten with Locust's
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    run = bench.run_dir()
    for name in ("report.html", "summary.md", "timeseries.csv", "locust_report.html"):
        assert (run / name).is_file(), name
    final = read_summary(run)
    assert final["requests"]["total"] == summary["requests"]["total"]
    assert "report:" in out


def test_ctrl_c_stops_everything_and_still_writes_reports(bench: Bench) -> None:
    proc = bench.start("--users", "3", "--spawn-rate", "3", "--duration", "60s", *EXACT, *WORKLOAD)
    _wait_for(
        lambda: (
            any(bench.reports.glob("*/requests.csv"))
            and (next(bench.reports.glob("*/requests.csv")).stat().st_size > 500)
        ),
        what="requests being written",
    )
    kids = psutil.Process(proc.pid).children(recursive=True)
    assert kids
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - start < 15
    summary = read_summary(bench.run_dir())
    assert summary["interrupted"] is True and summary["requests"]["total"] > 0
    assert summary["duration_s"] < 30
    assert any("interrupted" in w for w in summary["warnings"])
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, alive


# --------------------------------------------------------------------------- cannot start


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmsim: error: "), err
    return lines[0]


def test_taken_web_port_is_one_line(bench: Bench) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = _one_line_error(*bench.run("--web", "--web-port", str(port)))
    assert f"port {port} on 127.0.0.1 is already in use (--web-port)" in line
    assert not bench.reports.exists() or not any(bench.reports.iterdir())


def test_taken_simulator_port_is_one_line(bench: Bench, llmsim_server) -> None:
    server = llmsim_server(*EXACT)
    port = server.url.rsplit(":", 1)[1]
    line = _one_line_error(*bench.run("--port", port, "--duration", "2s"))
    assert "embedded simulator did not start" in line and f"port {port}" in line


def test_unreachable_target_is_one_line(bench: Bench) -> None:
    port = free_port()
    line = _one_line_error(*bench.run("--target", f"http://127.0.0.1:{port}", "--duration", "2s"))
    assert f"target http://127.0.0.1:{port}/v1 is unreachable: connection refused" in line


def test_broken_locustfile_is_one_line(bench: Bench) -> None:
    bad = bench.tmp / "bad_users.py"
    bad.write_text("from locust import HttpUser\nclass U(HttpUser:\n    pass\n")
    line = _one_line_error(*bench.run("--locustfile", str(bad), "--duration", "2s"))
    assert "Locust did not start a run" in line and "SyntaxError" in line
    missing = _one_line_error(*bench.run("--locustfile", "nope.py"))
    assert "--locustfile nope.py: no such file" in missing


def test_api_key_reaches_a_keyed_target(bench: Bench, llmsim_server) -> None:
    server = llmsim_server("--api-keys", "sk-one", *EXACT)
    code, _, err = bench.run(
        "--target", server.base_url, "--api-key", "sk-one", "--users", "1", "--duration", "1s",
        *WORKLOAD,
    )  # fmt: skip
    assert code == 0, err
    summary = read_summary(bench.run_dir())
    assert summary["requests"]["total"] > 0 and summary["requests"]["failed"] == 0, summary
    assert "sk-one" not in json.dumps(summary)  # never written to a report
