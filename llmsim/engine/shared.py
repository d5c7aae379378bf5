"""Memory shared by the worker processes of one server (created before they fork)."""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import threading
from typing import Any


class ProcessLock:
    """A lock between the worker processes that a dead holder cannot leave held.

    A POSIX record lock (fcntl) on a private file: the kernel releases it when its holder
    exits, however it exits, where a semaphore (multiprocessing.Lock) held by a SIGKILLed
    worker blocks every other worker forever. Record locks belong to a process, not a thread,
    so a threading.Lock orders the threads of one process first. Each acquire is two
    uncontended syscalls (about 1 µs each); the sections it guards are a few table writes.
    """

    def __init__(self) -> None:
        # One anonymous file per lock (nothing on disk), inherited by the forked workers.
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("llmsim-lock", 0)
        else:  # pragma: no cover - macOS
            fd, path = tempfile.mkstemp(prefix="llmsim-lock-")
            os.unlink(path)
        self._fd = fd
        self._local = threading.Lock()

    def acquire(self) -> None:
        """Block until this thread holds the lock: first within the process, then across them."""
        self._local.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._local.release()
            raise

    def release(self) -> None:
        """Release the lock: the record lock first, then the process's own."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()

    def __enter__(self) -> ProcessLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SharedTable:
    """A fixed array of float64 in an anonymous shared mapping, with a cross-process lock.

    Writes under `lock` are visible to every worker forked after the table was made; without
    a fork (tests, one worker) it is simply process memory.
    """

    def __init__(self, size: int) -> None:
        self._mem = mmap.mmap(-1, max(1, size) * 8)
        self.values: Any = memoryview(self._mem).cast("d")
        self.lock = ProcessLock()

    def __len__(self) -> int:
        return len(self.values)
