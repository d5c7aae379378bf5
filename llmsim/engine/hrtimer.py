"""A one-shot timer for the gevent hub, precise to microseconds: a Linux timerfd read by libev.

libev's own timers wait in whole milliseconds (its epoll backend rounds the timeout up), so
under load every wake-up of the stream loop landed up to 1 ms late, about 0.5 ms on average:
the same for every event, but all of it in every client's TTFT. A timerfd armed at an absolute
CLOCK_MONOTONIC deadline (the clock of `time.monotonic`) becomes readable at that instant, and
epoll returns then. Python has `os.timerfd_create` only from 3.13, so this calls libc through
ctypes (about 2 us per arm); where neither exists (not Linux), `TimerFd` raises OSError and the
loop keeps libev's timer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from typing import Any

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
TFD_CLOEXEC = 0o2000000
TFD_NONBLOCK = 0o4000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        if not sys.platform.startswith("linux"):
            raise OSError("timerfd is Linux-only")
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_create.restype = ctypes.c_int
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        ]
        libc.timerfd_settime.restype = ctypes.c_int
        _libc = libc
    return _libc


class TimerFd:
    """Calls `callback` in the hub once the monotonic clock reaches the armed deadline."""

    def __init__(self, callback: Callable[[], None]) -> None:
        import gevent

        libc = _load_libc()
        fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd = fd
        self.callback = callback
        self._settime = libc.timerfd_settime
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)
        self._watcher = gevent.get_hub().loop.io(fd, 1)
        self._watcher.start(self._ready)

    def arm(self, deadline: float) -> None:
        """Fire at `deadline` (time.monotonic seconds; now if it has passed)."""
        value = self._spec.it_value
        sec = int(deadline)
        value.tv_sec = sec
        value.tv_nsec = max(1, int((deadline - sec) * 1e9))  # 0/0 would disarm
        if self._settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def _ready(self) -> None:
        try:
            os.read(self.fd, 8)  # the expiry count: reading it clears the readiness
        except BlockingIOError:
            return
        self.callback()

    def close(self) -> None:
        """Stop watching and close the descriptor."""
        self._watcher.stop()
        os.close(self.fd)
