"""OpenAI Responses against a real `llmsim serve`: the openai SDK, the spec, event order."""

from __future__ import annotations

import copy
import json
from functools import cache

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import openapi_check
from conftest import start_server

TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Find an order",
    "parameters": {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
            "fields": {"type": "array", "items": {"enum": ["status", "eta", "items"]}},
        },
        "required": ["order_id", "fields"],
        "additionalProperties": False,
    },
    "strict": True,
}
TEXT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_END = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    """openapi_check's validator, with allOf compositions (Response is one) merged into one
    object first: forbidding extra fields on each part separately would reject every field."""
    doc = copy.deepcopy(openapi_check._document())
    schemas = doc["components"]["schemas"]

    def flat(name: str) -> dict | None:
        node = schemas[name]
        if "allOf" not in node:
            return node if "properties" in node else None
        props: dict = {}
        required: list = []
        for part in node["allOf"]:
            if "$ref" in part:
                part = flat(part["$ref"].rsplit("/", 1)[-1])
            if part is None or "properties" not in part:
                return None
            props.update(part["properties"])
            required += part.get("required", [])
        merged = {
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }
        schemas[name] = merged
        return merged

    for composed in [n for n, v in schemas.items() if "allOf" in v]:
        flat(composed)
    registry = Registry().with_resource(
        "urn:openai", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


@cache
def _event_schemas() -> dict[str, str]:
    schemas = openapi_check._document()["components"]["schemas"]
    out = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        for kind in schemas[name].get("properties", {}).get("type", {}).get("enum", []):
            out[kind] = name
    return out


def validate_event(event: dict) -> None:
    """Against the event type's own schema: clearer failures than the anyOf of them all."""
    validate(_event_schemas()[event["type"]], event)


def validate(name: str, instance) -> None:
    errors = sorted(_validator(name).iter_errors(instance), key=lambda e: e.path)
    if errors:
        e = errors[0]
        raise AssertionError(f"{name} invalid at {list(e.absolute_path)}: {e.message}")


@pytest.fixture(scope="module")
def server():
    s = start_server(
        "--ttft-ms", "20", "--ttft-stddev-ms", "0", "--tbt-ms", "1", "--tbt-stddev-ms", "0"
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


def sse(server, body, headers=None) -> list[tuple[str, dict]]:
    with httpx.stream(
        "POST", server.base_url + "/responses", json={**body, "stream": True}, headers=headers
    ) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    out = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        out.append((lines["event"], data))
    return out


def test_response_matches_the_spec(client):
    raw = client.responses.with_raw_response.create(
        model="gpt-4o", input="Say hi", instructions="Be brief.", max_output_tokens=4000
    )
    body = json.loads(raw.text)
    validate("Response", body)
    r = raw.parse()
    assert r.status == "completed" and r.output_text and r.instructions == "Be brief."
    assert r.id.startswith("resp_") and r.output[0].type == "message"
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.output_tokens_details.reasoning_tokens == 0


def test_max_output_tokens_makes_it_incomplete(server, client):
    r = client.responses.create(
        model="gpt-4o", input="hi", max_output_tokens=16, extra_body={"ignore_eos": True}
    )
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 16
    events = sse(server, {"model": "gpt-4o", "input": "hi", "max_output_tokens": 16})
    assert events[-1][0] == "response.incomplete"
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o", input="hi", max_output_tokens=5)
    assert exc.value.body["param"] == "max_output_tokens"


def test_stream_events_order_spec_and_sequence_numbers(server, client):
    events = sse(
        server,
        {
            "model": "gpt-4o",
            "input": [{"role": "user", "content": "hi"}],
            "max_output_tokens": 40,
            "ignore_eos": True,
        },
    )
    names = [e for e, _ in events]
    assert names[:4] == TEXT_ORDER
    assert names[4:-4] == ["response.output_text.delta"] * 40
    assert names[-4:] == [*TEXT_END, "response.incomplete"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    for _, d in events:
        validate_event(d)
    text = "".join(d["delta"] for e, d in events if e == "response.output_text.delta")
    assert events[-4][1]["text"] == text
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == text
    # The SDK's stream helper accumulates the same text.
    with client.responses.stream(model="gpt-4o", input="hi", max_output_tokens=2000) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == deltas


def test_reasoning_model_reports_reasoning_tokens(server, client):
    r = client.responses.create(model="o3", input="think", reasoning={"effort": "high"})
    assert r.output[0].type == "reasoning" and r.output[1].type == "message"
    assert r.reasoning.effort == "high"
    reasoning = r.usage.output_tokens_details.reasoning_tokens
    assert reasoning == 19  # 0.95 × 20 ms TTFT / 1 ms per token
    visible = sum(1 for _ in r.output_text.split())  # lorem words are one token each
    assert r.usage.output_tokens >= reasoning + visible // 2
    events = sse(server, {"model": "o3", "input": "think"})
    assert [e for e, _ in events][2:4] == [
        "response.output_item.added",
        "response.output_item.done",
    ]
    assert events[2][1]["item"]["type"] == "reasoning"


def test_function_calls(server, client):
    raw = client.responses.with_raw_response.create(
        model="gpt-4o", input="where is my order", tools=[TOOL], tool_choice="required"
    )
    validate("Response", json.loads(raw.text))
    r = raw.parse()
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.name == "lookup" and c.call_id.startswith("call_") for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c.arguments), TOOL["parameters"])
    # Streamed: output_item.added, argument deltas, arguments.done, output_item.done.
    events = sse(
        server,
        {
            "model": "gpt-4o",
            "input": "x",
            "tools": [TOOL],
            "tool_choice": {"type": "function", "name": "lookup"},
            "parallel_tool_calls": False,
        },
    )
    names = [e for e, _ in events]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert names[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    args = "".join(d["delta"] for e, d in events if e == "response.function_call_arguments.delta")
    assert args == events[-3][1]["arguments"]
    jsonschema.validate(json.loads(args), TOOL["parameters"])
    for _, d in events:
        validate_event(d)
    # With the function's output in the input, the model answers in text.
    follow = client.responses.create(
        model="gpt-4o",
        tools=[TOOL],
        input=[
            {"role": "user", "content": "where is my order"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "lookup",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "shipped"},
        ],
    )
    assert follow.output[0].type == "message" and follow.output_text


class Weather(BaseModel):
    city: str
    temperature: float
    conditions: list[str]


def test_structured_output_with_the_sdk_parse_helper(client):
    r = client.responses.parse(model="gpt-4o", input="weather?", text_format=Weather)
    assert isinstance(r.output_parsed, Weather)
    raw = client.responses.create(
        model="gpt-4o",
        input="json please",
        text={"format": {"type": "json_object"}},
    )
    assert isinstance(json.loads(raw.output_text), dict)


def test_errors_and_stream_error_event(server, client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o")  # no input
    assert exc.value.body["param"] == "input"
    r = httpx.post(server.base_url + "/responses", json={"model": "gpt-4o", "input": 3})
    validate("ErrorResponse", r.json())
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o", input="x", extra_headers={"x-llmsim-fault": "429"})
    events = sse(
        server,
        {"model": "gpt-4o", "input": "x", "max_output_tokens": 64, "ignore_eos": True},
        headers={"x-llmsim-fault": "stream-error"},
    )
    assert events[-1][0] == "error"
    validate_event(events[-1][1])
    seqs = [d["sequence_number"] for _, d in events]
    assert seqs == list(range(len(events)))
