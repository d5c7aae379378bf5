"""What every wire format provides to the server's one request pipeline.

An API module only parses a request into an EngineRequest and renders the engine's Reply;
timing, capacity, rate limits, faults and stats are the pipeline's, the same for every API, and
the stream loop (llmsim.engine.loop) writes the events. A new API is one module implementing
this protocol, its routes, and (if it sends several tokens per event) a row in
API_CHUNK_TOKENS.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from llmsim.api.errors import ApiError, openai_limit_error
from llmsim.engine.request import EngineRequest, Reply
from llmsim.engine.simulator import LimitViolation
from llmsim.engine.timing import ChunkSpec

# Tokens per content event by API family (the part of a wire format's name before the dot),
# unless --chunk-tokens says otherwise. OpenAI streams one token per chunk. Anthropic has sent
# several tokens per text_delta since mid-2024 (a token-per-event tokenizer probe stopped working
# then: javirandor/anthropic-tokenizer#5 shows deltas of ~1-5 tokens). Gemini's
# streamGenerateContent sends a short first chunk and then chunks of ~10-20 tokens (Chrome's
# "Understand streamed LLM responses", 2025: "A T-Rex" then a 16-token chunk).
API_CHUNK_TOKENS: dict[str, ChunkSpec] = {
    "openai": ChunkSpec(),
    "anthropic": ChunkSpec.parse("normal:mean=3,stddev=1"),
    "gemini": ChunkSpec.parse("normal:mean=15,stddev=5"),
}


def api_chunk_tokens(wire_name: str) -> ChunkSpec:
    """The API's default tokens per content event (one when the family is not listed)."""
    return API_CHUNK_TOKENS.get(wire_name.split(".", 1)[0], ChunkSpec())


@dataclass(frozen=True)
class RenderContext:
    """Server-wide values every response repeats: the engine's system_fingerprint."""

    system_fingerprint: str


class WireFormat(Protocol):
    """One API's request parsing and response rendering, as the server pipeline calls them.

    Optional attributes the pipeline also reads: `checks_limits` (False skips the model's limit
    check), `window_counts_output` (False: the context window bounds the prompt alone) and
    `render_json` (the JSON body as pieces, for a body too big to build at once).
    """

    name: str  # e.g. "openai.chat"; shows in logs

    def parse(self, body: Any) -> tuple[EngineRequest, Any]:
        """Validate a decoded JSON body; return the engine request and the API's own options
        (which must have a bool `stream`). Raise ApiError for bad input."""
        ...

    def render(self, reply: Reply, opts: Any, ctx: RenderContext) -> dict[str, Any]:
        """The non-streaming response body."""
        ...

    def stream_events(
        self, reply: Reply, opts: Any, ctx: RenderContext
    ) -> Iterator[tuple[int, bytes]]:
        """SSE bytes as (step, bytes); step i is due when token i is."""
        ...

    def error_body(self, err: ApiError) -> bytes:
        """An error response body in this API's shape."""
        ...

    def stream_error(self, err: ApiError, sent_events: int = 0) -> bytes:
        """An error event inside a stream, in this API's shape, after `sent_events` events."""
        ...

    def limit_error(self, violation: LimitViolation) -> ApiError:
        """The API's 400 for a request above the model's limits, in the provider's words."""
        ...


class OpenAIErrors:
    """Errors the way OpenAI's APIs send them, for the wire formats of that family to inherit:
    the JSON error body, mid-stream a `data:` event whose object has "error" (what the openai
    SDK recognises), and the limit errors in OpenAI's words."""

    def error_body(self, err: ApiError) -> bytes:
        """The error response body: `{"error": {...}}`."""
        return err.json_bytes()

    def stream_error(self, err: ApiError, sent_events: int = 0) -> bytes:
        """The error as one SSE data event."""
        return b"data: " + err.json_bytes() + b"\n\n"

    def limit_error(self, violation: LimitViolation) -> ApiError:
        """OpenAI's 400 for a request above the model's limits."""
        return openai_limit_error(violation)
