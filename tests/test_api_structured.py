"""The schema-driven JSON generator and the engine's tool-call / structured-output replies."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from llmsim.engine.request import EngineRequest
from llmsim.engine.simulator import Engine
from llmsim.engine.structured import OutputSpec, SchemaError, ToolSpec, generate
from llmsim.engine.tokens import get_encoding
from llmsim.server.config import engine_config
from llmsim.settings import load_settings

SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    {
        "type": "object",
        "properties": {
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "step": {"type": "number", "multipleOf": 0.25, "minimum": 1, "maximum": 3},
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
            "kind": {"const": "forecast"},
        },
        "required": ["unit", "days", "ratio", "step", "flag", "nothing", "kind"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "minLength": 3, "maxLength": 8},
                "minItems": 2,
                "maxItems": 4,
                "uniqueItems": True,
            },
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
                "items": False,
            },
            "when": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "mail": {"type": "string", "format": "email"},
            "id": {"type": "string", "format": "uuid"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
        },
        "required": ["tags", "pair", "when", "day", "mail", "id", "code"],
    },
    {  # OpenAI strict mode: every property required, optional ones nullable, $defs recursion
        "type": "object",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name", "children"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "root": {"$ref": "#/$defs/node"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "size": {"type": ["integer", "null"]},
        },
        "required": ["root", "note", "size"],
        "additionalProperties": False,
    },
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    },
    {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"r": {"type": "number"}},
                        "required": ["r"],
                        "additionalProperties": False,
                    },
                    {"type": "string", "enum": ["square"]},
                ]
            },
            "extra": {"type": "object", "additionalProperties": {"type": "integer"}},
            "few": {"type": "object", "minProperties": 2, "maxProperties": 3},
        },
        "required": ["shape", "extra", "few"],
    },
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": -1}, "minItems": 1},
    {"type": "string", "minLength": 40},
    {},
    True,
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:40])
def test_generated_values_validate(schema):
    rng = random.Random(7)
    for _ in range(60):
        value = generate(schema, rng)
        jsonschema.validate(value, schema if schema is not True else {})


def test_generation_is_seeded():
    schema = SCHEMAS[2]
    assert generate(schema, random.Random(3)) == generate(schema, random.Random(3))


def test_impossible_schemas_say_so():
    with pytest.raises(SchemaError):
        generate(False, random.Random(0))
    with pytest.raises(SchemaError):
        generate({"$ref": "#/$defs/missing"}, random.Random(0))


def _engine(**overrides):
    return Engine(
        engine_config(load_settings(env={}, overrides={"profile": "instant", **overrides}))
    )


WEATHER = ToolSpec("get_weather", SCHEMAS[0])
FORECAST = ToolSpec("forecast", SCHEMAS[1])


def _tool_request(**spec) -> EngineRequest:
    return EngineRequest(
        model="gpt-4o", prompt_tokens=10, output=OutputSpec(tools=(WEATHER, FORECAST), **spec)
    )


def test_tool_calls_validate_and_keep_the_token_invariant():
    engine = _engine()
    enc = get_encoding("o200k_base")
    for _ in range(30):
        c = engine.plan(_tool_request()).choices[0]
        assert c.finish_reason == "tool_calls" and c.tool_calls
        for tc in c.tool_calls:
            args = "".join(c.tokens[tc.start : tc.end])
            schema = {t.name: t.schema for t in (WEATHER, FORECAST)}[tc.name]
            jsonschema.validate(json.loads(args), schema)
        assert all(len(enc.encode(t)) == 1 for t in c.tokens)
        assert len(enc.encode(c.text)) == len(c.tokens)


def test_tool_choice_rules():
    engine = _engine(tool_call_rate=0.0)
    assert engine.plan(_tool_request()).choices[0].tool_calls is None  # auto at rate 0
    forced = engine.plan(_tool_request(tool_choice="tool", forced_tool="forecast")).choices[0]
    assert [tc.name for tc in forced.tool_calls] == ["forecast"]
    assert engine.plan(_tool_request(tool_choice="required")).choices[0].tool_calls
    always = _engine(tool_call_rate=1.0)
    assert always.plan(_tool_request(tool_choice="none")).choices[0].tool_calls is None
    # After a tool's result the model answers in text, so agent loops end.
    assert always.plan(_tool_request(after_tool_result=True)).choices[0].tool_calls is None
    parallel = [len(always.plan(_tool_request()).choices[0].tool_calls or ()) for _ in range(80)]
    assert set(parallel) == {1, 2}
    single = [
        len(always.plan(_tool_request(parallel=False)).choices[0].tool_calls) for _ in range(40)
    ]
    assert set(single) == {1}


def test_tool_call_rate_is_a_share():
    engine = _engine(tool_call_rate=0.3)
    calls = sum(bool(engine.plan(_tool_request()).choices[0].tool_calls) for _ in range(400))
    assert 80 <= calls <= 160


def test_structured_output_and_json_mode():
    engine = _engine()
    req = EngineRequest(model="gpt-4o", prompt_tokens=5, output=OutputSpec(json_schema=SCHEMAS[3]))
    for _ in range(20):
        c = engine.plan(req).choices[0]
        jsonschema.validate(json.loads(c.text), SCHEMAS[3])
        assert c.finish_reason == "stop" and c.tool_calls is None
    obj = EngineRequest(model="gpt-4o", prompt_tokens=5, output=OutputSpec(json_object=True))
    assert isinstance(json.loads(engine.plan(obj).choices[0].text), dict)


def test_max_tokens_cuts_json_short_with_length():
    engine = _engine()
    req = EngineRequest(
        model="gpt-4o", prompt_tokens=5, max_tokens=3, output=OutputSpec(json_schema=SCHEMAS[1])
    )
    c = engine.plan(req).choices[0]
    assert c.finish_reason == "length" and len(c.tokens) == 3


def test_stop_sequence_is_reported():
    engine = _engine(generator="fixed:Hello there. General Kenobi.")
    c = engine.plan(EngineRequest(model="gpt-4o", prompt_tokens=5, stop=("Kenobi", "."))).choices[0]
    assert c.text == "Hello there" and c.stop_sequence == "." and c.finish_reason == "stop"
    c = engine.plan(EngineRequest(model="gpt-4o", prompt_tokens=5)).choices[0]
    assert c.stop_sequence is None


def test_reasoning_tokens_are_the_thinking_part_of_the_ttft():
    engine = _engine(profile="o-series", ttft_ms=2000, ttft_stddev_ms=0, tbt_ms=20, tbt_stddev_ms=0)
    medium = engine.plan(EngineRequest(model="o3", prompt_tokens=5))
    assert medium.reasoning_tokens == 80  # 0.8 × 2000 ms / 20 ms
    low = engine.plan(EngineRequest(model="o3", prompt_tokens=5, reasoning_effort="low"))
    assert low.reasoning_tokens == 50
    assert engine.plan(EngineRequest(model="gpt-4o", prompt_tokens=5)).reasoning_tokens == 0
