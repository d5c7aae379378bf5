"""Locust (as a subprocess) against a real `llmsim serve` with exact timing.

Locust runs in its own process: `import locust` monkey-patches everything with gevent, which has
no place in the pytest process that also starts servers.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
CHAT = REPO / "locustfiles" / "chat.py"
EXACT = ("--ttft-ms", "123", "--ttft-stddev-ms", "0", "--tbt-ms", "17", "--tbt-stddev-ms", "0")


@dataclass
class LocustRun:
    returncode: int
    output: str
    summary: dict
    rows: list[dict]
    stats: dict[tuple[str, str], dict]
    failures: list[dict]


def locust_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLMSIM_", "LOCUST_")) and k != "OPENAI_API_KEY"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def run_locust(
    locustfile: Path, host: str, out: Path, *args: str, timeout: float = 90
) -> LocustRun:
    """Run `python -m locust --headless` to completion and collect everything it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    if "--processes" in args:
        # Locust's master port defaults to 5557 for everyone: another run on the machine would
        # take our workers (or we theirs).
        port = str(free_port())
        args = (*args, "--master-bind-port", port, "--master-port", port)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        *(("--host", host) if host else ()),
        "--headless",
        "--only-summary",
        "--csv",
        str(out / "locust"),
        "--llm-results-dir",
        str(out),
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=locust_env(), cwd=REPO
    )
    output = proc.stdout + proc.stderr
    (out / "locust.log").write_text(output)
    summary_path = out / "llm_metrics.json"
    assert summary_path.exists(), output[-3000:]
    stats = {(r["Type"], r["Name"]): r for r in _read_csv(out / "locust_stats.csv")}
    return LocustRun(
        proc.returncode,
        output,
        json.loads(summary_path.read_text()),
        _read_csv(out / "requests.csv"),
        stats,
        _read_csv(out / "locust_failures.csv"),
    )


def exact_percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * pct / 100)) - 1]


def test_exact_timing_tokens_and_rows(llmsim_server, tmp_path):
    server = llmsim_server(*EXACT)
    run = run_locust(
        CHAT,
        server.base_url,
        tmp_path,
        "-u",
        "10",
        "-r",
        "10",
        "-t",
        "60s",  # a cap: the run ends when every user has made its 8 requests
        "--llm-requests-per-user",
        "8",
        "--llm-max-tokens",
        "16",
        "--llm-prompt-tokens",
        "64",
        "--llm-ignore-eos",
    )
    s = run.summary
    assert run.returncode == 0, run.output[-2000:]
    assert s["requests"] == {"total": 80, "ok": 80, "failed": 0}
    assert s["duration_s"] < 30
    assert s["tokens"]["source"] == "usage"
    assert len(run.rows) == 80
    for row in run.rows:
        assert (row["status"], row["output_tokens"], row["input_tokens"]) == ("ok", "16", "64")
    m = s["metrics"]
    # Bounds leave room for a busy shared 2-core machine; benchmarks/locust_accuracy.py
    # measures the real error (about +1 ms, most of it the server's own).
    assert m["ttft_ms"]["min"] >= 123 and m["ttft_ms"]["p50"] <= 129, m["ttft_ms"]
    assert 16.5 <= m["tpot_ms"]["p50"] <= 17.5, m["tpot_ms"]
    assert 16.0 <= m["itl_ms"]["p50"] <= 18.0, m["itl_ms"]
    assert m["itl_ms"]["count"] == 80 * 15
    assert 0 <= m["fidelity_ttft_ms"]["p50"] <= 6, m["fidelity_ttft_ms"]
    assert s["tokens"]["output"] == 16 * 80 and s["tokens"]["input"] == 64 * 80

    # Locust's own rows: E2E request row, TTFT/TPOT rows with our finer percentiles (not ints),
    # and an Aggregated row that counts requests only.
    post = run.stats[("POST", "/v1/chat/completions")]
    ttft = run.stats[("TTFT", "/v1/chat/completions")]
    tpot = run.stats[("TPOT", "/v1/chat/completions")]
    agg = run.stats[("", "Aggregated")]
    assert agg["Request Count"] == post["Request Count"] == ttft["Request Count"] == "80"
    assert 123 <= float(ttft["50%"]) <= 129
    assert 16.5 <= float(tpot["50%"]) <= 17.5
    assert float(post["Median Response Time"]) >= 123 + 15 * 17


def test_counted_tokens_without_usage_and_non_streaming(llmsim_server, tmp_path):
    server = llmsim_server("--profile", "fast", "--ttft-stddev-ms", "0", "--tbt-stddev-ms", "0")
    common = ("-u", "4", "-r", "4", "-t", "2s", "--llm-max-tokens", "12", "--llm-ignore-eos")
    # the bare host: /v1 is added
    counted = run_locust(CHAT, server.url, tmp_path / "counted", *common, "--llm-no-usage")
    assert counted.summary["tokens"]["source"] == "counted"
    assert {r["output_tokens"] for r in counted.rows} == {"12"}
    assert {r["input_tokens"] for r in counted.rows} == {"128"}  # known from the prompt built

    whole = run_locust(CHAT, server.base_url, tmp_path / "whole", *common, "--llm-no-stream")
    assert whole.summary["requests"]["failed"] == 0
    assert whole.summary["metrics"]["ttft_ms"]["count"] == 0  # no stream, no TTFT
    assert whole.summary["metrics"]["e2e_ms"]["count"] == whole.summary["requests"]["total"]
    assert {r["output_tokens"] for r in whole.rows} == {"12"}
    assert ("TTFT", "/v1/chat/completions") not in whole.stats


def test_processes_2_merge_matches_a_single_process(llmsim_server, tmp_path):
    server = llmsim_server(*EXACT)
    args = (
        "-u",
        "6",
        "-r",
        "100",
        "-t",
        "60s",  # a cap: the run ends when every user has made its 5 requests
        "--llm-requests-per-user",
        "5",
        "--llm-max-tokens",
        "10",
        "--llm-ignore-eos",
        "--llm-prompt-tokens",
        "100",
    )
    single = run_locust(CHAT, server.base_url, tmp_path / "single", *args)
    multi = run_locust(CHAT, server.base_url, tmp_path / "multi", *args, "--processes", "2")
    for run in (single, multi):
        assert run.returncode == 0, run.output[-2000:]
    a, b = single.summary, multi.summary
    assert a["requests"] == b["requests"] == {"total": 30, "ok": 30, "failed": 0}
    assert a["tokens"] == b["tokens"]
    for name in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "fidelity_ttft_ms"):
        assert a["metrics"][name]["count"] == b["metrics"][name]["count"], name
    assert b["metrics"]["itl_ms"]["count"] == 30 * 9
    # Two separate runs on a shared machine differ by their timing noise, not by the merge
    # (which is checked exactly below): loose bounds here.
    assert abs(a["metrics"]["ttft_ms"]["p50"] - b["metrics"]["ttft_ms"]["p50"]) <= 6
    assert abs(a["metrics"]["tpot_ms"]["p50"] - b["metrics"]["tpot_ms"]["p50"]) <= 0.5

    # The master's merged percentiles equal the exact ones over every worker's requests.
    assert len(multi.rows) == 30
    for col, name in (("ttft_ms", "ttft_ms"), ("e2e_ms", "e2e_ms"), ("tpot_ms", "tpot_ms")):
        values = [float(r[col]) for r in multi.rows]
        for pct in (50, 90, 99):
            exact = exact_percentile(values, pct)
            got = b["metrics"][name][f"p{pct}"]
            assert abs(got - exact) <= max(0.051, exact * 0.005) + 0.001, (name, pct)
        assert b["metrics"][name]["max"] == pytest.approx(max(values), abs=0.001)

    # Locust's rows merged across workers too, and the Aggregated row is not inflated.
    for run in (single, multi):
        assert run.stats[("TTFT", "/v1/chat/completions")]["Request Count"] == "30"
        assert run.stats[("", "Aggregated")]["Request Count"] == "30"
    assert b["series"]["users"] and max(b["series"]["users"]) == 6


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def test_web_ui_llm_tab_csv_and_results_on_sigterm(llmsim_server, tmp_path):
    server = llmsim_server("--profile", "fast", "--ttft-stddev-ms", "0", "--tbt-stddev-ms", "0")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(CHAT),
        "--host",
        server.base_url,
        "--web-host",
        "127.0.0.1",
        "--web-port",
        str(port),
        "--autostart",
        "-u",
        "3",
        "-r",
        "3",
        "--llm-max-tokens",
        "8",
        "--llm-results-dir",
        str(tmp_path),
    ]
    log = (tmp_path / "locust.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=locust_env(), cwd=REPO)
    try:
        base = f"http://127.0.0.1:{port}"
        rows: list[dict] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                data = json.loads(_get(base + "/stats/requests"))
            except OSError:
                continue
            tabs = {t["key"]: t["data"] for t in data.get("extended_stats", [])}
            rows = tabs.get("llm", [])
            ttft = next((r for r in rows if r["metric"].startswith("TTFT (")), None)
            if ttft and ttft["count"] > 20:
                break
        assert ttft and ttft["count"] > 20, rows
        metrics = {r["metric"] for r in rows}
        expected = {"ITL, inter-token gap (ms)", "TPOT (ms)", "E2E (ms)", "In-flight streams"}
        assert expected <= metrics
        assert any(m.startswith("Output tokens/s") for m in metrics)
        page = _get(base + "/").decode()
        assert '"extended_tabs"' in page or "extended_tabs" in page
        csv_text = _get(base + "/llm/csv").decode()
        assert csv_text.startswith("metric,count,mean,min,p50") and "TTFT (ms)" in csv_text
        # The live charts: linked from the UI, drawn offline with the vendored uPlot.
        assert 'href="./llm/charts"' in page
        charts = _get(base + "/llm/charts").decode()
        assert '<script src="uplot.js">' in charts and "http" not in charts.split("<script")[1]
        # Value axes sized to their labels: uPlot's fixed 50 px showed 18,000 tok/s as "8,000".
        assert charts.count("size: axisSize") == 2
        assert b"uPlot" in _get(base + "/llm/uplot.js")
        points: list[dict] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(p.get("ttft_p50") for p in points):
            time.sleep(1)
            points = json.loads(_get(base + "/llm/series?since=0"))["points"]
        p = next(p for p in points if p.get("ttft_p50"))
        assert p["itl_p50"] is not None and p["out_tps"] > 0 and p["rps"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    summary = json.loads((tmp_path / "llm_metrics.json").read_text())
    rows_written = _read_csv(tmp_path / "requests.csv")
    assert summary["requests"]["total"] == len(rows_written) > 20


def test_mixed_and_multiturn_locustfiles(llmsim_server, tmp_path):
    server = llmsim_server("--profile", "fast", "--ttft-stddev-ms", "0", "--tbt-stddev-ms", "0")
    finite = ("-t", "60s", "--llm-max-tokens", "5", "--llm-ignore-eos", "--llm-seed", "1")
    mixed = run_locust(
        REPO / "locustfiles" / "mixed.py",
        server.base_url,
        tmp_path / "mixed",
        "-u",
        "4",
        "-r",
        "4",
        "--llm-requests-per-user",
        "3",
        *finite,
    )
    assert mixed.summary["requests"] == {"total": 12, "ok": 12, "failed": 0}
    by_name: dict[str, list[int]] = {}
    for row in mixed.rows:
        by_name.setdefault(row["name"], []).append(int(row["input_tokens"]))
    assert len(by_name["short"]) == 9 and len(by_name["long"]) == 3  # weights 3:1
    assert max(by_name["short"]) <= 600 and min(by_name["long"]) >= 1000
    assert ("TTFT", "long") in mixed.stats and ("TTFT", "short") in mixed.stats

    conv = run_locust(
        REPO / "locustfiles" / "multiturn.py",
        server.base_url,
        tmp_path / "multiturn",
        "-u",
        "1",
        "-r",
        "1",
        "--llm-requests-per-user",
        "6",
        "--llm-turns",
        "3",
        *finite,
    )
    inputs = [int(r["input_tokens"]) for r in sorted(conv.rows, key=lambda r: r["start_time"])]
    assert inputs[0] == inputs[3] == 300  # turn 1 of each conversation: exactly the prompt
    for start in (0, 3):
        a, b, c = inputs[start : start + 3]
        # each turn adds the reply (about 5 tokens once re-encoded), its framing and a new
        # 300-token user turn
        assert 300 + 5 <= b - a <= 300 + 20 and 300 + 5 <= c - b <= 300 + 20


def test_run_time_up_each_user_ends_after_its_own_request(llmsim_server, tmp_path):
    # At the end of a headless run every user finishes the request it is in and stops on its
    # own (Locust's stop of all users at one instant delays the streams still being read);
    # nothing is cut, nothing new starts after the run time, and the run does not wait for
    # the --stop-timeout backstop.
    server = llmsim_server(*EXACT)
    t0 = time.time()
    run = run_locust(
        CHAT,
        server.base_url,
        tmp_path,
        *("-u", "6", "-r", "6", "-t", "3s", "--stop-timeout", "20"),
        *("--llm-max-tokens", "90", "--llm-ignore-eos", "--llm-prompt-tokens", "16"),
    )
    wall = time.time() - t0
    assert run.returncode == 0, run.output[-2000:]
    assert "the run time is up and every request ended" in run.output, run.output[-2000:]
    s = run.summary
    assert s["requests"]["failed"] == 0 and s["requests"]["total"] >= 6
    assert all(r["status"] == "ok" and r["output_tokens"] == "90" for r in run.rows)
    starts = [float(r["start_time"]) for r in run.rows]
    # ~1.6 s per request: each user starts at most 2 in 3 s, the last one before the end.
    assert max(starts) - min(starts) < 3.5, starts
    assert wall < 3 + 20, wall  # far from the backstop (about 3 + 1.6 + linger here)


# A user's own init hook that waits (fetches a token, reads a file from the network...): it
# yields before llmsim's hook runs, so a worker joining a running test gets its spawn message
# (and Locust fires test_start) before llmsim has set up the run.
SLOW_INIT_LOCUSTFILE = """
import gevent
from locust import events


@events.init.add_listener
def _slow_setup(**_):
    gevent.sleep(1.5)


from llmsim.locust import OpenAIChatUser  # noqa: E402


class ChatUser(OpenAIChatUser):
    pass
"""


def _locust(log: Path, *args: str) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "locust", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=locust_env(),
            cwd=REPO,
        )


def _wait_for(log: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _distributed(
    locustfile: Path, host: str, out: Path, port: int, expect: int, *args: str
) -> tuple[list[str], list[str]]:
    master = [
        *("-f", str(locustfile), "--master", "--headless", "--only-summary"),
        *("--expect-workers", str(expect), "--master-bind-host", "127.0.0.1"),
        *("--master-bind-port", str(port), "--host", host, "--llm-results-dir", str(out)),
        *("--csv", str(out / "locust"), *args),
    ]
    worker = ["-f", str(locustfile), "--worker", "--master-host", "127.0.0.1"]
    return master, [*worker, "--master-port", str(port)]


def test_worker_joining_a_running_test_ships_its_rows(llmsim_server, tmp_path):
    server = llmsim_server(*EXACT)
    locustfile = tmp_path / "slow_init.py"
    locustfile.write_text(SLOW_INIT_LOCUSTFILE)
    out = tmp_path / "out"
    master_args, worker_args = _distributed(
        locustfile,
        server.base_url,
        out,
        free_port(),
        1,
        *("-u", "4", "-r", "4", "-t", "12s", "--llm-max-tokens", "10", "--llm-ignore-eos"),
    )
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_locust(tmp_path / "master.log", *master_args))
        procs.append(_locust(tmp_path / "worker1.log", *worker_args))
        _wait_for(tmp_path / "master.log", "All users spawned")
        procs.append(_locust(tmp_path / "worker2.log", *worker_args))  # joins the running test
        _wait_for(tmp_path / "master.log", "2 workers connected")
        assert procs[0].wait(60) == 0, (tmp_path / "master.log").read_text()[-3000:]
    finally:
        _stop_all(procs)
    summary = json.loads((out / "llm_metrics.json").read_text())
    rows = _read_csv(out / "requests.csv")
    stats = {(r["Type"], r["Name"]): r for r in _read_csv(out / "locust_stats.csv")}
    total = summary["requests"]["total"]
    assert total == int(stats[("POST", "/v1/chat/completions")]["Request Count"]) > 20
    # The late worker's requests were counted but their rows never kept (its test_start came
    # before llmsim's init hook): requests.csv lacked all of them.
    assert len(rows) == total


def test_killed_worker_leaves_no_phantom_streams_in_flight(llmsim_server, tmp_path):
    server = llmsim_server(*EXACT)
    out = tmp_path / "out"
    master_args, worker_args = _distributed(
        CHAT,
        server.base_url,
        out,
        free_port(),
        2,
        *("-u", "4", "-r", "4", "-t", "18s", "--llm-max-tokens", "10", "--llm-ignore-eos"),
    )
    log = tmp_path / "master.log"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_locust(log, *master_args))
        procs.append(_locust(tmp_path / "worker1.log", *worker_args))
        procs.append(_locust(tmp_path / "worker2.log", *worker_args))
        _wait_for(log, "All users spawned")
        time.sleep(4)  # a few reports of 2 streams in flight from each worker
        procs[2].kill()
        _wait_for(log, "failed to send heartbeat")
        assert procs[0].wait(60) == 0, log.read_text()[-3000:]  # the master goes on to the end
    finally:
        _stop_all(procs)
    summary = json.loads((out / "llm_metrics.json").read_text())
    rows = _read_csv(out / "requests.csv")
    assert summary["requests"]["failed"] == 0
    assert summary["requests"]["total"] == len(rows) > 20
    series = summary["series"]
    # Seconds after Locust took the dead worker's users away (its last one is the stop's).
    after = [
        f for u, f in zip(series["users"][:-1], series["in_flight"][:-1], strict=True) if u == 2
    ]
    assert len(after) >= 3, series
    # The dead worker's last gauge (2 streams) was counted in flight to the end of the run.
    assert max(after) <= 2, series
