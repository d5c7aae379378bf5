"""Helpers for the locust_* benchmarks: start targets and Locust, measure the Locust process's CPU.

Everything runs on 127.0.0.1; every process started here is stopped by `Procs.close()`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from llmsim.bench.preflight import free_port

REPO = Path(__file__).resolve().parent.parent
URL = re.compile(r"(http://127\.0\.0\.1:\d+)(/v1)?")


def clean_env() -> dict[str, str]:
    """This environment without LLMSIM_*, LOCUST_* and OPENAI_API_KEY, the repository first on
    PYTHONPATH: what every child runs with, so no setting of the caller's reaches a run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLMSIM_", "LOCUST_")) and k != "OPENAI_API_KEY"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Procs:
    """The processes a benchmark starts (targets, their output drains, Locust runs)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start_target(self, *cmd: str) -> str:
        """Start a server printing its URL on stdout; returns http://127.0.0.1:PORT/v1."""
        proc = subprocess.Popen(
            [sys.executable, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
            cwd=REPO,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = URL.search(line)
            if m:
                # Keep draining its output so a chatty server never blocks on a full pipe.
                drain = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
                self.procs.append(drain)
                return m.group(1) + "/v1"
        raise RuntimeError(f"target {cmd} did not start")

    def start_locust(self, locustfile: Path, host: str, out: Path, *args: str) -> subprocess.Popen:
        """Start a headless Locust run of `locustfile` against `host`, `args` passed on, its
        CSVs, LLM results and log in `out` (with --processes, on a free master port)."""
        out.mkdir(parents=True, exist_ok=True)
        if "--processes" in args:  # never share Locust's default master port 5557
            port = str(free_port())
            args = (*args, "--master-bind-port", port, "--master-port", port)
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--host",
            host,
            "--headless",
            "--only-summary",
            "--csv",
            str(out / "locust"),
            "--llm-results-dir",
            str(out),
            *args,
        ]
        log = (out / "locust.log").open("w")
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=REPO
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """SIGTERM each process still running, the last started first; SIGKILL it after 15 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (Locust --processes forks)."""
    p = psutil.Process(pid)
    total = sum(p.cpu_times()[:2])
    for child in p.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def measure_window(proc: subprocess.Popen, warmup: float, window: float) -> tuple[float, float]:
    """(wall start, CPU seconds used) over [warmup, warmup + window] of a running Locust."""
    time.sleep(warmup)
    t0, c0 = time.time(), cpu_seconds(proc.pid)
    time.sleep(window)
    c1 = cpu_seconds(proc.pid)
    return t0, c1 - c0


def load_results(out: Path) -> tuple[dict, list[dict]]:
    """A finished run's llm_metrics.json and its requests.csv rows (values as strings)."""
    import csv

    summary = json.loads((out / "llm_metrics.json").read_text())
    with (out / "requests.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return summary, rows


def rows_in_window(rows: list[dict], start: float, end: float) -> list[dict]:
    """The requests.csv rows whose request ended in [start, end) (Unix time, s)."""
    return [r for r in rows if start <= float(r["end_time"]) < end]
