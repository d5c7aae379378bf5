"""When a request reached the server: the kernel's receive timestamp of its first bytes.

A request that arrives while its worker is busy (a burst of arrivals, a sweep of due events,
the hypervisor or the load generator holding the CPU) waits in the socket until its handler
greenlet runs. Stamped when the handler read it, that wait was added to the TTFT its client
saw (tests/test_arrival.py: a server stopped for 250 ms gave 650 ms for 400 planned).

With SO_TIMESTAMPNS the kernel stamps every segment as it arrives. A handler's reads ask for
that stamp (`recvmsg_into` instead of `recv_into`, one call either way), and the request's clock
starts at the stamp of the read that brought its request line: a wait in the socket becomes
part of the TTFT the plan already counts, not an addition to it. Where the socket cannot stamp
(TLS, Unix sockets, not Linux) the handler reads as before and the clock starts when the
request line is read.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from typing import Any

# Linux's values (asm-generic/socket.h); Python's socket module does not name them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds (64-bit Linux)
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
_STAMPED_FAMILIES = (socket.AF_INET, socket.AF_INET6)  # Unix sockets need no stamp


class StampedReader(io.RawIOBase):
    """The raw stream under a handler's `rfile`: each read also takes the kernel's receive
    time of the bytes it returns (`stamp`, monotonic seconds; 0.0 until a read brought one)."""

    def __init__(self, sock: Any) -> None:
        super().__init__()
        self._recv = sock.recvmsg_into
        self._fileno = sock.fileno()
        self.stamp = 0.0

    def readable(self) -> bool:
        """Always: this is a read-only stream."""
        return True

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self._fileno

    def readinto(self, buffer: Any) -> int:
        """Read into `buffer` (gevent waits cooperatively); keep the bytes' receive time."""
        n, ancillary, _flags, _addr = self._recv([buffer], _ANC_SIZE)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(data)
                if not sec:
                    continue  # not stamped (it came before stamping was on)
                # The stamp is wall-clock time; the plans run on the monotonic clock.
                mono = time.monotonic()
                self.stamp = min(mono, mono - (time.time() - (sec + nsec * 1e-9)))
        return n


def enable_stamps(sock: Any) -> bool:
    """Ask the kernel to stamp what `sock` receives (a listening socket passes it on to the
    connections it accepts); False where it cannot."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def stamped_rfile(sock: Any) -> io.BufferedReader | None:
    """A buffered reader over `sock` whose raw reads keep receive stamps, or None where the
    socket cannot give them (then the caller keeps its usual reader)."""
    tls = hasattr(sock, "do_handshake")  # TLS sockets have no recvmsg
    if not _ANC_SIZE or tls or sock.family not in _STAMPED_FAMILIES or not enable_stamps(sock):
        return None
    return io.BufferedReader(StampedReader(sock), io.DEFAULT_BUFFER_SIZE)


def arrival(rfile: Any, not_before: float, now: float) -> float:
    """When the request whose line `rfile` just read arrived: its receive stamp, no earlier
    than `not_before` (a request that came during the previous response could not start
    before that ended) and no later than `now`; `now` where there is no stamp."""
    stamp = getattr(getattr(rfile, "raw", None), "stamp", 0.0)
    if not stamp:
        return now
    return min(now, max(stamp, not_before))
