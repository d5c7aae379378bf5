"""Event readers: what counts as output, usage and the end in each API's reply.

- Chat completions: every chunk whose delta has content, reasoning, a tool call or a refusal.
- Legacy completions: every chunk with text.
- Anthropic Messages: every content_block_delta with text, tool-input JSON or thinking.
- Responses: output_text, function-call argument, reasoning and refusal deltas. Tokens come from
  `usage`: output_tokens less reasoning_tokens (the hidden ones are not streamed, so counting them
  would understate the time per output token).
- Embeddings: no stream and no output tokens: E2E and input tokens only.
"""

from __future__ import annotations

import json
from typing import Any

from llmsim.load import errors as E
from llmsim.load.stream import EventReader, StreamState, json_loads, parse_event_json


def usage_of(prompt: Any, completion: Any) -> dict[str, Any] | None:
    """A chat-style usage dict, or None when the output count is missing."""
    if isinstance(completion, int):
        return {"prompt_tokens": prompt, "completion_tokens": completion}
    return None


class ChatReader(EventReader):
    """OpenAI chat completion chunks (and every server that copies them: vLLM, llmsim...)."""

    whole_name = "chat completion"

    def event(self, name: bytes | None, data: bytes, now: float, st: StreamState) -> bool:
        """Time each delta with content (text kept), reasoning, a tool call or a refusal as output.

        Notes finish_reason and usage; never True, since `data: [DONE]` ends the stream. Invalid
        JSON, or a chunk without choices, raises (STREAM_ERROR_EVENT if it carries an error).
        """
        try:
            obj = json_loads(data)
        except ValueError:
            raise E.LLMError(E.MALFORMED_CHUNK, f"invalid JSON: {data[:60]!r}") from None
        choices = obj.get("choices")
        if choices is None:
            if "error" in obj:
                raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(data))
            raise E.LLMError(E.MALFORMED_CHUNK, f"no choices: {data[:60]!r}")
        for choice in choices:
            delta = choice.get("delta")
            if delta:
                content = delta.get("content")
                if content:
                    st.output(now, content)
                elif (
                    delta.get("reasoning_content")
                    or delta.get("reasoning")
                    or delta.get("tool_calls")
                    or delta.get("refusal")
                ):
                    st.output(now)
            reason = choice.get("finish_reason")
            if reason:
                st.finish_reason = reason
        usage = obj.get("usage")
        if usage:
            st.usage = usage
        return False

    def whole(self, obj: Any, st: StreamState) -> None:
        """The first choice's message content and finish_reason, and the reply's usage."""
        choice = obj["choices"][0]
        content = choice["message"].get("content") or ""
        st.finish_reason = choice.get("finish_reason")
        st.usage = obj.get("usage")
        if content:
            st.text.append(content)


class CompletionsReader(EventReader):
    """Legacy text completions."""

    whole_name = "text completion"

    def event(self, name: bytes | None, data: bytes, now: float, st: StreamState) -> bool:
        """Time each choice with text as output, and note finish_reason and usage; never True:
        `data: [DONE]` ends the stream. A chunk without choices raises.
        """
        obj = parse_event_json(data)
        choices = obj.get("choices")
        if choices is None:
            if "error" in obj:
                raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(data))
            raise E.LLMError(E.MALFORMED_CHUNK, "no choices")
        for ch in choices:
            if ch.get("text"):
                st.output(now, ch["text"])
            if ch.get("finish_reason"):
                st.finish_reason = ch["finish_reason"]
        if obj.get("usage"):
            st.usage = obj["usage"]
        return False

    def whole(self, obj: Any, st: StreamState) -> None:
        """The first choice's text and finish_reason, and the reply's usage."""
        st.text.append(obj["choices"][0].get("text") or "")
        st.finish_reason = obj["choices"][0].get("finish_reason")
        st.usage = obj.get("usage")


class AnthropicReader(EventReader):
    """Anthropic Messages events (message_start ... message_stop)."""

    end_marker = "message_stop"
    whole_name = "Anthropic message"

    def event(self, name: bytes | None, data: bytes, now: float, st: StreamState) -> bool:
        """Time each content_block_delta with text, tool-input JSON or thinking as output (only
        text_delta's text is kept); True at message_stop.

        Input tokens come from message_start, stop_reason and output tokens from message_delta; an
        `error` event raises STREAM_ERROR_EVENT.
        """
        obj = parse_event_json(data)
        kind = obj.get("type")
        if kind == "content_block_delta":
            d = obj["delta"]
            piece = d.get("text") or d.get("partial_json") or d.get("thinking")
            if piece:
                st.output(now, piece if d.get("type") == "text_delta" else None)
        elif kind == "message_start":
            st.extra["in"] = obj["message"]["usage"].get("input_tokens")
        elif kind == "message_delta":
            st.finish_reason = obj["delta"].get("stop_reason")
            st.usage = usage_of(st.extra.get("in"), obj.get("usage", {}).get("output_tokens"))
        elif kind == "message_stop":
            return True
        elif kind == "error":
            raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(json.dumps(obj).encode()))
        return False

    def whole(self, obj: Any, st: StreamState) -> None:
        """The text blocks' text, stop_reason, and usage from input_tokens and output_tokens."""
        st.text.extend(b.get("text", "") for b in obj["content"] if b.get("type") == "text")
        st.finish_reason = obj.get("stop_reason")
        u = obj["usage"]
        st.usage = usage_of(u.get("input_tokens"), u.get("output_tokens"))


_RESPONSES_OUTPUT = frozenset(
    (
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.refusal.delta",
    )
)


def _responses_usage(st: StreamState, response: dict[str, Any]) -> None:
    u = response.get("usage") or {}
    out = u.get("output_tokens")
    if isinstance(out, int):
        out -= (u.get("output_tokens_details") or {}).get("reasoning_tokens", 0) or 0
    st.usage = usage_of(u.get("input_tokens"), out)
    st.finish_reason = "length" if response.get("status") == "incomplete" else "stop"


class ResponsesReader(EventReader):
    """OpenAI Responses events (response.created ... response.completed)."""

    end_marker = "response.completed"
    whole_name = "Response"

    def event(self, name: bytes | None, data: bytes, now: float, st: StreamState) -> bool:
        """Time each non-empty output-text, function-call, reasoning or refusal delta as output.

        Only output_text deltas are kept as text. True at response.completed or response.incomplete,
        which carry the usage (reasoning tokens left out) and set finish_reason to stop or length;
        response.failed and `error` events raise STREAM_ERROR_EVENT.
        """
        obj = parse_event_json(data)
        kind = obj.get("type")
        if kind in _RESPONSES_OUTPUT:
            if obj.get("delta"):
                text = obj["delta"] if kind == "response.output_text.delta" else None
                st.output(now, text)
        elif kind in ("response.completed", "response.incomplete"):
            _responses_usage(st, obj["response"])
            return True
        elif kind == "response.failed":
            err = (obj.get("response") or {}).get("error") or {}
            raise E.LLMError(E.STREAM_ERROR_EVENT, str(err.get("message") or "response.failed"))
        elif kind == "error":
            raise E.LLMError(E.STREAM_ERROR_EVENT, str(obj.get("message") or "error event"))
        return False

    def whole(self, obj: Any, st: StreamState) -> None:
        """The output_text parts of every message item, then usage and finish_reason as for
        response.completed.
        """
        for item in obj["output"]:
            if item.get("type") == "message":
                st.text.extend(
                    p.get("text", "") for p in item["content"] if p.get("type") == "output_text"
                )
        _responses_usage(st, obj)


class EmbeddingsReader(EventReader):
    """Embeddings lists: input tokens only. Asked for JSON, so only a broken server streams."""

    whole_name = "embeddings list"
    generates_output = False

    def event(self, name: bytes | None, data: bytes, now: float, st: StreamState) -> bool:
        """Always raises BAD_RESPONSE: embeddings are asked for as JSON, so a stream is a fault."""
        raise E.LLMError(E.BAD_RESPONSE, "an embeddings reply must not be a stream")

    def whole(self, obj: Any, st: StreamState) -> None:
        """Check every `data` item has an embedding (else BAD_RESPONSE); usage is the reply's
        prompt_tokens in and 0 out.
        """
        if not obj["data"] or not all("embedding" in d for d in obj["data"]):
            raise E.LLMError(E.BAD_RESPONSE, "no embeddings in the reply")
        st.usage = usage_of(obj["usage"]["prompt_tokens"], 0)
