"""How fast one Locust process parses LLM streams, and what each event and request costs in CPU.

    python benchmarks/locust_throughput.py                 # fake burst target (client-bound)
    python benchmarks/locust_throughput.py --target llmsim  # llmsim serve --profile instant

Two runs against a target that answers instantly: long streams (1,000 tokens: the cost per SSE
event dominates) and one-token streams (the cost per request dominates). CPU is the Locust
process's own user+system time over a steady window (after start-up and spawning); solving the
two runs' cpu = requests * c_req + events * c_event gives both costs. Events are all SSE events
parsed: role, one per token, finish, usage and [DONE].

A third run paces the fake target (one write per event, 2 ms apart, 50 users), so nearly every
event arrives in its own recv(): the per-event cost there includes a system call and a greenlet
switch, the worst case for a client.

--compare-requests adds the same long-stream run with a Locust HttpUser (python-requests,
iter_content(chunk_size=None)) feeding the same SSE parser, to show what geventhttpclient buys.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

from locust_common import REPO, Procs, load_results, measure_window, rows_in_window

CHAT = REPO / "locustfiles" / "chat.py"

REQUESTS_USER = '''
import json, time
from locust import HttpUser, task
import llmsim.locust  # noqa: F401  (the --llm-results-dir option the harness passes)
from llmsim.load.sse import SSEParser

class RequestsStreamUser(HttpUser):
    """Same parsing as OpenAIChatUser, but python-requests underneath."""
    @task
    def chat(self):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": TOKENS, "stream": True, "stream_options": {"include_usage": True},
                "ignore_eos": True}
        with self.client.post("/v1/chat/completions", json=body, stream=True,
                              catch_response=True) as resp:
            parser, n = SSEParser(), 0
            for chunk in resp.iter_content(chunk_size=None):
                for _event, data in parser.feed(chunk):
                    if data != b"[DONE]":
                        json.loads(data)
                    n += 1
            resp.success()
'''


def run(
    procs: Procs, host: str, model: str, tokens: int, users: int, window: float, out: Path
) -> dict:
    """One run of chat.py (`users` users, `tokens`-token replies) after a 4 s warm-up: the ok
    requests that ended in the `window` s, their SSE events (tokens + 4 each) and Locust's CPU
    (s) over the window."""
    warmup = 4.0
    proc = procs.start_locust(
        CHAT,
        host,
        out,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{int(warmup + window + 2)}s",
        "--llm-model",
        model,
        "--llm-max-tokens",
        str(tokens),
        "--llm-ignore-eos",
        "--llm-prompt-tokens",
        "32",
    )
    t0, cpu = measure_window(proc, warmup, window)
    proc.wait(60)
    summary, rows = load_results(out)
    ok = [r for r in rows_in_window(rows, t0, t0 + window) if r["status"] == "ok"]
    requests = len(ok)
    events = sum(int(r["output_tokens"]) + 4 for r in ok)
    return {
        "tokens": tokens,
        "requests": requests,
        "events": events,
        "cpu_s": cpu,
        "window_s": window,
        "failed": summary["requests"]["failed"],
    }


def run_requests_user(procs: Procs, host: str, model: str, window: float, out: Path) -> dict:
    """The long-stream run with REQUESTS_USER (20 HttpUsers, 1,000 tokens a stream): Locust's
    CPU (s) over the window and the SSE events a second its whole-run req/s implies."""
    src = REQUESTS_USER.replace("MODEL", repr(model)).replace("TOKENS", "1000")
    locustfile = out.parent / "requests_user.py"
    locustfile.write_text(textwrap.dedent(src))
    warmup = 4.0
    origin = host.removesuffix("/v1")
    proc = procs.start_locust(
        locustfile, origin, out, "-u", "20", "-r", "20", "-t", f"{int(warmup + window + 2)}s"
    )
    _, cpu = measure_window(proc, warmup, window)
    proc.wait(60)
    stats = (out / "locust_stats.csv").read_text().splitlines()
    rps = float(stats[1].split(",")[9])  # whole-run average, start-up included: a lower bound
    return {"events_per_s": rps * 1004, "cpu_s": cpu, "window_s": window}


def main() -> None:
    """The long- and one-token-stream runs and the CPU per request and per SSE event solved
    from the two; against the fake target also the paced run, with --compare-requests the
    HttpUser run."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=["fake", "llmsim"], default="fake")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--compare-requests", action="store_true")
    args = ap.parse_args()
    procs = Procs()
    try:
        if args.target == "fake":
            host = procs.start_target("-m", "llmsim.load.fakeserver", "--port", "0")
            model = "burst"
        else:
            host = procs.start_target(
                "-m",
                "llmsim",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--profile",
                "instant",
            )
            model = "gpt-4o-mini"
        tmp = Path(tempfile.mkdtemp(prefix="llmsim-locust-bench-"))
        long = run(procs, host, model, 1000, args.users, args.seconds, tmp / "long")
        short = run(procs, host, model, 1, args.users, args.seconds, tmp / "short")
        for name, r in (("1000-token streams", long), ("1-token streams", short)):
            w = r["window_s"]
            print(
                f"{name:20s}: {r['events'] / w:9,.0f} SSE events/s,"
                f" {r['requests'] / w:7,.0f} req/s,"
                f" Locust CPU {100 * r['cpu_s'] / w:5.1f} % of a core,"
                f" {1e6 * r['cpu_s'] / max(1, r['events']):5.1f} us/event, failed {r['failed']}"
            )
        # cpu = R * c_req + E * c_event for both runs
        a1, b1, c1 = long["requests"], long["events"], long["cpu_s"]
        a2, b2, c2 = short["requests"], short["events"], short["cpu_s"]
        det = a1 * b2 - a2 * b1
        c_req = (c1 * b2 - c2 * b1) / det
        c_event = (a1 * c2 - a2 * c1) / det
        print(f"CPU per request: {1e6 * c_req:.0f} us; CPU per SSE event: {1e6 * c_event:.1f} us")
        print(f"=> one core parses about {1 / c_event:,.0f} events/s in long streams")
        if args.target == "fake":
            paced_host = procs.start_target(
                "-m", "llmsim.load.fakeserver", "--port", "0", "--tbt-ms", "2"
            )
            p = run(procs, paced_host, "ok", 200, 50, args.seconds, tmp / "paced")
            w = p["window_s"]
            per_event = (p["cpu_s"] - p["requests"] * c_req) / max(1, p["events"])
            print(
                f"paced, 1 event/recv : {p['events'] / w:9,.0f} SSE events/s (target-bound),"
                f" Locust CPU {100 * p['cpu_s'] / w:5.1f} %,"
                f" {1e6 * per_event:.1f} us/event => {1 / per_event:,.0f} events/s per core"
            )
        if args.compare_requests:
            r = run_requests_user(procs, host, model, args.seconds, tmp / "requests")
            cpu_pct = 100 * r["cpu_s"] / r["window_s"]
            print(
                f"HttpUser (python-requests), 1000-token streams: about {r['events_per_s']:,.0f}"
                f" SSE events/s at {cpu_pct:.0f} % CPU"
            )
        print(f"(outputs in {tmp})")
    finally:
        procs.close()


if __name__ == "__main__":
    main()
