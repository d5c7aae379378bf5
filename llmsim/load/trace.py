"""Trace replay: Mooncake-style JSONL (or CSV) of arrivals with their lengths and shared blocks.

One record per request: `timestamp` (ms since the trace's start), `input_length` and
`output_length` (tokens), and optionally `hash_ids`: the ids of the prompt's blocks of
`BLOCK_TOKENS` tokens (Mooncake's traces use 512), equal ids meaning equal text. The prompt of a
request is built block by block from text that depends only on the block's id, so requests
sharing a prefix of ids share that prefix of text, token for token, which is what a server's
prefix cache sees. The output is exactly `output_length` tokens long (max_tokens with
ignore_eos).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmsim.load.workload import PlannedRequest, shared_text, word_pool

BLOCK_TOKENS = 512


@dataclass(frozen=True)
class TraceEntry:
    """One request of a trace."""

    offset_s: float  # since the trace's first request
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()


def _int(rec: dict[str, Any], key: str, where: str) -> int:
    try:
        value = int(float(rec[key]))
    except KeyError:
        raise ValueError(f"{where}: no {key!r} field") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key!r} is not a number ({rec[key]!r})") from None
    if value < 0:
        raise ValueError(f"{where}: {key!r} is negative")
    return value


def _entry(rec: Any, where: str) -> tuple[float, int, int, tuple[int, ...]]:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object with timestamp, input_length, output_length")
    try:
        ts = float(rec["timestamp"])
    except KeyError:
        raise ValueError(f"{where}: no 'timestamp' field") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'timestamp' is not a number") from None
    ids = rec.get("hash_ids") or ()
    if isinstance(ids, str):  # CSV: "1 2 3" or "[1, 2, 3]"
        ids = [p for p in ids.replace("[", " ").replace("]", " ").replace(",", " ").split() if p]
    try:
        hash_ids = tuple(int(i) for i in ids)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'hash_ids' must be a list of integers") from None
    return (
        ts,
        _int(rec, "input_length", where),
        max(1, _int(rec, "output_length", where)),
        hash_ids,
    )


@lru_cache(maxsize=4)
def load_trace(path: str) -> tuple[TraceEntry, ...]:
    """Read a JSONL or CSV trace; entries sorted by time, offsets from the first one."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{p}: cannot read it ({e.strerror or e})") from None
    raw: list[tuple[float, int, int, tuple[int, ...]]] = []
    if p.suffix.lower() == ".csv":
        for n, rec in enumerate(csv.DictReader(text.splitlines()), 2):
            raw.append(_entry(rec, f"{p}:{n}"))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{p}:{n}: invalid JSON ({e})") from None
            raw.append(_entry(rec, f"{p}:{n}"))
    if not raw:
        raise ValueError(f"{p}: no requests in the trace")
    raw.sort(key=lambda r: r[0])
    t0 = raw[0][0]
    return tuple(TraceEntry((ts - t0) / 1000.0, i, o, h) for ts, i, o, h in raw)


def block_text(model: str, block_id: int) -> str:
    """The text of one shared block: BLOCK_TOKENS one-token words, fixed by the block id."""
    return shared_text(model, ("block", block_id), BLOCK_TOKENS)


def trace_request(
    entry: TraceEntry, model: str, rng: random.Random, framing: int
) -> PlannedRequest:
    """The chat request for one trace entry: `input_length` prompt tokens in all, exactly.

    `framing`: the chat framing's tokens (a one-user-message prompt's overhead), taken from the
    text so that usage.prompt_tokens equals the trace's input_length.
    """
    content = max(1, entry.input_length - framing)
    words: list[str] = []
    have = 0
    for block in entry.hash_ids:
        if have >= content:
            break
        take = min(BLOCK_TOKENS, content - have)
        text = block_text(model, block)
        words.append(text if take == BLOCK_TOKENS else " ".join(text.split(" ")[:take]))
        have += take
    if have < content:  # beyond the shared blocks: this request's own text
        words.append(" ".join(rng.choices(word_pool(model), k=content - have)))
    messages = [{"role": "user", "content": " ".join(words)}]
    return PlannedRequest(messages, entry.output_length, framing + content)


__all__ = [
    "BLOCK_TOKENS",
    "TraceEntry",
    "block_text",
    "load_trace",
    "trace_request",
]
