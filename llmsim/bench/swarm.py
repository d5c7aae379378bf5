"""Locust as a subprocess: its command line, its progress pipe, and how it is stopped.

A subprocess (`python -m locust`) rather than Locust as a library: `import locust` patches the
whole process with gevent, which must not happen in the process that forks the simulator, and
the subprocess gives `--processes`, `--master`, CSV/HTML/JSON reports and exit codes for free.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmsim.bench.config import BenchConfig
from llmsim.bench.preflight import free_port
from llmsim.bench.processes import child_env, kill_group, spawn

PLUGIN = Path(__file__).resolve().parent / "locustfiles" / "llmsim_bench_progress.py"
DEFAULT_USERS = Path(__file__).resolve().parent / "locustfiles" / "llmsim_bench_users.py"
# `--api` → the user class of DEFAULT_USERS that speaks it (named to Locust on its command line).
API_USERS = {
    "chat": "ChatUser",
    "responses": "ResponsesUser",
    "anthropic": "AnthropicUser",
    "completions": "CompletionsUser",
    "embeddings": "EmbeddingsUser",
    "azure": "AzureUser",
    "gemini": "GeminiApiUser",
}

# Names of the files Locust writes into the run directory.
LOCUST_CSV_PREFIX = "locust"
LOCUST_HTML = "locust_report.html"
LOCUST_JSON = "locust_stats.json"
LOCUST_LOG = "locust.log"


def locustfile_arg(locustfile: str | None) -> str:
    """The user's locustfile (or ours) plus the progress plugin, as Locust's `-f` value."""
    users = str(Path(locustfile).resolve()) if locustfile else str(DEFAULT_USERS)
    return f"{users},{PLUGIN}"


def workload_args(cfg: BenchConfig) -> list[str]:
    """The `--llm-…` arguments for the options bench was given (others keep the class defaults)."""
    args: list[str] = []
    if cfg.model is not None:
        args += ["--llm-model", cfg.model]
    if cfg.prompt_tokens is not None:
        args += ["--llm-prompt-tokens", str(cfg.prompt_tokens)]
    if cfg.max_tokens is not None:
        args += ["--llm-max-tokens", str(cfg.max_tokens)]
    if cfg.stream is False:
        args.append("--llm-no-stream")
    for flag, value in (
        ("--llm-rate", cfg.rate),
        ("--llm-arrival", cfg.arrival),
        ("--llm-max-in-flight", cfg.max_in_flight),
        ("--llm-trace", str(Path(cfg.trace).resolve()) if cfg.trace else None),
        ("--llm-trace-speed", cfg.trace_speed),
        ("--llm-prefix-tokens", cfg.prefix_tokens),
        ("--llm-prefix-groups", cfg.prefix_groups),
    ):
        if value is not None:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if not cfg.locustfile:
        args.append(API_USERS[cfg.api])  # a user class name: run only that one
    return args


def locust_command(cfg: BenchConfig, host: str, run_dir: Path) -> list[str]:
    """`-m locust …` for the run: headless for warm-up plus duration (or the web UI), report
    files in `run_dir`, local processes or a master, then the workload and `--` arguments."""
    args = ["-m", "locust", "-f", locustfile_arg(cfg.locustfile), "--host", host]
    args += ["-u", str(cfg.locust_users), "-r", f"{cfg.effective_spawn_rate:g}"]
    if cfg.web:
        args += ["--web-host", cfg.web_host, "--web-port", str(cfg.web_port)]
    else:
        run_s = max(1, round(cfg.warmup_s + cfg.duration_s))
        args += ["--headless", "-t", f"{run_s}s", "--only-summary"]
    args += [
        "--csv",
        str(run_dir / LOCUST_CSV_PREFIX),
        "--html",
        str(run_dir / LOCUST_HTML),
        "--json-file",
        str(run_dir / LOCUST_JSON.removesuffix(".json")),  # Locust adds the .json
        "--stop-timeout",
        f"{cfg.stop_timeout_s:g}",
        # Failed requests are the report's business (and the SLOs'); bench's exit code is its own.
        "--exit-code-on-error",
        "0",
        "--llm-results-dir",
        str(run_dir),
    ]
    if cfg.processes and not cfg.master:
        # Locust's local master listens on *:5557 by default: every interface, and a port that
        # another run on this machine would share (its workers would join ours). Loopback and
        # a free port instead.
        port = str(free_port())
        args += ["--processes", str(cfg.processes)]
        args += ["--master-bind-host", "127.0.0.1", "--master-bind-port", port]
        args += ["--master-host", "127.0.0.1", "--master-port", port]
    elif cfg.processes:
        args += ["--processes", str(cfg.processes)]
    if cfg.master:
        args += ["--master", "--expect-workers", str(cfg.expect_workers or 1)]
        args += ["--master-bind-host", cfg.master_bind_host]
        args += ["--master-bind-port", str(cfg.master_bind_port)]
    args += workload_args(cfg)
    args += cfg.locust_args
    return args


def worker_command(
    locustfile: str | None,
    master_host: str,
    master_port: int,
    processes: int | None,
    extra: list[str],
) -> list[str]:
    """`-m locust --worker …` for `llmsim worker`: bench's locustfiles, the master's address,
    optional --processes, then `extra` unchanged."""
    args = ["-m", "locust", "-f", locustfile_arg(locustfile), "--worker"]
    args += ["--master-host", master_host, "--master-port", str(master_port)]
    if processes:
        args += ["--processes", str(processes)]
    return args + list(extra)


@dataclass
class Swarm:
    """The running Locust process, the read end of its progress pipe, and its log file."""

    proc: subprocess.Popen
    progress_fd: int
    log_path: Path
    _buf: bytes = b""

    @property
    def pid(self) -> int:
        """Locust's main process id (with --processes, the workers are its children)."""
        return self.proc.pid

    def events(self) -> Iterator[dict[str, Any]]:
        """Progress events that arrived since the last call (never blocks)."""
        while True:
            try:
                chunk = os.read(self.progress_fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not chunk:
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue

    def interrupt(self) -> None:
        """Like Ctrl-C in Locust's terminal: stop the users, write CSV/HTML/JSON, exit."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """SIGTERM Locust's main process if it still runs (a second Ctrl-C, a missed deadline)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL Locust's whole process group, forked workers included."""
        kill_group(self.proc)

    def close(self) -> None:
        """SIGKILL what is left of the process group, reap it (up to 5 s), close the pipe."""
        kill_group(self.proc)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.close(self.progress_fd)
        except OSError:
            pass


def start_swarm(cfg: BenchConfig, host: str, run_dir: Path) -> Swarm:
    """Start Locust against `host`, its output in run_dir/locust.log and the progress plugin's
    events on a pipe; the API key goes through the environment."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    extra = {"LLMSIM_BENCH_PROGRESS_FD": str(write_fd)}
    if cfg.api_key:
        # The environment, not the command line, where any `ps` would show it. Without
        # --api-key the users read their own API's variable, which Locust inherits.
        extra["LOCUST_LLM_API_KEY"] = cfg.api_key
    log_path = run_dir / LOCUST_LOG
    with open(log_path, "wb") as log:
        proc = spawn(
            locust_command(cfg, host, run_dir), log, env=child_env(extra), pass_fds=(write_fd,)
        )
    os.close(write_fd)  # the child holds the only writer: EOF on our side means it is gone
    return Swarm(proc, read_fd, log_path)
