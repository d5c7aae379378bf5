"""Memory shared by the worker processes of one server (created before they fork)."""

from __future__ import annotations

import mmap
import multiprocessing
from typing import Any


class SharedTable:
    """A fixed array of float64 in an anonymous shared mapping, with a cross-process lock.

    Writes under `lock` are visible to every worker forked after the table was made; without
    a fork (tests, one worker) it is simply process memory.
    """

    def __init__(self, size: int) -> None:
        self._mem = mmap.mmap(-1, max(1, size) * 8)
        self.values: Any = memoryview(self._mem).cast("d")
        # fork context: the lock must be inheritable by forked workers on every platform.
        self.lock = multiprocessing.get_context("fork").Lock()

    def __len__(self) -> int:
        return len(self.values)
