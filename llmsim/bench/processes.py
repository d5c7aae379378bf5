"""Child processes that never outlive bench: own session, parent-death signal, log to a file."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from re import Pattern
from typing import IO

import llmsim

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Children live in their own session so a terminal Ctrl-C reaches bench alone and bench
    # decides the order of shutdown (swarm first, then server). The price is that a killed bench
    # would orphan them; PR_SET_PDEATHSIG makes the kernel send SIGTERM when bench dies.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    _default_signals()


def _default_signals() -> None:
    # A shell starts `cmd &` with SIGINT and SIGQUIT ignored, and dispositions and the signal
    # mask survive exec: Locust would then ignore the SIGINT bench sends it to stop. Children
    # start with default handlers and nothing blocked, however bench itself was started.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python child that must import this very llmsim, installed or not."""
    env = dict(os.environ)
    root = str(Path(llmsim.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def spawn(
    args: Sequence[str],
    log: IO[bytes] | int | None,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    cwd: str | None = None,
) -> subprocess.Popen:
    """Start `python ARGS…` in its own session, stdout and stderr to `log`."""
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env or child_env(),
        pass_fds=tuple(pass_fds),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else _default_signals,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
    """Signal, wait, then kill whatever is left of the process group; returns the exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's session: forked workers (Locust --processes, serve --workers) too."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_until(
    args: Sequence[str],
    log_path: Path,
    ready: Pattern[str],
    what: str,
    why: Callable[[str], str],
    timeout: float = 30.0,
) -> tuple[subprocess.Popen, str]:
    """Start `python ARGS…` with its output in `log_path` and wait for a line matching
    `ready`: (the process, the pattern's first group). A BenchError says why it did not
    start: `why(log text)` when it exited, the log's path when it took too long."""
    from llmsim.bench.errors import BenchError

    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = spawn(args, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text("utf-8", errors="replace")
        m = ready.search(text)
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise BenchError(f"{what} did not start: {why(text)}")
        time.sleep(0.02)
    stop(proc)
    raise BenchError(f"{what} did not start within {timeout:g} s (see {log_path})")
