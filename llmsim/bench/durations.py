"""Durations as people type them: `90`, `30s`, `5m`, `1h`, `1h30m`, `1.5m`, `500ms`."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)?")  # ms before m: alternation takes the first match
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`; a bare number is seconds. Raises ValueError with a one-line reason."""
    raw = text.strip().lower().replace(" ", "")
    if not raw:
        raise ValueError("expected a duration such as 30s, 5m or 1h, got ''")
    pos, total, units_seen = 0, 0.0, 0
    while pos < len(raw):
        m = _PART.match(raw, pos)
        if m is None or (m.group(2) is None and m.end() != len(raw)):
            raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {text!r}")
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        units_seen += 1
        pos = m.end()
    if units_seen > 1 and raw[-1].isdigit():
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Short human form: 45s, 5m, 1h30m, 2m05s."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m" if m or sec else f"{h}h"
    return f"{m}m{sec:02d}s" if sec else f"{m}m"
