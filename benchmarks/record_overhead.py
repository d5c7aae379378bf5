"""What `llmsim record` adds to TTFT and inter-token gaps: the same streaming client against the
simulator directly and through the recorder, all in one run.

    python benchmarks/record_overhead.py [--streams 100] [--rounds 3] [--duration-s 5] [--alternate]

By default each round runs both paths at once (two clients, each with --streams streams, one
straight to the simulator and one through the recorder): on a shared machine both then see the
same noise, which alternating rounds do not (a neighbour's burst lands in one path's round).
`--alternate` runs them one after the other instead, rounds alternating which goes first.

The upstream is `llmsim serve` with exact timing (TTFT 200 ms, 20 ms per token, 50 tokens), so
every difference between the two paths is the recorder's (plus the machine's noise, which is
why rounds alternate and the CPU other processes used is printed). The client is
benchmarks/serve_timing.py (raw sockets and epoll), keep-alive, one closed loop per stream.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_SERVE = re.compile(r"(http://127\.0\.0\.1:\d+)/v1")
_RECORD = re.compile(r" at (http://127\.0\.0\.1:\d+)(?: into |$)", re.M)


def start(cmd: list[str], log: Path, src: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start a llmsim command (from the source tree `src`, if given) and return it with the URL
    its start-up line names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSIM_")}
    if src:
        env["PYTHONPATH"] = src
    f = open(log, "w")  # noqa: SIM115  (the child writes to it until it stops)
    # `-m llmsim` imports from the working directory first: src's, or this repository's.
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=src or REPO)
    # serve: "... at http://127.0.0.1:P/v1 ..."; record: "... at http://127.0.0.1:P into ..."
    pattern = _SERVE if "serve" in cmd else _RECORD
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = pattern.search(log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"{' '.join(cmd[2:4])} did not start: {log.read_text()}")


def timing(urls: list[str], args: argparse.Namespace) -> list[dict]:
    """One serve_timing client per URL, all at once; their results in the same order."""
    cmd = [sys.executable, str(HERE / "serve_timing.py"), "timing", "--streams",
           str(args.streams), "--tokens", "50", "--ramp-s", "1.2", "--duration-s",
           str(args.duration_s), "--drain-s", "5"]  # fmt: skip
    procs = [
        # Every request's message unique over the whole run: the recording is matched on it.
        subprocess.Popen(
            [*cmd, "--url", url, "--unique", f"{time.monotonic_ns()}-{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, url in enumerate(urls)
    ]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a timing client failed")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def others_cpu(ours: list[psutil.Process], wall: float, before: dict) -> float:
    """Cores used by processes that are not ours during the window (from /proc/stat)."""
    total = psutil.cpu_times()
    busy = (total.user + total.system + total.nice) - before["busy"]
    mine = sum(_cpu(p) for p in ours) - before["mine"]
    return max(0.0, (busy - mine) / wall)


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return 0.0


def schedstat(pid: int) -> tuple[float, float, int]:
    """(seconds on a CPU, seconds runnable but waiting for one, times scheduled) of a process's
    main thread, from /proc/PID/schedstat (zeros where the kernel does not keep it)."""
    try:
        run_ns, wait_ns, slices = Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
    except (OSError, ValueError):
        return 0.0, 0.0, 0
    return int(run_ns) / 1e9, int(wait_ns) / 1e9, int(slices)


def steal_s() -> float:
    """CPU time the hypervisor gave other guests while this machine wanted it (/proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def print_paired(rows: list[dict], recording: Path, path: str = "recorded") -> None:
    """Per request, what the recorder added: the client's TTFT through the recorder minus the
    TTFT the recorder itself saw from the upstream for the same request (matched by its
    numbered message). That is the request's hop in and the first event's hop out, and does
    not move when the upstream falls behind (which moves both paths' TTFT alike)."""
    from llmsim.record.apis import request_key

    seen = {}
    for line in recording.read_text().splitlines():
        x = json.loads(line)
        if x.get("ttft_ms") is not None:
            seen[x["key"]] = x["ttft_ms"]
    added = []
    for x in rows:
        if x["path"] != path:
            continue
        for content, ttft in x.get("per_request", {}).items():
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
            key = request_key("gpt-4o", body)
            if key in seen:
                added.append(ttft - seen[key])
    if not added:
        return
    added.sort()

    def q(p: float) -> float:
        return added[min(len(added) - 1, int(p * len(added)))]

    print(f"added to TTFT per request{'' if path == 'recorded' else f' ({path})'} (client "
          f"through the recorder − the recorder's own view, "
          f"{len(added)} requests): p50 {q(0.5):.3f} ms, p90 {q(0.9):.3f}, p99 {q(0.99):.3f}, "
          f"max {added[-1]:.3f}, min {added[0]:.3f}")  # fmt: skip


def main() -> int:
    """Start the exact upstream and the recorder (with --floor the relay, with --baseline-src
    a second recorder), run --rounds rounds of serve_timing.py over every path, and print each
    round's figures, what the recorder added per round and at the median, each relay's CPU per
    event, the recorder's wait for a CPU, the steal and the per-request pairing."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--alternate", action="store_true", help="one path after the other")
    p.add_argument("--floor", action="store_true", help="a third path: benchmarks/relay_floor.py")
    p.add_argument("--baseline-src", metavar="DIR",
                   help="one more path: a recorder run from the source tree DIR (e.g. `git "
                        "archive main | tar -x -C DIR`), for a same-run comparison")  # fmt: skip
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmsim-record-overhead-"))
    exact = ["--ttft-ms", "200", "--ttft-stddev-ms", "0", "--tbt-ms", "20", "--tbt-stddev-ms", "0"]
    serve = [sys.executable, "-m", "llmsim", "serve", "--port", "0", *exact]
    up, up_url = start(serve, tmp / "serve.log")
    rec_cmd = [sys.executable, "-m", "llmsim", "record", "--target", up_url, "--port", "0",
               "--out", str(tmp / "rec.jsonl")]  # fmt: skip
    rec, rec_url = start(rec_cmd, tmp / "record.log")
    me = psutil.Process()
    ours = [me, psutil.Process(up.pid)]
    # Per relaying path, its processes: a recorder with its analysis process (its child: off
    # the forwarding path, but on the same two cores, so its CPU is reported too).
    relays: dict[str, list[psutil.Process]] = {}

    def relay(name: str, proc: subprocess.Popen) -> None:
        relays[name] = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children()]
        ours.extend(relays[name])

    relay("recorded", rec)
    started = [rec]
    paths = [("direct", up_url), ("recorded", rec_url)]
    if args.floor:
        floor_cmd = [sys.executable, str(HERE / "relay_floor.py"), "--target", up_url]
        floor, floor_url = start(floor_cmd, tmp / "floor.log")
        relay("floor", floor)
        started.append(floor)
        paths.append(("floor", floor_url))
    if args.baseline_src:
        base_cmd = [*rec_cmd[:-1], str(tmp / "baseline.jsonl")]
        base, base_url = start(base_cmd, tmp / "baseline.log", args.baseline_src)
        relay("baseline", base)
        started.append(base)
        paths.append(("baseline", base_url))
    rows = []
    steal0, t_start = steal_s(), time.monotonic()
    cpu_s = {name: [0.0, 0.0] for name in relays}  # (the relay's process, its children)
    # How long the recorder was ready to run but had no CPU: on a shared machine at nice 15
    # that wait, not the recorder's own work, is most of what it adds at the tail.
    sched = [0.0, 0.0, 0]
    try:
        for r in range(args.rounds):
            order = list(paths)
            if r % 2:
                order.reverse()
            batches = [[x] for x in order] if args.alternate else [order]
            for batch in batches:
                t = psutil.cpu_times()
                before = {"busy": t.user + t.system + t.nice, "mine": sum(_cpu(x) for x in ours)}
                cpu0 = {k: [_cpu(v[0]), sum(_cpu(x) for x in v[1:])] for k, v in relays.items()}
                sched0 = schedstat(rec.pid)
                t0 = time.monotonic()
                results = timing([url for _, url in batch], args)
                wall = time.monotonic() - t0
                for k, v in relays.items():
                    cpu_s[k][0] += _cpu(v[0]) - cpu0[k][0]
                    cpu_s[k][1] += sum(_cpu(x) for x in v[1:]) - cpu0[k][1]
                sched = [
                    a + b - c for a, b, c in zip(sched, schedstat(rec.pid), sched0, strict=True)
                ]
                for (name, _), res in zip(batch, results, strict=True):
                    res.update(
                        path=name,
                        round=r,
                        recorder_cpu_pct=round(
                            100 * (_cpu(relays["recorded"][0]) - cpu0["recorded"][0]) / wall, 1
                        ),
                        other_cores=round(others_cpu(ours, wall, before), 2),
                    )
                    rows.append(res)
    finally:
        for proc in started:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        up.send_signal(signal.SIGTERM)
        up.wait(20)
    print(f"{'round':>5} {'path':>9} {'streams':>7} {'TTFT p50':>9} {'p90':>8} {'p99':>8} "
          f"{'gap p50':>8} {'p99':>7} {'rec CPU':>8} {'others':>7}")  # fmt: skip
    for x in rows:
        t, g = x["ttft_ms"], x["gap_ms"]
        print(f"{x['round']:>5} {x['path']:>9} {x['streams_done']:>7} {t['p50']:>9.2f} "
              f"{t['p90']:>8.2f} {t['p99']:>8.2f} {g['p50']:>8.2f} {g['p99']:>7.2f} "
              f"{x['recorder_cpu_pct']:>7.1f}% {x['other_cores']:>7.2f}")  # fmt: skip
    print("\nadded by the recorder (recorded − direct, per round, ms):")
    diffs = []
    for r in range(args.rounds):
        d = {x["path"]: x for x in rows if x["round"] == r}
        diff = {
            k: round(d["recorded"]["ttft_ms"][k] - d["direct"]["ttft_ms"][k], 2)
            for k in ("p50", "p90", "p99")
        }
        diff["gap"] = round(d["recorded"]["gap_ms"]["p99"] - d["direct"]["gap_ms"]["p99"], 2)
        diffs.append(diff)
        print(f"  round {r}: TTFT p50 {diff['p50']:+.2f}, p90 {diff['p90']:+.2f}, "
              f"p99 {diff['p99']:+.2f}; gap p99 {diff['gap']:+.2f}")  # fmt: skip
        for other, label in (("floor", "the floor relay"), ("baseline", "the baseline")):
            if other not in d:
                continue
            f = {k: d[other]["ttft_ms"][k] - d["direct"]["ttft_ms"][k] for k in ("p50", "p99")}
            g = d[other]["gap_ms"]["p99"] - d["direct"]["gap_ms"]["p99"]
            print(f"           {label}: TTFT p50 {f['p50']:+.2f}, p99 {f['p99']:+.2f}; "
                  f"gap p99 {g:+.2f}")  # fmt: skip
    med = {k: statistics.median(x[k] for x in diffs) for k in diffs[0]}
    print(f"  median: TTFT p50 {med['p50']:+.2f}, p90 {med['p90']:+.2f}, p99 {med['p99']:+.2f}; "
          f"gap p99 {med['gap']:+.2f}")  # fmt: skip
    for name, (own, children) in cpu_s.items():
        events = sum(x["events_total"] for x in rows if x["path"] == name)
        label = {"recorded": "recorder", "floor": "the floor relay's", "baseline": "baseline"}
        print(f"{label[name]} CPU per relayed event: {1e6 * own / max(1, events):.1f} µs "
              f"({events} events)" + (f"; its analysis process: "
              f"{1e6 * children / max(1, events):.1f} µs" if name != "floor" else ""))  # fmt: skip
    if sched[2]:
        print(
            f"recorder on a CPU {sched[0]:.2f} s, ready but waiting for one {sched[1]:.2f} s "
            f"(mean wait {1000 * sched[1] / sched[2]:.3f} ms over {sched[2]} wake-ups)"
        )
    print(f"steal: {steal_s() - steal0:.2f} s of CPU over {time.monotonic() - t_start:.0f} s")
    lines = (tmp / "rec.jsonl").read_text().count("\n")
    print(f"recording: {lines} lines in {tmp / 'rec.jsonl'}")
    print_paired(rows, tmp / "rec.jsonl")
    if args.baseline_src:
        print_paired(rows, tmp / "baseline.jsonl", "baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
