"""The live progress line: elapsed and remaining time, users, req/s, TTFT, tokens/s, errors."""

from __future__ import annotations

import time
from typing import Any, TextIO

from llmsim.bench.durations import format_duration


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}"


def progress_line(sample: dict[str, Any], elapsed: float, duration_s: float | None) -> str:
    """One progress-pipe sample as a line: elapsed (and, given a duration, total and remaining)
    time, users, requests in flight if known, req/s, TTFT p50/p95 in ms, output tokens/s and
    failed requests so far."""
    if duration_s:
        left = max(0.0, duration_s - elapsed)
        clock = (
            f"{format_duration(elapsed)}/{format_duration(duration_s)} "
            f"({format_duration(left)} left)"
        )
    else:
        clock = format_duration(elapsed)
    users = sample.get("users", 0)
    rps = sample.get("requests_per_s", sample.get("rps", 0.0)) or 0.0
    out_tps = sample.get("output_tokens_per_s")
    failures = sample.get("llm_failed", sample.get("failures", 0))
    parts = [
        clock,
        f"users {users}",
        f"{rps:,.1f} req/s",
        f"TTFT p50 {_ms(sample.get('ttft_p50'))} ms p95 {_ms(sample.get('ttft_p95'))} ms",
        f"{out_tps:,.0f} out tok/s" if out_tps is not None else "- out tok/s",
        f"errors {failures:,}",
    ]
    if sample.get("in_flight") is not None:
        parts.insert(2, f"in flight {sample['in_flight']}")
    return " | ".join(parts)


class ProgressDisplay:
    """One line rewritten in place on a terminal; a line every `every_s` seconds elsewhere."""

    def __init__(self, out: TextIO, duration_s: float | None, every_s: float = 10.0) -> None:
        self.out = out
        self.duration_s = duration_s
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.every_s = every_s
        # Off a terminal the first line comes after `every_s`, when there is something to show.
        self._last_print = time.monotonic()
        self._open_line = False

    def update(self, sample: dict[str, Any], elapsed: float) -> None:
        """Show `sample`, `elapsed` seconds into the run: in place on a terminal, elsewhere only
        if `every_s` has passed since the last line."""
        line = progress_line(sample, elapsed, self.duration_s)
        if self.tty:
            self.out.write("\r\x1b[K" + line)
            self._open_line = True
        else:
            now = time.monotonic()
            if now - self._last_print < self.every_s:
                return
            self._last_print = now
            self.out.write(line + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A message of its own (a warning, a state change) that stays on screen."""
        self.end_line()
        self.out.write(text + "\n")
        self.out.flush()

    def end_line(self) -> None:
        """End the line rewritten in place, so that what follows starts on a line of its own."""
        if self._open_line:
            self.out.write("\n")
            self._open_line = False
