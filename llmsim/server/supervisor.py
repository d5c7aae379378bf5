"""Run N worker processes on one listening socket and keep N running.

A worker that dies (a crash, the OOM killer, a stray SIGKILL) is reported with its exit
status and forked again at once from this parent, which still holds the listener and the
shared tables; the other workers never notice. Its stats gauges (requests in flight, running,
waiting) are zeroed before the new one starts, since the dead one will never decrement them,
and the shared locks are released by the kernel when their holder dies (llmsim.engine.shared).
A worker that keeps dying right after it starts is a bug, not bad luck: after
`CRASH_LOOP` quick deaths in a row the server stops and exits 1.

SIGTERM/SIGINT go to every worker, each drains for the grace period, and the parent exits 0
once they are all gone (1 if any exited with an error).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from llmsim.server.state import Shared
from llmsim.settings import Settings

log = logging.getLogger("llmsim.server")

CRASH_LOOP = 5  # quick deaths in a row before giving up
QUICK_S = 1.0  # a worker that dies sooner than this after its start died "quickly"

ServeFn = Callable[[Settings, socket.socket, int, Shared], None]


def _child(
    serve: ServeFn, settings: Settings, sock: socket.socket, index: int, shared: Shared
) -> NoReturn:
    # The parent's handlers would forward signals to "children" from the child's copy of the
    # table: restore the defaults until the worker installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 0
    try:
        serve(settings, sock, index, shared)
    except BaseException:
        traceback.print_exc()  # a crashing worker says why, on the server's stderr
        print(f"llmsim: worker {index} (pid {os.getpid()}) crashed", file=sys.stderr)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Supervisor:
    """The parent of the worker processes: forks them, restarts the dead, forwards signals."""

    def __init__(
        self, settings: Settings, sock: socket.socket, shared: Shared, serve: ServeFn
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.shared = shared
        self.serve = serve
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, started)
        self.stopping = False
        self.restarts = 0
        self.quick_deaths = 0

    def spawn(self, index: int) -> int:
        """Fork the worker with this index and return its pid; the child runs it and exits."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            _child(self.serve, self.settings, self.sock, index, self.shared)
        self.children[pid] = (index, time.monotonic())
        return pid

    def _forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self, started: Callable[[], None] | None = None) -> int:
        """Start the workers (then call `started`) and supervise them until a stop signal.

        Returns the exit status."""
        for index in range(self.settings.workers):
            self.spawn(index)
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        if started is not None:
            started()
        status = 0
        while self.children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            if pid not in self.children:
                continue
            index, started = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(raw)
            if self.stopping:
                if code != 0:
                    status = 1
                continue
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self.quick_deaths = self.quick_deaths + 1 if time.monotonic() - started < QUICK_S else 0
            if self.quick_deaths >= CRASH_LOOP:
                print(
                    f"llmsim: worker {index} {how}, the {CRASH_LOOP}th quick death in a row; "
                    "stopping the server",
                    file=sys.stderr,
                    flush=True,
                )
                self._forward(signal.SIGTERM, None)
                status = 1
                continue
            self.shared.stats.worker_died(index)
            self.restarts += 1
            new = self.spawn(index)
            print(
                f"llmsim: worker {index} (pid {pid}) {how}; restarted as pid {new}",
                file=sys.stderr,
                flush=True,
            )
        return status
