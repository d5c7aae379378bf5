"""`llmsim bench` in open loop, trace replay, and the defects a new user runs into.

Real simulator, real Locust, small rates and short runs (each a few seconds).
"""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from llmsim.cli import cli
from test_bench_runs import EXACT, WORKLOAD, Bench, _env, _one_line_error, bench, read_csv
from test_bench_runs import read_summary as summary_of

__all__ = ["bench"]  # the fixture, imported for these tests


def test_rate_is_achieved_and_latency_counts_from_the_schedule(bench: Bench) -> None:
    # TTFT 600 ms at 20/s: about 14 requests in flight in one Locust user, more than
    # FastHttpUser's default pool of 10 connections (which would queue them in the client).
    slow = ["--ttft-ms", "600", *EXACT[2:]]
    code, out, err = bench.run(
        "--rate", "20", "--arrival", "constant", "--duration", "3s", "--warmup", "1s",
        "--goodput", "ttft<=1s", *slow, *WORKLOAD, "--", "--llm-ignore-eos",
    )  # fmt: skip
    assert code == 0, err
    run = bench.run_dir()
    s = summary_of(run)
    # The warm-up counts from the first scheduled arrival (the user spawns after test start).
    assert s["config"]["rate"] == 20 and 1 <= s["window"]["start_s"] < 2, s["window"]
    assert s["window"]["duration_s"] > 2, s["window"]
    # The steady window holds 3 s at 20/s; a busy machine may start a few late, not fewer.
    assert 17 <= s["requests"]["per_s"] <= 21, s["requests"]
    rows = read_csv(run / "requests.csv")
    due = sorted(float(r["scheduled_time"]) for r in rows)
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert statistics.median(gaps) == pytest.approx(0.05, abs=0.002)
    for r in rows:
        lag = float(r["schedule_lag_ms"])
        assert abs(float(r["start_time"]) - float(r["scheduled_time"]) - lag / 1000) < 0.002
        # E2E counts from the scheduled start: the lag is inside it.
        assert float(r["e2e_ms"]) >= lag + 600 + 19 * 5 - 1
    assert s["schedule_lag_ms"]["count"] > 0 and s["schedule_lag_ms"]["p50"] < 50
    assert 600 <= s["ttft_ms"]["p50"] < 680, s["ttft_ms"]  # no queue inside the client
    assert s["goodput"]["per_s"] > 15 and s["goodput"]["objectives"] == ["ttft<=1000ms"]
    assert "goodput" in out and "schedule lag" in out
    assert "goodput" in (run / "summary.md").read_text()
    page = (run / "report.html").read_text()  # the load card: the offered rate, not users
    assert "<b>20/s</b><span>offered rate (constant)</span>" in page and ">None<" not in page


def test_trace_replay_reproduces_offsets_and_lengths(bench: Bench) -> None:
    trace = bench.tmp / "trace.jsonl"
    recs = [
        {"timestamp": 5000 + 400 * i, "input_length": 80 + 10 * i, "output_length": 3 + i}
        for i in range(8)
    ]
    recs[3]["hash_ids"] = recs[5]["hash_ids"] = [11]
    trace.write_text("".join(json.dumps(r) + "\n" for r in recs))
    code, _, err = bench.run(
        "--trace", str(trace), "--trace-speed", "2", "--duration", "20s", *EXACT
    )
    assert code == 0, err
    run = bench.run_dir()
    rows = sorted(read_csv(run / "requests.csv"), key=lambda r: float(r["scheduled_time"]))
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    t0 = float(rows[0]["scheduled_time"])
    for i, r in enumerate(rows):
        assert float(r["scheduled_time"]) - t0 == pytest.approx(0.2 * i, abs=0.01)
        assert int(r["input_tokens"]) == 80 + 10 * i  # the simulator's usage
        assert int(r["output_tokens"]) == 3 + i  # exact: ignore_eos
    # The run ends when the trace does (4 s of trace at 2x), not at --duration.
    assert summary_of(run)["duration_s"] < 12
    assert "<b>trace</b><span>arrivals at 2x</span>" in (run / "report.html").read_text()


def test_a_target_answering_404_stops_within_seconds(bench: Bench, llmsim_server) -> None:
    server = llmsim_server(*EXACT)
    start = time.monotonic()
    line = _one_line_error(
        *bench.run("--target", server.url + "/wrong/v1", "--duration", "60s", "--users", "2")
    )
    assert time.monotonic() - start < 30
    assert "404" in line and "--target" in line


def test_sigint_stops_a_bench_started_with_it_ignored(bench: Bench) -> None:
    # A script's `llmsim bench &` starts it with SIGINT ignored, and Locust inherited that: it
    # never stopped. Now bench handles the signal and its children start with the default.
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmsim", "bench", "--reports-dir", str(bench.reports),
         "--no-progress", "--users", "2", "--duration", "60s", *EXACT, *WORKLOAD],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=bench.tmp,
        env=_env(), start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    bench.procs.append(proc)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not list(bench.reports.glob("*/requests.csv")):
        time.sleep(0.2)
    time.sleep(1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert time.monotonic() - start < 20
    s = summary_of(bench.run_dir())
    assert s["interrupted"] is True and s["requests"]["total"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "http://127.0.0.1:9/v1"], "use --target URL"),
        (["--rate", "5", "--users", "3"], "--users and --rate do not mix"),
        (["--rate", "0"], "--rate must be above 0"),
        (["--rate", "5", "--arrival", "gamma:cv=0"], "gamma:cv=C with C > 0"),
        (["--arrival", "constant"], "--arrival needs --rate"),
        (["--max-in-flight", "4"], "--max-in-flight needs --rate or --trace"),
        (["--trace", "missing.jsonl"], "cannot read it"),
        (["--rate", "5", "--trace-speed", "2"], "--trace-speed needs --trace"),
        (["--prefix-groups", "3"], "--prefix-groups needs --prefix-tokens"),
        (["--goodput", "itl<=5ms"], "use tpot"),
        (["--warmup", "soon"], "--warmup: expected a duration"),
    ],
)
def test_open_loop_usage_errors_are_one_line(args: list[str], message: str, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["bench", "--reports-dir", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmsim: error: "), result.output
    assert message in lines[0]
    assert not (tmp_path / "r").exists()


def test_sweep_finds_the_simulators_capacity(bench: Bench) -> None:
    # 4 slots, each request 50 ms + 19 x 5 ms: capacity is 4 / E2E requests/s.
    code, out, err = bench.run(
        "--sweep", "1", "--users", "12", "--duration", "2s", "--warmup", "1s",
        "--max-concurrency", "4", *EXACT, *WORKLOAD, "--", "--llm-ignore-eos", timeout=240,
    )  # fmt: skip
    assert code == 0, err
    sweep_dir = next(p for p in bench.reports.iterdir() if p.name.endswith("-sweep"))
    doc = json.loads((sweep_dir / "sweep.json").read_text())
    names = [lv["name"] for lv in doc["levels"]]
    assert names[:2] == ["synchronous", "throughput"] and len(names) == 3
    e2e_s = doc["levels"][0]["e2e_ms"]["mean"] / 1000  # uncontended, one request at a time
    capacity = 4 / e2e_s
    assert doc["saturation_rate"] == pytest.approx(capacity, rel=0.15), (doc, capacity)
    assert doc["levels"][2]["offered_rate"] == pytest.approx(doc["saturation_rate"], rel=0.01)
    page = (sweep_dir / "report.html").read_text()
    assert page.count("<svg") == 3 and "against offered rate" in page
    assert "| throughput |" in (sweep_dir / "summary.md").read_text()
    assert "saturation" not in err and "sweep: 3 levels" in out
