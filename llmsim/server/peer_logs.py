"""Any worker answers `GET /llmsim/requests/{id}`, whichever worker served the request.

Each worker keeps the event log of the requests it served (llmsim.engine.loop.EventLog), and
with `--workers N` the kernel hands a client's connection to any of them, so a lookup would
find its request one time in N. Instead each worker also listens on a Unix socket of its own,
in a directory the parent makes before forking (mode 0700: only this user's processes can ask),
and a worker that does not have the request asks the others there: one line with the id in, the
entry's JSON (or nothing) out. A restarted worker binds its socket again; the parent removes
the directory when the server exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import Any

log = logging.getLogger("llmsim.server")

# Ids this server makes ("req_" and hex); anything else is not asked of the other workers.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ASK_TIMEOUT_S = 1.0  # per sibling: a worker that is restarting refuses at once
MAX_ENTRY_BYTES = 32 << 20  # an entry is bounded by the log's events per request


class PeerLogs:
    """The workers' Unix sockets for request-log lookups (made in the parent, before fork)."""

    def __init__(self, directory: str, workers: int) -> None:
        self.directory = directory
        self.workers = workers

    @classmethod
    def create(cls, workers: int) -> PeerLogs:
        """A fresh private directory for `workers` sockets."""
        return cls(tempfile.mkdtemp(prefix="llmsim-logs-"), workers)

    def path(self, worker: int) -> str:
        """Where worker `worker` listens."""
        return os.path.join(self.directory, f"w{worker}.sock")

    def serve(self, worker: int, lookup: Callable[[str], dict[str, Any] | None]) -> Any:
        """Answer the other workers' lookups from this worker's log (in this worker's hub)."""
        from gevent import socket as gsocket
        from gevent.server import StreamServer

        path = self.path(worker)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life
        listener = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)

        def handle(conn: Any, _addr: Any) -> None:
            conn.settimeout(ASK_TIMEOUT_S)
            try:
                line = conn.recv(128).split(b"\n", 1)[0].decode("ascii", "replace")
                found = lookup(line) if _ID.fullmatch(line) else None
                if found is not None:
                    conn.sendall(json.dumps(found).encode())
            except OSError:
                pass
            finally:
                conn.close()

        server = StreamServer(listener, handle)
        server.start()
        return server

    def ask(self, worker: int, request_id: str) -> dict[str, Any] | None:
        """The entry for `request_id` from whichever other worker has it (None: none has)."""
        if not _ID.fullmatch(request_id):
            return None
        from gevent import socket as gsocket

        for other in range(self.workers):
            if other == worker:
                continue
            try:
                with gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.settimeout(ASK_TIMEOUT_S)
                    conn.connect(self.path(other))
                    conn.sendall(request_id.encode() + b"\n")
                    parts, size = [], 0
                    while size <= MAX_ENTRY_BYTES:
                        chunk = conn.recv(1 << 16)
                        if not chunk:
                            break
                        parts.append(chunk)
                        size += len(chunk)
            except OSError:
                continue  # not running (restarting) or too slow: the others may have it
            if parts and size <= MAX_ENTRY_BYTES:
                try:
                    return json.loads(b"".join(parts))
                except ValueError:
                    log.warning("worker %d sent a malformed request-log entry", other)
        return None

    def remove(self) -> None:
        """Delete the directory and its sockets (the parent, at exit)."""
        shutil.rmtree(self.directory, ignore_errors=True)
