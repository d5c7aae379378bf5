"""Anthropic Messages wire format: POST /v1/messages, its SSE events, errors and model list.

Request validation follows the API's rules (max_tokens required, roles user/assistant, content as
a string or blocks, stop_sequences, tools with input_schema, tool_choice auto/any/tool/none,
output_config.format json_schema); messages of errors read like Anthropic's
("max_tokens: Field required"). Claude's tokenizer is not public: prompts are counted with
o200k_base, plus the documented tool-use system prompt when tools are given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from llmsim.api import bounds
from llmsim.api.errors import ApiError
from llmsim.api.tools import TOOL_NAME
from llmsim.api.wire import RenderContext
from llmsim.engine.request import Choice, EngineRequest, Reply
from llmsim.engine.structured import OutputSpec, ToolSpec
from llmsim.engine.tokens import count_tokens

ROLES = ("user", "assistant")
# Anthropic's documented tool-use system prompt (Claude 4 family): tool_choice auto/none, any/tool.
TOOL_SYSTEM_TOKENS = {"auto": 346, "none": 346, "any": 313, "tool": 313}
TOKENS_PER_MESSAGE = 3
ANTHROPIC_VERSION_HEADER = "anthropic-version"

# Anthropic's error type for each status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass
class MessagesOptions:
    """How to render a Messages reply: streaming or not, and the tool_choice mode asked for."""

    stream: bool = False
    tool_choice: str = "auto"


def bad(message: str) -> ApiError:
    """Anthropic's 400 invalid_request_error with `message`."""
    return ApiError(400, message)


def _required(body: dict[str, Any], name: str) -> Any:
    if body.get(name) is None:
        raise bad(f"{name}: Field required")
    return body[name]


def _int(
    body: dict[str, Any], name: str, lo: int | None = None, where: str | None = None
) -> int | None:
    """body[name] checked as an integer of at least `lo`; `where` names it in errors (a nested
    field's dotted path), else `name`."""
    v = body.get(name)
    if v is None:
        return None
    where = where or name
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad(f"{where}: Input should be a valid integer")
    if lo is not None and v < lo:
        raise bad(f"{where}: Input should be greater than or equal to {lo}")
    if abs(v) > bounds.INT64_MAX:
        raise bad(f"{where}: Input should be less than or equal to {bounds.INT64_MAX}")
    return v


def _num(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise bad(f"{name}: Input should be a valid number")
    if not lo <= v <= hi:
        raise bad(f"{name}: Input should be between {lo:g} and {hi:g}")


def _bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name, False)
    if not isinstance(v, bool):
        raise bad(f"{name}: Input should be a valid boolean")
    return v


def block_text(content: Any) -> str:
    """The text a message's content carries, for counting and for the echo generator."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):  # None, or a system block's stray value: no text
        return ""
    parts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            parts.append(json.dumps(block.get("input", {})))
        elif kind == "tool_result":
            parts.append(block_text(block.get("content")))
        elif kind == "thinking":
            parts.append(str(block.get("thinking", "")))
    return "".join(parts)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = _required(body, "messages")
    if not isinstance(messages, list):
        raise bad("messages: Input should be a valid list")
    if not messages:
        raise bad("messages: at least one message is required")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages.{i}: Input should be a valid dictionary")
        role = m.get("role")
        if role is None:
            raise bad(f"messages.{i}.role: Field required")
        if role not in ROLES:
            raise bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = m.get("content")
        if content is None:
            raise bad(f"messages.{i}.content: Field required")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise bad(f"messages.{i}.content.{j}: Input should be a valid dictionary")
                inner = block.get("content")
                if block["type"] == "tool_result" and not isinstance(
                    inner, (str, list, type(None))
                ):
                    raise bad(
                        f"messages.{i}.content.{j}.tool_result.content: Input should be a valid "
                        "string or list"
                    )
        elif not isinstance(content, str):
            raise bad(f"messages.{i}.content: Input should be a valid string or list")
    return messages


def _system(body: dict[str, Any]) -> str:
    system = body.get("system")
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return block_text(system)
    raise bad("system: Input should be a valid string or list")


def _tools(body: dict[str, Any]) -> list[ToolSpec]:
    raw = body.get("tools")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad("tools: Input should be a valid list")
    bounds.check_tool_count(raw, anthropic=True)
    tools = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise bad(f"tools.{i}: Input should be a valid dictionary")
        if t.get("type") not in (None, "custom"):
            continue  # server tools (web search, bash, …) are accepted but never called
        name = t.get("name")
        if not isinstance(name, str):
            raise bad(f"tools.{i}.custom.name: Field required")
        if not TOOL_NAME.match(name):
            raise bad(
                f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        schema = t.get("input_schema")
        if schema is None:
            raise bad(f"tools.{i}.custom.input_schema: Field required")
        if not isinstance(schema, dict):
            raise bad(f"tools.{i}.custom.input_schema: Input should be a valid dictionary")
        bounds.check_schemas([(f"tools.{i}.custom.input_schema", schema)], anthropic=True)
        tools.append(ToolSpec(name, schema))
    return tools


_THINKING_TYPES = ("enabled", "disabled", "adaptive")
MIN_THINKING_BUDGET = 1024  # Anthropic's minimum budget_tokens for manual thinking


def _thinking(body: dict[str, Any]) -> None:
    """Refuse a `thinking` that Anthropic would; a valid one is accepted and has no effect on
    the reply (no thinking blocks are produced)."""
    v = body.get("thinking")
    if v is None:
        return
    # Anthropic's own wording: pydantic's, on a union tagged by `type`.
    if not isinstance(v, dict):
        raise bad("thinking: Input should be a valid dictionary")
    kind = v.get("type")
    if not isinstance(kind, str):
        raise bad("thinking: Unable to extract tag using discriminator 'type'")
    if kind not in _THINKING_TYPES:
        expected = ", ".join(f"'{t}'" for t in _THINKING_TYPES)
        raise bad(
            f"thinking: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags: {expected}"
        )
    if kind == "enabled":
        if v.get("budget_tokens") is None:
            raise bad("thinking.enabled.budget_tokens: Field required")
        _int(v, "budget_tokens", MIN_THINKING_BUDGET, "thinking.enabled.budget_tokens")


def _metadata(body: dict[str, Any]) -> None:
    """Refuse a `metadata` that is not an object, or whose user_id is not a string."""
    v = body.get("metadata")
    if v is None:
        return
    if not isinstance(v, dict):
        raise bad("metadata: Input should be a valid dictionary")
    user_id = v.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise bad("metadata.user_id: Input should be a valid string")


def _tool_choice(body: dict[str, Any], names: list[str]) -> tuple[str, str | None, bool]:
    """(mode, forced name, parallel) from tool_choice."""
    tc = body.get("tool_choice")
    if tc is None:
        return "auto", None, True
    if not isinstance(tc, dict):
        raise bad("tool_choice: Input should be a valid dictionary")
    kind = tc.get("type")
    parallel = not tc.get("disable_parallel_tool_use", False)
    if kind in ("auto", "any", "none"):
        if kind != "none" and not names and not body.get("tools"):
            raise bad("tool_choice may only be specified while providing tools.")
        return kind, None, parallel
    if kind == "tool":
        name = tc.get("name")
        if not isinstance(name, str):
            raise bad("tool_choice.tool.name: Field required")
        if name not in names:
            raise bad(f"Tool '{name}' not found in provided tools")
        return "tool", name, parallel
    raise bad(
        "tool_choice: Input tag '%s' found using 'type' does not match any of the expected tags: "
        "'auto', 'any', 'tool', 'none'" % kind
    )


def _output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = None
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        fmt = config["format"]
    elif body.get("output_format") is not None:  # the structured-outputs beta's spelling
        fmt = body["output_format"]
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise bad("output_config.format.type: Input should be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise bad("output_config.format.schema: Field required")
    bounds.check_schemas([("output_config.format.schema", schema)], anthropic=True)
    return schema


def prompt_tokens(
    body: dict[str, Any], messages: list[dict[str, Any]], model: str, tool_mode: str | None
) -> int:
    """The input_tokens a Messages request bills: system and messages (TOKENS_PER_MESSAGE each),
    the tools' JSON (custom and server tools) and the tool-use system prompt for `tool_mode`
    (ignored without tools), plus 1. An estimate with
    o200k_base, as Claude's tokenizer is not public.
    """
    total = count_tokens(_system(body), model)
    for m in messages:
        total += TOKENS_PER_MESSAGE + count_tokens(block_text(m.get("content")), model)
    if body.get("tools"):
        total += count_tokens(json.dumps(body["tools"], separators=(",", ":")), model)
        total += TOOL_SYSTEM_TOKENS.get(tool_mode or "auto", 346)
    return total + 1


def parse_messages_request(body: Any) -> tuple[EngineRequest, MessagesOptions]:
    """Validate a Messages body the way Anthropic does and build the engine's request (one
    choice, no seed).
    """
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    model = _required(body, "model")
    if not isinstance(model, str) or not model:
        raise bad("model: Input should be a valid string")
    _required(body, "max_tokens")
    max_tokens = _int(body, "max_tokens", 1)
    messages = _messages(body)
    _num(body, "temperature", 0, 1)
    _num(body, "top_p", 0, 1)
    _int(body, "top_k", 0)
    _thinking(body)
    _metadata(body)
    stream = _bool(body, "stream")
    ignore_eos = _bool(body, "ignore_eos")  # llmsim's extension, as for chat completions
    stops = body.get("stop_sequences")
    if stops is None:
        stops = []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop_sequences: Input should be a valid list of strings")
    if any(not s.strip() for s in stops):
        raise bad("stop_sequences: each stop sequence must contain non-whitespace")
    bounds.check_anthropic_stops(stops)

    tools = _tools(body)
    mode, forced, parallel = _tool_choice(body, [t.name for t in tools])
    schema = _output_schema(body)
    output = None
    last = messages[-1]
    after_result = last["role"] == "user" and any(
        isinstance(b, dict) and b.get("type") == "tool_result"
        for b in (last["content"] if isinstance(last["content"], list) else ())
    )
    if tools or schema is not None:
        output = OutputSpec(
            tools=tuple(tools),
            tool_choice={"any": "required"}.get(mode, mode),
            forced_tool=forced,
            parallel=parallel,
            after_tool_result=after_result,
            json_schema=schema,
        )
    last_user = next((m for m in reversed(messages) if m["role"] == "user"), last)
    req = EngineRequest(
        model=model,
        prompt_tokens=prompt_tokens(body, messages, model, mode),
        max_tokens=max_tokens,
        stop=tuple(stops),
        ignore_eos=ignore_eos,
        stream=stream,
        prompt_text=block_text(last_user["content"]),
        output=output,
        prefix_text=lambda: "\n".join(
            [_system(body), *(block_text(m.get("content")) for m in messages)]
        ),
    )
    return req, MessagesOptions(stream=stream, tool_choice=mode)


def count_tokens_response(body: Any) -> dict[str, Any]:
    """POST /v1/messages/count_tokens: the input_tokens a Messages request would bill."""
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    model = _required(body, "model")
    if not isinstance(model, str) or not model:
        raise bad("model: Input should be a valid string")
    messages = _messages(body)
    _thinking(body)  # count_tokens takes `thinking` too
    tools = _tools(body)
    mode, _, _ = _tool_choice(body, [t.name for t in tools])
    # The same count as a Messages request's usage: server tools alone count as tools too.
    return {"input_tokens": prompt_tokens(body, messages, model, mode)}


# --------------------------------------------------------------------------- rendering


def message_id(reply: Reply) -> str:
    """The message's id: msg_01 and the reply's hex suffix."""
    return "msg_01" + reply.id


def stop_reason(c: Choice) -> str:
    """Anthropic's stop_reason for a choice: max_tokens, tool_use, stop_sequence or end_turn."""
    if c.finish_reason == "length":
        return "max_tokens"
    if c.finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if c.stop_sequence is not None else "end_turn"


def _tool_input(c: Choice, start: int, end: int) -> Any:
    try:
        return json.loads("".join(c.tokens[start:end]))
    except ValueError:  # cut short by max_tokens
        return {}


def content_blocks(c: Choice) -> list[dict[str, Any]]:
    """The message's content: a tool_use block per call (its input parsed, {} when cut short),
    else one text block, or none for an empty reply.
    """
    if c.tool_calls is not None:
        return [
            {
                "type": "tool_use",
                "id": "toolu_01" + tc.id,
                "name": tc.name,
                "input": _tool_input(c, tc.start, tc.end),
            }
            for tc in c.tool_calls
        ]
    return [{"type": "text", "text": c.text}] if c.tokens else []


def usage(reply: Reply, output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic's usage object; `output_tokens` overrides the reply's count (message_start
    sends 1).
    """
    return {
        "input_tokens": reply.prompt_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": reply.completion_tokens if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }


def render_message(reply: Reply) -> dict[str, Any]:
    """The non-streaming message body for the reply's first (only) choice."""
    c = reply.choices[0]
    return {
        "id": message_id(reply),
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content_blocks(c),
        "stop_reason": stop_reason(c),
        "stop_sequence": c.stop_sequence,
        "usage": usage(reply),
    }


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


# json.dumps of a token's text, cached: generated replies reuse a small vocabulary.
_TOKEN_JSON: dict[str, bytes] = {}


def token_json(tok: str) -> bytes:
    """A token's text as JSON bytes, from a cache of at most 100,000 entries (cleared when full).
    Also used by the Responses stream.
    """
    b = _TOKEN_JSON.get(tok)
    if b is None:
        b = json.dumps(tok).encode()
        if len(_TOKEN_JSON) >= 100_000:
            _TOKEN_JSON.clear()
        _TOKEN_JSON[tok] = b
    return b


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def stream_events(reply: Reply) -> Iterator[tuple[int, bytes]]:
    """message_start, content_block_start, ping, content_block_delta…, content_block_stop,
    message_delta (stop_reason, usage), message_stop: step i is due with token i."""
    c = reply.choices[0]
    start = {
        "type": "message_start",
        "message": {
            **render_message(reply),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(reply, output_tokens=1),
        },
    }
    # (block start step, end step, start event) for each content block.
    blocks: list[tuple[int, int, dict[str, Any]]] = []
    if c.tool_calls is not None:
        for tc in c.tool_calls:
            block = {"type": "tool_use", "id": "toolu_01" + tc.id, "name": tc.name, "input": {}}
            blocks.append((tc.start, tc.end, block))
    elif c.tokens:
        blocks.append((0, len(c.tokens), {"type": "text", "text": ""}))
    starts = {b[0]: (i, b) for i, b in enumerate(blocks)}
    # Text deltas are rendered around the token: a lookup and a join, not a json.dumps.
    text_head = (
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "text_delta", "text": '
    )
    is_tool = c.tool_calls is not None
    steps = max(reply.steps_of(c), 1)
    one = reply.chunking.one_per_step
    current = -1
    for step in range(steps):
        parts: list[bytes] = []
        if step == 0:
            parts.append(_event("message_start", start))
        if step in starts:
            i, (_, _, block) = starts[step]
            if current >= 0:
                stop = {"type": "content_block_stop", "index": current}
                parts.append(_event("content_block_stop", stop))
            current = i
            parts.append(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": i, "content_block": block},
                )
            )
            if step == 0:
                parts.append(b'event: ping\ndata: {"type": "ping"}\n\n')
            if is_tool:
                parts.append(_delta(i, {"type": "input_json_delta", "partial_json": ""}))
        elif step == 0:
            parts.append(b'event: ping\ndata: {"type": "ping"}\n\n')
        if c.tokens and step < steps:
            if is_tool:
                tok = c.tokens[step]
                parts.append(_delta(current, {"type": "input_json_delta", "partial_json": tok}))
            elif one:
                parts.append(text_head + token_json(c.tokens[step]) + b"}}\n\n")
            else:  # several tokens per delta, as Anthropic sends them
                text = json.dumps(reply.text_at(c, step)).encode()
                parts.append(text_head + text + b"}}\n\n")
        if step == steps - 1:
            if current >= 0:
                parts.append(
                    _event("content_block_stop", {"type": "content_block_stop", "index": current})
                )
            parts.append(
                _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason(c), "stop_sequence": c.stop_sequence},
                        "usage": {
                            "input_tokens": reply.prompt_tokens,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                            "output_tokens": reply.completion_tokens,
                        },
                    },
                )
            )
            parts.append(_event("message_stop", {"type": "message_stop"}))
        yield step, b"".join(parts)


def limit_error(v: Any) -> ApiError:
    """Anthropic's 400s for a request beyond the model's limits, in its words."""
    if v.kind == "max_tokens":
        return bad(
            f"max_tokens: {v.requested} > {v.limit}, which is the maximum allowed number of "
            f"output tokens for {v.model}"
        )
    if v.kind == "context" and v.prompt_tokens > v.limit:
        return bad(f"prompt is too long: {v.prompt_tokens} tokens > {v.limit} maximum")
    if v.kind == "context":
        return bad(
            f"input length and `max_tokens` exceed context limit: {v.prompt_tokens} + "
            f"{v.max_tokens} > {v.limit}, decrease input length or `max_tokens` and try again"
        )
    return bad(f"max_tokens: {v.requested} output tokens exceed this server's limit of {v.limit}")


def error_object(err: ApiError) -> dict[str, Any]:
    """Anthropic's error body: `{"type": "error", "error": {type, message}}`, the type from
    the status.
    """
    typ = ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": typ, "message": err.message}}


class AnthropicMessages:
    """The Messages wire format for the server pipeline."""

    name = "anthropic.messages"

    def parse(self, body: Any) -> tuple[EngineRequest, MessagesOptions]:
        """Validate a Messages body; see parse_messages_request."""
        return parse_messages_request(body)

    def render(self, reply: Reply, opts: MessagesOptions, ctx: RenderContext) -> dict[str, Any]:
        """The message body (render_message)."""
        return render_message(reply)

    def stream_events(
        self, reply: Reply, opts: MessagesOptions, ctx: RenderContext
    ) -> Iterator[tuple[int, bytes]]:
        """The Messages SSE events (stream_events)."""
        return stream_events(reply)

    def error_body(self, err: ApiError) -> bytes:
        """Anthropic's error body (error_object) as JSON bytes."""
        return json.dumps(error_object(err)).encode()

    def stream_error(self, err: ApiError, sent_events: int = 0) -> bytes:
        """The error as an SSE `error` event (`sent_events` is unused: Anthropic's events are not
        numbered).
        """
        return _event("error", error_object(err))

    def limit_error(self, violation: Any) -> ApiError:
        """Anthropic's 400 for a request beyond the model's limits (limit_error)."""
        return limit_error(violation)


# --------------------------------------------------------------------------- models

_CREATED = datetime.fromtimestamp(1_700_000_000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_info(model_id: str) -> dict[str, Any]:
    """One model as Anthropic's /v1/models endpoints return it, display_name made from the id
    (claude-sonnet-4 -> Claude Sonnet 4).
    """
    words = model_id.split("-")
    display = " ".join(w if any(ch.isdigit() for ch in w) else w.capitalize() for w in words)
    return {"type": "model", "id": model_id, "display_name": display, "created_at": _CREATED}


def models_page(model_ids: list[str], args: Any) -> dict[str, Any]:
    """GET /v1/models in Anthropic's shape, with its limit/after_id/before_id paging."""
    try:
        limit = int(args.get("limit", 20))
    except (TypeError, ValueError):
        raise bad("limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise bad("limit: Input should be between 1 and 1000")
    ids = list(model_ids)
    after, before = args.get("after_id"), args.get("before_id")
    if after:
        ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = ids[:limit]
        more = len(ids) > limit
    elif before:
        ids = ids[: ids.index(before)] if before in ids else []
        page = ids[-limit:]
        more = len(ids) > limit
    else:
        page = ids[:limit]
        more = len(ids) > limit
    return {
        "data": [model_info(m) for m in page],
        "has_more": more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }
