"""Outside judges: AIPerf and guidellm measure `llmsim serve`, whose timing is known exactly.

Each peer tool runs from its own virtualenv (never one of llmsim's dependencies) against a fresh
`llmsim serve` on 127.0.0.1 with exact timing (TTFT 200 ms, 20 ms between tokens, no noise),
streaming chat completions of a fixed prompt length and an exact reply length (ignore_eos). The
tool's own result files are parsed and one table printed against the plan, beside llmsim's own
raw-socket client (benchmarks/serve_timing.py, the baseline of the same run), with the server's
own view beside it (its first-event and per-event lateness from /llmsim/stats) and the CPU the
other processes on the machine used meanwhile. `--noisy` adds one run per tool on the gpt-4o
profile, where the plan is a distribution and the server's measured TTFT is the reference.

It is a benchmark: it prints, and exits 0 whatever it measured. With no peer virtualenv (or a
tool missing from it) it says so in one line and skips that tool.

Make the peer virtualenv once (PyPI; nothing else needs a network after that):

    python3 -m venv /work/wt/peers-venv
    /work/wt/peers-venv/bin/pip install aiperf guidellm

    python benchmarks/peer_judges.py [--peers-venv DIR] [--concurrency 1,10,50] [--noisy]

Both tools need a tokenizer. They get o200k_base, llmsim's own encoding for gpt-4o, offline:
AIPerf through its tiktoken tokenizer (`--tokenizer o200k_base`, tiktoken's cache filled with
llmsim's bundled rank file), guidellm through a Hugging Face tokenizer directory converted from
the same file with transformers' TikTokenConverter (made once, in --work-dir). HF_HUB_OFFLINE and
TRANSFORMERS_OFFLINE are set for every run. See docs/peers.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from llmsim.bench.preflight import free_port
from llmsim.engine.tokens import _SPECS

REPO = Path(__file__).resolve().parent.parent
TIKTOKEN_FILE = REPO / "llmsim" / "data" / "tiktoken" / "o200k_base.tiktoken"
# tiktoken looks a rank file up in its cache under the SHA-1 of the URL it would download.
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
MODEL = "gpt-4o"  # o200k_base in llmsim, so the tools' tokenizer is the server's
EXACT = ("--ttft-ms", "200", "--ttft-stddev-ms", "0", "--tbt-ms", "20", "--tbt-stddev-ms", "0")
NOISY = ("--profile", "gpt-4o", "--seed", "7")
PLAN_TTFT_MS, PLAN_TBT_MS = 200.0, 20.0
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# Converts the tiktoken rank file into a Hugging Face fast tokenizer (run in the peer venv,
# which has transformers; llmsim's does not). argv: rank file, pattern, output directory.
MAKE_TOKENIZER = """
import sys
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter
src, pattern, out = sys.argv[1:4]
conv = TikTokenConverter(vocab_file=src, pattern=pattern, extra_special_tokens=["<|endoftext|>"])
tok = PreTrainedTokenizerFast(tokenizer_object=conv.converted(), eos_token="<|endoftext|>")
tok.save_pretrained(out)
"""


def busy_s() -> float:
    """CPU seconds the whole machine has used so far (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (a tool and the processes it forks)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Server:
    """One `llmsim serve` on a free loopback port, niced, stopped by close()."""

    def __init__(self, extra: tuple[str, ...], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = ["nice", "-n", "15", sys.executable, "-m", "llmsim", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), *extra]
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmsim serve exited; see {log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError(f"llmsim serve did not answer /health in 30 s; see {log}")

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def stats(self) -> dict[str, Any]:
        """The server's /llmsim/stats."""
        with urllib.request.urlopen(self.url + "/llmsim/stats", timeout=5) as r:
            return json.load(r)

    def close(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 15 s) and close its log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a tool's process group (its own session) and reap the tool."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone: the tool and every worker it forked have exited
    proc.wait()


def hf_tokenizer(venv: Path, work: Path) -> Path:
    """The o200k_base tokenizer as a Hugging Face directory, converted once and kept."""
    out = work / "tokenizer-o200k"
    if (out / "tokenizer.json").exists():
        return out
    pattern = _SPECS["o200k_base"]["pat_str"]
    cmd = ["nice", "-n", "15", str(venv / "bin" / "python"), "-c", MAKE_TOKENIZER]
    subprocess.run(
        [*cmd, str(TIKTOKEN_FILE), pattern, str(out)],
        check=True,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        timeout=300,
    )
    return out


def tiktoken_cache(work: Path) -> Path:
    """A TIKTOKEN_CACHE_DIR holding llmsim's o200k_base file where tiktoken looks for it."""
    cache = work / "tiktoken-cache"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()
    if not target.exists():
        shutil.copyfile(TIKTOKEN_FILE, target)
    return cache


def aiperf_cmd(venv: Path, url: str, c: int, n: int, a: argparse.Namespace, out: Path) -> list:
    """AIPerf's command line: `n` streamed chats at concurrency `c`, prompts and replies of
    exactly --prompt-tokens and --output-tokens (ignore_eos), o200k_base, artifacts in `out`."""
    return [
        str(venv / "bin" / "aiperf"), "profile", "-m", MODEL, "--url", url,
        "--endpoint-type", "chat", "--streaming", "--concurrency", str(c),
        "--request-count", str(n), "--benchmark-duration", f"{a.run_timeout:g}",
        "--prompt-input-tokens-mean", str(a.prompt_tokens),
        "--prompt-input-tokens-stddev", "0", "--prompt-output-tokens-mean", str(a.output_tokens),
        "--prompt-output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true",
        "--tokenizer", "o200k_base", "--random-seed", "1", "--output-artifact-dir", str(out),
        "--no-server-metrics", "--no-gpu-telemetry", "--ui-type", "none",
    ]  # fmt: skip


def parse_aiperf(out: Path) -> dict[str, Any]:
    """AIPerf's profile_export_aiperf.json: its own statistics per metric."""
    d = json.loads((out / "profile_export_aiperf.json").read_text())

    def stat(name: str, key: str) -> float | None:
        return (d.get(name) or {}).get(key)

    errors = sum(e.get("count", 0) for e in d.get("error_summary") or [])
    return {
        "requests": int(stat("request_count", "avg") or 0),
        "errors": errors,
        "ttft_p50": stat("time_to_first_token", "p50"),
        "ttft_p99": stat("time_to_first_token", "p99"),
        # AIPerf's ITL is per request: (last − first content chunk) / (tokens − 1).
        "itl_p50": stat("inter_token_latency", "p50"),
        "itl_p99": stat("inter_token_latency", "p99"),
        # Its inter_chunk_latency is every gap of every request: a per-gap distribution.
        "gap_p99": stat("inter_chunk_latency", "p99"),
        # Output tokens as AIPerf counts them (re-tokenizing the text) and as the usage says.
        "out_min": stat("output_sequence_length", "min"),
        "out_max": stat("output_sequence_length", "max"),
        "usage_out_max": stat("usage_completion_tokens", "max"),
        # AIPerf's HTTP trace: request start to body sent (connecting included), and body sent
        # to the first byte back. The client's own delays show in the first.
        "send_p50": stat("http_req_sending", "p50"),
        "wait_p50": stat("http_req_waiting", "p50"),
    }


def guidellm_cmd(
    venv: Path, url: str, c: int, n: int, a: argparse.Namespace, out: Path, tok: Path
) -> list:
    """guidellm's command line for the same workload, with the Hugging Face tokenizer
    directory `tok` and its benchmarks.json in `out`."""
    return [
        str(venv / "bin" / "guidellm"), "run",
        "--backend", f"kind=openai_http,target={url},model={MODEL},"
        "request_format=/v1/chat/completions",
        "--profile", f"kind=concurrent,streams={c}",
        "--constraint", f"kind=max_requests,count={n}",
        "--constraint", f"kind=max_duration,seconds={a.run_timeout:g}",
        "--tokenizer", f"kind=huggingface_auto,model={tok}",
        "--data", f"kind=synthetic_text,prompt_tokens={a.prompt_tokens},"
        f"output_tokens={a.output_tokens}",
        "--output", f"kind=json,path={out / 'benchmarks.json'}",
        "--disable-console",
    ]  # fmt: skip


def parse_guidellm(out: Path) -> dict[str, Any]:
    """guidellm's benchmarks.json: per-metric distributions over the successful requests."""
    bench = json.loads((out / "benchmarks.json").read_text())["benchmarks"][0]
    m = bench["metrics"]

    def pct(name: str, p: str) -> float | None:
        return m[name]["successful"]["percentiles"][p] if m[name]["successful"]["count"] else None

    totals = m["request_totals"]
    outs = m["output_token_count"]["successful"]
    return {
        "requests": totals["total"],
        "errors": totals["errored"] + totals["incomplete"],
        "ttft_p50": pct("time_to_first_token_ms", "p50"),
        "ttft_p99": pct("time_to_first_token_ms", "p99"),
        # guidellm's ITL is per request too: (last − first token) / (tokens − 1).
        "itl_p50": pct("inter_token_latency_ms", "p50"),
        "itl_p99": pct("inter_token_latency_ms", "p99"),
        "gap_p99": None,  # guidellm keeps no per-gap times
        "out_min": outs["min"] if outs["count"] else None,
        "out_max": outs["max"] if outs["count"] else None,
        "usage_out_max": None,
        "send_p50": None,
        "wait_p50": None,
    }


def baseline_cmd(url: str, c: int, a: argparse.Namespace) -> list:
    """llmsim's own raw-socket epoll client: the floor the peers' clients are compared with."""
    return [
        sys.executable, str(REPO / "benchmarks" / "serve_timing.py"), "timing", "--url", url,
        "--streams", str(c), "--tokens", str(a.output_tokens), "--model", MODEL,
        "--ramp-s", "0.5", "--duration-s", "4", "--drain-s", "5",
    ]  # fmt: skip


def parse_baseline(out: Path, a: argparse.Namespace) -> dict[str, Any]:
    """serve_timing.py's JSON line: TTFT from request sent, every gap between content chunks."""
    d = json.loads((out / "tool.log").read_text().strip().splitlines()[-1])
    return {
        "requests": d["streams_done"],
        "errors": d["errors"] + d["unfinished"],
        "ttft_p50": d["ttft_ms"]["p50"],
        "ttft_p99": d["ttft_ms"]["p99"],
        "itl_p50": None,  # per gap only
        "itl_p99": None,
        "gap_p99": d["gap_ms"]["p99"],
        "out_min": a.output_tokens if not d["wrong_token_count"] else None,
        "out_max": a.output_tokens if not d["wrong_token_count"] else None,
        "usage_out_max": None,
        "send_p50": None,
        "wait_p50": None,
    }


def run_one(tool: str, c: int, noisy: bool, a: argparse.Namespace, venv: Path, work: Path) -> dict:
    """One tool at one concurrency against a fresh server; the row of the table."""
    n = max(a.min_requests, a.requests_per_stream * c)
    tag = f"{tool}-c{c}{'-noisy' if noisy else ''}"
    out = work / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    row: dict[str, Any] = {"tool": tool, "c": c, "profile": "gpt-4o" if noisy else "exact"}
    server = Server(NOISY if noisy else EXACT, out / "server.log")
    try:
        env = {**os.environ, **OFFLINE, "NO_COLOR": "1"}
        if tool == "baseline":
            cmd = baseline_cmd(server.url, c, a)
        elif tool == "aiperf":
            cmd = aiperf_cmd(venv, server.url, c, n, a, out)
            env["TIKTOKEN_CACHE_DIR"] = str(tiktoken_cache(work))
        else:
            cmd = guidellm_cmd(venv, server.url, c, n, a, out, hf_tokenizer(venv, work))
        row["command"] = " ".join(["nice", "-n", "15", *cmd])
        b0, s0, k0, t0 = busy_s(), server.cpu_s(), children_cpu_s(), time.monotonic()
        with (out / "tool.log").open("w") as log:
            # A session of its own: the tools fork workers (guidellm's outlive a killed parent),
            # so a timeout ends the whole group, and whatever is left of it after a clean exit.
            proc = subprocess.Popen(
                ["nice", "-n", "15", *cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=out,
                start_new_session=True,
            )
            try:
                proc.wait(a.run_timeout + a.startup_s)
            except subprocess.TimeoutExpired:
                row["failure"] = f"killed after {a.run_timeout + a.startup_s:g} s"
            end_group(proc)
        wall = time.monotonic() - t0
        tool_cpu, srv_cpu = children_cpu_s() - k0, server.cpu_s() - s0
        row["tool_cpu_pct"] = round(100 * tool_cpu / wall)
        row["server_cpu_pct"] = round(100 * srv_cpu / wall)
        row["other_cpu_pct"] = round(100 * max(0.0, busy_s() - b0 - tool_cpu - srv_cpu) / wall)
        row["wall_s"] = round(wall, 1)
        if "failure" not in row and proc.returncode != 0:
            row["failure"] = f"exit {proc.returncode}; see {out / 'tool.log'}"
        try:
            parse = {"aiperf": parse_aiperf, "guidellm": parse_guidellm}.get(tool)
            row.update(parse(out) if parse else parse_baseline(out, a))
        except (OSError, KeyError, IndexError, ValueError) as exc:
            row.setdefault("failure", f"no results ({type(exc).__name__}: {exc})")
        st = server.stats()
        row["server_ttft_mean"] = st["ttft_ms"].get("mean")  # its percentiles are bucketed
        # No stream_loop section until the server has streamed something.
        late = st.get("stream_loop", {}).get("lateness", {})
        row["late_first_p99"] = late.get("first_event", {}).get("p99_ms")
        row["late_events_p99"] = late.get("events", {}).get("p99_ms")
    finally:
        server.close()
    return row


def fmt(v: Any, digits: int = 1) -> str:
    """A table cell: "-" for None, a float to `digits` decimals, anything else as str()."""
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def print_table(rows: list[dict], a: argparse.Namespace) -> None:
    """The plan, then one Markdown row per run: its figures (ms) and failure, or only the
    failure when it has no results."""
    print(
        f"\nplan: TTFT {PLAN_TTFT_MS:g} ms, ITL {PLAN_TBT_MS:g} ms (exact profile), "
        f"{a.output_tokens} output tokens per request, prompt {a.prompt_tokens} tokens"
    )
    head = (
        "| tool | profile | conc | requests | errors | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 "
        "| gap p99 | send p50 | wait p50 | out tokens (min–max / asked) | server TTFT mean "
        "| late 1st p99 | late ev p99 | CPU tool/server/other % |"
    )
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        if "requests" not in r:
            print(f"| {r['tool']} | {r['profile']} | {r['c']} | {r.get('failure', '?')} |")
            continue
        out = f"{fmt(r['out_min'], 0)}–{fmt(r['out_max'], 0)} / {a.output_tokens}"
        cpu = f"{r['tool_cpu_pct']}/{r['server_cpu_pct']}/{r['other_cpu_pct']}"
        print(
            f"| {r['tool']} | {r['profile']} | {r['c']} | {r['requests']} | {r['errors']} "
            f"| {fmt(r['ttft_p50'])} | {fmt(r['ttft_p99'])} | {fmt(r['itl_p50'], 2)} "
            f"| {fmt(r['itl_p99'], 2)} | {fmt(r['gap_p99'])} | {fmt(r['send_p50'])} "
            f"| {fmt(r['wait_p50'])} | {out} "
            f"| {fmt(r['server_ttft_mean'])} | {fmt(r['late_first_p99'])} "
            f"| {fmt(r['late_events_p99'])} | {cpu} |"
        )
        if r.get("failure"):
            print(f"|   ↳ {r['failure']} |")


def main() -> int:
    """Run llmsim's client and each tool found in --peers-venv at every --concurrency (with
    --noisy, once more each on gpt-4o at 10), print the table and with --json write the rows.
    Returns 0 whatever was measured."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers-venv", type=Path, default=Path("/work/wt/peers-venv"))
    p.add_argument("--tools", default="aiperf,guidellm")
    p.add_argument("--concurrency", default="1,10,50")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--requests-per-stream", type=int, default=3)
    p.add_argument("--min-requests", type=int, default=10)
    p.add_argument("--run-timeout", type=float, default=60.0, help="seconds of load per run")
    # guidellm spends 30-40 s starting its worker processes and preparing its synthetic data
    # on a loaded 2-core machine before the first request; the load itself lasts seconds.
    p.add_argument("--startup-s", type=float, default=90.0, help="a tool's start-up allowance")
    p.add_argument("--noisy", action="store_true", help="also one run per tool on gpt-4o")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmsim-peers")
    p.add_argument("--no-baseline", action="store_true", help="skip llmsim's own client")
    p.add_argument("--json", type=Path, help="write the rows here too")
    a = p.parse_args()

    if not (a.peers_venv / "bin" / "python").exists():
        print(f"peer_judges: skipping: no peer virtualenv at {a.peers_venv} (see docs/peers.md)")
        return 0
    tools = []
    for tool in a.tools.split(","):
        exe = a.peers_venv / "bin" / tool
        if exe.exists():
            tools.append(tool)
        else:
            print(f"peer_judges: skipping {tool}: {exe} not found (see docs/peers.md)")
    if not tools:
        return 0
    if not a.no_baseline:
        tools.insert(0, "baseline")
    a.work_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in a.concurrency.split(",")]
    print(f"peer_judges: {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC, work dir {a.work_dir}")
    runs = [(t, c, False) for t in tools for c in levels]
    if a.noisy:
        runs += [(t, 10, True) for t in tools]
    rows = []
    for tool, c, noisy in runs:
        try:
            row = run_one(tool, c, noisy, a, a.peers_venv, a.work_dir)
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            row = {"tool": tool, "c": c, "profile": "gpt-4o" if noisy else "exact"}
            row["failure"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(f"  {tool} c={c} {row['profile']}: {row.get('failure') or 'done'}", flush=True)
    print_table(rows, a)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
