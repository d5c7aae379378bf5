"""OpenAI-style rate limits: requests and tokens per minute per API key and model.

Buckets refill continuously (a limit of 60/min gives one back every second) and start full,
so a fresh key gets the whole minute's burst at once, as OpenAI's do. They live in a shared
table so every worker process of one server enforces the same limit.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass

from llmsim.engine.shared import SharedTable


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
    allowed: bool
    headers: dict[str, str]
    kind: str | None = None  # "requests" or "tokens" when refused
    retry_after_s: float = 0.0
    limit: int = 0
    used: int = 0
    requested: int = 0
    too_large: bool = False  # the request alone is over the token limit: waiting will not help


# Slot fields: key hash, requests level, tokens level, last refill time.
_FIELDS = 4


class RateLimiter:
    def __init__(self, slots: int = 4096, table: SharedTable | None = None) -> None:
        self.table = table or SharedTable(slots * _FIELDS)
        self.slots = len(self.table) // _FIELDS

    def check(
        self, key: str, model: str, tokens: int, rpm: int | None, tpm: int | None
    ) -> LimitDecision:
        """Take one request and `tokens` tokens from the key's buckets, or say why not."""
        if rpm is None and tpm is None:
            return LimitDecision(True, {})
        ident = zlib.crc32(f"{key}\x00{model}".encode()) + 1  # 0 marks an empty slot
        base = (ident % self.slots) * _FIELDS
        now = time.monotonic()
        with self.table.lock:
            d = self.table.values
            if d[base] != ident:  # new key (or a rare collision: it starts afresh)
                d[base] = ident
                d[base + 1] = float(rpm or 0)
                d[base + 2] = float(tpm or 0)
                d[base + 3] = now
            elapsed = now - d[base + 3]
            d[base + 3] = now
            req = min(float(rpm or 0), d[base + 1] + elapsed * (rpm or 0) / 60.0)
            tok = min(float(tpm or 0), d[base + 2] + elapsed * (tpm or 0) / 60.0)
            req_ok = rpm is None or req >= 1
            tok_ok = tpm is None or tok >= tokens
            if req_ok and tok_ok:
                req -= 1 if rpm else 0
                tok -= tokens if tpm else 0
            d[base + 1], d[base + 2] = req, tok
        headers: dict[str, str] = {}
        if rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, math.floor(req)))
            headers["x-ratelimit-reset-requests"] = openai_duration((rpm - req) * 60.0 / rpm)
        if tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(tok)))
            headers["x-ratelimit-reset-tokens"] = openai_duration((tpm - tok) * 60.0 / tpm)
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
        ident = zlib.crc32(f"{key}\x00{model}".encode()) + 1
        base = (ident % self.slots) * _FIELDS
        with self.table.lock:
            d = self.table.values
            if d[base] == ident:
                d[base + 2] = min(float(tpm), d[base + 2] + tokens)
