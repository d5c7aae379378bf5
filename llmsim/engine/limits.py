"""OpenAI-style rate limits: requests and tokens per minute per API key and model.

Buckets refill continuously (a limit of 60/min gives one back every second) and start full,
so a fresh key gets the whole minute's burst at once, as OpenAI's do. They live in a shared
table so every worker process of one server enforces the same limit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from llmsim.engine.shared import SharedTable

log = logging.getLogger("llmsim.server")


def openai_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: 120ms, 1s, 8.64s, 6m0s, 1h2m3s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    secs_text = f"{round(secs, 3):g}s"
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs_text}"


@dataclass
class LimitDecision:
    """What `RateLimiter.check` decided, and the x-ratelimit-* headers to send either way.

    When refused: which bucket (`kind`), the retry-after wait in seconds (with `too_large`,
    waiting will not help), and the figures the 429's message quotes (the limit, what is used
    of it, what the request asks for).
    """

    allowed: bool
    headers: dict[str, str]
    kind: str | None = None  # "requests" or "tokens" when refused
    retry_after_s: float = 0.0
    limit: int = 0
    used: int = 0
    requested: int = 0
    too_large: bool = False  # the request alone is over the token limit: waiting will not help


# Slot fields: key identity (two 52-bit halves of a 128-bit digest, exact in float64), requests
# level, tokens level, last refill time. An empty slot has identity 0.
_FIELDS = 5
_ID_BIT = float(1 << 51)  # set in every identity's first half, so it is never 0
_PROBES = 64  # linear probing this far; beyond it the table counts as full
_REFILL_S = 60.0  # after this long untouched, any bucket is full again: its slot is free
# Shown in the headers of a limit that is not set (OpenAI always sends all six); the real
# API's figures for gpt-4o at usage tier 5. Never enforced.
DEFAULT_RPM = 10_000
DEFAULT_TPM = 30_000_000
_INFO = 2  # trailing table cells: table-full events, the time of the last one


def _identity(key: str, model: str) -> tuple[float, float]:
    digest = hashlib.blake2b(f"{key}\x00{model}".encode(), digest_size=16).digest()
    a = int.from_bytes(digest[:8], "little") & ((1 << 52) - 1)
    b = int.from_bytes(digest[8:], "little") & ((1 << 52) - 1)
    return float(a) + _ID_BIT if a < (1 << 51) else float(a), float(b)


class RateLimiter:
    """Token buckets per (API key, model), exact for any number of keys.

    Each pair has its own slot in an open-addressed table shared by the workers; two keys
    never share one (their 104-bit identities would have to collide). A slot whose bucket has
    been idle for a minute is full again, indistinguishable from a new key's, so it is reused
    for the next new key. Only when every slot near a key's home has been used in the last
    minute is the table full: that request is let through unmetered, counted in
    /llmsim/stats (`rate_limits.table_full`) and logged once a minute.
    """

    def __init__(self, slots: int = 4096, table: SharedTable | None = None) -> None:
        self.table = table or SharedTable(slots * _FIELDS + _INFO)
        self.slots = (len(self.table) - _INFO) // _FIELDS
        self._info = self.slots * _FIELDS

    def _slot(self, d: Any, ident: tuple[float, float], now: float) -> tuple[int, bool] | None:
        """(base offset, is new) of the key's slot, claiming one if needed; None when full."""
        a, b = ident
        home = int(a + b) % self.slots
        reuse = -1
        for i in range(min(_PROBES, self.slots)):
            base = ((home + i) % self.slots) * _FIELDS
            first = d[base]
            if first == a and d[base + 1] == b:
                return base, False
            if first == 0.0:
                return (reuse if reuse >= 0 else base), True
            if reuse < 0 and now - d[base + 4] >= _REFILL_S:
                reuse = base
        return (reuse, True) if reuse >= 0 else None

    @staticmethod
    def _take(
        d: Any,
        found: tuple[int, bool],
        ident: tuple[float, float],
        now: float,
        tokens: int,
        rpm: int | None,
        tpm: int | None,
    ) -> tuple[float, float, bool, bool]:
        """Refill the slot's buckets and take the request from them if both allow it.

        An unset limit's bucket runs at its default rate, for the headers only."""
        base, new = found
        r_lim = rpm if rpm is not None else DEFAULT_RPM
        t_lim = tpm if tpm is not None else DEFAULT_TPM
        if new:
            d[base], d[base + 1] = ident
            d[base + 2] = float(r_lim)
            d[base + 3] = float(t_lim)
            d[base + 4] = now
        elapsed = max(0.0, now - d[base + 4])
        d[base + 4] = now
        req = min(float(r_lim), d[base + 2] + elapsed * r_lim / 60.0)
        tok = min(float(t_lim), d[base + 3] + elapsed * t_lim / 60.0)
        req_ok = rpm is None or req >= 1
        tok_ok = tpm is None or tok >= tokens
        if req_ok and tok_ok:
            req = req - 1 if rpm is not None else max(0.0, req - 1)
            tok = tok - tokens if tpm is not None else max(0.0, tok - tokens)
        d[base + 2], d[base + 3] = req, tok
        return req, tok, req_ok, tok_ok

    def snapshot(self) -> dict[str, Any]:
        """For /llmsim/stats: the table's size and how many requests found it full."""
        return {"slots": self.slots, "table_full": int(self.table.values[self._info])}

    def check(
        self, key: str, model: str, tokens: int, rpm: int | None, tpm: int | None
    ) -> LimitDecision:
        """Take one request and `tokens` tokens from the key's buckets, or say why not."""
        if rpm is None and tpm is None:
            return LimitDecision(True, {})
        ident = _identity(key, model)
        now = time.monotonic()
        r_lim = rpm if rpm is not None else DEFAULT_RPM
        t_lim = tpm if tpm is not None else DEFAULT_TPM
        with self.table.lock:
            d = self.table.values
            found = self._slot(d, ident, now)
            if found is None:
                full_before = d[self._info]
                d[self._info] = full_before + 1
                last_log, d[self._info + 1] = d[self._info + 1], now
            else:
                req, tok, req_ok, tok_ok = self._take(d, found, ident, now, tokens, rpm, tpm)
        if found is None:
            if full_before == 0 or now - last_log >= 60.0:
                log.warning(
                    "rate-limit table full (%d key x model pairs active in the last minute): "
                    "new keys pass unmetered; raise --rate-limit-keys",
                    self.slots,
                )
            return LimitDecision(True, _headers(r_lim, t_lim, r_lim, t_lim))
        headers = _headers(r_lim, t_lim, req, tok)
        if req_ok and tok_ok:
            return LimitDecision(True, headers)
        if not req_ok:
            assert rpm is not None
            wait = (1 - req) * 60.0 / rpm
            decision = LimitDecision(
                False, headers, "requests", wait, rpm, rpm - math.floor(req), 1
            )
        else:
            assert tpm is not None
            too_large = tokens > tpm
            wait = (tpm - tok) * 60.0 / tpm if too_large else (tokens - tok) * 60.0 / tpm
            decision = LimitDecision(
                False, headers, "tokens", wait, tpm, tpm - math.floor(tok), tokens, too_large
            )
        retry_ms = max(1, math.ceil(decision.retry_after_s * 1000))
        headers["retry-after"] = str(max(1, math.ceil(decision.retry_after_s)))
        headers["retry-after-ms"] = str(retry_ms)
        return decision

    def refund(self, key: str, model: str, tokens: int, tpm: int | None) -> None:
        """Give back tokens a request reserved and never used (its stream ended early)."""
        if tpm is None or tokens <= 0:
            return
        ident = _identity(key, model)
        a, b = ident
        home = int(a + b) % self.slots
        with self.table.lock:
            d = self.table.values
            for i in range(min(_PROBES, self.slots)):
                base = ((home + i) % self.slots) * _FIELDS
                if d[base] == a and d[base + 1] == b:
                    d[base + 3] = min(float(tpm), d[base + 3] + tokens)
                    return
                if d[base] == 0.0:
                    return


def _headers(rpm: int, tpm: int, req: float, tok: float) -> dict[str, str]:
    """All six x-ratelimit-* headers, as OpenAI sends them whenever limits apply."""
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(max(0, math.floor(req))),
        "x-ratelimit-reset-requests": openai_duration(max(0.0, rpm - req) * 60.0 / rpm),
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(max(0, math.floor(tok))),
        "x-ratelimit-reset-tokens": openai_duration(max(0.0, tpm - tok) * 60.0 / tpm),
    }
