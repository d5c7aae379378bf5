"""What every wire format provides to the server's one request pipeline.

An API module only parses a request into an EngineRequest and renders the engine's Reply;
timing, capacity, rate limits, faults and stats are the pipeline's, the same for every API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from llmsim.api.errors import ApiError
from llmsim.engine.request import EngineRequest, Reply


@dataclass(frozen=True)
class RenderContext:
    system_fingerprint: str


class WireFormat(Protocol):
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

    def stream_error(self, err: ApiError) -> bytes:
        """An error event inside a stream, in this API's shape."""
        ...
