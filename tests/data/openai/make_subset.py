"""Regenerate openapi.yaml here from OpenAI's full published spec (run by hand, not by tests).

python tests/data/openai/make_subset.py /path/to/openai/openapi.yaml
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOTS = (
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse", "CreateEmbeddingResponse", "ErrorResponse",
    "ListModelsResponse", "Response", "ResponseStreamEvent",
    "CreateChatCompletionRequest", "CreateEmbeddingRequest", "CreateResponse",
    "CreateCompletionRequest",
)  # fmt: skip
OPERATIONS = ("createChatCompletion", "createEmbedding", "createResponse")
HEADER = """\
# A subset of OpenAI's published OpenAPI spec (github.com/openai/openai-openapi, MIT licence in
# LICENSE beside this file): the schemas the tests validate against and what they reference,
# and the request bodies of createChatCompletion, createEmbedding and createResponse.
# Made by make_subset.py beside it.
"""


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def main(source: str) -> None:
    raw = yaml.load(Path(source).read_text("utf-8"), Loader=yaml.CSafeLoader)
    schemas = raw["components"]["schemas"]
    paths: dict = {}
    for path, ops in raw["paths"].items():
        for method, op in ops.items():
            if isinstance(op, dict) and op.get("operationId") in OPERATIONS:
                body = op.get("requestBody")
                paths.setdefault(path, {})[method] = {
                    "operationId": op["operationId"],
                    "requestBody": body,
                }
    seen: set[str] = set()
    stack = [*ROOTS, *(re.sub(r".*/", "", r) for r in _refs(paths))]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(re.sub(r".*/", "", r) for r in _refs(schemas[name]))
    out = {
        "openapi": raw["openapi"],
        "info": raw["info"],
        "paths": paths,
        "components": {"schemas": {k: schemas[k] for k in sorted(seen)}},
    }
    target = Path(__file__).with_name("openapi.yaml")
    target.write_text(HEADER + yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=100))


if __name__ == "__main__":
    main(sys.argv[1])
