"""`llmsim compare`: two synthetic runs side by side, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from llmsim.bench.config import BenchConfig
from llmsim.bench.reports import write_reports
from llmsim.bench.run import RunState
from llmsim.cli import cli
from test_bench_units import _llm_metrics, _req, _write_requests


def _run(folder: Path, ttft: float, n: int) -> Path:
    folder.mkdir()
    t0 = 1_800_000_000.0
    _write_requests(folder / "requests.csv", [_req(t0 + i * 4 / n, ttft=ttft) for i in range(n)])
    (folder / "llm_metrics.json").write_text(json.dumps(_llm_metrics(t0, t0 + 4)))
    write_reports(
        folder,
        BenchConfig(users=4, duration_s=4),
        target="http://127.0.0.1:1/v1",
        target_kind="embedded",
        state=RunState(started=t0, stopped=t0 + 4, users_peak=4),
        client={"processes": []},
        locust_status=0,
        simulator=None,
    )
    return folder


def test_compare_two_runs(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", 50, 20)
    b = _run(tmp_path / "b", 50, 40)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "| requests/s | 5.00 | 9.75 | +95.0 % better |" in result.output
    md = (out / "compare.md").read_text()
    assert md.startswith("# llmsim compare") and "| TTFT p50 (ms) |" in md
    page = (out / "compare.html").read_text()
    assert page.count("<svg") == 3 and "<script" not in page


def test_compare_errors_are_one_line(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", 50, 10)
    for args, msg in (
        ([str(a)], "at least two"),
        ([str(a), str(tmp_path / "nope")], "no such report folder"),
        ([str(a), str(tmp_path)], "no summary.json"),
    ):
        result = CliRunner().invoke(cli, ["compare", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("llmsim: error: ") and msg in lines[0]


def test_compare_delta_of_a_tiny_drop_is_not_negative_zero() -> None:
    from llmsim.bench.compare import comparison_table

    a = {"ttft_ms": {"p50": 100.166}, "e2e_ms": {"p50": 290.2}}
    b = {"ttft_ms": {"p50": 100.146}, "e2e_ms": {"p50": 290.1}}
    _, rows = comparison_table([("a", a), ("b", b)])
    # 0.02 % down was "-0.0 %"; the latency rows carry their unit.
    assert rows == [
        ["TTFT p50 (ms)", "100", "100", "+0.0 %"],
        ["E2E p50 (ms)", "290", "290", "+0.0 %"],
    ]
