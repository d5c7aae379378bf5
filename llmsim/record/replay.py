"""`llmsim serve --replay FILE`: requests that match a recorded one get its text and timing.

"Match" is the recording's `key`: the same model and the same conversation (messages, system
prompt, input or prompt). Only lines recorded with `--with-bodies` carry the text; a request
recorded several times is answered with each recording in turn.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmsim.record.recording import read_recordings

_LENGTH = frozenset({"length", "max_tokens", "MAX_TOKENS", "incomplete"})


class ReplayError(ValueError):
    """The replay file cannot be used; str() is one line."""


@dataclass(frozen=True)
class Recorded:
    """One recorded reply: its text pieces, when each is due, and how it ended."""

    tokens: tuple[str, ...]
    offsets_s: tuple[float, ...]  # from the first token
    ttft_s: float
    length_cut: bool


def split_text(text: str, n: int) -> list[str]:
    """`text` in n non-empty pieces of about equal length (fewer if it is shorter than n).

    A recorded event that carried n tokens becomes n pieces due at the same moment, so the
    usage the simulator reports equals the tokens the recording counted."""
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    out, pos = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append(text[pos : pos + step])
        pos += step
    return out


def _recorded(line: dict[str, Any], count: Any) -> Recorded | None:
    texts = line.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return None
    if line.get("texts_truncated") or line.get("truncated"):
        return None
    counts = line.get("event_tokens") or []
    gaps = line.get("gaps_ms") or []
    first_ms = line.get("ttft_ms") if line.get("ttft_ms") is not None else line.get("e2e_ms")
    tokens: list[str] = []
    offsets: list[float] = []
    t = 0.0
    for i, text in enumerate(texts):
        if i > 0 and i - 1 < len(gaps):
            t += gaps[i - 1] / 1000.0
        n = counts[i] if i < len(counts) else count(text, line.get("model") or "")
        pieces = [p for p in split_text(text, n) if p]
        tokens += pieces
        offsets += [t] * len(pieces)
    if not tokens:
        return None
    return Recorded(
        tuple(tokens),
        tuple(offsets),
        (first_ms or 0.0) / 1000.0,
        line.get("finish_reason") in _LENGTH,
    )


class ReplayIndex:
    """Recorded replies by (model, key)."""

    def __init__(self, entries: dict[tuple[str, str], list[Recorded]]) -> None:
        self._entries = entries
        self._turns = {k: itertools.cycle(v) for k, v in entries.items()}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    @classmethod
    def load(cls, path: str | Path) -> ReplayIndex:
        """Index a recording; ReplayError when it holds no reply to replay."""
        from llmsim.engine.tokens import count_tokens

        p = Path(path)
        if not p.is_file():
            raise ReplayError(f"{p}: no such file")
        try:
            rec = read_recordings([p])
        except OSError as exc:
            raise ReplayError(f"{p}: cannot read it ({exc.strerror})") from None
        entries: dict[tuple[str, str], list[Recorded]] = {}
        for line in rec.lines:
            model, key = line.get("model"), line.get("key")
            if line["status"] != 200 or line.get("error_kind") or not model or not key:
                continue
            r = _recorded(line, count_tokens)
            if r is not None:
                entries.setdefault((model, key), []).append(r)
        if not entries:
            raise ReplayError(
                f"{p}: no successful reply with its text in {len(rec.lines)} lines "
                "(record with `llmsim record --with-bodies`)"
            )
        return cls(entries)

    def find(self, model: str, key: str | None) -> Recorded | None:
        """The next recorded reply for this request, or None (the simulator answers)."""
        if key is None:
            return None
        turns = self._turns.get((model, key))
        if turns is None:
            return None
        with self._lock:
            return next(turns)


def replay_reply(rec: Recorded, model: str, prompt_tokens: int, max_tokens: int | None) -> Any:
    """The engine's Reply for a recorded one, cut at max_tokens."""
    from llmsim.engine.ids import hex_id
    from llmsim.engine.request import Choice, Reply

    tokens, offsets = list(rec.tokens), list(rec.offsets_s)
    finish = "length" if rec.length_cut else "stop"
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, offsets, finish = tokens[:max_tokens], offsets[:max_tokens], "length"
    mean_gap = offsets[-1] / (len(offsets) - 1) if len(offsets) > 1 else 0.0
    return Reply(
        id="chatcmpl-" + hex_id(12),
        created=int(time.time()),
        model=model,
        prompt_tokens=prompt_tokens,
        ttft_s=rec.ttft_s,
        tbt_s=mean_gap,
        choices=[Choice(0, tokens, finish)],
        offsets_s=offsets,
    )
