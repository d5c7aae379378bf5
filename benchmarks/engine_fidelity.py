"""Engine mode's fidelity: Meta-Llama-3-8B on one A100, 512-token prompts, 128-token replies.

    python benchmarks/engine_fidelity.py [--quick] [--plots docs/img]

What it prints:
1. The pure simulation (benchmarks/engine_sim.py: the scheduler and the llama-3-8b-a100
   preset, no server) under Poisson arrivals from 1 request/s to past saturation: TTFT and TPOT
   p50/p90, output throughput. The knee is where TTFT p90 passes 4x its low-load value.
2. The same arrivals through the real server (`llmsim serve --engine vllm`) read by an
   open-loop client on raw sockets: the same figures, each with its error against (1). The
   bounds: TTFT and TPOT p50/p90 within 20 % below the knee, saturated throughput within 10 %.
3. The anchors from published measurements (named below) of what the preset predicts.

Why not run Vidur itself: the repository's mirror here lacks every `attention.csv` (17 MB,
over what a snapshot carries), and the PyPI package (vidur 0.0.26) downloads its profiles from
Hugging Face at run time, which this machine cannot reach. The preset is built from Vidur's
published tables instead (benchmarks/engine_presets_fit.py), and checked against published
vLLM measurements at the points they cover.

With --plots DIR it also draws (pure simulation, same preset): ITL with and without chunked
prefill, TTFT with a 50 % shared prefix vs none, and preemptions as the KV cache shrinks.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_sim import (
    Result,
    add_handover_args,
    pct,
    replica_for,
    run_open_loop,
    set_handover,
    simulate,
    summary,
)
from locust_common import Procs

from llmsim.engine.steptime import load_preset
from llmsim.engine.tokens import encoding_for_model

if TYPE_CHECKING:
    from collections.abc import Callable

    from llmsim.engine.scheduler import Replica

MODEL = "meta-llama/Meta-Llama-3-8B"
PROMPT, OUTPUT = 512, 128

# Published single-stream decode figures for Llama-3(.1)-8B, BF16, vLLM, concurrency 1:
ANCHORS = [
    {
        "preset": "llama-3-8b-a100",
        "what": "TPOT at concurrency 1, ms",
        "published": 1000 / 75 * (1.555 / 2.039),
        "source": "johnmusgrave.com 'vLLM throughput-latency sweep on NVIDIA A100' (vLLM 0.23, "
        "A100-40GB, 1024 in / 128 out): ~75 tok/s at C=1; scaled by HBM bandwidth "
        "1.555 -> 2.039 TB/s for the A100-80GB SXM",
        "context": 1024 + 64,
    },
    {
        "preset": "llama-3-8b-h100",
        "what": "TPOT at concurrency 1, ms",
        "published": 6.48,
        "source": "InferenceBench concurrency-sweep recipe (vLLM 0.21, H100-80GB HBM3, "
        "Llama-3.1-8B fp16, chatbot-short): tpot_p50 6.48 ms at conc=1",
        "context": 600,
    },
]


def exact_prompt(n: int, seed: int) -> str:
    """A text of exactly n tokens in the model's encoding, unlike any other seed's."""
    enc = encoding_for_model(MODEL)
    words = " ".join(f"r{seed}w{i}" for i in range(n))
    return enc.decode(enc.encode(words)[:n])


def arrivals(rate: float, n: int, seed: int) -> list[float]:
    """`n` Poisson arrival times (s from the start, the first one gap in) at `rate` req/s."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


class _Conn:
    __slots__ = ("buf", "done", "rid", "sent", "sock", "status", "times")

    def __init__(self, sock: socket.socket, sent: float) -> None:
        self.sock = sock
        self.sent = sent
        self.buf = b""
        self.times: list[float] = []
        self.done = False
        self.status = 0
        self.rid = ""

    def feed(self, data: bytes, t: float) -> None:
        self.buf += data
        if not self.status and b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])  # "HTTP/1.1 200 OK"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "x-request-id":
                    self.rid = value.strip()
        if not self.status:
            return
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            i = event.find(b"data: ")
            if i < 0:
                continue
            payload = event[i + 6 :]
            if payload.startswith(b"[DONE]"):
                self.done = True
            elif b'"text":"' in payload and b'"text":""' not in payload:
                self.times.append(t)


def open_loop(
    url: str,
    times: list[float],
    prompts: list[str],
    outputs: list[int] | None = None,
    failures: list[tuple[int, int, int]] | None = None,
) -> tuple[list[Result], float]:
    """Send request i at times[i] (s from start) on its own connection; read SSE as it comes.

    Each reply is `outputs[i]` tokens long (`ignore_eos`), OUTPUT when not given. Only complete
    replies (status 200, `[DONE]`, every token) are returned; the others are appended to
    `failures` as (index, HTTP status, tokens received).
    """
    host, port = url.split("//")[1].split("/")[0].split(":")
    port_n = int(port)
    reqs = []
    for k, p in enumerate(prompts):
        body = json.dumps(
            {"model": MODEL, "prompt": p, "max_tokens": outputs[k] if outputs else OUTPUT,
             "ignore_eos": True, "stream": True}
        ).encode()  # fmt: skip
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        reqs.append(head + body)
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    results: list[Result | None] = [None] * len(times)
    index: dict[int, int] = {}
    t0 = time.monotonic() + 0.2
    i = 0
    cpu0 = psutil.Process().cpu_times()
    while i < len(times) or conns:
        now = time.monotonic()
        while i < len(times) and now >= t0 + times[i]:
            s = socket.create_connection((host, port_n))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = time.monotonic()
            s.sendall(reqs[i])
            s.setblocking(False)
            c = _Conn(s, sent)
            conns[s.fileno()] = c
            index[s.fileno()] = i
            ep.register(s.fileno(), select.EPOLLIN)
            i += 1
            now = time.monotonic()
        wait = 0.05 if i >= len(times) else max(0.0, min(0.05, t0 + times[i] - now))
        for fd, _ev in ep.poll(wait):
            c = conns[fd]
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            t = time.monotonic()
            if data:
                c.feed(data, t)
            if not data or c.done:
                ep.unregister(fd)
                c.sock.close()
                del conns[fd]
                k = index.pop(fd)
                want = outputs[k] if outputs else OUTPUT
                if c.status != 200 or not c.done or len(c.times) != want:
                    if failures is not None:
                        failures.append((k, c.status, len(c.times)))
                    continue
                r = Result(arrival=c.sent - t0, request_id=c.rid)
                r.tokens = [x - t0 for x in c.times]
                results[k] = r
    ep.close()
    cpu1 = psutil.Process().cpu_times()
    client_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return [r for r in results if r is not None], client_cpu


def sim_sweep(rates: list[float], n_of: Callable[[float], int]) -> list[dict]:
    """Pure simulation of 512 / 128-token requests on llama-3-8b-a100 under Poisson arrivals,
    `n_of(rate)` requests at each rate (req/s): one row per rate, its `summary` figures (ms,
    tok/s) with the rate and the replica's preemptions."""
    rows = []
    for rate in rates:
        r = replica_for("llama-3-8b-a100")
        s = summary(run_open_loop(r, rate, n_of(rate), PROMPT, OUTPUT, seed=int(rate * 100)))
        rows.append({"rate": rate, **s, "preemptions": r.counters.preemptions})
    return rows


def knee_of(rows: list[dict]) -> float:
    """The first rate whose TTFT p90 passes 4x the first row's (the lowest load); inf if none."""
    base = rows[0]["ttft_p90"]
    for row in rows:
        if row["ttft_p90"] > 4 * base:
            return row["rate"]
    return float("inf")


def fmt_row(tag: str, s: dict) -> str:
    """One line of `summary` figures: TTFT and TPOT p50 / p90 (ms), throughput (tok/s)."""
    return (
        f"{tag:>14}  TTFT p50 {s['ttft_p50']:8.1f} p90 {s['ttft_p90']:8.1f} ms   TPOT p50 "
        f"{s['tpot_p50']:6.2f} p90 {s['tpot_p90']:6.2f} ms   {s['throughput']:7.0f} tok/s"
    )


def server_check(rates: list[float], knee: float, n_of: Callable[[float], int]) -> list[dict]:
    """Each rate's Poisson arrivals (`n_of(rate)` requests) through one `llmsim serve --engine
    vllm` and in pure simulation: both summaries, their relative errors and the verdict (TTFT
    and TPOT p50 / p90 within 20 % below `knee`, throughput within 10 % at or past it, every
    request served), with the server's intake and lateness and other processes' CPU."""
    procs = Procs()
    out = []
    try:
        url = procs.start_target(
            "-m", "llmsim", "serve", "--port", "0", "--engine", "vllm", "--seed", "1"
        )
        for rate in rates:
            n = n_of(rate)
            ts = arrivals(rate, n, seed=int(rate * 1000))
            prompts = [exact_prompt(PROMPT, int(rate * 1000) * 10_000 + k) for k in range(n)]
            others = round(psutil.cpu_percent(interval=0.5) * psutil.cpu_count(), 1)
            failed: list[tuple[int, int, int]] = []
            served, client_cpu = open_loop(url, ts, prompts, failures=failed)
            # The same arrivals and lengths in pure simulation.
            rep = replica_for("llama-3-8b-a100")
            sim = _sim_at(rep, ts)
            s_srv, s_sim = summary(served), summary(sim)
            late = server_lateness(url.rsplit("/v1", 1)[0], served)
            errs = {k: (s_srv[k] - s_sim[k]) / s_sim[k] for k in s_sim}
            below = rate < knee
            keys = ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90") if below else ("throughput",)
            bound = 0.2 if below else 0.1
            ok = all(abs(errs[k]) <= bound for k in keys) and len(served) == n and not failed
            out.append(
                {"rate": rate, "n": n, "served": len(served), "failed": failed,
                 "server": s_srv, "sim": s_sim,
                 "errors": errs, "checked": keys, "bound": bound, "ok": ok,
                 "client_cpu_s": round(client_cpu, 2), "others_cpu_pct": others,
                 "server_lateness_ms": late}
            )  # fmt: skip
            print(fmt_row(f"{rate:g}/s server", s_srv))
            print(fmt_row("sim", s_sim))
            worst = max(abs(errs[k]) for k in keys)
            print(
                f"{'':>14}  checked {', '.join(keys)}: worst error {worst:.1%} (bound {bound:.0%})"
                f" {'ok' if ok else 'FAIL'}; served {len(served)}/{n}, failed {len(failed)}"
                f" {failed[:5]}; others' CPU {others}%"
            )
            print(
                f"{'':>14}  server's intake p50 {late['intake_p50']:.1f} p90 "
                f"{late['intake_p90']:.1f} ms; lateness (sent - planned): first token p50 "
                f"{late['first_p50']:.1f} p90 {late['first_p90']:.1f} ms, last token p50 "
                f"{late['last_p50']:.1f} p90 {late['last_p90']:.1f} ms"
            )
    finally:
        procs.close()
    return out


def server_lateness(base: str, served: list[Result]) -> dict[str, float]:
    """What the server adds to the schedule, from its event log (ms, p50 and p90): its intake
    (request line in -> joining a replica) and its lateness (sent - planned) of each reply's
    first and last token. Both grow when the server is starved of CPU."""
    import httpx

    first, last, intake = [], [], []
    with httpx.Client(timeout=10) as client:
        for r in served:
            got = client.get(f"{base}/llmsim/requests/{r.request_id}")
            if got.status_code != 200:
                continue
            intake.append(got.json().get("admitted_ms", float("nan")))
            events = [e for e in got.json()["events"] if e["tokens"] > 0]
            if events:
                first.append(events[0]["sent_ms"] - events[0]["planned_ms"])
                last.append(events[-1]["sent_ms"] - events[-1]["planned_ms"])
    return {
        "intake_p50": pct(intake, 50), "intake_p90": pct(intake, 90),
        "first_p50": pct(first, 50), "first_p90": pct(first, 90),
        "last_p50": pct(last, 50), "last_p90": pct(last, 90),
    }  # fmt: skip


def _sim_at(replica: Replica, ts: list[float]) -> list[Result]:
    """Pure simulation of requests arriving at the given times (512 / 128, unique prompts)."""
    reqs = [(t, PROMPT, OUTPUT, list(range(i * 1000, i * 1000 + PROMPT))) for i, t in enumerate(ts)]
    return simulate(replica, reqs)


def anchors() -> list[dict]:
    """Each published anchor against its preset's one-sequence decode step (ms) at the
    anchor's context: printed, and returned with the prediction and its relative error."""
    rows = []
    for a in ANCHORS:
        st = load_preset(a["preset"]).step_time
        predicted = st.step_ms(1, 1, a["context"])
        err = (predicted - a["published"]) / a["published"]
        rows.append({**a, "predicted": round(predicted, 2), "error": round(err, 4)})
        print(
            f"{a['preset']:18} {a['what']}: preset {predicted:.2f} vs published "
            f"{a['published']:.2f} ({err:+.1%}) [{a['source']}]"
        )
    return rows


def plots(outdir: Path) -> None:
    """Draw docs/engine.md's three pure-simulation plots into `outdir` (PNG): ITL with and
    without chunked prefill, TTFT against load with a 50 % shared prefix or none, and
    preemptions and TTFT p90 as the KV cache shrinks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    # 1. ITL with and without chunked prefill: long prompts arriving while others decode.
    rng_sampler = lambda rng: (rng.choice([256, 4096]), 128)  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4))
    variants = (
        ("no chunking (V0)", {"chunked_prefill": False}),
        ("chunked, 8,192-token budget", {}),
        ("chunked, 2,048-token budget", {"max_num_batched_tokens": 2048}),
    )
    for label, kw in variants:
        rep = replica_for("llama-3-8b-a100", **kw)
        res = run_open_loop(rep, 2, 300, seed=3, prompt_sampler=rng_sampler)
        itls = sorted(g * 1000 for r in res for g in r.itls)
        ys = [i / len(itls) for i in range(len(itls))]
        ax.plot(itls, ys, label=f"{label}: p99 {pct(itls, 99):.0f} ms, max {itls[-1]:.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("inter-token latency (ms)")
    ax.set_ylabel("share of gaps at most this long")
    ax.set_title("Llama-3-8B / A100, 2 req/s, prompts of 256 or 4,096 tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(outdir / "engine-chunked-prefill-itl.png", dpi=110)
    plt.close(fig)

    # 2. TTFT vs load with a 50 % shared prefix (2,048-token prompts) and without.
    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [1, 2, 4, 6, 8, 10, 12, 14, 16]
    for share, label in ((0.0, "unique prompts"), (0.5, "50 % shared prefix")):
        p50s, p90s = [], []
        for rate in rates:
            rep = replica_for("llama-3-8b-a100")
            res = run_open_loop(rep, rate, 300, prompt=2048, output=128, seed=rate,
                                shared_prefix=share)  # fmt: skip
            s = summary(res)
            p50s.append(s["ttft_p50"])
            p90s.append(s["ttft_p90"])
        line = ax.plot(rates, p50s, marker="o", label=f"{label}, p50")[0]
        ax.plot(rates, p90s, ls="--", color=line.get_color(), label=f"{label}, p90")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("Llama-3-8B / A100, 2,048-token prompts, 128-token replies")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(outdir / "engine-prefix-cache-ttft.png", dpi=110)
    plt.close(fig)

    # 3. Preemptions as the KV cache shrinks (12 req/s of 512 / 128).
    fig, ax = plt.subplots(figsize=(7, 4))
    blocks = [4096, 3072, 2048, 1536, 1024, 768, 640, 512]
    pre, ttft = [], []
    for b in blocks:
        rep = replica_for("llama-3-8b-a100", num_gpu_blocks=b)
        res = run_open_loop(rep, 12, 600, seed=5)
        pre.append(rep.counters.preemptions / len(res))
        ttft.append(summary(res)["ttft_p90"])
    ax.plot([b * 16 for b in blocks], pre, marker="o", label="preemptions per request")
    ax.set_xscale("log")
    ax.set_xlabel("KV cache size (tokens)")
    ax.set_ylabel("preemptions per request")
    ax2 = ax.twinx()
    ax2.plot([b * 16 for b in blocks], ttft, marker="s", color="tab:red", label="TTFT p90")
    ax2.set_ylabel("TTFT p90 (ms)", color="tab:red")
    ax2.set_yscale("log")
    ax.set_title("Llama-3-8B / A100, 12 req/s of 512 / 128: the cache shrinks")
    ax.grid(alpha=0.3)
    fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.85))
    fig.tight_layout()
    fig.savefig(outdir / "engine-preemption-kv.png", dpi=110)
    plt.close(fig)
    print(f"plots written to {outdir}/engine-*.png")


def main() -> int:
    """The pure-simulation sweep and its knee, the anchors, then (unless --no-server) the
    server check and (with --plots) the plots; every figure goes to /tmp/engine_fidelity.json.
    Returns 1 when the server check fails, so a script can tell."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests per load")
    p.add_argument("--no-server", action="store_true", help="pure simulation only")
    p.add_argument("--plots", type=Path, default=None, help="write the plots to this folder")
    p.add_argument(
        "--server-rates", type=float, nargs="+", default=None,
        help="loads (req/s) to check through the server (default: 2 6 12 16 and 32)",
    )  # fmt: skip
    add_handover_args(p)
    a = p.parse_args()
    set_handover(a.frontend_handover_order, a.handover_seed)
    scale = 0.5 if a.quick else 1.0

    def n_sim(rate: float) -> int:
        return int(max(300, rate * 30) * scale)

    def n_srv(rate: float) -> int:
        return int(max(40, rate * 8) * scale)

    print("== pure simulation (llama-3-8b-a100, 512 in / 128 out, Poisson)")
    rates = [1, 2, 4, 8, 12, 16, 18, 20, 22, 24, 28, 32, 40]
    rows = sim_sweep(rates, n_sim)
    for row in rows:
        print(fmt_row(f"{row['rate']:g}/s", row))
    knee = knee_of(rows)
    sat = max(r["throughput"] for r in rows)
    print(f"knee (TTFT p90 > 4x its 1 req/s value) at {knee:g} req/s; "
          f"saturated output {sat:.0f} tok/s")  # fmt: skip
    print("== published anchors")
    anchor_rows = anchors()
    result = {"sim": rows, "knee": knee, "anchors": anchor_rows}
    if not a.no_server:
        print("== through the server (open-loop raw-socket client) vs the same arrivals simulated")
        below = [r for r in (2, 6, 12, 16) if r < knee]
        result["server"] = server_check(a.server_rates or [*below, 32], knee, n_srv)
        result["ok"] = all(r["ok"] for r in result["server"])
        print("fidelity:", "ok" if result["ok"] else "FAIL")
    if a.plots:
        plots(a.plots)
    Path("/tmp/engine_fidelity.json").write_text(json.dumps(result, indent=1, default=str))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
