"""Bounds on what one request may ask for, with the provider's 400 naming the parameter.

Every check here is cheap and runs before any work is planned: the JSON itself (nesting depth,
non-finite numbers), schemas (llmsim.engine.schema_bounds), how many tools and stop sequences,
and whether the output a request demands fits in the output it allows.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from llmsim.api.errors import ApiError, invalid_json
from llmsim.engine.request import EngineRequest
from llmsim.engine.schema_bounds import MAX_CHARS_PER_TOKEN, Checker, SchemaInvalid, min_tokens
from llmsim.engine.structured import DEFAULT_OUTPUT_TOKENS
from llmsim.engine.tokens import replace_lone_surrogates

MAX_TOOLS = 128  # OpenAI's documented maximum for `tools`; applied to Anthropic's too
MAX_ANTHROPIC_STOPS = 64  # Anthropic publishes no limit; ours keeps the stop scan cheap
MAX_STOP_CHARS = 1024  # per stop sequence
# Until the model catalogue gives each model its own limits: no model outputs more than this,
# and n x max_tokens is bounded so one request cannot plan millions of tokens.
MAX_OUTPUT_TOKENS = DEFAULT_OUTPUT_TOKENS
INT64_MAX = 2**63 - 1


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):  # 1e999: valid JSON syntax, but no JSON value
        raise ValueError("number out of range")
    return v


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# What one body may hold, counted as the commas, colons and opening brackets in it (each value
# past the first in a container costs a comma, each key a colon, each container a bracket).
# Parsing holds the GIL with no way to yield, and its time grows with the values, not the
# bytes: 8 MB of `[[],[],…]` took 0.4 s, a dict of 500,000 distinct keys 0.6 s, stopping every
# stream on the worker. At this bound the slowest shape measured (distinct keys) parses in
# ~0.1 s on the shared 2-core machine; real APIs stop far below it (OpenAI: 2,048 embedding
# inputs and 300,000 tokens per request).
MAX_JSON_VALUES = 500_000


def _structure(data: bytes) -> int:
    return data.count(b",") + data.count(b":") + data.count(b"[") + data.count(b"{")


def _too_many_values() -> ApiError:
    return ApiError(
        400,
        f"The request body holds more than {MAX_JSON_VALUES:,} JSON values and keys; "
        "llmsim parses at most that many per request.",
        code="request_too_complex",
    )


# A JSON string literal: its commas and brackets are text, not structure.
_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# Above this many strings, removing them costs about as much as the parse it guards.
_STRIP_MAX_STRINGS = 20_000


# A lone surrogate in the body: an escape ("\ud800") or its raw UTF-8 bytes (json reads those
# with surrogatepass). Only json's parse lets one through, never orjson's. A false positive (an
# escaped backslash before "ud800") only costs the walk below.
_SURROGATE_RE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _fix_text(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # As tiktoken's encode() does: each lone surrogate becomes U+FFFD, so token counts are
        # unchanged and nothing later (headers, stats names, hashes, orjson) meets a str that
        # cannot be encoded.
        return replace_lone_surrogates(text)
    return text


def replace_surrogates(value: Any) -> Any:
    """`value` (parsed JSON) with every lone surrogate in its strings and keys made U+FFFD.

    Iterative: the value may be nested as deeply as json's parser allows.
    """
    if isinstance(value, str):
        return _fix_text(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in list(node):
                item = node[key]
                if isinstance(item, str):
                    item = _fix_text(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
                fixed = _fix_text(key)
                if fixed is not key:
                    del node[key]
                node[fixed] = item
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    node[i] = _fix_text(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
    return value


def loads(data: bytes) -> Any:
    """The body's JSON, refusing NaN/Infinity/1e999, nesting beyond the parser's depth and more
    than MAX_JSON_VALUES values (each a 400).

    orjson parses (2-4x faster than json for the same values, so the GIL is held that much
    less); whatever it refuses is parsed again by json, with checks that name the problem.
    orjson reads an integer beyond 64 bits as a float: check_int64 refuses both alike. Lone
    surrogates (valid JSON escapes, but no UTF-8) come back as U+FFFD, as tiktoken counts them.
    """
    # Counted as bytes first; only a body over the bound has its string literals removed and
    # is counted again (bodies with that many strings too are refused as they are).
    if _structure(data) > MAX_JSON_VALUES and (
        data.count(b'"') // 2 > _STRIP_MAX_STRINGS
        or _structure(_STRING_RE.sub(b"", data)) > MAX_JSON_VALUES
    ):
        raise _too_many_values()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # json below says what is wrong (or accepts what orjson alone refuses)
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ApiError(
            400,
            "We could not parse the JSON body of your request: it is nested too deeply.",
            code="invalid_json",
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise invalid_json() from None
    if _SURROGATE_RE.search(data) is not None:
        value = replace_surrogates(value)
    return value


def schema_error(where: str, exc: SchemaInvalid, anthropic: bool = False) -> ApiError:
    """A malformed schema, as OpenAI (param named) or Anthropic (`where: message`) says it."""
    if anthropic:
        return ApiError(400, f"{where}: JSON schema is invalid: {exc}")
    code = "invalid_function_parameters" if "function" in where or "tools" in where else None
    return ApiError(
        400,
        f"Invalid schema for '{where}': {exc}.",
        param=where,
        code=code or "invalid_json_schema",
    )


def check_schemas(schemas: list[tuple[str, Any]], anthropic: bool = False) -> None:
    """Validate one request's schemas together (one node budget), raising the API's 400."""
    checker = Checker()
    for where, schema in schemas:
        try:
            checker.check(schema)
        except SchemaInvalid as exc:
            raise schema_error(where, exc, anthropic) from None


def check_tool_count(tools: list[Any], param: str = "tools", anthropic: bool = False) -> None:
    """Refuse more than MAX_TOOLS tools with OpenAI's 400 naming `param`, or Anthropic's."""
    if len(tools) <= MAX_TOOLS:
        return
    if anthropic:
        raise ApiError(400, f"tools: List should have at most {MAX_TOOLS} items after validation")
    raise ApiError(
        400,
        f"Invalid '{param}': array too long. Expected an array with maximum length {MAX_TOOLS}, "
        f"but got an array with length {len(tools)} instead.",
        param=param,
        code="array_above_max_length",
    )


def check_anthropic_stops(stops: list[str]) -> None:
    """Refuse more than MAX_ANTHROPIC_STOPS stop sequences, or one longer than MAX_STOP_CHARS
    characters, with Anthropic's 400 (it publishes no limit; these keep the stop scan cheap).
    """
    if len(stops) > MAX_ANTHROPIC_STOPS:
        raise ApiError(
            400,
            f"stop_sequences: List should have at most {MAX_ANTHROPIC_STOPS} items after "
            f"validation, not {len(stops)}",
        )
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"stop_sequences: each must be at most {MAX_STOP_CHARS} characters")


def check_int64(name: str, value: Any) -> None:
    """Integers beyond 64 bits: no real API's parameter holds one. (The body parser reads
    such a literal as a float, so an integral float that large counts as one too.)"""
    if isinstance(value, bool):
        return
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return
        value = int(value)
    if isinstance(value, int) and abs(value) > INT64_MAX:
        raise ApiError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {INT64_MAX}, "
            f"but got a {len(str(abs(value)))}-digit integer instead.",
            param=name,
            code="integer_above_max_value",
        )


def output_param(body: Any) -> str:
    """Which parameter set the request's output cap, to name it in an error."""
    if isinstance(body, dict):
        for name in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
            if body.get(name) is not None:
                return name
    return "max_tokens"


def parse(fmt: Any, data: bytes) -> tuple[EngineRequest, Any, float, Any]:
    """Decode, parse and bound one request: (request, options, fewest schema characters, body).

    The third tells the server whether generating the reply is heavy work.
    """
    body = loads(data)
    try:
        req, opts = fmt.parse(body)
    except RecursionError:  # nesting within the JSON parser's depth but beyond ours
        raise ApiError(400, "The request is nested too deeply.", code="invalid_value") from None
    return req, opts, check_request(req, body, fmt.name.startswith("anthropic")), body


def check_request(req: EngineRequest, body: Any, anthropic: bool = False) -> float:
    """Bounds on the parsed request as a whole: output size, and schemas that cannot fit.

    Returns the characters the largest required schema needs at least (0 without one)."""
    param = output_param(body)
    cap = req.max_tokens
    spec = req.output
    if spec is None:
        return 0.0
    budget = min(cap or MAX_OUTPUT_TOKENS, MAX_OUTPUT_TOKENS)
    # Tool calls may be skipped (tool_choice auto), so only forced ones must fit.
    schemas = [spec.json_schema] if spec.json_schema is not None else []
    if spec.tool_choice == "tool":
        schemas += [t.schema for t in spec.tools if t.name == spec.forced_tool]
    elif spec.tool_choice == "required" and spec.tools:
        schemas.append(min((t.schema for t in spec.tools), key=min_tokens))
    most = 0.0
    for schema in schemas:
        need = min_tokens(schema)
        most = max(most, need * MAX_CHARS_PER_TOKEN)
        if need == math.inf:
            msg = "the schema cannot be satisfied: no finite JSON value is valid against it"
        elif need > budget:
            msg = (
                f"the schema needs at least {need} output tokens, more than the {budget} "
                f"that {param} allows"
            )
        else:
            continue
        if anthropic:
            raise ApiError(400, f"{param}: {msg}")
        raise ApiError(400, f"Invalid '{param}': {msg}.", param=param, code="invalid_value")
    return most
