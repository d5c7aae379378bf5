"""Chat completions with tools and response formats, through the openai SDK and the spec."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from conftest import start_server
from openapi_check import validate

USER = [{"role": "user", "content": "What's the weather?"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "when": {"type": "string", "format": "date"},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city", "when"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"type": "string"}},
                "required": ["tz"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def server():
    s = start_server(
        "--ttft-ms", "5", "--ttft-stddev-ms", "0", "--tbt-ms", "1", "--tbt-stddev-ms", "0"
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


def test_tool_calls(client):
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=USER, tools=TOOLS, tool_choice="required"
        )
        validate("CreateChatCompletionResponse", json.loads(raw.text))
        choice = raw.parse().choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        for call in choice.message.tool_calls:
            assert call.id.startswith("call_") and call.type == "function"
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    usage_with = raw.parse().usage.prompt_tokens
    plain = client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=1)
    assert usage_with > plain.usage.prompt_tokens  # tool definitions count as prompt


def test_streamed_tool_call_deltas(server):
    seen_two = False
    for attempt in range(40):  # a reply has two calls one time in four: 40 misses ~ 1e-5
        if seen_two and attempt >= 4:
            break
        with httpx.stream(
            "POST",
            server.base_url + "/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": USER,
                "tools": TOOLS,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as r:
            raw = r.read().decode()
        events = [e[6:] for e in raw.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        calls: dict[int, dict] = {}
        finish = None
        for data in events[:-1]:
            chunk = json.loads(data)
            validate("CreateChatCompletionStreamResponse", chunk)
            for ch in chunk["choices"]:
                for tc in ch["delta"].get("tool_calls") or ():
                    slot = calls.setdefault(tc["index"], {"name": None, "args": ""})
                    if "id" in tc:
                        assert tc["id"].startswith("call_") and slot["name"] is None
                        slot["name"] = tc["function"]["name"]
                    slot["args"] += tc["function"]["arguments"]
                finish = ch["finish_reason"] or finish
        assert finish == "tool_calls" and list(calls) == list(range(len(calls)))
        for slot in calls.values():
            jsonschema.validate(json.loads(slot["args"]), SCHEMAS[slot["name"]])
        assert json.loads(events[-2])["usage"]["completion_tokens"] > 0
        seen_two = seen_two or len(calls) > 1
    assert seen_two, "parallel tool calls never happened"


def test_sdk_stream_accumulates_tool_calls(client):
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        stream=True,
    )
    args = "".join(
        tc.function.arguments or ""
        for chunk in stream
        for ch in chunk.choices
        for tc in ch.delta.tool_calls or ()
    )
    jsonschema.validate(json.loads(args), SCHEMA)


def test_tool_choice_none_and_after_a_tool_result(client):
    r = client.chat.completions.create(
        model="gpt-4o", messages=USER, tools=TOOLS, tool_choice="none", max_tokens=5
    )
    assert r.choices[0].message.content and r.choices[0].finish_reason == "length"
    first = client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    call = first.choices[0].message.tool_calls[0]
    follow = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    r = client.chat.completions.create(model="gpt-4o", messages=follow, tools=TOOLS)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


class Forecast(BaseModel):
    city: str
    high: float
    low: float
    summary: str


def test_structured_output(client):
    r = client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": SCHEMA, "strict": True},
        },
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    parsed = client.chat.completions.parse(model="gpt-4o", messages=USER, response_format=Forecast)
    assert isinstance(parsed.choices[0].message.parsed, Forecast)
    r = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Answer in JSON"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_bad_tool_requests(client):
    cases = [
        ({"response_format": {"type": "json_object"}}, "messages"),  # no "json" in messages
        ({"tool_choice": "required"}, "tool_choice"),  # without tools
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="gpt-4o", messages=USER, **extra)
        assert exc.value.body["param"] == param, extra
