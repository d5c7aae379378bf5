"""What keeps pauses out of timed processes: the GC policy, no per-request reference cycles, and
the stream loop's precise timer. Each runs in a subprocess: they switch the collector off, read the
garbage or drive a gevent hub, which must not happen inside pytest's own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"


def run(script: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_policy_scans_young_objects_by_time_and_everything_on_memory_growth():
    out = run("gc_policy.py")
    assert out["enabled_after_install"] is False  # no automatic scans while streams are timed
    assert out["same"] is True  # installing twice keeps one policy (one timer)
    assert out["young_scans"] >= 2  # every 0.1 s
    assert out["nodes_left_after_young_scans"] == 0  # young cycles are freed by young scans
    assert out["promoted_nodes"] == 500  # promoted garbage waits for a full scan...
    assert out["full_scans"] >= 1  # ...which memory growth triggers
    assert out["nodes_after_full_scan"] == 0
    assert out["snapshot"]["full_scans"] == out["full_scans"]
    assert out["enabled_after_stop"] is True


def test_served_requests_leave_no_reference_cycles():
    # Streams that finish, hang up mid-way, hit drop and stream-error faults, plain replies
    # and 400s: none may leave a cycle (each one would wait for a full scan to be freed).
    out = run("gc_cycles.py", "3")
    assert out["garbage"] == {}, out


def test_the_loops_timerfd_fires_at_its_deadline_not_early():
    # libev's own timers wait in whole milliseconds; the stream loop's timerfd must fire at
    # the deadline, never before it (the bound above leaves room for a loaded machine).
    out = run("hrtimer_check.py")
    late = sorted(out["late_s"])
    assert late[0] >= 0, late  # never early
    assert late[len(late) // 2] < 0.002, late  # libev alone: up to 1 ms, ~0.5 ms typical
    assert out["past_fires"] is True
