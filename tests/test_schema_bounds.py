"""The schema checker and the budgeted generator on their own (no server)."""

from __future__ import annotations

import json
import random
import time

import jsonschema
import pytest

from llmsim.engine.schema_bounds import SchemaInvalid, check, min_chars, min_tokens
from llmsim.engine.structured import generate

FITS = [
    {"type": "object", "minProperties": 500},  # looped forever: the word list ran out
    {"type": "string", "minLength": 1_000_000},  # 5.9 s
    {"type": "array", "minItems": 30, "items": {"type": "array", "minItems": 30}},
    {"type": "string", "pattern": "^((((((((a{0,3}){0,3}){0,3}){0,3}){0,3}){0,3}){0,3}){0,3})$"},
    {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}},
    {"anyOf": [{"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
               {"type": "null"}]},
    {"type": "array", "minItems": 50, "uniqueItems": True, "items": {"type": "integer"}},
]  # fmt: skip


@pytest.mark.parametrize("schema", FITS, ids=range(len(FITS)))
def test_satisfiable_schemas_generate_fast_and_valid(schema):
    check(schema)
    start = time.monotonic()
    value = generate(schema, random.Random(7), 128_000 * 16)
    assert time.monotonic() - start < 3  # was an infinite loop or tens of seconds
    jsonschema.validate(value, schema)
    assert len(json.dumps(value)) >= min_chars(schema) - 2


def test_budget_caps_what_the_generator_writes():
    value = generate({"type": "string", "minLength": 1_000_000}, random.Random(1), 5000)
    assert len(value) <= 5100  # within a few words of the budget
    value = generate({"type": "array", "minItems": 100_000}, random.Random(1), 5000)
    assert len(value) < 5000


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"$ref": "#"}, "itself"),
        ({"allOf": [{"$ref": "#"}]}, "no finite"),
        ({"type": "object", "minProperties": 3, "additionalProperties": False}, "no finite"),
        ({"type": "OBJECT"}, "'type'"),
        ({"enum": []}, "'enum'"),
        ({"type": "number", "maximum": float("nan")}, "finite"),
        ({"type": "number", "minimum": float("inf")}, "finite"),
        ({"minItems": True}, "'minItems'"),
        ({"type": "array", "minItems": 2**40}, "'minItems'"),
    ],
)
def test_malformed_schemas_are_named(schema, words):
    with pytest.raises(SchemaInvalid, match=words):
        check(schema)


def test_minimum_tokens_are_a_lower_bound():
    schema = {"type": "array", "minItems": 150, "items": {"type": "array", "minItems": 150}}
    assert min_tokens(schema) == pytest.approx(150 * 150 * 3 / 16, rel=0.1)
    assert min_tokens({"type": "string", "pattern": "\\d{10000000}"}) > 600_000
