"""Arm llmsim's timerfd timer a few times in a gevent hub; print how late each one fired."""

from __future__ import annotations

import json
import time

import gevent
import gevent.event

from llmsim.engine.hrtimer import TimerFd


def main() -> None:
    fired = gevent.event.Event()
    at: list[float] = []

    def cb() -> None:
        at.append(time.monotonic())
        fired.set()

    timer = TimerFd(cb)
    late = []
    for i in range(20):
        fired.clear()
        due = time.monotonic() + 0.005 + 0.001 * (i % 3)
        timer.arm(due)
        fired.wait(2)
        late.append(at[-1] - due)
    fired.clear()
    timer.arm(time.monotonic() - 1)  # a deadline that has passed fires at once
    past_ok = fired.wait(1)
    timer.close()
    print(json.dumps({"late_s": late, "past_fires": past_ok}))


if __name__ == "__main__":
    main()
