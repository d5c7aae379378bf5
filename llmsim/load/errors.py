"""Error kinds: every failed request gets exactly one, and a message Locust groups well."""

from __future__ import annotations

import errno
import json
import socket
from typing import Any

import gevent
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError

from llmsim.load.sse import StreamClosed

# http_<status> (e.g. http_429, http_500) is built from the status code.
CONNECTION = "connection"
TIMEOUT = "timeout"
STREAM_ERROR_EVENT = "stream_error_event"
INCOMPLETE_STREAM = "incomplete_stream"
MALFORMED_CHUNK = "malformed_chunk"
NOT_SSE = "not_sse"
BAD_RESPONSE = "bad_response"  # a non-streaming reply that is not a chat completion
CLIENT_ERROR = "client_error"  # a bug on our side, reported instead of killing the user

KINDS = (
    CONNECTION,
    TIMEOUT,
    STREAM_ERROR_EVENT,
    INCOMPLETE_STREAM,
    MALFORMED_CHUNK,
    NOT_SSE,
    BAD_RESPONSE,
    CLIENT_ERROR,
)


class LLMError(Exception):
    """A classified failure; str() is the message shown in Locust's failures table."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}" if detail else kind)


def classify_exception(exc: BaseException) -> LLMError:
    """Map a transport exception to an error kind."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, (socket.timeout, TimeoutError, gevent.Timeout)):
        return LLMError(TIMEOUT, "no response bytes within the timeout")
    if isinstance(exc, StreamClosed):
        return LLMError(CONNECTION, str(exc))
    if isinstance(exc, HTTPConnectionClosed):
        return LLMError(CONNECTION, "closed before any response")
    if isinstance(exc, HTTPParseError):
        return LLMError(CONNECTION, f"truncated or invalid HTTP response ({_short(str(exc), 60)})")
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return LLMError(CONNECTION, name)
    return LLMError(CLIENT_ERROR, f"{type(exc).__name__}: {_short(str(exc), 120)}")


def http_error(status: int, body: bytes) -> LLMError:
    """The `http_<status>` error of a non-2xx reply; its detail is the body's error_message."""
    return LLMError(f"http_{status}", error_message(body))


def error_message(body: bytes, limit: int = 120) -> str:
    """The useful part of an error body: OpenAI's error.message (and type), else its start."""
    try:
        obj: Any = json.loads(body)
    except ValueError:
        return _short(body.decode("utf-8", "replace").strip(), limit)
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict):
        msg = err.get("message") or err.get("detail") or json.dumps(err)[:limit]
        typ = err.get("type") or err.get("code")
        return _short(f"{msg} ({typ})" if typ else str(msg), limit)
    return _short(str(err), limit)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
