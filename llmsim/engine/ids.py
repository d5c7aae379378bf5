"""Random ids for replies and requests: unique, not secret.

secrets.token_hex reads os.urandom (a syscall) for every id; a Mersenne Twister seeded from
os.urandom, and seeded again in every forked worker, gives the same uniqueness for less.
"""

from __future__ import annotations

import os
import random

_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def hex_id(nbytes: int = 12) -> str:
    """2 × nbytes lowercase hex digits, like secrets.token_hex(nbytes)."""
    return "%0*x" % (nbytes * 2, _rng.getrandbits(nbytes * 8))
