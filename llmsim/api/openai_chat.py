"""OpenAI chat completions wire format: request → EngineRequest, Reply → JSON or SSE events.

Nothing here knows about time or HTTP; the server paces the events this module renders.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmsim.api import tools
from llmsim.api.chat_stream import ChunkShape, chat_family_events
from llmsim.api.errors import ApiError, invalid_type, missing
from llmsim.api.params import (
    MAX_N,
    body_and_model,
    bool_param,
    int_param,
    sampling_params,
    stop_param,
    stream_options,
)
from llmsim.api.wire import OpenAIErrors, RenderContext
from llmsim.engine.request import Choice, EngineRequest, Reply
from llmsim.engine.tokens import count_chat_prompt_tokens, message_text, messages_text

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclass
class ChatOptions:
    """Rendering choices that are not the engine's business."""

    stream: bool = False
    include_usage: bool = False
    # vLLM's stream_options.continuous_usage_stats (with include_usage): usage in every chunk.
    continuous_usage: bool = False


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid_type(where, "an object", m)
        role = m.get("role")
        if role is None:
            raise missing(f"{where}.role")
        if role not in ROLES:
            raise ApiError(
                400,
                f"Invalid value: {role!r}. Supported values are: "
                + ", ".join(f"'{r}'" for r in ROLES)
                + ".",
                param=f"{where}.role",
                code="invalid_value",
            )
        content = m.get("content")
        if content is None and role not in ("assistant", "function"):
            raise missing(f"{where}.content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid_type(f"{where}.content", "a string or an array", content)
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid_type(f"{where}.content[{j}]", "an object with a type", part)
        _validate_tool_calls(m.get("tool_calls"), f"{where}.tool_calls")
    return messages


def _validate_tool_calls(calls: Any, where: str) -> None:
    """An assistant message's tool_calls: objects whose function has a string name/arguments."""
    if calls is None:
        return
    if not isinstance(calls, list):
        raise invalid_type(where, "an array", calls)
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            raise invalid_type(f"{where}[{k}]", "an object", call)
        fn = call.get("function")
        if fn is None:
            continue  # custom tool calls carry no function
        if not isinstance(fn, dict):
            raise invalid_type(f"{where}[{k}].function", "an object", fn)
        for field in ("name", "arguments"):
            if fn.get(field) is not None and not isinstance(fn[field], str):
                raise invalid_type(f"{where}[{k}].function.{field}", "a string", fn[field])


def parse_chat_request(body: Any) -> tuple[EngineRequest, ChatOptions]:
    """Validate a decoded JSON body the way OpenAI does and build the engine's request."""
    body, model = body_and_model(body)
    messages = _validate_messages(body.get("messages"))

    max_tokens = int_param(body, "max_tokens", 1, None)
    max_completion = int_param(body, "max_completion_tokens", 1, None)
    caps = [c for c in (max_tokens, max_completion) if c is not None]
    n = int_param(body, "n", 1, MAX_N) or 1
    seed = int_param(body, "seed", None, None)
    sampling_params(body)
    stream = bool_param(body, "stream")
    ignore_eos = bool_param(body, "ignore_eos")

    include_usage, continuous_usage = stream_options(body, stream)

    if seed is not None:
        # Only the conversation: a cap or a stop sequence then cuts the same text short.
        fingerprint = json.dumps(messages, sort_keys=True)
    else:
        fingerprint = ""
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
    output, tool_tokens = tools.chat_output_spec(body, messages, model)
    req = EngineRequest(
        model=model,
        prompt_tokens=count_chat_prompt_tokens(messages, model) + tool_tokens,
        max_tokens=min(caps) if caps else None,
        max_tokens_param=(
            "max_completion_tokens"
            if max_completion is not None and (max_tokens is None or max_completion <= max_tokens)
            else "max_tokens"
        ),
        n=n,
        stop=stop_param(body),
        seed=seed,
        ignore_eos=ignore_eos,
        stream=stream,
        prompt_text=message_text(last_user.get("content")),
        fingerprint=fingerprint,
        output=output,
        prefix_text=lambda: messages_text(messages),
    )
    return req, ChatOptions(
        stream=stream, include_usage=include_usage, continuous_usage=continuous_usage
    )


def completion_id(reply: Reply) -> str:
    """The chat completion's id: chatcmpl- and the reply's hex suffix."""
    return "chatcmpl-" + reply.id


def usage(reply: Reply) -> dict[str, Any]:
    """OpenAI's usage object for a chat completion; completion_tokens includes the hidden
    reasoning tokens, as OpenAI bills them.
    """
    # completion_tokens includes the hidden reasoning tokens, as OpenAI bills them.
    out = reply.completion_tokens + reply.reasoning_tokens
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": out,
        "total_tokens": reply.prompt_tokens + out,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def render_completion(reply: Reply, system_fingerprint: str) -> dict[str, Any]:
    """The non-streaming chat.completion body: one assistant message per choice (text or tool
    calls), usage and the server's system_fingerprint.
    """
    return {
        "id": completion_id(reply),
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [
            {
                "index": c.index,
                "message": tools.chat_message(c)
                if c.tool_calls is not None
                else {
                    "role": "assistant",
                    "content": c.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in reply.choices
        ],
        "usage": usage(reply),
        "service_tier": "default",
        "system_fingerprint": system_fingerprint,
    }


# json.dumps of a token's text, cached: streaming spends most of its time here otherwise, and
# generated replies reuse a small vocabulary.
_TOKEN_JSON: dict[str, bytes] = {}
_TOKEN_JSON_LIMIT = 100_000


def _token_json(tok: str) -> bytes:
    b = _TOKEN_JSON.get(tok)
    if b is None:
        b = json.dumps(tok).encode()
        if len(_TOKEN_JSON) >= _TOKEN_JSON_LIMIT:
            _TOKEN_JSON.clear()
        _TOKEN_JSON[tok] = b
    return b


def stream_events(
    reply: Reply, system_fingerprint: str, include_usage: bool, continuous_usage: bool = False
) -> Iterator[tuple[int, bytes]]:
    """SSE bytes for a streamed reply, as (step, bytes) (api/chat_stream.py's sequence).

    Chunks are pre-rendered around the one field that changes, so each token costs a dict
    lookup and a join instead of a json.dumps of the whole chunk. With `continuous_usage`
    (vLLM's continuous_usage_stats) every chunk's usage counts the tokens so far, as vLLM's
    does: the role chunk 0, each content chunk those through it (reasoning tokens, made
    first, included), the finish chunk the choice's whole count.
    """
    usage_chunk = None
    if include_usage:
        tail_chunk = {
            "id": completion_id(reply),
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": system_fingerprint,
            "choices": [],
            "usage": usage(reply),
        }
        usage_chunk = b"data: " + json.dumps(tail_chunk).encode() + b"\n\n"
    if any(c.tool_calls is not None for c in reply.choices):
        shape = tools.chat_tool_shape(reply, system_fingerprint, include_usage)
        shape.usage = usage_chunk
        return chat_family_events(reply, shape)
    head = (
        '{"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,'
        '"service_tier":"default","system_fingerprint":%s,"choices":['
        % (
            json.dumps(completion_id(reply)),
            reply.created,
            json.dumps(reply.model),
            json.dumps(system_fingerprint),
        )
    )
    # Each chunk is a choice's head, its delta and the rest, then a tail that differs only in
    # its usage; the parts are made once per reply.
    prefixes: dict[int, bytes] = {}
    role_bodies: dict[int, bytes] = {}
    finish_bodies: dict[int, bytes] = {}
    for c in reply.choices:
        p = ('data: %s{"index":%d,"delta":' % (head, c.index)).encode()
        prefixes[c.index] = p + b'{"content":'
        role_bodies[c.index] = (
            p + b'{"role":"assistant","content":"","refusal":null},"logprobs":null,'
            b'"finish_reason":null}]'
        )
        finish_bodies[c.index] = (
            p + b'{},"logprobs":null,"finish_reason":"%s"}]' % c.finish_reason.encode()
        )
    middle = b'},"logprobs":null,"finish_reason":null}]'
    if continuous_usage and reply.choices:
        parts = (prefixes, role_bodies, finish_bodies, middle)
        return chat_family_events(reply, _continuous_shape(reply, parts, usage_chunk))
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    role_events = {i: body + tail for i, body in role_bodies.items()}
    finish_events = {i: body + tail for i, body in finish_bodies.items()}
    suffix = middle + tail

    if reply.chunking.one_per_step:  # a token's JSON is cached: replies reuse a vocabulary
        # Each choice's content is asked for once per step, in order: read it as a stream.
        readers = {c.index: iter(c.tokens).__next__ for c in reply.choices}

        cached = _TOKEN_JSON.get

        def content(c: Choice, step: int) -> bytes:
            tok = readers[c.index]()
            return prefixes[c.index] + (cached(tok) or _token_json(tok)) + suffix

    else:

        def content(c: Choice, step: int) -> bytes:
            return prefixes[c.index] + json.dumps(reply.text_at(c, step)).encode() + suffix

    shape = ChunkShape(
        content=content,
        finish=lambda c: finish_events[c.index],
        opening=lambda c: role_events[c.index],
        usage=usage_chunk,
    )
    return chat_family_events(reply, shape)


def _continuous_shape(reply: Reply, parts: tuple, usage_chunk: bytes | None) -> ChunkShape:
    """The chunks of a stream with vLLM's continuous_usage_stats: each one's usage so far.

    `parts`: stream_events' per-choice heads of content, role and finish chunks, and the
    content chunk's middle; only their tails differ from a plain stream's."""
    prefixes, role_bodies, finish_bodies, middle = parts
    prompt, reasoning = reply.prompt_tokens, reply.reasoning_tokens

    def tail(done: int) -> bytes:
        out = done + reasoning if done else 0
        return b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (
            prompt,
            out,
            prompt + out,
        )

    step_end = reply.step_end

    def content(c: Choice, step: int) -> bytes:
        done = min(len(c.tokens), step_end(step))
        return prefixes[c.index] + json.dumps(reply.text_at(c, step)).encode() + middle + tail(done)

    return ChunkShape(
        content=content,
        finish=lambda c: finish_bodies[c.index] + tail(len(c.tokens)),
        opening=lambda c: role_bodies[c.index] + tail(0),
        usage=usage_chunk,
    )


class OpenAIChat(OpenAIErrors):
    """The chat completions wire format for the server pipeline."""

    name = "openai.chat"

    def parse(self, body: Any) -> tuple[EngineRequest, ChatOptions]:
        """Validate a chat completions body; see parse_chat_request."""
        return parse_chat_request(body)

    def render(self, reply: Reply, opts: ChatOptions, ctx: RenderContext) -> dict[str, Any]:
        """The chat.completion body (render_completion)."""
        return render_completion(reply, ctx.system_fingerprint)

    def stream_events(
        self, reply: Reply, opts: ChatOptions, ctx: RenderContext
    ) -> Iterator[tuple[int, bytes]]:
        """The chat.completion.chunk events (stream_events), with usage as stream_options ask."""
        return stream_events(
            reply, ctx.system_fingerprint, opts.include_usage, opts.continuous_usage
        )
