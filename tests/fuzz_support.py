"""Hypothesis strategies for request bodies, drawn from OpenAI's published spec (tests/data).

Each body starts from a valid request and replaces some of its top-level parameters with a
value drawn either from the parameter's own schema in the spec (mostly-valid values, near the
edges: enums, bounds, huge and negative numbers, nested shapes) or from arbitrary JSON. The
server must answer every one with a 2xx or the API's 4xx error, never a 500 or no answer.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from openapi_check import raw_spec

OPERATIONS = {
    "createChatCompletion": ("/v1/chat/completions", {
        "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}),
    "createEmbedding": ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    "createResponse": ("/v1/responses", {"model": "gpt-4o", "input": "hi",
                                         "max_output_tokens": 16}),
}  # fmt: skip

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
ANY_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _resolve(node: Any) -> Any:
    schemas = raw_spec()["components"]["schemas"]
    for _ in range(20):
        if isinstance(node, dict) and "$ref" in node:
            node = schemas[node["$ref"].rsplit("/", 1)[-1]]
        else:
            break
    return node


def properties(schema: Any) -> dict[str, Any]:
    """Top-level properties of a request schema, through allOf and $ref."""
    schema = _resolve(schema)
    out: dict[str, Any] = {}
    for part in schema.get("allOf", []):
        out.update(properties(part))
    out.update(schema.get("properties", {}))
    return out


def from_schema(schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped by a spec schema, shallowly; arbitrary JSON where it gives out."""
    schema = _resolve(schema)
    if not isinstance(schema, dict) or depth > 3:
        return ANY_JSON
    if schema.get("enum"):
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return st.one_of([from_schema(s, depth + 1) for s in schema[key]])
    typ = schema.get("type")
    if typ == "string":
        return st.text(max_size=30)
    if typ == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        edges = [v for v in (lo, hi) if isinstance(v, int)]
        return st.one_of(st.integers(-(2**66), 2**66), *[st.just(e + d) for e in edges
                                                         for d in (-1, 0, 1)])  # fmt: skip
    if typ == "number":
        return st.floats(allow_nan=False, allow_infinity=False, width=32)
    if typ == "boolean":
        return st.booleans()
    if typ == "array":
        return st.lists(from_schema(schema.get("items", {}), depth + 1), max_size=3)
    if typ == "object" or "properties" in schema:
        props = properties(schema)
        if not props:
            return st.dictionaries(st.text(max_size=6), ANY_JSON, max_size=3)
        names = sorted(props)
        return st.fixed_dictionaries(
            {}, optional={n: from_schema(props[n], depth + 1) for n in names[:12]}
        )
    return ANY_JSON


def request_schema(operation: str) -> Any:
    for ops in raw_spec()["paths"].values():
        for op in ops.values():
            if op.get("operationId") == operation:
                return op["requestBody"]["content"]["application/json"]["schema"]
    raise KeyError(operation)


def bodies(operation: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body for `operation` with some parameters replaced by drawn values."""
    _, base = OPERATIONS[operation]
    props = properties(request_schema(operation))
    names = sorted(props)

    @st.composite
    def body(draw: Any) -> dict[str, Any]:
        out = dict(base)
        for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
            if name == "stream":  # a fuzzed stream is read to its end by the test
                out[name] = draw(st.booleans())
                continue
            out[name] = draw(st.one_of(from_schema(props[name]), ANY_JSON))
        return out

    return body()
