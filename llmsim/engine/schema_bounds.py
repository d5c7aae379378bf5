"""Check a JSON schema before generating from it, and bound what it can ask for.

The generator in `structured.py` trusts its schema; a client does not deserve that trust. One
bounded walk here rejects what no real API accepts (a `type` that is not a JSON type, an empty
`enum`, a count that is not a non-negative integer, `properties` that is not an object, a
non-finite bound, a `$ref` that points nowhere or only at itself, nesting or size beyond the
limits below) and computes the fewest characters any valid value can take. The API layer turns
a `SchemaInvalid` into its own 400, and compares `min_tokens` with the request's output budget
so a schema that cannot fit in `max_tokens` is refused before any work is done.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

try:  # Python 3.11+
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre  # type: ignore[no-redef]

MAX_DEPTH = 64  # nested schema objects; OpenAI's strict mode allows 10, Anthropic about as few
MAX_NODES = 20_000  # schema objects in one request's schemas together
MAX_COUNT = 2**31 - 1  # minItems, maxLength … beyond this are not counts but attacks
# The fewest characters one output token can stand for is about one; the most is ~16 for the
# text a generator writes (o200k/cl100k merge runs of letters and digits up to that). Dividing
# by 16 gives a lower bound on tokens, so a schema is only refused when it surely cannot fit.
MAX_CHARS_PER_TOKEN = 16
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMAS = ("additionalProperties", "additionalItems", "not", "contains", "propertyNames")


class SchemaInvalid(ValueError):
    """A schema no value can be generated from; `path` is a JSON pointer into it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{message} (at {path or '/'})")
        self.path = path
        self.reason = message


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Checker:
    """Checks one request's schemas; the node count is shared, so many small tools cannot add
    up unbounded."""

    def __init__(self) -> None:
        self.nodes = 0

    def check(self, root: Any) -> None:
        """Raise SchemaInvalid if `root` is malformed or beyond the limits."""
        self._node(root, root, "", 0)
        _refs_end(root)
        if not math.isfinite(min_chars(root)):
            raise SchemaInvalid(
                "",
                "no finite JSON value is valid against the schema (it requires itself, or asks "
                "for more properties than it allows)",
            )

    def _node(self, root: Any, s: Any, path: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SchemaInvalid(path, f"the schemas have more than {MAX_NODES} subschemas")
        if depth > MAX_DEPTH:
            raise SchemaInvalid(path, f"the schema is nested more than {MAX_DEPTH} levels deep")
        if isinstance(s, bool):
            return
        if not isinstance(s, dict):
            raise SchemaInvalid(path, "a schema must be an object or a boolean")
        typ = s.get("type")
        if typ is not None:
            names = typ if isinstance(typ, list) else [typ]
            if not names or any(not isinstance(t, str) or t not in TYPES for t in names):
                raise SchemaInvalid(
                    path + "/type",
                    f"'type' must be one of {', '.join(TYPES)} or a list of them, got "
                    f"{json.dumps(typ)[:80]}",
                )
        if "enum" in s and (not isinstance(s["enum"], list) or not s["enum"]):
            raise SchemaInvalid(path + "/enum", "'enum' must be a non-empty array")
        for key in _COUNTS:
            v = s.get(key)
            if v is not None and (not _is_int(v) or not 0 <= v <= MAX_COUNT):
                raise SchemaInvalid(
                    f"{path}/{key}", f"'{key}' must be an integer from 0 to {MAX_COUNT}"
                )
        for lo, hi in (("minItems", "maxItems"), ("minLength", "maxLength"),
                       ("minProperties", "maxProperties"), ("minimum", "maximum")):  # fmt: skip
            a, b = s.get(lo), s.get(hi)
            if _is_num(a) and _is_num(b) and a > b:
                raise SchemaInvalid(path, f"'{lo}' ({a}) is greater than '{hi}' ({b})")
        for key in _BOUNDS:
            v = s.get(key)
            if v is None or (isinstance(v, bool) and key.startswith("exclusive")):
                continue
            if not _is_num(v) or not math.isfinite(v):
                raise SchemaInvalid(f"{path}/{key}", f"'{key}' must be a finite number")
            if key == "multipleOf" and v <= 0:
                raise SchemaInvalid(f"{path}/{key}", "'multipleOf' must be greater than 0")
        if "required" in s:
            req = s["required"]
            if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
                raise SchemaInvalid(path + "/required", "'required' must be an array of strings")
        if "pattern" in s:
            pattern = s["pattern"]
            if not isinstance(pattern, str):
                raise SchemaInvalid(path + "/pattern", "'pattern' must be a string")
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as exc:
                raise SchemaInvalid(path + "/pattern", f"invalid 'pattern': {exc}") from None
        if "format" in s and not isinstance(s["format"], str):
            raise SchemaInvalid(path + "/format", "'format' must be a string")
        if "$ref" in s:
            ref = s["$ref"]
            if not isinstance(ref, str):
                raise SchemaInvalid(path + "/$ref", "'$ref' must be a string")
            resolve(root, ref, path)
        for key in _SCHEMA_LISTS:
            if key in s:
                v = s[key]
                if not isinstance(v, list) or (not v and key != "prefixItems"):
                    raise SchemaInvalid(f"{path}/{key}", f"'{key}' must be a non-empty array")
                for i, sub in enumerate(v):
                    self._node(root, sub, f"{path}/{key}/{i}", depth + 1)
        for key in _SCHEMA_MAPS:
            if key in s:
                v = s[key]
                if not isinstance(v, dict):
                    raise SchemaInvalid(f"{path}/{key}", f"'{key}' must be an object")
                for name, sub in v.items():
                    self._node(root, sub, f"{path}/{key}/{_escape(name)}", depth + 1)
        for key in _SUBSCHEMAS:
            if key in s:
                self._node(root, s[key], f"{path}/{key}", depth + 1)
        if "items" in s:
            items = s["items"]
            if isinstance(items, list):  # draft-04 tuple form
                for i, sub in enumerate(items):
                    self._node(root, sub, f"{path}/items/{i}", depth + 1)
            else:
                self._node(root, items, path + "/items", depth + 1)


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")[:64]


def resolve(root: Any, ref: str, path: str = "") -> Any:
    """The node a local `$ref` points to, or SchemaInvalid."""
    if not ref.startswith("#"):
        raise SchemaInvalid(path + "/$ref", f"only local '$ref' are supported, got {ref[:80]!r}")
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise SchemaInvalid(path + "/$ref", f"'$ref' {ref[:80]!r} points nowhere") from None
    return node


def _refs_end(root: Any) -> None:
    """A `$ref` chain that comes back to where it started describes nothing."""

    def follow(node: Any, seen: list[int]) -> None:
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            if id(node) in seen:
                raise SchemaInvalid("", "'$ref' refers to itself without describing a value")
            seen.append(id(node))
            node = resolve(root, node["$ref"])
            if len(seen) > MAX_NODES:
                raise SchemaInvalid("", "'$ref' chain too long")

    follow(root, [])


def check(schema: Any) -> None:
    """Raise SchemaInvalid if `schema` is malformed or beyond the limits."""
    Checker().check(schema)


# --------------------------------------------------------------------------- minimum size


def min_chars(schema: Any, root: Any | None = None) -> float:
    """The fewest characters of JSON any value valid against `schema` takes (inf: none can)."""
    return _MinSize(schema if root is None else root).size(schema, ())


def min_tokens(schema: Any) -> float:
    """A lower bound on the output tokens of any value valid against `schema`."""
    if schema is None:
        return 0
    chars = min_chars(schema)
    return math.ceil(chars / MAX_CHARS_PER_TOKEN) if math.isfinite(chars) else math.inf


def pattern_min_len(pattern: str) -> int:
    """The fewest characters a match of `pattern` takes (0 when it cannot be parsed)."""
    try:
        return int(_sre.parse(pattern).getwidth()[0])
    except Exception:
        return 0


class _MinSize:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.memo: dict[int, float] = {}

    def size(self, s: Any, stack: tuple[int, ...]) -> float:
        if s is True:
            return 2
        if s is False or not isinstance(s, dict):
            return math.inf
        key = id(s)
        if key in stack:  # the value would have to contain itself
            return math.inf
        if key in self.memo:
            return self.memo[key]
        stack = (*stack, key)
        n = self._size(s, stack)
        self.memo[key] = n
        return n

    def _size(self, s: dict[str, Any], stack: tuple[int, ...]) -> float:
        if "$ref" in s:
            try:
                target = resolve(self.root, s["$ref"])
            except SchemaInvalid:
                return math.inf
            return self.size(target, stack)
        parts = s.get("allOf")
        if isinstance(parts, list) and parts:
            rest = {k: v for k, v in s.items() if k != "allOf"}
            return max([self.size(p, stack) for p in parts] + [self._size(rest, stack)])
        if "const" in s:
            return len(json.dumps(s["const"]))
        if isinstance(s.get("enum"), list) and s["enum"]:
            return min(len(json.dumps(v)) for v in s["enum"])
        for key in ("anyOf", "oneOf"):
            branches = s.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in s.items() if k != key}
                return max(self._size(rest, stack), min(self.size(b, stack) for b in branches))
        typ = s.get("type")
        types = typ if isinstance(typ, list) and typ else [typ]
        return min(self._typed(s, t, stack) for t in types)

    def _typed(self, s: dict[str, Any], typ: Any, stack: tuple[int, ...]) -> float:
        if typ is None:
            if "properties" in s or "required" in s or "minProperties" in s:
                typ = "object"
            elif "items" in s or "prefixItems" in s or "minItems" in s:
                typ = "array"
            else:
                typ = "string"
        if typ == "object":
            return self._object(s, stack)
        if typ == "array":
            return self._array(s, stack)
        if typ == "string":
            lo = s.get("minLength") or 0
            if isinstance(s.get("pattern"), str):
                lo = max(lo, pattern_min_len(s["pattern"]))
            return 2 + lo
        if typ in ("boolean", "null"):
            return 4
        return 1  # a number

    def _object(self, s: dict[str, Any], stack: tuple[int, ...]) -> float:
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        required = [r for r in s.get("required") or () if isinstance(r, str)]
        total = 2.0
        for name in dict.fromkeys(required):
            sub = props.get(name, True)
            total += len(name) + 4 + self.size(sub, stack)
        wanted = s.get("minProperties") or 0
        extra = max(0, wanted - len(set(required)))
        if extra:
            optional = sorted(self.size(v, stack) + len(k) + 4 for k, v in props.items()
                              if k not in required)  # fmt: skip
            additional = s.get("additionalProperties", True)
            if additional is not False:
                entry = 6 + (self.size(additional, stack) if isinstance(additional, dict) else 2)
                optional += [entry] * extra
            if len(optional) < extra:
                return math.inf  # more properties asked for than may exist
            total += sum(optional[:extra])
        if _is_int(s.get("maxProperties")) and s["maxProperties"] < len(set(required)):
            return math.inf
        return total

    def _array(self, s: dict[str, Any], stack: tuple[int, ...]) -> float:
        n = s.get("minItems") or 0
        if not n:
            return 2
        prefix = s.get("prefixItems") if isinstance(s.get("prefixItems"), list) else []
        items = s.get("items", {} if not prefix else False)
        if isinstance(items, list):
            prefix, items = items, s.get("additionalItems", False)
        total = 2.0
        for sub in prefix[:n]:
            total += self.size(sub, stack) + 1
        rest = n - min(n, len(prefix))
        if rest:
            each = 2 if items is True or items == {} else self.size(items, stack)
            total += rest * (each + 1)
        return total
