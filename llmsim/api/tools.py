"""Tools and response formats in OpenAI's chat completions spelling, and their rendering.

The engine decides whether a reply is text, JSON or tool calls (llmsim.engine.structured); this
module only reads `tools`, `tool_choice`, `parallel_tool_calls` and `response_format` from a chat
request, and renders tool-call replies as a chat message or as streamed tool-call deltas.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmsim.api import bounds
from llmsim.api.chat_stream import ChunkShape
from llmsim.api.errors import ApiError, invalid_type, missing
from llmsim.engine.request import Choice, Reply
from llmsim.engine.structured import OutputSpec, ToolSpec
from llmsim.engine.tokens import count_tokens

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_MODES = ("none", "auto", "required")


def invalid_value(param: str, message: str) -> ApiError:
    """OpenAI's 400 for a parameter whose value is not one it accepts (code invalid_value)."""
    return ApiError(400, message, param=param, code="invalid_value")


def check_tool_name(name: Any, where: str) -> str:
    """A function or schema name checked as OpenAI does: required, a string, 1-64 characters of
    letters, digits, _ and -. Returns the name; `where` is the parameter the 400 names.
    """
    if name is None:
        raise missing(where)
    if not isinstance(name, str):
        raise invalid_type(where, "a string", name)
    if not TOOL_NAME.match(name):
        raise ApiError(
            400,
            f"Invalid '{where}': string does not match pattern. Expected a string that matches "
            "the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
            param=where,
            code="invalid_value",
        )
    return name


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    """A tool's parameters or a response schema, checked as an object within the schema bounds
    (llmsim.api.bounds). A missing one is an empty object schema.
    """
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise invalid_type(where, "an object", schema)
    bounds.check_schemas([(where, schema)])
    return schema


def schema_prompt_tokens(value: Any, model: str) -> int:
    """Tool definitions and schemas are part of the prompt: count their JSON."""
    return count_tokens(json.dumps(value, separators=(",", ":")), model) if value else 0


def tool_choice_mode(
    choice: Any, names: list[str], where: str = "tool_choice"
) -> tuple[str, str | None]:
    """OpenAI's tool_choice → (mode, forced tool name). Shared by chat and Responses."""
    if choice is None:
        return ("auto" if names else "none"), None
    if isinstance(choice, str):
        if choice not in TOOL_MODES:
            raise invalid_value(
                where,
                f"Invalid value: '{choice}'. Supported values are: 'none', 'auto' and 'required'.",
            )
        if choice != "none" and not names:
            raise invalid_value(
                where,
                f"Invalid value for '{where}': '{where}' is only allowed when 'tools' are "
                "specified.",
            )
        return choice, None
    if not isinstance(choice, dict):
        raise invalid_type(where, "a string or an object", choice)
    kind = choice.get("type")
    if kind == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if not isinstance(name, str):
            raise missing(f"{where}.function.name" if "function" in choice else f"{where}.name")
        if name not in names:
            raise invalid_value(
                where, f"Invalid value for '{where}': function '{name}' not found in 'tools'."
            )
        return "tool", name
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        return ("required" if mode == "required" else "auto"), None
    # Built-in tools (web_search, file_search, …) cannot be simulated: answer in text.
    return "none", None


def _response_format(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    rf = body.get("response_format")
    if rf is None:
        return None, False
    if not isinstance(rf, dict):
        raise invalid_type("response_format", "an object", rf)
    kind = rf.get("type")
    if kind is None:
        raise missing("response_format.type")
    if kind == "text":
        return None, False
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        js = rf.get("json_schema")
        if js is None:
            raise missing("response_format.json_schema")
        if not isinstance(js, dict):
            raise invalid_type("response_format.json_schema", "an object", js)
        check_tool_name(js.get("name"), "response_format.json_schema.name")
        schema = js.get("schema")
        return check_schema(schema, "response_format.json_schema.schema"), False
    raise invalid_value(
        "response_format.type",
        f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object' and 'json_schema'.",
    )


def _mentions_json(messages: list[dict[str, Any]]) -> bool:
    for m in messages:
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        if "json" in text.lower():
            return True
    return False


def chat_output_spec(
    body: dict[str, Any], messages: list[dict[str, Any]], model: str
) -> tuple[OutputSpec | None, int]:
    """The OutputSpec of a chat request (None for plain text) and its tools' prompt tokens."""
    raw_tools = body.get("tools")
    tools: list[ToolSpec] = []
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise invalid_type("tools", "an array", raw_tools)
        bounds.check_tool_count(raw_tools)
        for i, t in enumerate(raw_tools):
            where = f"tools[{i}]"
            if not isinstance(t, dict):
                raise invalid_type(where, "an object", t)
            if t.get("type", "function") != "function":
                continue  # custom tools and the like: accepted, never called
            fn = t.get("function")
            if fn is None:
                raise missing(f"{where}.function")
            if not isinstance(fn, dict):
                raise invalid_type(f"{where}.function", "an object", fn)
            name = check_tool_name(fn.get("name"), f"{where}.function.name")
            schema = check_schema(fn.get("parameters"), f"{where}.function.parameters")
            tools.append(ToolSpec(name, schema))
    names = [t.name for t in tools]
    mode, forced = tool_choice_mode(body.get("tool_choice"), names)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise invalid_type("parallel_tool_calls", "a boolean", parallel)
    schema, json_object = _response_format(body)
    if json_object and not _mentions_json(messages):
        raise ApiError(
            400,
            "'messages' must contain the word 'json' in some form, to use 'response_format' of "
            "type 'json_object'.",
            param="messages",
        )
    if not tools and schema is None and not json_object:
        return None, 0
    last_role = messages[-1].get("role") if messages else None
    spec = OutputSpec(
        tools=tuple(tools),
        tool_choice=mode,
        forced_tool=forced,
        parallel=parallel,
        after_tool_result=last_role in ("tool", "function"),
        json_schema=schema,
        json_object=json_object,
    )
    return spec, schema_prompt_tokens(raw_tools, model) + schema_prompt_tokens(schema, model)


# --------------------------------------------------------------------------- rendering


def call_id(suffix: str) -> str:
    """A tool call's id in OpenAI's spelling: call_ and the engine's suffix."""
    return "call_" + suffix


def chat_tool_calls(c: Choice) -> list[dict[str, Any]]:
    """The `tool_calls` of a chat message: each call's id, name and arguments (its tokens' text)."""
    return [
        {
            "id": call_id(tc.id),
            "type": "function",
            "function": {"name": tc.name, "arguments": "".join(c.tokens[tc.start : tc.end])},
        }
        for tc in c.tool_calls or ()
    ]


def chat_message(c: Choice) -> dict[str, Any]:
    """The assistant message of a chat completion whose choice called tools."""
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": chat_tool_calls(c),
        "refusal": None,
        "annotations": [],
    }


def chat_tool_shape(reply: Reply, system_fingerprint: str, include_usage: bool) -> ChunkShape:
    """Chat chunks for a reply in which some choice calls tools (text choices stream as usual).

    A call's first chunk carries its index, id, type, name and empty arguments (and, at step 0,
    the assistant role); the arguments then arrive one token per chunk, as OpenAI streams them.
    """
    head = {
        "id": "chatcmpl-" + reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "service_tier": "default",
        "system_fingerprint": system_fingerprint,
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            **head,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if include_usage:
            obj["usage"] = None
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    starts = {
        c.index: {tc.start: (k, tc) for k, tc in enumerate(c.tool_calls or ())}
        for c in reply.choices
    }

    def opening(c: Choice) -> bytes | None:
        if c.tool_calls is None:
            return chunk(c.index, {"role": "assistant", "content": "", "refusal": None})
        if 0 in starts[c.index]:
            return None  # the role goes with the first call's chunk
        return chunk(c.index, {"role": "assistant", "content": None, "refusal": None})

    def content(c: Choice, step: int) -> bytes:
        if c.tool_calls is None:
            return chunk(c.index, {"content": c.tokens[step]})
        parts = []
        first = starts[c.index]
        if step in first:
            k, tc = first[step]
            call = {
                "index": k,
                "id": call_id(tc.id),
                "type": "function",
                "function": {"name": tc.name, "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [call]}
            if step == 0:
                delta = {"role": "assistant", "content": None, "refusal": None, **delta}
            parts.append(chunk(c.index, delta))
        args = {"index": _call_at(c, step), "function": {"arguments": c.tokens[step]}}
        parts.append(chunk(c.index, {"tool_calls": [args]}))
        return b"".join(parts)

    return ChunkShape(
        content=content, finish=lambda c: chunk(c.index, {}, c.finish_reason), opening=opening
    )


def _call_at(c: Choice, step: int) -> int:
    for k, tc in enumerate(c.tool_calls or ()):
        if tc.start <= step < tc.end:
            return k
    return 0
