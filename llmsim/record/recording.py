"""The recording: one JSON line per request, as `llmsim record` and `llmsim bench` write it.

A line (format 1; times in ms from the moment the request arrived):

    {"v": 1, "time": 1764600000.123, "api": "chat", "path": "/v1/chat/completions",
     "model": "gpt-4o", "status": 200, "stream": true, "error_kind": null, "error": null,
     "prompt_tokens": 25, "output_tokens": 120, "usage": "reported", "max_tokens": 256,
     "finish_reason": "stop", "first_byte_ms": 301.2, "ttft_ms": 301.4,
     "gaps_ms": [24.9, ...], "event_tokens": [1, 1, ...], "e2e_ms": 3310.0,
     "rate_limit": {"x-ratelimit-remaining-requests": "99"}, "key": "sha256:...",
     "texts": ["Hello", ...]}

`gaps_ms[i]` is the time between content events i and i+1; `event_tokens[i]` the tokens in
content event i (counted with the model's tokenizer). `texts` (the content of each event) is
written only with `--with-bodies`. API keys and prompts are never written; `key` is a digest of
model and conversation, which is what replay matches on.
"""

from __future__ import annotations

import gzip
import itertools
import json
import marshal
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmsim.record.apis import Extracted, RequestInfo, read_request, stream_event, whole_body
from llmsim.record.framing import Dechunker, ProtocolError

FORMAT_VERSION = 1
MAX_ERROR_CHARS = 2000
MAX_TEXT_CHARS = 64 * 1024  # per request, with --with-bodies
_RATE_HEADERS = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after", "x-ms-ratelimit-")


@dataclass
class Capture:
    """What the proxy saw of one exchange, raw; analysed into a line after it ended.

    The forwarding path only appends to `reads` and `times` (each upstream read as it came,
    chunk framing and all when `chunked`); the request body is parsed (`info`) and the reads'
    payload taken out (`chunks`) in the analysis process, after the exchange."""

    time: float  # wall clock at arrival (epoch seconds)
    start: float  # monotonic at arrival
    method: str
    path: str
    query: str = ""
    body: bytes = b""  # the request body as the client sent it
    secrets: list[str] = field(default_factory=list)  # header values scrubbed from errors
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    reads: list[bytes] = field(default_factory=list)  # the response body, read by read
    times: list[float] = field(default_factory=list)  # monotonic arrival of each read
    chunked: bool = False  # reads carry the upstream's chunk framing
    first_byte: float | None = None
    end: float | None = None
    outcome: str = "ok"  # ok, drop, client_disconnect, upstream_unreachable
    detail: str | None = None
    truncated: bool = False
    info: RequestInfo | None = None  # read_request() of path, query and body (analysis side)
    received: int = 0  # response body bytes read so far, kept or not (proxy side only)

    _WIRE = ("time", "start", "method", "path", "query", "body", "secrets", "status",
             "headers", "reads", "times", "chunked", "first_byte", "end", "outcome", "detail",
             "truncated")  # fmt: skip

    def to_wire(self) -> bytes:
        """The capture as bytes for the analysis process: marshal of plain values, a few µs
        where pickling the dataclass cost about 100 µs per request in the proxy."""
        return marshal.dumps(tuple(getattr(self, k) for k in self._WIRE))

    @classmethod
    def from_wire(cls, data: bytes) -> Capture:
        """The capture `to_wire` wrote (same interpreter: the analysis process is a fork)."""
        return cls(**dict(zip(cls._WIRE, marshal.loads(data), strict=True)))

    def keep(self, now: float, data: bytes, limit: int) -> None:
        """Keep one upstream read and its arrival while the body read so far is within `limit`
        bytes; past it, only mark the capture truncated (the read is still forwarded)."""
        self.received += len(data)
        if self.received <= limit:
            self.times.append(now)
            self.reads.append(data)
        else:
            self.truncated = True

    @property
    def chunks(self) -> list[tuple[float, bytes]]:
        """(arrival, payload) of each read that carried payload: what the analysis parses."""
        if not self.chunked:
            return [(t, d) for t, d in zip(self.times, self.reads, strict=True) if d]
        dechunk, out = Dechunker(), []
        for t, data in zip(self.times, self.reads, strict=True):
            try:
                payload = dechunk.feed(data)
            except ProtocolError:
                break  # the forwarding path ended the exchange there too
            if payload:
                out.append((t, payload))
        return out


def _ms(t: float | None, start: float) -> float | None:
    return None if t is None else round((t - start) * 1000.0, 3)


def _events(chunks: list[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
    """(arrival, data payload) of each SSE event: an event arrived with its blank line."""
    buf = b""
    for t, chunk in chunks:
        buf += chunk.replace(b"\r\n", b"\n")
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            raw, buf = buf[:end], buf[end + 2 :]
            data = [ln[5:].lstrip(b" ") for ln in raw.split(b"\n") if ln.startswith(b"data:")]
            if data:
                yield t, b"\n".join(data)
    if buf.strip():
        data = [ln[5:].lstrip(b" ") for ln in buf.split(b"\n") if ln.startswith(b"data:")]
        if data:
            yield chunks[-1][0], b"\n".join(data)


def _body(cap: Capture, chunks: list[tuple[float, bytes]]) -> bytes:
    raw = b"".join(c for _, c in chunks)
    encoding = next((v for k, v in cap.headers if k.lower() == "content-encoding"), "")
    try:
        if "gzip" in encoding:
            return gzip.decompress(raw)
        if "deflate" in encoding:
            return zlib.decompress(raw)
    except (OSError, zlib.error, EOFError):
        return b""
    return raw


def _json(raw: bytes) -> Any:
    # orjson first: 2.3 against 9.4 µs for a chat chunk here, and the analysis parses every
    # event. What it refuses (NaN, a BOM, ...) json may still read; what neither reads is None.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _error_kind(cap: Capture, ex: Extracted) -> str | None:
    if cap.outcome != "ok":
        return cap.outcome
    if cap.status >= 400:
        return str(cap.status)
    if ex.error is not None:
        return "stream-error"
    return None


def analyse(cap: Capture, count_tokens: Any, with_bodies: bool = False) -> dict[str, Any]:
    """The recording line for one exchange. `count_tokens(text, model)` counts tokens."""
    if cap.info is None:
        cap.info = read_request(cap.path, cap.query, cap.body)
    info = cap.info
    chunks = cap.chunks
    ctype = next((v for k, v in cap.headers if k.lower() == "content-type"), "")
    streamed = "text/event-stream" in ctype
    ex = Extracted()
    times: list[float] = []
    if streamed and cap.status < 400:
        for t, data in _events(chunks):
            if data == b"[DONE]":
                continue
            text = stream_event(info.api, _json(data), ex)
            if text:
                ex.texts.append(text)
                times.append(t)
    elif cap.status < 400:
        ex = whole_body(info.api, _json(_body(cap, chunks)))
    model = info.model or ex.model
    tokens = [count_tokens(t, model or "") for t in ex.texts]
    error = None
    if cap.status >= 400:
        body = _body(cap, chunks)
        parsed = _json(body)
        error = parsed if parsed is not None else body.decode("utf-8", "replace")
        if len(json.dumps(error)) > MAX_ERROR_CHARS:
            error = json.dumps(error)[:MAX_ERROR_CHARS]
    elif ex.error is not None:
        error = ex.error
    elif cap.detail:
        error = cap.detail
    usage = "reported" if ex.output_tokens is not None else "counted"
    line: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "time": round(cap.time, 3),
        "api": info.api,
        "path": cap.path,
        "model": model,
        "status": cap.status,
        "stream": streamed,
        "error_kind": _error_kind(cap, ex),
        "error": error,
        "prompt_tokens": ex.prompt_tokens,
        "output_tokens": ex.output_tokens if ex.output_tokens is not None else sum(tokens),
        "usage": usage,
        "max_tokens": info.max_tokens,
        "finish_reason": ex.finish_reason,
        "first_byte_ms": _ms(cap.first_byte, cap.start),
        "ttft_ms": _ms(times[0], cap.start) if times and streamed else None,
        "gaps_ms": [round((b - a) * 1000.0, 3) for a, b in itertools.pairwise(times)],
        "event_tokens": tokens if streamed else [],
        "e2e_ms": _ms(cap.end, cap.start),
        "rate_limit": {k.lower(): v for k, v in cap.headers if k.lower().startswith(_RATE_HEADERS)},
        "key": info.key,
    }
    if cap.truncated:
        line["truncated"] = True
    if with_bodies:
        kept, size = [], 0
        for t in ex.texts:
            size += len(t)
            if size > MAX_TEXT_CHARS:
                line["texts_truncated"] = True
                break
            kept.append(t)
        line["texts"] = kept
    return line


@dataclass
class Recording:
    """Lines read back from recording files, and how many were not usable."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # truncated, not JSON, or not a recording line
    files: int = 0


_REQUIRED = {"v": int, "api": str, "status": int, "stream": bool, "gaps_ms": list}


def valid_line(obj: Any) -> bool:
    """Whether a decoded line is a recording line this version understands."""
    if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
        return False
    if any(not isinstance(obj.get(k), t) for k, t in _REQUIRED.items()):
        return False
    for k in ("ttft_ms", "e2e_ms"):
        v = obj.get(k)
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            return False
    gaps, toks = obj["gaps_ms"], obj.get("event_tokens") or []
    if not all(isinstance(g, (int, float)) and g >= 0 for g in gaps):
        return False
    return isinstance(toks, list) and all(isinstance(n, int) and n >= 0 for n in toks)


def read_recordings(paths: Iterable[str | Path]) -> Recording:
    """Read recording files; lines that are truncated or foreign are skipped and counted."""
    rec = Recording()
    for path in paths:
        rec.files += 1
        with open(path, encoding="utf-8", errors="replace") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError:
                    rec.skipped += 1
                    continue
                if valid_line(obj):
                    rec.lines.append(obj)
                else:
                    rec.skipped += 1
    return rec
