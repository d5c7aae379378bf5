"""The one SSE read loop and the one TTFT/ITL clock, for every API's Locust user.

`StreamState` is what a reply measured so far; its `output()` is the clock: the first output
chunk sets TTFT, every later one adds an inter-token gap. `SSEConsumer` turns body bytes into
events and hands each to the user's `EventReader` (llmsim/load/readers.py).

How the bytes arrive is the transport's business (llmsim/load/reactor.py): on plain TCP the
process's stream reactor reads every stream from gevent's hub, one callback per readable socket
and no greenlet switch per token; on TLS, or for response objects it does not know, a blocking
loop in the user's own greenlet. Either way each `recv()` is stamped with the time it returned
and parsed as it arrives, so TTFT and gaps measure the wire, not our parsing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from llmsim.engine.tokens import count_tokens
from llmsim.load import errors as E
from llmsim.load.sse import SSEParser

try:  # a dependency; the fallback keeps a bare environment working (1.3 us vs 4 us per event)
    from orjson import loads as json_loads
except ImportError:  # pragma: no cover - depends on the environment
    _decode = json.JSONDecoder().decode

    def json_loads(data: bytes) -> Any:
        """JSON from bytes (decoded first: json.loads(bytes) sniffs the encoding every time)."""
        return _decode(data.decode())


class StreamState:
    """What one reply has shown so far: output timing, text, usage, size."""

    __slots__ = (
        "chunks",
        "extra",
        "finish_reason",
        "first",
        "itl",
        "last",
        "nbytes",
        "planned_ttft",
        "streamed",
        "text",
        "usage",
    )

    def __init__(self) -> None:
        self.first: float | None = None  # perf_counter of the first output chunk
        self.last: float | None = None  # ... and of the latest one
        self.itl: list[float] = []  # ms between consecutive output chunks
        self.chunks = 0  # chunks that carried output (content, reasoning, tool calls)
        self.text: list[str] = []
        self.usage: Any = None  # {"prompt_tokens": int, "completion_tokens": int} or None
        self.nbytes = 0
        self.planned_ttft: float | None = None
        self.finish_reason: str | None = None
        self.streamed = True
        self.extra: dict[str, Any] = {}  # a reader's own per-stream notes

    def output(self, now: float, text: str | None = None) -> None:
        """One chunk of output arrived at `now` (perf_counter): TTFT on the first, a gap after."""
        last = self.last
        if last is None:
            self.first = now
        else:
            self.itl.append((now - last) * 1000.0)
        self.last = now
        self.chunks += 1
        if text:
            self.text.append(text)

    def counted_tokens(self, model: str) -> int:
        """Output tokens when the server sent no usage: chunks when streamed, else tokenized."""
        # Streaming servers send one token per chunk (OpenAI, vLLM, llmsim); a whole reply has
        # no chunks, so its text is tokenized instead.
        if self.streamed:
            return self.chunks
        return count_tokens("".join(self.text), model) if self.text else 0


class EventReader:
    """One API's reply shape: override `event` (streamed) and `whole` (one JSON body).

    Readers keep no state of their own (one instance serves every stream of a user class);
    what a stream needs between events goes into `StreamState` (`st.extra` for the rest).
    """

    #: What ends a stream, for the incomplete-stream error message.
    end_marker = "data: [DONE]"
    #: The stream ends with the HTTP body (no end event): Gemini-style APIs set True.
    ends_with_body = False
    #: What a non-streamed reply should have been, for the bad-response message.
    whole_name = "reply"
    #: The API generates tokens: False for embeddings, whose requests then stay out of the
    #: output-tokens/s-per-request histogram (a 0 there for each would drag its percentiles).
    generates_output = True

    def event(self, name: bytes | None, data: bytes, now: float, st: StreamState) -> bool:
        """Handle one SSE event (name None for the default); True when the stream is done."""
        raise NotImplementedError

    def whole(self, obj: Any, st: StreamState) -> None:
        """Read a non-streamed reply's parsed JSON into `st` (KeyError etc. mean a bad reply)."""
        raise NotImplementedError


def parse_event_json(data: bytes) -> Any:
    """An event's JSON, or the malformed-chunk error."""
    try:
        return json_loads(data)
    except ValueError:  # JSON and Unicode errors alike
        raise E.LLMError(E.MALFORMED_CHUNK, f"invalid JSON: {data[:60]!r}") from None


class SSEConsumer:
    """Body bytes in, events to the reader; remembers whether the stream's end was seen."""

    __slots__ = ("done", "feed", "reader", "st")

    def __init__(self, reader: EventReader, st: StreamState) -> None:
        self.reader = reader
        self.st = st
        self.feed = SSEParser().feed
        self.done = False

    def __call__(self, now: float, chunk: bytes) -> None:
        """Bytes of the body received at `now`; raises LLMError for a broken stream."""
        st = self.st
        st.nbytes += len(chunk)
        if self.done:
            return  # anything after the end (usually nothing) is drained, not parsed
        event = self.reader.event
        for name, data in self.feed(chunk):
            if data == b"[DONE]":
                self.done = True
                return
            if name is not None:
                if name == b"error":
                    raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(data))
                if name == b"ping":
                    continue
            try:
                if event(name, data, now, st):
                    self.done = True
                    return
            except (AttributeError, TypeError, KeyError, IndexError):
                raise E.LLMError(E.MALFORMED_CHUNK, f"unexpected shape: {data[:60]!r}") from None

    def finish(self) -> None:
        """The body ended: raise if the reader's end event never came."""
        if not self.done and not self.reader.ends_with_body:
            raise E.LLMError(E.INCOMPLETE_STREAM, f"stream ended without {self.reader.end_marker}")


def read_whole(resp: Any, reader: EventReader, st: StreamState) -> float:
    """Read a non-streamed reply through `reader.whole`; the perf_counter of its end."""
    raw = resp.read()  # a timeout or a drop here is a real failure: let it be classified
    end = time.perf_counter()
    st.nbytes = len(raw)
    st.streamed = False
    try:
        obj = json_loads(raw)
    except ValueError:
        raise E.LLMError(E.BAD_RESPONSE, f"not JSON: {raw[:60]!r}") from None
    try:
        reader.whole(obj, st)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise E.LLMError(E.BAD_RESPONSE, f"not a {reader.whole_name}: {raw[:60]!r}") from None
    return end


def iter_lines_fallback(raw: Any) -> Iterator[tuple[float, bytes]]:
    """For response objects without geventhttpclient's internals: each line as it arrives."""
    perf = time.perf_counter
    while True:
        line = raw.readline(b"\n")
        if not line:
            return
        yield perf(), line
