"""Fuzz the generating endpoints for longer than the test suite does (hypothesis, OpenAI's spec).

    python benchmarks/fuzz_api.py --examples 3000

Prints, per endpoint, how many bodies were sent and the statuses seen; exits 1 on the first
answer that is not a success or the API's error (hypothesis prints the shrunk body).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_fuzz_api import check_answer

from conftest import start_server
from fuzz_support import OPERATIONS, bodies


def fuzz_one(base: str, op: str, examples: int) -> None:
    """Send `examples` drawn bodies to one endpoint; AssertionError on a bad answer."""
    url = base + OPERATIONS[op][0]
    sent = collections.Counter[str]()
    t = time.monotonic()
    with httpx.Client(timeout=30) as client:

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(body=bodies(op))
        def run(body: dict[str, Any]) -> None:
            check_answer(client, url, body)
            sent["bodies"] += 1

        run()
    print(f"{op}: {sent['bodies']} bodies in {time.monotonic() - t:.1f} s, none a 5xx")


def main() -> int:
    """Fuzz every operation against one `llmsim serve --profile instant`, --examples bodies
    each; a bad answer's AssertionError (after hypothesis's shrunk body) exits with status 1."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000, help="bodies per endpoint")
    args = p.parse_args()
    server = start_server("--profile", "instant")
    try:
        for op in sorted(OPERATIONS):
            fuzz_one(server.url, op, args.examples)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
