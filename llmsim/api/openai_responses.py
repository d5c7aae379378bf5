"""OpenAI Responses wire format: POST /v1/responses, its Response object and streaming events.

`input` (a string or items: messages, function calls and their outputs), `instructions`,
`max_output_tokens`, function `tools` with `tool_choice`/`parallel_tool_calls`, `text.format`
(json_object, json_schema) and `reasoning.effort` are honoured. Reasoning models (o-series,
gpt-5, deepseek-reasoner) put a reasoning item first and report reasoning tokens, which are
included in `output_tokens` as OpenAI counts them. `previous_response_id` is echoed but nothing is
stored: send the whole conversation in `input`. Built-in tools are accepted and never called.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from llmsim.api import bounds
from llmsim.api.anthropic_messages import token_json
from llmsim.api.errors import (
    ApiError,
    above_max,
    below_min,
    invalid_type,
    missing,
    openai_limit_error,
)
from llmsim.api.params import body_and_model
from llmsim.api.tools import (
    check_schema,
    check_tool_name,
    invalid_value,
    schema_prompt_tokens,
    tool_choice_mode,
)
from llmsim.api.wire import OpenAIErrors, RenderContext
from llmsim.engine.reasoning import is_reasoning_model
from llmsim.engine.request import Choice, EngineRequest, Reply
from llmsim.engine.structured import OutputSpec, ToolSpec
from llmsim.engine.tokens import count_tokens, message_text

MIN_OUTPUT_TOKENS = 16
TOKENS_PER_ITEM = 3
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass
class ResponsesOptions:
    """How to render a Response: streaming or not, and the request fields every Response object
    repeats (instructions, tools, text.format, reasoning, ...).
    """

    stream: bool = False
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the Response repeats


def _num(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise invalid_type(name, "a number", v)
    if v < lo:
        raise below_min(name, lo, v, integer=False)
    if v > hi:
        raise above_max(name, hi, v, integer=False)
    return v


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid_type(name, "a boolean", v)
    return v


def _item_text(item: dict[str, Any]) -> str:
    kind = item.get("type", "message")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, list):
            return "".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
            )
        return message_text(content)
    if kind == "function_call":
        return f"{item.get('name', '')}{item.get('arguments', '')}"
    if kind == "function_call_output":
        out = item.get("output")
        return out if isinstance(out, str) else json.dumps(out)
    return ""


def _input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("input")
    if raw is None:
        if body.get("previous_response_id") or body.get("prompt") or body.get("conversation"):
            return []
        raise missing("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise invalid_type("input", "a string or an array", raw)
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_type(where, "an object", item)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role is None:
                raise missing(f"{where}.role")
            if role not in ("user", "assistant", "system", "developer"):
                raise invalid_value(
                    f"{where}.role",
                    f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', "
                    "'system', and 'developer'.",
                )
            content = item.get("content")
            if content is None:
                raise missing(f"{where}.content")
            if not isinstance(content, (str, list)):  # the prompt counter reads only these
                raise invalid_type(f"{where}.content", "a string or an array", content)
        elif kind == "function_call_output" and item.get("call_id") is None:
            raise missing(f"{where}.call_id")
    return raw


def _text_format(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """(the format as echoed, json schema, json_object)."""
    text = body.get("text")
    if text is None:
        return {"type": "text"}, None, False
    if not isinstance(text, dict):
        raise invalid_type("text", "an object", text)
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}, None, False
    if not isinstance(fmt, dict):
        raise invalid_type("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind == "text":
        return {"type": "text"}, None, False
    if kind == "json_object":
        return {"type": "json_object"}, None, True
    if kind == "json_schema":
        name = check_tool_name(fmt.get("name"), "text.format.name")
        if fmt.get("schema") is None:
            raise missing("text.format.schema")
        schema = check_schema(fmt.get("schema"), "text.format.schema")
        echoed = {
            "type": "json_schema",
            "name": name,
            "schema": schema,
            "strict": bool(fmt.get("strict", False)),
        }
        if fmt.get("description") is not None:
            echoed["description"] = fmt["description"]
        return echoed, schema, False
    raise invalid_value(
        "text.format.type",
        f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object' and 'json_schema'.",
    )


def _tools(body: dict[str, Any]) -> tuple[list[ToolSpec], list[dict[str, Any]]]:
    raw = body.get("tools")
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise invalid_type("tools", "an array", raw)
    bounds.check_tool_count(raw)
    specs, echoed = [], []
    for i, t in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise invalid_type(where, "an object", t)
        if t.get("type") is None:
            raise missing(f"{where}.type")
        if t["type"] != "function":
            echoed.append(t)  # built-in tools: accepted and echoed, never called
            continue
        name = check_tool_name(t.get("name"), f"{where}.name")
        schema = check_schema(t.get("parameters"), f"{where}.parameters")
        specs.append(ToolSpec(name, schema))
        echoed.append(
            {
                "type": "function",
                "name": name,
                "description": t.get("description"),
                "parameters": schema,
                "strict": t.get("strict", True),
            }
        )
    return specs, echoed


def parse_responses_request(body: Any) -> tuple[EngineRequest, ResponsesOptions]:
    """Validate a Responses body the way OpenAI does and build the engine's request.

    The prompt counts the instructions, every input item (TOKENS_PER_ITEM each, plus its text)
    and the tools' and schema's JSON. The request is marked `whole_reply` (n x max_tokens
    bounded): even a stream's response.completed event repeats the whole output.
    """
    body, model = body_and_model(body)
    items = _input_items(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid_type("instructions", "a string", instructions)
    max_out = body.get("max_output_tokens")
    if max_out is not None:
        if not isinstance(max_out, int) or isinstance(max_out, bool):
            raise invalid_type("max_output_tokens", "an integer", max_out)
        if max_out < MIN_OUTPUT_TOKENS:
            raise below_min("max_output_tokens", MIN_OUTPUT_TOKENS, max_out, integer=True)
    temperature = _num(body, "temperature", 0, 2)
    top_p = _num(body, "top_p", 0, 1)
    stream = _bool(body, "stream", False)
    _bool(body, "store", True)  # accepted; nothing is stored (and OpenAI does not echo it)
    ignore_eos = _bool(body, "ignore_eos", False)  # llmsim's extension
    parallel = _bool(body, "parallel_tool_calls", True)

    reasoning = body.get("reasoning")
    effort = None
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise invalid_type("reasoning", "an object", reasoning)
        effort = reasoning.get("effort")
        if effort is not None and effort not in EFFORTS:
            raise invalid_value(
                "reasoning.effort",
                f"Invalid value: '{effort}'. Supported values are: "
                + ", ".join(f"'{e}'" for e in EFFORTS)
                + ".",
            )

    specs, echoed_tools = _tools(body)
    names = [t.name for t in specs]
    raw_choice = body.get("tool_choice")
    if raw_choice not in (None, "none", "auto") and not body.get("tools"):
        raise invalid_value(
            "tool_choice", "Tool choice is only allowed when 'tools' are specified."
        )
    if specs or (isinstance(raw_choice, dict) and raw_choice.get("type") == "function"):
        mode, forced = tool_choice_mode(raw_choice, names)
    else:
        mode, forced = "none", None  # only built-in tools: nothing to call
    fmt, schema, json_object = _text_format(body)

    output = None
    if specs or schema is not None or json_object:
        last_kind = items[-1].get("type", "message") if items else None
        output = OutputSpec(
            tools=tuple(specs),
            tool_choice=mode,
            forced_tool=forced,
            parallel=parallel,
            after_tool_result=last_kind == "function_call_output",
            json_schema=schema,
            json_object=json_object,
        )

    prompt = count_tokens(instructions or "", model) + (TOKENS_PER_ITEM if instructions else 0)
    for item in items:
        prompt += TOKENS_PER_ITEM + count_tokens(_item_text(item), model)
    prompt += schema_prompt_tokens(body.get("tools"), model) + schema_prompt_tokens(schema, model)
    last_user = next(
        (i for i in reversed(items) if i.get("role") == "user"), items[-1] if items else {}
    )
    reasoning_echo = {"effort": None, "summary": None}
    if is_reasoning_model(model):
        reasoning_echo = {
            "effort": effort or "medium",
            "summary": (reasoning or {}).get("summary"),
        }
    if isinstance(raw_choice, (str, dict)):
        choice_echo: Any = raw_choice
    else:
        choice_echo = "auto"
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_out,
        "parallel_tool_calls": parallel,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": reasoning_echo,
        "temperature": 1.0 if temperature is None else temperature,
        "text": {"format": fmt, "verbosity": (body.get("text") or {}).get("verbosity", "medium")},
        "tool_choice": choice_echo,
        "tools": echoed_tools,
        "top_p": 1.0 if top_p is None else top_p,
        "truncation": body.get("truncation") or "disabled",
        "metadata": body.get("metadata") or {},
        "background": _bool(body, "background", False),
        "service_tier": "default",
        "top_logprobs": body.get("top_logprobs") or 0,
        "max_tool_calls": body.get("max_tool_calls"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "safety_identifier": body.get("safety_identifier"),
    }
    if isinstance(body.get("user"), str):
        echo["user"] = body["user"]
    req = EngineRequest(
        model=model,
        prompt_tokens=prompt,
        max_tokens=max_out,
        max_tokens_param="max_output_tokens",
        whole_reply=True,  # response.completed repeats the whole output
        ignore_eos=ignore_eos,
        stream=stream,
        prompt_text=_item_text(last_user) if last_user else "",
        output=output,
        reasoning_effort=effort,
        prefix_text=lambda: "\n".join([instructions or "", *(_item_text(i) for i in items)]),
    )
    return req, ResponsesOptions(stream=stream, echo=echo)


# --------------------------------------------------------------------------- rendering


def _suffix(reply: Reply) -> str:
    return reply.id


def usage(reply: Reply) -> dict[str, Any]:
    """OpenAI's usage object for a Response; output_tokens includes the reasoning tokens."""
    out = reply.completion_tokens + reply.reasoning_tokens
    return {
        "input_tokens": reply.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        "total_tokens": reply.prompt_tokens + out,
    }


def _message_item(reply: Reply, status: str, text: str | None = None) -> dict[str, Any]:
    content = []
    if text is not None:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": "msg_" + _suffix(reply),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(c: Choice, k: int, status: str, arguments: str) -> dict[str, Any]:
    tc = (c.tool_calls or [])[k]
    return {
        "id": "fc_" + tc.id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": "call_" + tc.id,
        "name": tc.name,
    }


def _reasoning_item(reply: Reply) -> dict[str, Any]:
    return {"id": "rs_" + _suffix(reply), "type": "reasoning", "summary": []}


def _final_status(c: Choice) -> str:
    return "incomplete" if c.finish_reason == "length" else "completed"


def output_items(reply: Reply) -> list[dict[str, Any]]:
    """A finished Response's `output`: a reasoning item when the model reasoned, then the
    function calls or the one message.
    """
    c = reply.choices[0]
    items = [_reasoning_item(reply)] if reply.reasoning_tokens else []
    if c.tool_calls is not None:
        for k, tc in enumerate(c.tool_calls):
            args = "".join(c.tokens[tc.start : tc.end])
            status = _final_status(c) if k == len(c.tool_calls) - 1 else "completed"
            items.append(_call_item(c, k, status, args))
    else:
        items.append(_message_item(reply, _final_status(c), c.text))
    return items


def response_object(
    reply: Reply, opts: ResponsesOptions, status: str, output: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The Response object with `status`; `completed_at` and usage only once it is completed or
    incomplete. `output` None is an empty list.
    """
    done = status in ("completed", "incomplete")
    return {
        "id": "resp_" + _suffix(reply),
        "object": "response",
        "created_at": reply.created,
        "status": status,
        "completed_at": reply.created + max(1, round(reply.duration_s)) if done else None,
        "error": None,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
        "model": reply.model,
        "output": output if output is not None else [],
        **opts.echo,
        **({"usage": usage(reply)} if done else {}),
    }


def render(reply: Reply, opts: ResponsesOptions) -> dict[str, Any]:
    """The non-streaming Response body, completed (or incomplete when max_output_tokens cut it)."""
    c = reply.choices[0]
    return response_object(reply, opts, _final_status(c), output_items(reply))


class _Seq:
    """Numbers the events of one stream."""

    def __init__(self) -> None:
        self.n = 0

    def event(self, obj: dict[str, Any]) -> bytes:
        obj["sequence_number"] = self.n
        self.n += 1
        name = obj["type"].encode()
        return b"event: " + name + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def stream_events(reply: Reply, opts: ResponsesOptions) -> Iterator[tuple[int, bytes]]:
    """response.created, response.in_progress, output items with their content parts and
    deltas, then response.completed (or response.incomplete when max_output_tokens cut it)."""
    c = reply.choices[0]
    seq = _Seq()
    ev = seq.event
    out_index = 0
    done_items: list[dict[str, Any]] = []
    steps = max(reply.steps_of(c), 1)
    one = reply.chunking.one_per_step
    calls = {tc.start: k for k, tc in enumerate(c.tool_calls or ())}
    msg_id = "msg_" + _suffix(reply)
    current_call: int | None = None
    delta_head = (
        b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", '
        b'"item_id": %s, "output_index": %d, "content_index": 0, "delta": '
        % (json.dumps(msg_id).encode(), 1 if reply.reasoning_tokens else 0)
    )
    delta_tail = b', "logprobs": [], "sequence_number": '

    def close_call(k: int) -> list[bytes]:
        tc = (c.tool_calls or [])[k]
        args = "".join(c.tokens[tc.start : tc.end])
        status = _final_status(c) if k == len(c.tool_calls or ()) - 1 else "completed"
        item = _call_item(c, k, status, args)
        done_items.append(item)
        idx = len(done_items) - 1
        return [
            ev(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": idx,
                    "name": tc.name,
                    "arguments": args,
                }
            ),
            ev({"type": "response.output_item.done", "output_index": idx, "item": item}),
        ]

    for step in range(steps):
        parts: list[bytes] = []
        if step == 0:
            parts.append(
                ev(
                    {
                        "type": "response.created",
                        "response": response_object(reply, opts, "in_progress", None),
                    }
                )
            )
            parts.append(
                ev(
                    {
                        "type": "response.in_progress",
                        "response": response_object(reply, opts, "in_progress", None),
                    }
                )
            )
            if reply.reasoning_tokens:
                item = _reasoning_item(reply)
                parts.append(
                    ev({"type": "response.output_item.added", "output_index": 0, "item": item})
                )
                parts.append(
                    ev({"type": "response.output_item.done", "output_index": 0, "item": item})
                )
                done_items.append(item)
                out_index = 1
            if c.tool_calls is None:
                parts.append(
                    ev(
                        {
                            "type": "response.output_item.added",
                            "output_index": out_index,
                            "item": _message_item(reply, "in_progress"),
                        }
                    )
                )
                parts.append(
                    ev(
                        {
                            "type": "response.content_part.added",
                            "item_id": msg_id,
                            "output_index": out_index,
                            "content_index": 0,
                            "part": {
                                "type": "output_text",
                                "text": "",
                                "annotations": [],
                                "logprobs": [],
                            },
                        }
                    )
                )
        if step in calls:
            k = calls[step]
            if current_call is not None:
                parts.extend(close_call(current_call))
            current_call = k
            parts.append(
                ev(
                    {
                        "type": "response.output_item.added",
                        "output_index": len(done_items),
                        "item": _call_item(c, k, "in_progress", ""),
                    }
                )
            )
        if c.tokens and step < steps:
            tok = c.tokens[step] if one else reply.text_at(c, step)
            if c.tool_calls is None:
                # Rendered around the token and the sequence number: no json.dumps per token.
                text = token_json(tok) if one else json.dumps(tok).encode()
                parts.append(delta_head + text + b"%s%d}\n\n" % (delta_tail, seq.n))
                seq.n += 1
            else:
                tc = c.tool_calls[current_call or 0]
                parts.append(
                    ev(
                        {
                            "type": "response.function_call_arguments.delta",
                            "item_id": "fc_" + tc.id,
                            "output_index": len(done_items),
                            "delta": tok,
                        }
                    )
                )
        if step == steps - 1:
            if c.tool_calls is None:
                text = c.text
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                parts.append(
                    ev(
                        {
                            "type": "response.output_text.done",
                            "item_id": msg_id,
                            "output_index": out_index,
                            "content_index": 0,
                            "text": text,
                            "logprobs": [],
                        }
                    )
                )
                parts.append(
                    ev(
                        {
                            "type": "response.content_part.done",
                            "item_id": msg_id,
                            "output_index": out_index,
                            "content_index": 0,
                            "part": part,
                        }
                    )
                )
                item = _message_item(reply, _final_status(c), text)
                done_items.append(item)
                parts.append(
                    ev(
                        {
                            "type": "response.output_item.done",
                            "output_index": out_index,
                            "item": item,
                        }
                    )
                )
            elif current_call is not None:
                parts.extend(close_call(current_call))
            status = _final_status(c)
            parts.append(
                ev(
                    {
                        "type": f"response.{status}",
                        "response": response_object(reply, opts, status, done_items),
                    }
                )
            )
        yield step, b"".join(parts)


def error_event(err: ApiError, sent_events: int = 0) -> bytes:
    """An error event numbered after the `sent_events` events the stream already sent."""
    obj = {
        "type": "error",
        "code": err.code or err.type,
        "message": err.message,
        "param": err.param,
        "sequence_number": sent_events,
    }
    return b"event: error\ndata: " + json.dumps(obj).encode() + b"\n\n"


class OpenAIResponses(OpenAIErrors):
    """The Responses wire format for the server pipeline."""

    name = "openai.responses"

    def parse(self, body: Any) -> tuple[EngineRequest, ResponsesOptions]:
        """Validate a Responses body; see parse_responses_request."""
        return parse_responses_request(body)

    def render(self, reply: Reply, opts: ResponsesOptions, ctx: RenderContext) -> dict[str, Any]:
        """The Response body (render)."""
        return render(reply, opts)

    def stream_events(
        self, reply: Reply, opts: ResponsesOptions, ctx: RenderContext
    ) -> Iterator[tuple[int, bytes]]:
        """The Responses stream's events (stream_events)."""
        return stream_events(reply, opts)

    def stream_error(self, err: ApiError, sent_events: int = 0) -> bytes:
        """A Responses `error` event, numbered after the `sent_events` already sent."""
        return error_event(err, sent_events)

    def limit_error(self, violation: Any) -> ApiError:
        """OpenAI's 400 for a request beyond the model's limits; the context error names `input`,
        as the Responses API does.
        """
        if violation.kind == "context":
            violation = replace(violation, param="input")
        return openai_limit_error(violation)
