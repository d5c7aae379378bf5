"""The embedded simulator: `llmsim serve` as its own process on a free loopback port.

Its own process, not a thread, because the simulator and Locust both run gevent hubs and each
needs a core of its own to keep its timing honest.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmsim.bench.processes import start_until, stop
from llmsim.settings import SERVE_OPTIONS

_URL = re.compile(r"(https?://\S+?)/v1\b")
_BY_NAME = {o.name: o for o in SERVE_OPTIONS}


def server_args(flags: Mapping[str, Any], config: str | None) -> list[str]:
    """`llmsim serve` arguments for the simulator options given to bench (unset ones omitted)."""
    args = ["-m", "llmsim", "serve"]
    # A repeatable flag that was not given arrives as (): not set, like None.
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    # A free loopback port unless the user chose otherwise.
    given.setdefault("host", "127.0.0.1")
    given.setdefault("port", 0)
    if config:
        args += ["--config", config]
    for name, value in given.items():
        option = _BY_NAME[name]
        if option.is_flag:
            args.append(option.flag if value else f"--no-{option.flag[2:]}")
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [option.flag, str(item)]
        else:
            args += [option.flag, str(value)]
    return args


class EmbeddedServer:
    """A running `llmsim serve` child and the URL it printed at start-up."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url  # http://127.0.0.1:PORT
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        """The OpenAI base URL Locust is pointed at: `url` plus `/v1`."""
        return self.url + "/v1"

    @property
    def pid(self) -> int:
        """The simulator's process id (its `--workers` are its children)."""
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM, up to 20 s to exit, then SIGKILL its process group; returns the exit status
        (None if it still had not exited)."""
        # SIGTERM drains in-flight streams; by now the swarm is stopped, so that is quick.
        return stop(self.proc, signal.SIGTERM, timeout=20)


def start_embedded_server(
    flags: Mapping[str, Any], config: str | None, log_path: Path, timeout: float = 30.0
) -> EmbeddedServer:
    """Start the simulator and wait for its start-up line; BenchError says why it did not start."""
    proc, url = start_until(
        server_args(flags, config), log_path, _URL, "the embedded simulator", _last_error, timeout
    )
    return EmbeddedServer(proc, url, log_path)


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("llmsim: error:"):
            return line[len("llmsim: error:") :].strip()
    return lines[-1] if lines else "it exited without a word"
