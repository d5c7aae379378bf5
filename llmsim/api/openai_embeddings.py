"""OpenAI embeddings wire format: POST /v1/embeddings.

Vectors are deterministic unit vectors drawn from a seed that hashes the model and the input
text (token-id inputs are decoded first, so "hi" and its token ids embed alike). `dimensions`
shortens the model's full vector and re-normalises it, which is how OpenAI's text-embedding-3
models behave, so a short vector is a prefix of the long one up to scale. `encoding_format`
base64 is the float32 little-endian bytes of the vector, as OpenAI sends it. The request goes
through the pipeline with no tokens to generate: its latency is the TTFT (plus prefill) only.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import orjson

from llmsim.api.errors import ApiError, below_min, invalid_type, missing
from llmsim.api.params import body_and_model
from llmsim.api.tools import invalid_value
from llmsim.api.wire import OpenAIErrors, RenderContext
from llmsim.engine.request import EngineRequest, Reply
from llmsim.engine.tokens import encoding_for_model, exact_len

MODEL_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_DIMENSIONS = 1536
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


@dataclass
class EmbeddingOptions:
    """How to render embeddings: the input texts, the vector length and whether vectors are sent
    as base64 instead of float arrays.
    """

    stream: bool = False  # embeddings never stream
    texts: list[str] = field(default_factory=list)
    dimensions: int = DEFAULT_DIMENSIONS
    base64: bool = False


def model_dimensions(model: str) -> int:
    """A model's full vector length: that of the text-embedding model its name starts with
    (ignoring any provider/ prefix), else DEFAULT_DIMENSIONS.
    """
    name = model.lower().rsplit("/", 1)[-1]
    return next((d for m, d in MODEL_DIMENSIONS.items() if name.startswith(m)), DEFAULT_DIMENSIONS)


def supports_dimensions(model: str) -> bool:
    """Whether the model takes `dimensions` (ada-002 does not, as on OpenAI)."""
    return "ada-002" not in model.lower()


def _inputs(body: dict[str, Any], model: str) -> tuple[list[str], list[int]]:
    """The inputs as text and each one's token count."""
    raw = body.get("input")
    if raw is None:
        raise missing("input")
    enc = encoding_for_model(model)

    def text_of(value: Any, where: str) -> tuple[str, int]:
        if isinstance(value, str):
            if not value:
                raise ApiError(
                    400,
                    f"'$.{where}' is invalid. Please check the API reference: "
                    "https://platform.openai.com/docs/api-reference.",
                    param=where,
                )
            return value, exact_len(enc, value)
        if (
            isinstance(value, list)
            and value
            and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        ):
            try:
                return enc.decode(value), len(value)
            except Exception:
                raise ApiError(400, f"Invalid token id in '{where}'.", param=where) from None
        raise invalid_type(where, "a string or an array of token ids", value)

    if isinstance(raw, str):
        items = [text_of(raw, "input")]
    elif isinstance(raw, list) and raw:
        if all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
            items = [text_of(raw, "input")]
        else:
            if len(raw) > MAX_INPUTS:
                raise ApiError(
                    400,
                    f"Invalid 'input': array too long. Expected an array with maximum length "
                    f"{MAX_INPUTS}, but got an array with length {len(raw)} instead.",
                    param="input",
                    code="array_above_max_length",
                )
            items = [text_of(v, f"input[{i}]") for i, v in enumerate(raw)]
    else:
        raise invalid_type("input", "a string or a non-empty array", raw)
    counts = [n for _, n in items]
    for n in counts:
        if n > MAX_INPUT_TOKENS:
            raise ApiError(
                400,
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                f"requested {n} tokens ({n} in your prompt; 0 for the completion). Please reduce "
                "your prompt; or completion length.",
                param="input",
            )
    if sum(counts) > MAX_REQUEST_TOKENS:
        raise ApiError(
            400,
            f"Requested {sum(counts)} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
            param="input",
            code="max_tokens_per_request",
        )
    return [t for t, _ in items], counts


def parse_embeddings_request(body: Any) -> tuple[EngineRequest, EmbeddingOptions]:
    """Validate an embeddings body the way OpenAI does and build the engine's request: the inputs'
    tokens as the prompt and nothing to generate.
    """
    body, model = body_and_model(body)
    texts, counts = _inputs(body, model)
    fmt = body.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise invalid_value(
            "encoding_format",
            f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
        )
    full = model_dimensions(model)
    dims = body.get("dimensions")
    if dims is not None:
        if not isinstance(dims, int) or isinstance(dims, bool):
            raise invalid_type("dimensions", "an integer", dims)
        if not supports_dimensions(model):
            raise ApiError(
                400, "This model does not support specifying dimensions.", param="dimensions"
            )
        if dims < 1:
            raise below_min("dimensions", 1, dims, integer=True)
        if dims > full:
            raise ApiError(
                400,
                f"Invalid value for 'dimensions' = {dims}. Must be less than or equal to {full}.",
                param="dimensions",
                code="invalid_value",
            )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid_type("user", "a string", user)
    # Nothing to generate: the pipeline answers when the first token would be due.
    req = EngineRequest(model=model, prompt_tokens=sum(counts), max_tokens=0, n=0)
    return req, EmbeddingOptions(texts=texts, dimensions=dims or full, base64=fmt == "base64")


def embedding(model: str, text: str, dimensions: int | None = None) -> np.ndarray:
    """The unit vector (float32) for a text: the same text and model always give the same one."""
    full = model_dimensions(model)
    digest = hashlib.blake2b(f"{model}\x00{text}".encode(), digest_size=16).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    vec = rng.standard_normal(full)[: dimensions or full]
    vec /= np.linalg.norm(vec)
    return vec.astype("<f4")


def render(reply: Reply, opts: EmbeddingOptions) -> dict[str, Any]:
    """The embeddings list body as one dict (render_json writes the same body in pieces)."""
    data = []
    for i, text in enumerate(opts.texts):
        vec = embedding(reply.model, text, opts.dimensions)
        value: Any = base64.b64encode(vec.tobytes()).decode() if opts.base64 else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": reply.model,
        "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
    }


def render_json(reply: Reply, opts: EmbeddingOptions) -> Iterator[bytes]:
    """render() as JSON, in pieces of one vector each (the response body, in order).

    A 2,048-input batch of 3,072 floats as one dict of lists held ~700 MB of Python floats,
    and joining it into one 80 MB string and encoding it were single C calls that held the
    interpreter for hundreds of milliseconds. Pieces are made one by one instead, so the
    server can let other streams run between them, and with orjson: `json.dumps` of one
    3,072-float vector took 4.2 ms, orjson 0.19 ms, for the same values (both write the
    shortest repr that reads back as the same float).
    """
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    yield b'{"object":"list","data":['
    for i, text in enumerate(opts.texts):
        vec = embedding(reply.model, text, opts.dimensions)
        if opts.base64:
            value = orjson.dumps(base64.b64encode(vec.tobytes()).decode())
        else:
            value = orjson.dumps(vec.tolist())  # exact: equal to what base64 carries
        sep = b"," if i else b""
        yield b'%s{"object":"embedding","index":%d,"embedding":%s}' % (sep, i, value)
    yield b'],"model":%s,"usage":%s}' % (orjson.dumps(reply.model), orjson.dumps(usage))


class OpenAIEmbeddings(OpenAIErrors):
    """The embeddings wire format for the server pipeline (never streamed)."""

    name = "openai.embeddings"
    checks_limits = False  # an embedding's window is per input; nothing is generated

    def parse(self, body: Any) -> tuple[EngineRequest, EmbeddingOptions]:
        """Validate an embeddings body; see parse_embeddings_request."""
        return parse_embeddings_request(body)

    def render(self, reply: Reply, opts: EmbeddingOptions, ctx: RenderContext) -> dict[str, Any]:
        """The embeddings list body as a dict (render)."""
        return render(reply, opts)

    def render_json(
        self, reply: Reply, opts: EmbeddingOptions, ctx: RenderContext
    ) -> Iterator[bytes]:
        """The JSON body in pieces of one vector each (render_json), used instead of render."""
        return render_json(reply, opts)

    def stream_events(self, reply: Reply, opts: EmbeddingOptions, ctx: RenderContext) -> NoReturn:
        """Always raises NotImplementedError: embeddings have no stream."""
        raise NotImplementedError("embeddings are not streamed")
