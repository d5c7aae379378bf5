"""Locust users for Anthropic Messages, OpenAI Responses, legacy completions and embeddings.

Each one is OpenAIChatUser with its own request body and its own reader of the reply, so the
workload options (`--llm-…`), the metrics (TTFT, ITL, TPOT, E2E, tokens), the error kinds and
the Locust rows are the chat user's. What counts as output for TTFT and ITL:

- Anthropic: every content_block_delta with text, tool-input JSON or thinking.
- Responses: output_text, function-call argument and reasoning text deltas. Tokens come from
  `usage`: output_tokens less reasoning_tokens (the hidden ones are not streamed, so counting them
  would understate the time per output token).
- Completions: every chunk with text.
- Embeddings: no stream and no output tokens: E2E and input tokens only.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar

from locust.exception import StopUser

from llmsim.load import errors as E
from llmsim.load.sse import SSEParser, iter_body_chunks
from llmsim.load.users import OpenAIChatUser, _StreamState, split_host

loads = json.loads


# --------------------------------------------------------------------------- stream reading


def _output(st: _StreamState, now: float, clock: list[float | None], text: str | None) -> None:
    """One chunk of output arrived at `now`: TTFT on the first, an ITL gap after that."""
    last = clock[0]
    if last is None:
        st.first = now
    else:
        st.itl.append((now - last) * 1000.0)
    clock[0] = now
    st.chunks += 1
    if text:
        st.text.append(text)


def _read_events(resp: Any, st: _StreamState, on_event: Any, end_marker: str) -> float:
    """Drive an SSE body through `on_event(event, obj, now) -> done`; the time of its last byte."""
    feed = SSEParser().feed
    end = time.perf_counter()
    done = False
    for now, chunk in iter_body_chunks(resp):
        end = now
        st.nbytes += len(chunk)
        if done:
            continue
        for event, data in feed(chunk):
            if data == b"[DONE]":
                done = True
                break
            if event == b"error":
                raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(data))
            if event == b"ping":
                continue
            try:
                obj = loads(data)
            except ValueError:
                raise E.LLMError(E.MALFORMED_CHUNK, f"invalid JSON: {data[:60]!r}") from None
            try:
                if on_event(obj, now):
                    done = True
                    break
            except (AttributeError, TypeError, KeyError):
                raise E.LLMError(E.MALFORMED_CHUNK, f"unexpected shape: {data[:60]!r}") from None
    if not done:
        raise E.LLMError(E.INCOMPLETE_STREAM, f"stream ended without {end_marker}")
    return end


def _whole(resp: Any, st: _StreamState) -> tuple[Any, float]:
    raw = resp.read()
    end = time.perf_counter()
    st.nbytes = len(raw)
    st.streamed = False
    try:
        return loads(raw), end
    except ValueError:
        raise E.LLMError(E.BAD_RESPONSE, f"not JSON: {raw[:60]!r}") from None


def _usage(prompt: Any, completion: Any) -> dict[str, Any] | None:
    if isinstance(completion, int):
        return {"prompt_tokens": prompt, "completion_tokens": completion}
    return None


def read_anthropic_stream(resp: Any, st: _StreamState) -> float:
    clock: list[float | None] = [None]
    tokens: dict[str, Any] = {}

    def on_event(obj: dict[str, Any], now: float) -> bool:
        kind = obj.get("type")
        if kind == "content_block_delta":
            d = obj["delta"]
            piece = d.get("text") or d.get("partial_json") or d.get("thinking")
            if piece:
                _output(st, now, clock, piece if d.get("type") == "text_delta" else None)
        elif kind == "message_start":
            tokens["in"] = obj["message"]["usage"].get("input_tokens")
        elif kind == "message_delta":
            st.finish_reason = obj["delta"].get("stop_reason")
            tokens["out"] = obj.get("usage", {}).get("output_tokens")
        elif kind == "message_stop":
            return True
        elif kind == "error":
            raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(json.dumps(obj).encode()))
        return False

    end = _read_events(resp, st, on_event, "message_stop")
    st.usage = _usage(tokens.get("in"), tokens.get("out"))
    return end


def read_anthropic_whole(resp: Any, st: _StreamState) -> float:
    obj, end = _whole(resp, st)
    try:
        st.text.extend(b.get("text", "") for b in obj["content"] if b.get("type") == "text")
        st.finish_reason = obj.get("stop_reason")
        u = obj["usage"]
        st.usage = _usage(u.get("input_tokens"), u.get("output_tokens"))
    except (KeyError, TypeError, AttributeError):
        raise E.LLMError(E.BAD_RESPONSE, "not an Anthropic message") from None
    return end


_RESPONSES_OUTPUT = frozenset(
    (
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.refusal.delta",
    )
)


def _responses_usage(st: _StreamState, response: dict[str, Any]) -> None:
    u = response.get("usage") or {}
    out = u.get("output_tokens")
    if isinstance(out, int):
        out -= (u.get("output_tokens_details") or {}).get("reasoning_tokens", 0) or 0
    st.usage = _usage(u.get("input_tokens"), out)
    st.finish_reason = "length" if response.get("status") == "incomplete" else "stop"


def read_responses_stream(resp: Any, st: _StreamState) -> float:
    clock: list[float | None] = [None]

    def on_event(obj: dict[str, Any], now: float) -> bool:
        kind = obj.get("type")
        if kind in _RESPONSES_OUTPUT:
            if obj.get("delta"):
                text = obj["delta"] if kind == "response.output_text.delta" else None
                _output(st, now, clock, text)
        elif kind in ("response.completed", "response.incomplete"):
            _responses_usage(st, obj["response"])
            return True
        elif kind == "response.failed":
            err = (obj.get("response") or {}).get("error") or {}
            raise E.LLMError(E.STREAM_ERROR_EVENT, str(err.get("message") or "response.failed"))
        elif kind == "error":
            raise E.LLMError(E.STREAM_ERROR_EVENT, str(obj.get("message") or "error event"))
        return False

    return _read_events(resp, st, on_event, "response.completed")


def read_responses_whole(resp: Any, st: _StreamState) -> float:
    obj, end = _whole(resp, st)
    try:
        for item in obj["output"]:
            if item.get("type") == "message":
                st.text.extend(
                    p.get("text", "") for p in item["content"] if p.get("type") == "output_text"
                )
        _responses_usage(st, obj)
    except (KeyError, TypeError, AttributeError):
        raise E.LLMError(E.BAD_RESPONSE, "not a Response") from None
    return end


def read_completions_stream(resp: Any, st: _StreamState) -> float:
    clock: list[float | None] = [None]

    def on_event(obj: dict[str, Any], now: float) -> bool:
        choices = obj.get("choices")
        if choices is None:
            if "error" in obj:
                raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(json.dumps(obj).encode()))
            raise E.LLMError(E.MALFORMED_CHUNK, "no choices")
        for ch in choices:
            if ch.get("text"):
                _output(st, now, clock, ch["text"])
            if ch.get("finish_reason"):
                st.finish_reason = ch["finish_reason"]
        if obj.get("usage"):
            st.usage = obj["usage"]
        return False

    return _read_events(resp, st, on_event, "data: [DONE]")


def read_completions_whole(resp: Any, st: _StreamState) -> float:
    obj, end = _whole(resp, st)
    try:
        st.text.append(obj["choices"][0].get("text") or "")
        st.finish_reason = obj["choices"][0].get("finish_reason")
        st.usage = obj.get("usage")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise E.LLMError(E.BAD_RESPONSE, "not a text completion") from None
    return end


def read_embeddings(resp: Any, st: _StreamState) -> float:
    obj, end = _whole(resp, st)
    try:
        if not obj["data"] or not all("embedding" in d for d in obj["data"]):
            raise E.LLMError(E.BAD_RESPONSE, "no embeddings in the reply")
        st.usage = _usage(obj["usage"]["prompt_tokens"], 0)
    except (KeyError, TypeError, AttributeError):
        raise E.LLMError(E.BAD_RESPONSE, "not an embeddings list") from None
    return end


# --------------------------------------------------------------------------- the users


def _prompt_text(messages: list[dict[str, Any]]) -> str:
    return "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") != "system")


class AnthropicMessagesUser(OpenAIChatUser):
    """Streams Anthropic Messages (POST {host}/v1/messages) with the chat user's metrics.

    `host` is the API's base URL, as the anthropic SDK takes it (http://host:port, or with
    /anthropic or /v1 after it). The key comes from --llm-api-key or $ANTHROPIC_API_KEY.
    """

    abstract = True
    model = "claude-sonnet-4"
    chat_path = "/messages"
    anthropic_version = "2023-06-01"
    default_max_tokens = 1024  # max_tokens is required by the API

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        origin, base = split_host(self.host)
        if not base.endswith("/v1"):
            base += "/v1"
        self._path = base + self.chat_path
        self._url = origin + self._path
        self._name = self.request_name or self._path
        self._headers.pop("Authorization", None)
        key = self.llm.api_key or os.environ.get("ANTHROPIC_API_KEY")
        if key:
            self._headers["x-api-key"] = key
        self._headers["anthropic-version"] = self.anthropic_version

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        cfg = self.llm
        system = [m["content"] for m in messages if m.get("role") == "system"]
        body: dict[str, Any] = {
            "model": cfg.model,
            "max_tokens": max_tokens or self.default_max_tokens,
            "messages": [m for m in messages if m.get("role") != "system"],
        }
        if system:
            body["system"] = "\n\n".join(system)
        return self.common_fields(body, stream_options=False)

    def read_stream(self, resp: Any, st: _StreamState) -> float:
        return read_anthropic_stream(resp, st)

    def read_whole(self, resp: Any, st: _StreamState) -> float:
        return read_anthropic_whole(resp, st)


class OpenAIResponsesUser(OpenAIChatUser):
    """Streams OpenAI Responses (POST {host}/responses) with the chat user's metrics."""

    abstract = True
    chat_path = "/responses"

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        cfg = self.llm
        body: dict[str, Any] = {"model": cfg.model, "input": messages}
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
        return self.common_fields(body, stream_options=False)

    def read_stream(self, resp: Any, st: _StreamState) -> float:
        return read_responses_stream(resp, st)

    def read_whole(self, resp: Any, st: _StreamState) -> float:
        return read_responses_whole(resp, st)


class OpenAICompletionsUser(OpenAIChatUser):
    """Streams legacy completions (POST {host}/completions): the prompt is the user turns' text."""

    abstract = True
    model = "gpt-3.5-turbo-instruct"
    chat_path = "/completions"

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        cfg = self.llm
        body: dict[str, Any] = {"model": cfg.model, "prompt": _prompt_text(messages)}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return self.common_fields(body, stream_options=True)

    def read_stream(self, resp: Any, st: _StreamState) -> float:
        return read_completions_stream(resp, st)

    def read_whole(self, resp: Any, st: _StreamState) -> float:
        return read_completions_whole(resp, st)


class OpenAIEmbeddingsUser(OpenAIChatUser):
    """Embeds the workload's prompts (POST {host}/embeddings): E2E and input tokens.

    `inputs_per_request` prompts go in each request (a batch); --llm-prompt-tokens sets their
    length. There is no stream and no output, so TTFT, ITL and TPOT stay empty.
    """

    abstract = True
    model = "text-embedding-3-small"
    chat_path = "/embeddings"
    inputs_per_request: int = 1
    dimensions: int | None = None
    encoding_format: str = "float"
    extra_body: ClassVar[dict[str, Any]] = {}

    def chat_task(self) -> None:
        if self.inputs_per_request <= 1:
            super().chat_task()
            return
        batch = [_prompt_text(self.workload.next_request().messages)]
        batch += [
            _prompt_text(self.workload.next_request().messages)
            for _ in range(self.inputs_per_request - 1)
        ]
        self.chat([], input=batch)
        self._sent += 1
        if self.llm.requests_per_user and self._sent >= self.llm.requests_per_user:
            raise StopUser()

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.llm.model,
            "input": _prompt_text(messages),
            "encoding_format": self.encoding_format,
        }
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        body.update(self.llm.extra_body)
        return body

    def read_stream(self, resp: Any, st: _StreamState) -> float:
        return read_embeddings(resp, st)  # asked for JSON: only a broken server streams

    def read_whole(self, resp: Any, st: _StreamState) -> float:
        return read_embeddings(resp, st)


__all__ = [
    "AnthropicMessagesUser",
    "OpenAICompletionsUser",
    "OpenAIEmbeddingsUser",
    "OpenAIResponsesUser",
]
