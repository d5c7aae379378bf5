"""Exercise llmsim.gcpolicy in a process of its own (it turns the automatic collector off).

Prints one JSON line with what the policy did; tests/test_pauses.py checks it.
"""

from __future__ import annotations

import gc
import json
import os

import gevent

from llmsim import gcpolicy


class Node:
    """A cyclic garbage maker."""

    def __init__(self) -> None:
        self.me = self


def main() -> None:
    policy = gcpolicy.install()
    out: dict = {"enabled_after_install": gc.isenabled(), "same": gcpolicy.install() is policy}
    for _ in range(2000):  # cyclic garbage: only the policy's scans can free it
        Node()
    gevent.sleep(0.45)
    out["young_scans"] = policy.young_scans
    out["nodes_left_after_young_scans"] = sum(isinstance(o, Node) for o in gc.get_objects())
    # Garbage that outlives young scans (promoted first): the full scan frees it.
    keep = [Node() for _ in range(500)]
    gevent.sleep(0.25)  # promoted by the young scans
    del keep
    out["promoted_nodes"] = sum(isinstance(o, Node) for o in gc.get_objects())
    policy.max_growth = -1  # any memory counts as growth: the next check runs a full scan
    policy.young_scans = 0
    gevent.sleep(0.15)
    out["full_scans"] = policy.full_scans
    out["nodes_after_full_scan"] = sum(isinstance(o, Node) for o in gc.get_objects())
    out["snapshot"] = policy.snapshot()
    policy.stop()
    out["enabled_after_stop"] = gc.isenabled()
    print(json.dumps(out), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
