"""The Anthropic, Responses, completions and embeddings Locust users against a real server, and
`llmsim bench --api`. Locust runs in subprocesses: `import locust` patches the process with
gevent, which has no place in the pytest process that also starts servers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmsim.bench.cli_support import build_config
from llmsim.bench.config import BenchConfig
from llmsim.bench.swarm import API_USERS, locust_command

REPO = Path(__file__).resolve().parent.parent
APIS = REPO / "locustfiles" / "apis.py"
EXACT = ("--ttft-ms", "123", "--ttft-stddev-ms", "0", "--tbt-ms", "17", "--tbt-stddev-ms", "0")


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLMSIM_", "LOCUST_")) and k not in ("OPENAI_API_KEY",)
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_locust(user: str, host: str, out: Path, *args: str) -> tuple[dict, list[dict], str]:
    """Run one user class headless to completion: (llm_metrics.json, requests.csv, output)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(APIS),
        "--host",
        host,
        "--headless",
        "--only-summary",
        "--llm-results-dir",
        str(out),
        "-t",
        "60s",
        *args,
        user,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=90, env=_env(), cwd=REPO, check=False
    )
    output = proc.stdout + proc.stderr
    assert (out / "llm_metrics.json").exists(), output[-3000:]
    with (out / "requests.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return json.loads((out / "llm_metrics.json").read_text()), rows, output


# 4 users × 4 requests of exactly 16 tokens (Responses' minimum max_output_tokens).
WORKLOAD = (
    "-u",
    "4",
    "-r",
    "4",
    "--llm-requests-per-user",
    "4",
    "--llm-max-tokens",
    "16",
    "--llm-prompt-tokens",
    "32",
    "--llm-ignore-eos",
)


@pytest.mark.parametrize(
    ("user", "model"),
    [
        ("AnthropicUser", "claude-sonnet-4"),
        ("ResponsesUser", "o3"),  # a reasoning model: its hidden tokens are not output chunks
        ("CompletionsUser", "gpt-3.5-turbo-instruct"),
    ],
)
def test_streaming_users_measure_exact_timing(llmsim_server, tmp_path, user, model):
    server = llmsim_server(*EXACT)
    s, rows, output = run_locust(user, server.base_url, tmp_path, *WORKLOAD, "--llm-model", model)
    assert s["requests"] == {"total": 16, "ok": 16, "failed": 0}, output[-2000:]
    assert s["tokens"]["source"] == "usage"
    # A reasoning model's cap counts its hidden tokens too (as OpenAI's max_output_tokens
    # does): of the 16, int(0.8 x TTFT / TBT) are reasoning, the rest stream as chunks.
    visible = 16 - int(0.8 * 123 / 17) if model == "o3" else 16
    assert {r["output_tokens"] for r in rows} == {str(visible)}
    assert all(int(r["input_tokens"]) > 0 for r in rows)
    m = s["metrics"]
    # One-sided and generous: the machine can only make us late.
    assert m["ttft_ms"]["count"] == 16 and 123 <= m["ttft_ms"]["p50"] <= 160, m["ttft_ms"]
    assert m["itl_ms"]["count"] == 16 * (visible - 1)
    assert 15 <= m["itl_ms"]["p50"] <= 19, m["itl_ms"]
    assert 16 <= m["tpot_ms"]["p50"] <= 19, m["tpot_ms"]


def test_non_streaming_anthropic_and_a_fault(llmsim_server, tmp_path):
    server = llmsim_server("--profile", "fast", "--fault", "529=0.25", "--seed", "3")
    s, rows, _ = run_locust(
        "AnthropicUser", server.url, tmp_path, *WORKLOAD, "--llm-no-stream"
    )  # a bare host: the user adds /v1 as the anthropic SDK does
    assert s["requests"]["total"] == 16 and 0 < s["requests"]["failed"] < 16
    assert set(s["errors"]) == {"http_529"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["output_tokens"] for r in ok} == {"16"} and {r["ttft_ms"] for r in ok} == {""}


@pytest.mark.parametrize("user", ["ResponsesUser", "CompletionsUser"])
def test_non_streaming_users(llmsim_server, tmp_path, user):
    server = llmsim_server("--profile", "fast")
    model = "gpt-4o" if user == "ResponsesUser" else "gpt-3.5-turbo-instruct"
    s, rows, output = run_locust(
        user, server.base_url, tmp_path, *WORKLOAD, "--llm-no-stream", "--llm-model", model
    )
    assert s["requests"] == {"total": 16, "ok": 16, "failed": 0}, output[-2000:]
    assert {r["output_tokens"] for r in rows} == {"16"}


@pytest.mark.parametrize("user", ["AnthropicUser", "ResponsesUser", "CompletionsUser"])
def test_stream_faults_are_classified(llmsim_server, tmp_path, user):
    server = llmsim_server(
        "--profile", "fast", "--fault", "stream-error=0.5", "--fault", "drop=0.5"
    )
    model = {"AnthropicUser": "claude-sonnet-4", "ResponsesUser": "gpt-4o"}.get(
        user, "gpt-3.5-turbo-instruct"
    )
    s, _, output = run_locust(user, server.base_url, tmp_path, *WORKLOAD, "--llm-model", model)
    assert s["requests"]["failed"] == 16, output[-2000:]
    assert set(s["errors"]) <= {"stream_error_event", "connection", "incomplete_stream"}
    assert s["errors"].get("stream_error_event", 0) > 0


def test_embeddings_user(llmsim_server, tmp_path):
    server = llmsim_server("--ttft-ms", "50", "--ttft-stddev-ms", "0")
    s, rows, output = run_locust(
        "EmbeddingsUser", server.base_url, tmp_path, *WORKLOAD[:6], "--llm-prompt-tokens", "40"
    )
    assert s["requests"] == {"total": 16, "ok": 16, "failed": 0}, output[-2000:]
    assert s["metrics"]["ttft_ms"]["count"] == 0
    assert s["metrics"]["e2e_ms"]["p50"] >= 50
    # No tokens are generated: a 0 per request would drag the tokens/s percentiles to 0.
    assert s["metrics"]["output_tokens_per_s"]["count"] == 0
    assert {r["output_tokens_per_s"] for r in rows} == {""}
    assert {r["output_tokens"] for r in rows} == {"0"}
    assert all(int(r["input_tokens"]) >= 30 for r in rows)


# --------------------------------------------------------------------------- bench --api


def _opts(**over):
    base = {
        "users": 1,
        "spawn_rate": None,
        "processes": None,
        "master": False,
        "expect_workers": None,
        "target": None,
        "config": None,
        "slo": (),
        "duration": "2s",
        "model": None,
        "api_key": None,
        "prompt_tokens": None,
        "max_tokens": None,
        "stream": None,
        "locustfile": None,
        "reports_dir": "r",
        "label": None,
        "json_output": False,
        "master_bind_host": "*",
        "master_bind_port": 5557,
        "web": False,
        "web_host": "127.0.0.1",
        "web_port": 8089,
        "stop_timeout": "1s",
        "progress": False,
    }
    return {**base, **over}


def test_bench_api_names_one_user_class(tmp_path):
    for api, cls in API_USERS.items():
        cfg = build_config(_opts(api=api), {}, [])
        assert cfg.api == api and cfg.to_dict()["api"] == api
        cmd = locust_command(cfg, "http://127.0.0.1:1/v1", tmp_path)
        assert cmd.count(cls) == 1 and not set(API_USERS.values()) - {cls} & set(cmd)
    # A locustfile of one's own picks its own classes.
    own = locust_command(BenchConfig(locustfile=str(APIS)), "h", tmp_path)
    assert not set(API_USERS.values()) & set(own)
    import click

    with pytest.raises(click.UsageError, match="--api anthropic"):
        build_config(_opts(api="anthropic", locustfile=str(APIS)), {}, [])


@pytest.mark.parametrize("api", ["anthropic", "embeddings"])
def test_bench_api_runs(tmp_path, api):
    cmd = [
        sys.executable,
        "-m",
        "llmsim",
        "bench",
        "--api",
        api,
        "--users",
        "2",
        "--duration",
        "2s",
        "--reports-dir",
        str(tmp_path),
        "--no-progress",
        "--json",
        "--max-tokens",
        "8",
        "--profile",
        "fast",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=90, env=_env(), cwd=REPO, check=False
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads(proc.stdout)
    text = json.dumps(summary)
    assert '"api": "%s"' % api in text
    requests = summary.get("requests") or {}
    assert requests.get("ok", 0) > 0 and requests.get("failed", 0) == 0, text[:2000]
