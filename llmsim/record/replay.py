"""`llmsim serve --replay FILE`: requests that match a recorded one get its text and timing.

"Match" is the recording's `key`: the same model and the same conversation (messages, system
prompt, input or prompt). Only lines recorded with `--with-bodies` carry the text; a request
recorded several times is answered with each recording in turn.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmsim.engine.ids import hex_id
from llmsim.engine.request import Choice, EngineRequest, Reply
from llmsim.engine.timing import Chunking, ChunkSpec
from llmsim.record.recording import read_recordings

_LENGTH = frozenset({"length", "max_tokens", "MAX_TOKENS", "incomplete"})


class ReplayError(ValueError):
    """The replay file cannot be used; str() is one line."""


@dataclass(frozen=True)
class Recorded:
    """One recorded reply: its text pieces, when each is due, and how it ended."""

    tokens: tuple[str, ...]
    offsets_s: tuple[float, ...]  # each token's, from the first token
    sizes: tuple[int, ...]  # tokens per recorded event
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
    sizes: list[int] = []
    t = 0.0
    for i, text in enumerate(texts):
        if i > 0 and i - 1 < len(gaps):
            t += gaps[i - 1] / 1000.0
        n = counts[i] if i < len(counts) else count(text, line.get("model") or "")
        pieces = [p for p in split_text(text, n) if p]
        tokens += pieces
        offsets += [t] * len(pieces)
        if pieces:
            sizes.append(len(pieces))
    if not tokens:
        return None
    return Recorded(
        tuple(tokens),
        tuple(offsets),
        tuple(sizes),
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


class RecordedChunking(Chunking):
    """Tokens per event as recorded: step i carries the tokens of recorded event i."""

    __slots__ = ("_ends",)

    def __init__(self, sizes: list[int]) -> None:
        super().__init__(ChunkSpec(), sum(sizes))
        self._spec = "recorded"  # what the event log shows
        self._ends = list(itertools.accumulate(sizes))
        self._k = 1 if all(n == 1 for n in sizes) else None

    def end(self, step: int) -> int:
        """Tokens out once step `step` is (capped at the reply's length)."""
        if not self._ends:
            return 0
        return min(self.total, self._ends[min(step, len(self._ends) - 1)])

    def steps_for(self, tokens: int) -> int:
        """How many recorded events carry the first `tokens` tokens."""
        if tokens <= 0:
            return 1
        return min(bisect.bisect_left(self._ends, tokens) + 1, len(self._ends))


class RecordedSchedule:
    """TokenSchedule's `due` for a replayed reply: each token when its event was recorded."""

    __slots__ = ("first_s", "offsets_s")

    def __init__(self, first_s: float, offsets_s: list[float]) -> None:
        self.first_s = first_s
        self.offsets_s = offsets_s

    def due(self, i: int) -> float:
        """Token i's offset from the request's arrival."""
        if not self.offsets_s:
            return self.first_s
        return self.first_s + self.offsets_s[min(i, len(self.offsets_s) - 1)]


def replay_reply(rec: Recorded, req: EngineRequest) -> Reply:
    """The engine's Reply for a recorded one, cut at the request's max_tokens."""
    tokens, offsets, sizes = list(rec.tokens), list(rec.offsets_s), list(rec.sizes)
    finish = "length" if rec.length_cut else "stop"
    if req.max_tokens is not None and len(tokens) > req.max_tokens:
        tokens, offsets, finish = tokens[: req.max_tokens], offsets[: req.max_tokens], "length"
        kept, left = [], req.max_tokens
        for n in sizes:
            if left <= 0:
                break
            kept.append(min(n, left))
            left -= n
        sizes = kept
    mean_gap = offsets[-1] / (len(offsets) - 1) if len(offsets) > 1 else 0.0
    return Reply(
        id=hex_id(12),
        created=int(time.time()),
        model=req.model,
        prompt_tokens=req.prompt_tokens,
        ttft_s=rec.ttft_s,
        tbt_s=mean_gap,
        choices=[Choice(0, tokens, finish)],
        chunking=RecordedChunking(sizes),
        offsets_s=offsets,
    )


def replayer(path: str) -> Callable[[EngineRequest], Reply | None]:
    """The engine's replay hook for a recording: a request → its recorded Reply, or None."""
    index = _index(path)

    def replay(req: EngineRequest) -> Reply | None:
        if req.n != 1 or req.output is not None:  # n > 1, tools, formats: simulated
            return None
        rec = index.find(req.model, req.replay_key)
        return None if rec is None else replay_reply(rec, req)

    return replay


@functools.cache
def _index(path: str) -> ReplayIndex:
    return ReplayIndex.load(path)
