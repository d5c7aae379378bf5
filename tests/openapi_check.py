"""Validate our responses against OpenAI's published OpenAPI spec (a subset, tests/data/openai).

The spec mixes OpenAPI 3.0 `nullable` with JSON Schema; we translate `nullable` and, to catch
fields the spec does not have, forbid extra properties on plain object schemas.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parent / "data" / "openai" / "openapi.yaml"


def _translate(node: Any) -> Any:
    if isinstance(node, list):
        return [_translate(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _translate(v) for k, v in node.items()}
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
        return out
    if (
        out.get("type") == "object"
        and "properties" in out
        and not any(k in out for k in ("allOf", "anyOf", "oneOf", "additionalProperties"))
    ):
        out["additionalProperties"] = False
    return out


@cache
def _document() -> dict[str, Any]:
    raw = yaml.load(SPEC.read_text("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {"components": {"schemas": _translate(raw["components"]["schemas"])}}


@cache
def raw_spec() -> dict[str, Any]:
    """The shipped spec subset as published (paths and schemas), for request fuzzing."""
    return yaml.load(SPEC.read_text("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = _document()
    resource = Resource.from_contents(copy.deepcopy(doc), default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openai", resource)
    schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError if `instance` is not a valid `name` of the spec."""
    errors = sorted(_validator(name).iter_errors(instance), key=lambda e: e.path)
    if errors:
        e = errors[0]
        raise AssertionError(f"{name} invalid at {list(e.absolute_path)}: {e.message}")
