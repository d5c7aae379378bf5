"""Tool calls and structured output: replies that are JSON valid against a schema, as tokens.

A wire format turns `tools`, `tool_choice` and `response_format` (or its API's spelling of them)
into an `OutputSpec`; the engine then asks `plan_choice` for the reply. The JSON comes from a
small generator over the schema (types, enum/const, required and optional properties, nested
objects and arrays, min/max bounds, multipleOf, formats, simple patterns, $ref/$defs,
anyOf/oneOf/allOf) driven by the request's random generator, so a seeded request gives the same
arguments. Its text is split into the model's tokens like any reply, so each streamed chunk is
one token and the joined text re-tokenizes to the same count.

Why our own generator rather than a library: hypothesis-jsonschema is built for test-case search
(slow, and it shrinks towards minimal values), and jsf pulls Faker, rstr, smart-open and typer into
the server and draws from the global `random` module, which breaks per-request seeding. What a
simulator needs is a few hundred lines: a fast, seeded, plausible value for each keyword.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
from dataclasses import dataclass
from typing import Any

from llmsim.engine.generators import text_tokens, words
from llmsim.engine.request import Choice, ToolCall
from llmsim.engine.schema_bounds import MAX_CHARS_PER_TOKEN, min_chars

MAX_DEPTH = 6  # nesting below which optional properties and array items are left out
# Output tokens a schema may fill when the request sets no cap; a simple guard until the model
# catalogue gives each model its own maximum output.
DEFAULT_OUTPUT_TOKENS = 128_000
_DEFAULT_OBJECT = {
    "type": "object",
    "properties": {"response": {"type": "string"}},
    "required": ["response"],
}


@dataclass(frozen=True)
class ToolSpec:
    """A tool the request offers: its name and the schema its arguments must match."""

    name: str
    schema: dict[str, Any]  # JSON schema of the arguments; {} accepts any object


@dataclass(frozen=True)
class OutputSpec:
    """The shape a reply must take, beyond plain text (all APIs alike).

    tool_choice: "auto" (call a tool at the server's --tool-call-rate), "none", "required"
    (call some tool), or "tool" (call `forced_tool`).
    """

    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    forced_tool: str | None = None
    parallel: bool = True
    after_tool_result: bool = False  # the last input is a tool's result: answer it in text
    json_schema: dict[str, Any] | None = None  # the reply text is JSON valid against it
    json_object: bool = False  # the reply text is a JSON object

    @property
    def shapes_text(self) -> bool:
        """Whether a text reply must be JSON (a response format with a schema, or an object)."""
        return self.json_schema is not None or self.json_object


def wants_tool_call(spec: OutputSpec, rng: random.Random, rate: float) -> bool:
    """Whether this choice calls a tool rather than answering in text.

    Never without tools or with tool_choice "none"; always when a call is required or forced;
    with "auto", never right after a tool's result, else with probability `rate` (drawn from
    `rng` only then).
    """
    if not spec.tools or spec.tool_choice == "none":
        return False
    if spec.tool_choice in ("required", "tool"):
        return True
    if spec.after_tool_result:
        return False
    return rng.random() < rate


def plan_choice(
    spec: OutputSpec,
    index: int,
    natural: int,
    max_tokens: int | None,
    rng: random.Random,
    encoding: Any,
    tool_call_rate: float,
) -> Choice | None:
    """The reply for a request with tools or a response format; None means plain text."""
    if wants_tool_call(spec, rng, tool_call_rate):
        return _tool_choice(spec, index, max_tokens, rng, encoding)
    if not spec.shapes_text:
        return None
    if spec.json_schema is not None:
        value = generate(spec.json_schema, rng, _budget(max_tokens))
    else:
        # Free-form JSON: one text field, about as long as a plain reply would have been.
        value = {"response": _words(rng, max(1, natural - 6)).strip()}
    tokens = text_tokens(dump(value), encoding)
    return _capped(Choice(index, tokens, "stop"), max_tokens)


def _tool_choice(
    spec: OutputSpec, index: int, max_tokens: int | None, rng: random.Random, encoding: Any
) -> Choice:
    by_name = {t.name: t for t in spec.tools}
    if spec.tool_choice == "tool" and spec.forced_tool in by_name:
        picked = [by_name[spec.forced_tool]]
    else:
        picked = [rng.choice(spec.tools)]
        # Parallel calls, now and then, so clients meet more than one call per reply.
        if spec.parallel and rng.random() < 0.25:
            picked.append(rng.choice(spec.tools))
    tokens: list[str] = []
    calls = []
    for tool in picked:
        value = generate(tool.schema or {"type": "object"}, rng, _budget(max_tokens))
        args = text_tokens(dump(value), encoding)
        calls.append(
            ToolCall(secrets.token_hex(12), tool.name, len(tokens), len(tokens) + len(args))
        )
        tokens.extend(args)
    return _capped(Choice(index, tokens, "tool_calls", tool_calls=calls), max_tokens)


def _budget(max_tokens: int | None) -> int:
    """Characters a generated value may take: enough to fill max_tokens, never unbounded."""
    tokens = max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    return min(tokens, DEFAULT_OUTPUT_TOKENS) * MAX_CHARS_PER_TOKEN + 64


def _capped(choice: Choice, max_tokens: int | None) -> Choice:
    """A reply cut at max_tokens ends with `length`, its JSON unfinished (as real APIs do)."""
    if max_tokens is None or len(choice.tokens) <= max_tokens:
        return choice
    choice.tokens = choice.tokens[:max_tokens]
    choice.finish_reason = "length"
    if choice.tool_calls:
        kept = [c for c in choice.tool_calls if c.start < max_tokens]
        for c in kept:
            c.end = min(c.end, max_tokens)
        choice.tool_calls = kept
    return choice


def dump(value: Any) -> str:
    """A generated value as the reply's JSON text (non-ASCII characters left unescaped)."""
    return json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------- the generator


class SchemaError(ValueError):
    """A schema the generator cannot satisfy (e.g. `false`, or a dangling $ref)."""


def generate(schema: Any, rng: random.Random, budget: int = 1 << 22) -> Any:
    """A value valid against `schema` (best effort for `pattern` and `not`).

    `budget` bounds the characters it writes: once spent, strings and arrays stop growing and
    objects stop gaining properties, so a schema asking for more than the reply can hold costs
    no more than the reply (which is then cut at max_tokens with finish_reason `length`).
    """
    try:
        return _Gen(schema, rng, budget).value(schema, 0)
    except RecursionError:  # schema_bounds rejects what could get here; never a crash
        raise SchemaError("the schema nests too deeply to generate a value") from None


HARD_DEPTH = 200  # beyond MAX_DEPTH the generator takes the shortest branch; this never passes


class _Gen:
    def __init__(self, root: Any, rng: random.Random, budget: int = 1 << 22) -> None:
        self.root = root
        self.rng = rng
        self.budget = budget

    def spend(self, n: int) -> int:
        """Take up to n characters from the budget; how many were granted."""
        n = max(0, min(n, self.budget))
        self.budget -= n
        return n

    def shortest(self, branches: list[Any]) -> Any:
        return min(branches, key=lambda b: min_chars(b, self.root))

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref are supported, got {ref!r}")
        node = self.root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise SchemaError(f"$ref {ref!r} points nowhere") from None
        return node

    def value(self, schema: Any, depth: int) -> Any:
        rng = self.rng
        if depth > HARD_DEPTH:
            raise SchemaError("the schema nests too deeply to generate a value")
        self.spend(2)
        if schema is True or schema == {}:
            return _words(rng, rng.randint(1, 3)).strip()
        if schema is False:
            raise SchemaError("the schema `false` accepts no value")
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object or a boolean, got {schema!r}")
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
            return self.value(_merge(target, rest) if rest else target, depth + 1)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                if isinstance(part, dict) and "$ref" in part:
                    part = self.resolve(part["$ref"])
                merged = _merge(merged, part)
            return self.value(merged, depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                real = [b for b in branches if not _is_null_schema(b)]
                # Optional fields in strict schemas are `anyOf: [X, null]`: mostly fill them.
                if depth >= MAX_DEPTH or self.budget <= 0:
                    branch = self.shortest(branches)  # so recursive schemas end
                elif real and rng.random() < 0.85:
                    branch = rng.choice(real)
                else:
                    branch = rng.choice(branches)
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, branch) if rest else branch, depth)
        typ = schema.get("type")
        if isinstance(typ, list):
            real = [t for t in typ if t != "null"]
            if (depth >= MAX_DEPTH or self.budget <= 0) and "null" in typ:
                typ = "null"
            else:
                typ = rng.choice(real) if real and rng.random() < 0.85 else rng.choice(typ)
        if typ is None:
            typ = _infer_type(schema)
        if typ == "object":
            return self.obj(schema, depth)
        if typ == "array":
            return self.array(schema, depth)
        if typ == "string":
            return self.string(schema)
        if typ == "integer":
            return self.integer(schema)
        if typ == "number":
            return self.number(schema)
        if typ == "boolean":
            return rng.random() < 0.5
        if typ == "null":
            return None
        raise SchemaError(f"unknown type {typ!r}")

    def obj(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        rng = self.rng
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        optional_odds = 0.6 if depth < 2 else (0.3 if depth < MAX_DEPTH else 0.0)
        if self.budget <= 0:
            optional_odds = 0.0
        for name, sub in props.items():
            if name in required or rng.random() < optional_odds:
                self.spend(len(name) + 4)
                out[name] = self.value(sub, depth + 1)
        for name in required - set(out):  # required but not described: anything goes
            out[name] = _words(rng, 1).strip()
        extra = schema.get("additionalProperties", True)
        wanted = int(schema.get("minProperties", 0))
        if not props and extra is not False and depth < MAX_DEPTH:
            wanted = max(wanted, rng.randint(1, 3))
        limit = schema.get("maxProperties")
        if extra is not False:
            unnamed = [n for n in props if n not in out]  # declared ones first
            while len(out) < wanted and self.budget > 0:
                if unnamed:
                    key = unnamed.pop(0)
                    sub = props[key]
                else:
                    key = _words(rng, 1).strip().lower()
                    if key in out:  # the word list is finite: number the repeats
                        key = f"{key}_{len(out)}"
                    sub = extra if isinstance(extra, dict) else {"type": "string"}
                self.spend(len(key) + 4)
                out[key] = self.value(sub, depth + 1)
        if limit is not None and len(out) > limit:
            for name in [n for n in out if n not in required][: len(out) - int(limit)]:
                del out[name]
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        rng = self.rng
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {} if not prefix else False)
        if isinstance(items, list):  # draft-04 tuple form
            prefix, items = items, schema.get("additionalItems", False)
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        hi = int(hi) if hi is not None else max(lo, 3)
        if depth >= MAX_DEPTH:
            n = lo
        else:
            n = rng.randint(max(lo, min(1, hi)), max(lo, min(hi, lo + 3)))
        if items is False:
            n = min(max(n, len(prefix)), len(prefix))
        out: list[Any] = []
        unique = bool(schema.get("uniqueItems"))
        seen: set[str] = set()
        tries = 0
        while len(out) < n and tries < n * 20 + 20 and self.budget > 0:
            tries += 1
            sub = prefix[len(out)] if len(out) < len(prefix) else items
            self.spend(1)
            v = self.value(sub, depth + 1)
            if unique:
                seen_key = json.dumps(v, sort_keys=True)  # 1 and 1.0 and True stay apart
                if seen_key in seen:
                    continue
                seen.add(seen_key)
            out.append(v)
        return out

    def string(self, schema: dict[str, Any]) -> str:
        rng = self.rng
        lo = min(int(schema.get("minLength", 0)), self.budget)
        hi = schema.get("maxLength")
        fmt = schema.get("format")
        text = None
        if fmt in _FORMATS:
            text = _FORMATS[fmt](rng)
        elif isinstance(schema.get("pattern"), str):
            text = _from_pattern(schema["pattern"], rng, self.budget)
        if text is None:
            text = _words(rng, rng.randint(1, 6)).strip()
            text = text[:1].upper() + text[1:]
        if len(text) < lo:
            text += "x" * (lo - len(text)) if fmt or "pattern" in schema else _pad(text, lo, rng)
        if hi is not None and len(text) > int(hi):
            text = text[: int(hi)].rstrip() or text[: int(hi)]
            if len(text) < lo:
                text += "x" * (lo - len(text))
        self.spend(len(text))
        return text

    def integer(self, schema: dict[str, Any]) -> int:
        lo, hi = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            if first <= last:
                return int(self.rng.randint(first, last) * step)
        return self.rng.randint(lo, max(lo, hi))

    def number(self, schema: dict[str, Any]) -> float | int:
        lo, hi = _bounds(schema, integer=False)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            if first <= last:
                v = self.rng.randint(first, last) * step
                return int(v) if float(v).is_integer() else v
        v = round(self.rng.uniform(lo, hi), 2)
        if not lo <= v <= hi or _excluded(schema, v):
            v = (lo + hi) / 2
        return v


def _bounds(schema: dict[str, Any], integer: bool) -> tuple[Any, Any]:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    tiny = 1 if integer else 0.01
    if isinstance(xlo, bool):  # draft-04: a flag on minimum
        xlo = lo if xlo else None
    if isinstance(xhi, bool):
        xhi = hi if xhi else None
    if xlo is not None:
        lo = xlo + tiny if lo is None else max(lo, xlo + tiny)
    if xhi is not None:
        hi = xhi - tiny if hi is None else min(hi, xhi - tiny)
    if lo is None and hi is None:
        lo, hi = (0, 100)
    elif lo is None:
        lo = hi - 100
    elif hi is None:
        hi = lo + 100
    if integer:
        lo, hi = math.ceil(lo), math.floor(hi)
    return lo, max(lo, hi)


def _excluded(schema: dict[str, Any], v: float) -> bool:
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    return (isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and v <= xlo) or (
        isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and v >= xhi
    )


def _merge(a: dict[str, Any], b: Any) -> dict[str, Any]:
    """allOf, shallowly: properties and required add up, the rest is overridden by b."""
    if not isinstance(b, dict):
        return a
    out = {**a, **b}
    if "properties" in a and "properties" in b:
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a and "required" in b:
        out["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return out


def _is_null_schema(s: Any) -> bool:
    return isinstance(s, dict) and s.get("type") == "null"


def _infer_type(schema: dict[str, Any]) -> str:
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema or "minItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "multipleOf", "exclusiveMinimum")):
        return "number"
    return "string"


def _words(rng: random.Random, n: int) -> str:
    ws = words()
    return "".join(" " + ws[int(rng.random() * len(ws))] for _ in range(n))


def _pad(text: str, length: int, rng: random.Random) -> str:
    if length - len(text) > 2000:  # long: repeat a stretch of words rather than draw each
        stretch = _words(rng, 300)
        text += stretch * ((length - len(text)) // len(stretch))
    while len(text) < length:
        text += _words(rng, 1)
    return text


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2000, 2030):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


_FORMATS = {
    "date-time": lambda r: f"{_date(r)}T{_time(r)}",
    "date": _date,
    "time": _time,
    "email": lambda r: f"{_words(r, 1).strip()}@example.com",
    "idn-email": lambda r: f"{_words(r, 1).strip()}@example.com",
    "uri": lambda r: f"https://example.com/{_words(r, 1).strip()}",
    "url": lambda r: f"https://example.com/{_words(r, 1).strip()}",
    "iri": lambda r: f"https://example.com/{_words(r, 1).strip()}",
    "uri-reference": lambda r: f"/{_words(r, 1).strip()}",
    "hostname": lambda r: f"{_words(r, 1).strip()}.example.com",
    "idn-hostname": lambda r: f"{_words(r, 1).strip()}.example.com",
    "ipv4": lambda r: ".".join(str(r.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda r: ":".join(f"{r.getrandbits(16):x}" for _ in range(8)),
    "uuid": _uuid,
    "duration": lambda r: f"PT{r.randint(1, 59)}M",
}


# --------------------------------------------------------------------------- patterns

try:  # Python 3.11+
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre  # type: ignore[no-redef]


_CATEGORY_CHARS = {
    "CATEGORY_DIGIT": "0123456789",
    "CATEGORY_NOT_DIGIT": "abcdefghijklmnopqrstuvwxyz",
    "CATEGORY_WORD": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
    "CATEGORY_NOT_WORD": "-.,:; ",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "abcdefghijklmnopqrstuvwxyz",
}
_ANY = "abcdefghijklmnopqrstuvwxyz0123456789"


def _from_pattern(pattern: str, rng: random.Random, budget: int = 1 << 22) -> str | None:
    """A string matching a simple regex (literals, classes, repeats, groups, alternation).

    None when the pattern is beyond the emitter or its shortest match exceeds `budget`.
    """
    try:
        parsed = _sre.parse(pattern)
        if parsed.getwidth()[0] > budget:
            return None
    except Exception:
        return None
    for _ in range(10):
        try:
            s = _emit(parsed, rng, [budget])
        except _Unsupported:
            return None
        if re.search(pattern, s):
            return s
    return None


class _Unsupported(Exception):
    pass


def _emit(items: Any, rng: random.Random, left: list[int]) -> str:
    """`left` holds the characters still allowed (shared by the recursion): nested repeats
    multiply, so without it `((a{0,3}){0,3})…` would write 3**depth characters."""
    out = []
    if left[0] < 0:
        raise _Unsupported("budget")
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name == "NOT_LITERAL":
            out.append(next(c for c in _ANY if ord(c) != av))
        elif name == "ANY":
            out.append(rng.choice(_ANY))
        elif name == "IN":
            out.append(_from_class(av, rng))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = av
            hi = min(hi, lo + 3) if hi != _sre.MAXREPEAT else lo + 3
            out.extend(_emit(sub, rng, left) for _ in range(rng.randint(lo, max(lo, hi))))
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            out.append(_emit(av[-1] if name == "SUBPATTERN" else av, rng, left))
        elif name == "BRANCH":
            out.append(_emit(rng.choice(av[1]), rng, left))
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue
        else:
            raise _Unsupported(name)
        left[0] -= 1
        if left[0] < 0:
            raise _Unsupported("budget")
    return "".join(out)


def _from_class(items: Any, rng: random.Random) -> str:
    chars: list[str] = []
    negate = False
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            chars.append(chr(av))
        elif name == "RANGE":
            lo, hi = av
            chars.extend(chr(c) for c in range(lo, min(hi, lo + 200) + 1))
        elif name == "CATEGORY":
            chars.extend(_CATEGORY_CHARS.get(str(av), ""))
    if negate:
        pool = [c for c in _ANY if c not in chars]
        return rng.choice(pool) if pool else "~"
    if not chars:
        raise _Unsupported("empty class")
    return rng.choice(chars)
