"""bench's pieces without processes: durations, SLOs, the request log, summary and report files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmsim.bench.config import BenchConfig
from llmsim.bench.durations import format_duration, parse_duration
from llmsim.bench.embedded import server_args
from llmsim.bench.preflight import normalize_target
from llmsim.bench.reports import write_reports
from llmsim.bench.request_log import Request, fold, load_request_log
from llmsim.bench.run import RunState, make_run_dir
from llmsim.bench.slo import SLOError, evaluate_slos, parse_slo
from llmsim.bench.summary import build_summary
from llmsim.bench.swarm import locust_command
from llmsim.cli import cli

# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("90", 90),
        ("1.5m", 90),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "1h30", "-5s", "m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 60, 125, 3600, 5400)] == [
        "5s",
        "1m",
        "2m05s",
        "1h",
        "1h30m",
    ]


# --------------------------------------------------------------------------- SLOs

SUMMARY = {
    "ttft_ms": {"p50": 600.0, "p95": 790.0},
    "tpot_ms": {"p50": 41.0},
    "requests": {"total": 200, "failed": 1, "per_s": 3.3},
    "tokens": {"output_per_s": 1200.0},
    "fidelity": {"ttft_ms": {"p99": 4.0}},
}


@pytest.mark.parametrize(
    ("expr", "passed"),
    [
        ("ttft_p95<=800ms", True),
        ("ttft_p95<=0.8s", True),
        ("ttft_p95<790", False),
        ("tpot_p50<=40ms", False),
        ("error_rate<=1%", True),
        ("error_rate<0.5%", False),
        ("output_tps>=1000", True),
        ("rps>5", False),
        ("fidelity_p99<=10ms", True),
        ("fidelity_p99>=-1ms", True),  # fidelity is signed: a lower bound below 0 is one
        ("requests>=200", True),
    ],
)
def test_slo_evaluation(expr: str, passed: bool) -> None:
    result = parse_slo(expr).evaluate(SUMMARY)
    assert result["passed"] is passed, result


def test_slo_table_shows_counts_as_whole_numbers() -> None:
    from llmsim.bench.tables import slo_table

    summary = {"slo": evaluate_slos([parse_slo(e) for e in ("failures<5", "rps>5")], SUMMARY)}
    table = slo_table(summary)
    assert table is not None
    # A count of failures is "1", not "1.0"; a rate keeps its decimal.
    assert [row[1] for row in table[1]] == ["1", "3.3"]


def test_slo_without_data_fails_and_says_why() -> None:
    verdict = evaluate_slos([parse_slo("itl_p99<=50ms")], SUMMARY)
    assert verdict["passed"] is False
    assert verdict["results"][0]["reason"] == "no data for this metric in the run"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("ttft95<=800ms", "unknown metric 'ttft95'"),
        ("ttft_p95=800ms", "expected METRIC OP VALUE"),
        ("ttft_p95<=800%", "unit '%' does not fit ttft_p95"),
        ("error_rate<=5ms", "unit 'ms' does not fit error_rate"),
        # Bounds the metric can never take: the SLO would always pass or always fail.
        ("error_rate<=150%", "error_rate is a fraction, from 0 to 1 (0% to 100%)"),
        ("error_rate<=2", "error_rate is a fraction"),
        ("ttft_p95<=-5ms", "ttft_p95 is never negative"),
        ("rps>=-1", "rps is never negative"),
        ("failures<0.5", "failures is a count, a whole number"),
        ("requests>=2.5", "requests is a count"),
    ],
)
def test_slo_parse_errors_are_one_line(expr: str, message: str) -> None:
    with pytest.raises(SLOError) as err:
        parse_slo(expr)
    assert message in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- request log


def _req(start: float, ttft: float = 50, e2e: float = 145, out: int = 20, **kw) -> Request:
    return Request(
        start=start,
        end=start + e2e / 1000,
        ok=kw.get("ok", True),
        error_kind=kw.get("error_kind"),
        ttft_ms=ttft,
        tpot_ms=(e2e - ttft) / (out - 1),
        e2e_ms=e2e,
        input_tokens=100,
        output_tokens=out,
        planned_ttft_ms=kw.get("planned", 48.0),
    )


def test_request_log_series_spreads_tokens_and_counts_in_flight() -> None:
    t0 = 1000.0
    # A 2-second stream (first token at 0.5 s) and a short one in second 1; one error.
    log = fold(
        [
            _req(t0 + 0.0, ttft=500, e2e=2500, out=201),
            _req(t0 + 1.2, out=20),
            _req(t0 + 1.5, ok=False, error_kind="http_500", out=0),
        ],
        t0,
    )
    rows = log.series({0: 1, 1: 2})
    assert [r["second"] for r in rows] == [0, 1, 2]
    # 201 tokens over [0.5 s, 2.5 s]: 50.25 in second 0, 100.5 in second 1, 50.25 in second 2
    assert rows[0]["output_tokens_per_s"] == pytest.approx(50.2, abs=0.1)
    assert rows[1]["output_tokens_per_s"] == pytest.approx(100.5 + 20, abs=0.1)
    assert rows[2]["output_tokens_per_s"] == pytest.approx(50.2, abs=0.1)
    assert sum(r["output_tokens_per_s"] for r in rows) == pytest.approx(221, abs=0.2)
    assert [r["in_flight"] for r in rows] == [1, 1, 0]
    assert [r["requests_per_s"] for r in rows] == [0, 2, 1]
    assert [r["errors"] for r in rows] == [0, 1, 0]
    assert [r["users"] for r in rows] == [1, 2, 2]
    assert rows[0]["ttft_p50_ms"] == 500.0 and rows[1]["ttft_p50_ms"] == 50.0
    assert log.errors == {"http_500": 1}
    assert log.hist["fidelity_ttft_ms"].percentile(50) == pytest.approx(2.0)


def _write_requests(path: Path, reqs: list[Request]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "start_time",
                "end_time",
                "status",
                "error_kind",
                "ttft_ms",
                "tpot_ms",
                "e2e_ms",
                "input_tokens",
                "output_tokens",
                "token_source",
                "output_tokens_per_s",
                "planned_ttft_ms",
                "name",
            ]
        )
        for r in reqs:
            w.writerow(
                [
                    r.start,
                    r.end,
                    "ok" if r.ok else "error",
                    r.error_kind or "",
                    r.ttft_ms,
                    r.tpot_ms,
                    r.e2e_ms,
                    r.input_tokens,
                    r.output_tokens,
                    "usage",
                    "",
                    r.planned_ttft_ms,
                    "/v1/chat/completions",
                ]
            )


def test_load_request_log_finds_the_earliest_start(tmp_path: Path) -> None:
    # Rows arrive in completion order: the earliest start is not the first row.
    _write_requests(tmp_path / "r.csv", [_req(1005.5), _req(1003.2), _req(1004.0)])
    log = load_request_log(tmp_path / "r.csv")
    assert log.t0 == 1003 and log.total == 3


def test_open_loop_window_counts_from_the_first_scheduled_arrival(tmp_path: Path) -> None:
    """A schedule that began 0.9 s after the test's start (a user spawned late): the warm-up
    counts from its first arrival, so the window holds the full rate, not 30 % less."""
    from llmsim.bench.reports import add_window

    t0, delay, rate, e2e = 1_800_000_000.0, 0.9, 20.0, 0.7
    path = tmp_path / "requests.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["start_time", "end_time", "status", "ttft_ms", "tpot_ms", "e2e_ms",
                    "input_tokens", "output_tokens", "scheduled_time"])  # fmt: skip
        due = t0 + delay
        while due < t0 + 4.0:  # the schedule stops with the run (warm-up 1 s + 3 s)
            w.writerow([due, due + e2e, "ok", 600, 5, e2e * 1000, 10, 20, due])
            due += 1 / rate
    cfg = BenchConfig(rate=rate, warmup_s=1.0, duration_s=3.0)
    summary = {"requests": {"total": 0}, "tokens": {}}
    add_window(summary, cfg, {}, path, t0, None)
    assert summary["window"]["start_s"] == pytest.approx(1.9)
    assert summary["window"]["duration_s"] == pytest.approx(2.1)
    assert summary["window"]["basis"].endswith("from the first scheduled arrival")
    assert summary["requests"]["per_s"] == pytest.approx(rate, rel=0.05)
    # Closed loop keeps the test's start.
    closed = {"requests": {"total": 0}, "tokens": {}}
    add_window(closed, BenchConfig(users=4, warmup_s=1.0, duration_s=3.0), {}, path, t0, None)
    assert closed["window"]["start_s"] == 1.0


# --------------------------------------------------------------------------- summary and files


def _llm_metrics(start: float, end: float) -> dict:
    def block(p50: float, n: int) -> dict:
        return {
            "count": n,
            "mean": p50,
            "min": p50 - 1,
            "p50": p50,
            "p90": p50 + 1,
            "p95": p50 + 2,
            "p99": p50 + 3,
            "max": p50 + 4,
        }

    return {
        "schema": "llmsim.locust.metrics/1",
        "start_time": start,
        "end_time": end,
        "requests": {"total": 40, "ok": 39, "failed": 1},
        "errors": {"http_500": 1},
        "tokens": {"input": 3900, "output": 780, "source": "usage"},
        "users": {"max": 4},
        "metrics": {
            "ttft_ms": block(50.5, 39),
            "itl_ms": block(5.1, 741),
            "tpot_ms": block(5.0, 39),
            "e2e_ms": block(146, 40),
            "fidelity_ttft_ms": block(0.5, 39),
        },
        "series": {"t": [int(start) + i for i in range(5)], "users": [1, 2, 3, 4, 4]},
    }


def test_write_reports_from_synthetic_run(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    reqs = [_req(t0 + i * 0.1, planned=50.0) for i in range(39)]
    reqs.append(_req(t0 + 3.0, ok=False, error_kind="http_500", out=0))
    _write_requests(tmp_path / "requests.csv", reqs)
    (tmp_path / "llm_metrics.json").write_text(json.dumps(_llm_metrics(t0, t0 + 4)))
    cfg = BenchConfig(users=4, duration_s=4, slos=[parse_slo("ttft_p50<=60ms")], label="x")
    state = RunState(started=t0, stopped=t0 + 4, users_peak=4)
    summary = write_reports(
        tmp_path,
        cfg,
        target="http://127.0.0.1:1/v1",
        target_kind="embedded",
        state=state,
        client={"processes": [], "rss_peak_total_mb": 1.0},
        locust_status=0,
        simulator={"ttft_ms": 50.0},
    )
    for name in ("summary.json", "summary.md", "timeseries.csv", "report.html"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert set(on_disk[key]) == {"p50", "p90", "p95", "p99", "mean", "min", "max", "count"}
    assert on_disk["ttft_ms"]["p50"] == 50.5
    assert on_disk["requests"] == {
        "total": 40,
        "ok": 39,
        "failed": 1,
        "error_rate": 0.025,
        "per_s": 10.0,
        "dropped": 0,
    }
    assert on_disk["tokens"]["output_total"] == 780 and on_disk["tokens"]["output_per_s"] == 195
    assert on_disk["tokens"]["source"] == "usage"
    assert on_disk["errors"] == {"http_500": 1}
    assert on_disk["duration_s"] == 4.0 and on_disk["users"] == 4
    assert on_disk["fidelity"]["ttft_ms"]["p50"] == 0.5
    assert on_disk["fidelity"]["planned_ttft_ms"]["p50"] == 50.0
    assert on_disk["fidelity"]["ttft_p50_error_pct"] == 1.0
    assert on_disk["slo"]["passed"] is True and on_disk["exit_code"] == 0
    assert on_disk["config"]["users"] == 4 and on_disk["config"]["simulator"] == {"ttft_ms": 50.0}
    assert on_disk["started_at"].startswith("2027-01-15T08:00:00")

    with open(tmp_path / "timeseries.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["second"]) for r in rows] == list(range(len(rows)))
    assert [r["users"] for r in rows[:4]] == ["1", "2", "3", "4"]

    md = (tmp_path / "summary.md").read_text()
    assert "| TTFT | 50.5 |" in md and "| ttft_p50<=60ms | 50.5 ms | pass |" in md

    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") >= 5
    # Self-contained: nothing is fetched from anywhere when the page opens.
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "url(http" not in page


def _four_second_reports(tmp_path: Path, starts: list[float], cfg: BenchConfig, peak: int) -> dict:
    """write_reports for a run started at t0 and stopped 4 s later, with a request at each of
    `starts` (seconds after t0) and Locust's own samples of that run; the summary."""
    t0 = 1_800_000_000.0
    _write_requests(tmp_path / "requests.csv", [_req(t0 + s) for s in starts])
    (tmp_path / "llm_metrics.json").write_text(json.dumps(_llm_metrics(t0, t0 + 4)))
    return write_reports(
        tmp_path,
        cfg,
        target="http://127.0.0.1:1/v1",
        target_kind="embedded",
        state=RunState(started=t0, stopped=t0 + 4, users_peak=peak),
        client={"processes": [], "rss_peak_total_mb": 1.0},
        locust_status=0,
        simulator=None,
    )


def test_users_peak_is_the_larger_of_bench_and_locust_samples(tmp_path: Path) -> None:
    # bench's progress samples (a second apart, not aligned to the spawns) missed the last user
    # started; Locust's own per-second samples (llm_metrics.json: 4) saw it. Was: peak 3.
    starts = [i * 0.1 for i in range(39)]
    summary = _four_second_reports(tmp_path, starts, BenchConfig(users=4, duration_s=4), peak=3)
    assert summary["users_peak"] == 4


def test_a_run_that_stopped_early_has_its_rates_over_the_time_it_ran(tmp_path: Path) -> None:
    # Given 20 s, stopped after 4 (a trace replayed to its end, Ctrl-C): 40 requests in 4 s are
    # 10/s, not 2/s over the 20 s the run never had.
    starts = [i * 0.09 for i in range(40)]
    summary = _four_second_reports(tmp_path, starts, BenchConfig(users=4, duration_s=20), peak=4)
    assert summary["window"]["duration_s"] == 4
    assert summary["requests"]["per_s"] == 10.0
    assert summary["tokens"]["output_per_s"] == 200.0


def test_a_run_with_steal_reports_the_fidelity_of_its_quiet_seconds(tmp_path: Path) -> None:
    """The hypervisor took cores in seconds 2-3 and another process in second 5, and the first
    tokens due then were 40 ms late: the run's p99 is that, the quiet seconds say 0.5 ms, and
    the warning, the summary and the fidelity table all say so."""
    from llmsim.bench.interference import quiet_fidelity

    t0 = 1_800_000_000.0
    reqs = []
    for i in range(60):
        start = t0 + i * 0.1  # planned TTFT 50 ms: due at start + 0.05
        due = start + 0.05 - t0
        late = 2.0 <= due < 4.0 or 4.0 <= due < 5.0
        reqs.append(_req(start, ttft=90.0 if late else 50.5, planned=50.0))
    # (end of interval k-1..k, stolen, others): steal in 2..4, another process in 4..5 (0.3),
    # and 0.06 of others' noise in 1..2, which still counts as quiet.
    stolen = {3: 0.5, 4: 0.5}
    others = {2: 0.06, 5: 0.3}
    series = [(t0 + k, stolen.get(k, 0.0), others.get(k, 0.0)) for k in range(0, 8)]
    quiet = quiet_fidelity(reqs, series)
    assert quiet is not None and quiet["count"] == 30 and quiet["seconds"] == 3.0
    assert quiet["p50"] == quiet["p99"] == 0.5
    assert quiet_fidelity(reqs, series[:1]) is None  # no interval: nothing to say

    _write_requests(tmp_path / "requests.csv", reqs)
    llm = _llm_metrics(t0, t0 + 6)
    llm["metrics"]["fidelity_ttft_ms"]["p99"] = 40.0  # the run's own tail, as measured
    (tmp_path / "llm_metrics.json").write_text(json.dumps(llm))

    def report(stolen_cores: float, other_cores: float) -> dict:
        return write_reports(
            tmp_path,
            BenchConfig(users=4, duration_s=6),
            target="http://127.0.0.1:1/v1",
            target_kind="embedded",
            state=RunState(started=t0, stopped=t0 + 6, users_peak=4),
            client={
                "processes": [],
                "rss_peak_total_mb": 1.0,
                "stolen_cores": stolen_cores,
                "other_busy_cores": other_cores,
            },
            locust_status=0,
            simulator={"ttft_ms": 50.0},
            interference=series,
        )

    summary = report(0.14, 0.05)
    assert summary["fidelity"]["quiet_seconds"] == quiet
    warning = next(w for w in summary["warnings"] if w.startswith("Fidelity p99"))
    assert "In the 3 s when neither the hypervisor nor other processes took CPU" in warning
    assert "fidelity p50 / p99 was 0.5 / 0.5 ms (30 requests)" in warning
    assert "quiet seconds only (3 s, 30 requests)" in (tmp_path / "summary.md").read_text()
    # Without enough of either there is nothing to separate.
    assert "quiet_seconds" not in report(0.02, 0.03)["fidelity"]


def test_no_successful_request_exits_1(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    _write_requests(
        tmp_path / "requests.csv",
        [_req(t0, ok=False, error_kind="connection_refused", out=0)],
    )
    summary = write_reports(
        tmp_path,
        BenchConfig(),
        target="http://127.0.0.1:1/v1",
        target_kind="external",
        state=RunState(started=t0, stopped=t0 + 1),
        client={},
        locust_status=0,
        simulator=None,
    )
    assert summary["status"] == "no_requests" and summary["exit_code"] == 1
    assert summary["errors"] == {"connection_refused": 1}
    assert summary["fidelity"] is None


def test_summary_falls_back_to_locust_counts_for_foreign_users(tmp_path: Path) -> None:
    locust_stats = [
        {"method": "GET", "name": "/x", "num_requests": 10, "num_failures": 2},
        {"method": "TTFT", "name": "/x", "num_requests": 10, "num_failures": 0},
    ]
    s = build_summary(
        config={"users": 1},
        llm=None,
        log=fold([]),
        locust_stats=locust_stats,
        target="t",
        target_kind="external",
        started=0.0,
        ended=5.0,
        interrupted=False,
        client={},
        users_peak=1,
        model=None,
        simulator=None,
        label=None,
    )
    assert s["requests"]["total"] == 10 and s["requests"]["failed"] == 2
    assert s["ttft_ms"]["count"] == 0 and s["ttft_ms"]["p50"] is None


# --------------------------------------------------------------------------- commands built


def test_server_args_pass_only_given_options() -> None:
    args = server_args({"ttft_ms": "50", "strict_models": True, "fault": ("a", "b")}, None)
    assert args[:3] == ["-m", "llmsim", "serve"]
    assert args[3:] == [
        "--ttft-ms",
        "50",
        "--strict-models",
        "--fault",
        "a",
        "--fault",
        "b",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    assert server_args({"port": 9000}, "c.yaml")[3:] == [
        "--config",
        "c.yaml",
        "--port",
        "9000",
        "--host",
        "127.0.0.1",
    ]


def test_locust_command(tmp_path: Path) -> None:
    cfg = BenchConfig(users=50, duration_s=90, model="gpt-5", max_tokens="64", stream=False)
    cmd = locust_command(cfg, "http://127.0.0.1:1/v1", tmp_path)
    text = " ".join(cmd)
    assert "--headless -t 90s" in text and "-u 50 -r 5" in text
    assert "--llm-model gpt-5" in text and "--llm-max-tokens 64" in text
    assert "--llm-no-stream" in text and f"--llm-results-dir {tmp_path}" in text
    assert "--exit-code-on-error 0" in text
    web = locust_command(BenchConfig(web=True, web_port=9999), "h", tmp_path)
    assert "--headless" not in web and "9999" in web


def test_local_processes_get_a_loopback_master_on_a_free_port(tmp_path: Path) -> None:
    cmd = locust_command(BenchConfig(processes=2), "h", tmp_path)
    bind = cmd[cmd.index("--master-bind-port") + 1]
    assert cmd[cmd.index("--master-bind-host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--master-port") + 1] == bind and bind != "5557"
    master = locust_command(BenchConfig(master=True, expect_workers=2), "h", tmp_path)
    assert master[master.index("--master-bind-host") + 1] == "127.0.0.1"


def test_normalize_target() -> None:
    assert normalize_target("http://127.0.0.1:8080") == "http://127.0.0.1:8080/v1"
    assert normalize_target("http://h/openai/v1/") == "http://h/openai/v1"


def test_make_run_dir(tmp_path: Path) -> None:
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    a = make_run_dir(str(tmp_path), "my run/1", now)
    b = make_run_dir(str(tmp_path), "my run/1", now)
    assert a.name == "20260102-030405-my-run-1" and b.name == "20260102-030405-my-run-1-2"


def test_an_unwritable_reports_dir_is_a_one_line_error(tmp_path: Path) -> None:
    # A file where the reports directory should be: mkdir's NotADirectoryError was a traceback.
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = CliRunner().invoke(cli, ["bench", "--reports-dir", str(not_a_dir)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmsim: error: --reports-dir "), lines
    assert "Not a directory" in lines[0]


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "0"], "--users must be at least 1"),
        (["--duration", "soon"], "--duration: expected a duration"),
        (["--slo", "ttft_p95<=800%"], "does not fit ttft_p95"),
        (["--target", "http://127.0.0.1:1", "--ttft-ms", "5"], "simulator options need"),
        (["--expect-workers", "2"], "--expect-workers needs --master"),
        (["--master", "--processes", "2"], "--master and --processes do not mix"),
        (["--ttft-ms", "-5"], "--ttft-ms"),
        (["--max-tokens", "normal:mean=5"], "--max-tokens"),
        (["--processes", "0"], "--processes must be -1"),
        (["--master", "--record"], "--record and --master do not mix"),
        # Out of range, these made the pre-flight bind raise OverflowError (a traceback).
        (["--web", "--web-port", "70000"], "--web-port must be a port number from 1 to 65535"),
        (["--master", "--master-bind-port", "0"], "--master-bind-port must be a port number"),
        (["--slo", "error_rate<=150%"], "--slo 'error_rate<=150%': error_rate is a fraction"),
        # The host is at fault, not the port (the message named --web-port).
        (["--web", "--web-host", "999.1.1.1"], "--web-host '999.1.1.1': not an IP address"),
        (["--master", "--master-bind-host", "999.1.1.1"], "--master-bind-host '999.1.1.1'"),
        # Embeddings are never streamed and generate nothing: these would be silently ignored.
        # A length of 0 sent a one-word prompt; the distributions are held to the same rule.
        (["--prompt-tokens", "0"], "--prompt-tokens '0': a length is at least 1 token, got 0"),
        (["--max-tokens", "0"], "--max-tokens '0': a length is at least 1 token"),
        (["--prompt-tokens", "normal:mean=4,stddev=1,min=0"], "at least 1 token, got min=0"),
        (["--prompt-tokens", "normal:mean=-4,stddev=1"], "mean=-4 is outside min=1"),
        (["--max-tokens", "uniform:min=0.5,max=4"], "min=0.5 is not a whole number"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # Should a check regress, the command runs a real bench: keep it short and out of ./reports.
    # A row's own --duration or --reports-dir comes later and wins.
    guard = ["--duration", "1s", "--reports-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, ["bench", *guard, *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmsim: error: "), result.output
    assert message in lines[0]


def test_recording_is_on_against_a_target_and_opt_in_for_the_embedded_simulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert BenchConfig().records(embedded=False) and not BenchConfig().records(embedded=True)
    assert not BenchConfig(record=False).records(embedded=False)  # --no-record
    assert BenchConfig(record=True).records(embedded=True)  # --record
    assert not BenchConfig(master=True).records(embedded=False)
    import llmsim.bench.cli_support as support

    seen: list[bool | None] = []
    monkeypatch.setattr(support, "run_from_cli", lambda cfg: seen.append(cfg.record) or 0)
    for flags in ([], ["--no-record"], ["--record"]):
        result = CliRunner().invoke(cli, ["bench", "--target", "http://127.0.0.1:1", *flags])
        assert result.exit_code == 0, result.output
    assert seen == [None, False, True]


def test_progress_line() -> None:
    from llmsim.bench.progress import progress_line

    line = progress_line(
        {
            "users": 500,
            "in_flight": 498,
            "requests_per_s": 88.7,
            "ttft_p50": 594.2,
            "ttft_p95": 914,
            "output_tokens_per_s": 11350.4,
            "llm_failed": 3,
        },
        32,
        60,
    )
    assert line == (
        "32s/1m (28s left) | users 500 | in flight 498 | 88.7 req/s | "
        "TTFT p50 594 ms p95 914 ms | 11,350 out tok/s | errors 3"
    )
    assert progress_line({}, 5, None).startswith("5s | users 0 | 0.0 req/s | TTFT p50 - ms")


def test_monitor_tells_steal_from_other_processes(monkeypatch) -> None:
    """Steal (the hypervisor running other guests on our cores) is not 'other processes'."""
    import collections

    from llmsim.bench import monitor as mon

    Times = collections.namedtuple("Times", "user nice system irq softirq steal idle")
    clock = iter([100.0, 110.0])
    samples = iter([Times(50, 0, 10, 0, 0, 5, 900), Times(58, 0, 12, 0, 0, 7, 910)])
    monkeypatch.setattr(mon.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(mon.psutil, "cpu_times", lambda: next(samples))
    m = mon.ProcessMonitor()
    m.sample()
    m.sample()
    out = m.summary()
    # 12 s busy in 10 s of which 2 s stolen: 1.2 busy cores, 0.2 stolen, 1.0 other processes.
    assert out["machine_busy_cores"] == 1.2
    assert out["stolen_cores"] == 0.2 and out["other_busy_cores"] == 1.0


def test_steal_gets_its_own_warning() -> None:
    from llmsim.bench.reports import warnings_for

    client = {"machine_cores": 2, "other_busy_cores": 0.0, "stolen_cores": 0.19, "processes": []}
    text = " ".join(warnings_for({"client": client}, RunState(), 0))
    assert "hypervisor" in text and "0.19 cores" in text
    client["stolen_cores"] = 0.02
    assert "hypervisor" not in " ".join(warnings_for({"client": client}, RunState(), 0))


def test_oversaturation_needs_growth_past_the_limit() -> None:
    from llmsim.bench.run import oversaturation_reason

    assert oversaturation_reason([5, 8, 12], 10) is None  # too few samples
    assert oversaturation_reason([20, 30, 30, 40], 10) is None  # held level once
    assert oversaturation_reason([4, 6, 8, 9], 10) is None  # growing, under the limit
    reason = oversaturation_reason([9, 12, 15, 18], 10)
    assert reason == "18 requests in flight and growing, past the limit of 10"
