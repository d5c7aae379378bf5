"""`llmsim bench --target URL` records its run: Locust talks to `llmsim record` in front of the
target, which writes `recording.jsonl` into the report folder (the same lines as the proxy's,
so a bench run against a real endpoint can be calibrated as it is)."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

RECORDING = "recording.jsonl"
_URL = re.compile(r" at (http://\S+) into ")


class RecorderProcess:
    """A `llmsim record` child process in front of the bench target."""

    def __init__(self, proc: subprocess.Popen, url: str, target: str) -> None:
        self.proc = proc
        self.url = url
        path = urlsplit(target).path.rstrip("/")
        self.base_url = url + ("/v1" if path.endswith("/v1") else "")  # what Locust calls

    @property
    def pid(self) -> int:
        """The recorder child's process id (bench samples its CPU and memory)."""
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM: the recorder lets requests in flight end, then flushes its file."""
        from llmsim.bench.processes import stop

        stop(self.proc, signal.SIGTERM, timeout=20)


def start_recorder(
    target: str, run_dir: Path, timeout: float = 30.0, with_bodies: bool = False
) -> RecorderProcess:
    """Start the recorder on a free loopback port for `target` (an OpenAI base URL); it writes
    `run_dir`/recording.jsonl."""
    from llmsim.bench.processes import start_until

    args = ["-m", "llmsim", "record", "--target", target, "--host", "127.0.0.1", "--port", "0"]
    args += ["--out", str(run_dir / RECORDING), "--timeout", "3600"]
    if with_bodies:
        args.append("--with-bodies")
    proc, url = start_until(
        args, run_dir / "recorder.log", _URL, "the recorder", lambda t: t.strip()[-300:], timeout
    )
    return RecorderProcess(proc, url, target)
