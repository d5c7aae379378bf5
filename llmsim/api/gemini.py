"""Google Gemini API (generativelanguage v1beta and v1) wire format.

`POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (`?alt=sse` gives SSE,
without it a JSON array streamed element by element), `:countTokens`, `GET /v1beta/models` and
`/v1beta/models/{model}`. Bodies are shaped as Gemini's: `candidates[].content.parts[].text`,
`finishReason` (`STOP`, `MAX_TOKENS`), `safetyRatings`, `usageMetadata`; errors as Google's
`{"error": {"code", "message", "status", "details"}}`, a 429 `RESOURCE_EXHAUSTED` carrying a
`RetryInfo` `retryDelay`. Gemini's REST API takes camelCase and snake_case field names alike, so
this does too. A stream event carries several tokens, as Gemini's do: the stream loop's chunking
(`--chunk-tokens`, default for the gemini family in llmsim.api.wire.API_CHUNK_TOKENS).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmsim.api.errors import ApiError
from llmsim.api.wire import RenderContext
from llmsim.engine.ids import hex_id
from llmsim.engine.request import EngineRequest, Reply
from llmsim.engine.tokens import count_tokens

MAX_CANDIDATES = 8

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
SAFETY_RATINGS = [
    {"category": c, "probability": "NEGLIGIBLE"}
    for c in (
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    )
]
QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_requests"
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)


def _get(obj: dict[str, Any], camel: str) -> Any:
    """A field by its camelCase or snake_case name (Gemini accepts both)."""
    if camel in obj:
        return obj[camel]
    snake = "".join("_" + ch.lower() if ch.isupper() else ch for ch in camel)
    return obj.get(snake)


def invalid(message: str) -> ApiError:
    """Google's 400 INVALID_ARGUMENT with `message`."""
    return ApiError(400, message, type="INVALID_ARGUMENT", code="invalid_argument")


def _parts_text(content: Any, where: str) -> str:
    if not isinstance(content, dict):
        raise invalid(f"Invalid value at '{where}' (type.googleapis.com/google.ai."
                      "generativelanguage.v1beta.Content): expected an object")  # fmt: skip
    parts = content.get("parts")
    if isinstance(parts, dict):  # one Part for the list, as for `contents` (_contents_text)
        parts = [parts]
    if not isinstance(parts, list) or not parts:
        raise invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise invalid(f"Invalid value at '{where}.parts[{i}]': expected an object")
        text = part.get("text")
        if text is not None and not isinstance(text, str):
            raise invalid(f"Invalid value at '{where}.parts[{i}].text' (TYPE_STRING)")
        texts.append(text or "")
    return "\n".join(texts)


def _contents_text(body: dict[str, Any]) -> tuple[str, str]:
    """(all the prompt's text, the last user turn's text) of a request's contents."""
    contents = body.get("contents")
    if contents is None:
        raise invalid("* GenerateContentRequest.contents: contents is not specified")
    if isinstance(contents, dict):
        # Google's JSON parser takes a single value for a repeated field, and Gemini's own REST
        # examples send one Content (`"contents": {"role": "user", "parts": {"text": ...}}`,
        # ai.google.dev function-calling docs): accepted, as the real API does.
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise invalid("Invalid value at 'contents': expected a list of Content")
    texts = []
    for i, content in enumerate(contents):
        role = content.get("role") if isinstance(content, dict) else None
        if role not in (None, "user", "model", "function"):
            raise invalid(f"Please use a valid role: user, model. (contents[{i}].role: {role!r})")
        texts.append(_parts_text(content, f"contents[{i}]"))
    system = _get(body, "systemInstruction")
    if system is not None:
        texts.insert(0, _parts_text(system, "system_instruction"))
    return "\n".join(texts), texts[-1]


def _int_field(config: dict[str, Any], name: str, lo: int, hi: int | None) -> int | None:
    v = _get(config, name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(f"Invalid value at 'generation_config.{name}' (TYPE_INT32), {v!r}")
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise invalid(f"generation_config.{name} must be {bound}, got {v}")
    return v


@dataclass
class GeminiOptions:
    """How to render: streaming or not, SSE or a JSON array."""

    stream: bool = False
    sse: bool = True
    media_type: str = "text/event-stream"


def prompt_tokens(body: Any, model: str) -> int:
    """Gemini's promptTokenCount for a request body (also what :countTokens answers)."""
    if isinstance(body, dict) and isinstance(_get(body, "generateContentRequest"), dict):
        body = _get(body, "generateContentRequest")
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received: expected an object")
    text, _ = _contents_text(body)
    return max(1, count_tokens(text, model))


def parse_request(body: Any, model: str, stream: bool, sse: bool) -> tuple[EngineRequest, Any]:
    """Validate a generateContent body and build the engine's request."""
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received: expected an object")
    text, last = _contents_text(body)
    config = _get(body, "generationConfig") or {}
    if not isinstance(config, dict):
        raise invalid("Invalid value at 'generation_config': expected an object")
    max_tokens = _int_field(config, "maxOutputTokens", 1, None)
    n = _int_field(config, "candidateCount", 1, MAX_CANDIDATES) or 1
    seed = _int_field(config, "seed", -(2**31), 2**31 - 1)
    stops = _get(config, "stopSequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("Invalid value at 'generation_config.stop_sequences': expected strings")
    if len(stops) > 5:
        raise invalid("generation_config.stop_sequences: at most 5 stop sequences")
    for name in ("temperature", "topP"):
        v = _get(config, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise invalid(f"Invalid value at 'generation_config.{name}' (TYPE_FLOAT), {v!r}")
    media = "text/event-stream" if sse else "application/json"
    req = EngineRequest(
        model=model,
        prompt_tokens=max(1, count_tokens(text, model)),
        max_tokens=max_tokens,
        n=n,
        stop=tuple(stops),
        seed=seed,
        stream=stream,
        prompt_text=last,
        fingerprint=json.dumps(body.get("contents"), sort_keys=True) if seed is not None else "",
    )
    return req, GeminiOptions(stream=stream, sse=sse, media_type=media)


def _usage(reply: Reply, candidates_tokens: int) -> dict[str, Any]:
    return {
        "promptTokenCount": reply.prompt_tokens,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": reply.prompt_tokens + candidates_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}],
    }


def render(reply: Reply, response_id: str) -> dict[str, Any]:
    """The non-streaming GenerateContentResponse: one candidate per choice, usageMetadata,
    the model as modelVersion and the request's responseId.
    """
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": c.text}], "role": "model"},
                "finishReason": _FINISH.get(c.finish_reason, "STOP"),
                "safetyRatings": SAFETY_RATINGS,
                "index": c.index,
            }
            for c in reply.choices
        ],
        "usageMetadata": _usage(reply, reply.completion_tokens),
        "modelVersion": reply.model,
        "responseId": response_id,
    }


def stream_events(
    reply: Reply, opts: GeminiOptions, response_id: str
) -> Iterator[tuple[int, bytes]]:
    """(step, bytes): one GenerateContentResponse per step of the reply's chunking (several
    tokens each: Gemini's default chunk size is the stream loop's, see api_chunk_tokens).

    SSE: `data: {…}\\r\\n\\r\\n` per event; without alt=sse the elements of one JSON array, sent
    as they are due (`[{…}`, `,\\r\\n{…}`, …, `]`), which is how Gemini streams it.
    """
    steps = max(reply.steps, 1)
    for step in range(steps):
        last = step == steps - 1
        candidates = []
        for c in reply.choices:
            own = reply.steps_of(c)
            piece = reply.text_at(c, step) if step < own else ""
            cand: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}}
            if step == max(own, 1) - 1:  # this choice's last piece
                cand["finishReason"] = _FINISH.get(c.finish_reason, "STOP")
                cand["safetyRatings"] = SAFETY_RATINGS
            cand["index"] = c.index
            if piece or "finishReason" in cand:
                candidates.append(cand)
        end = reply.step_end(step)
        sent = sum(min(len(c.tokens), end) for c in reply.choices)
        chunk = {
            "candidates": candidates,
            "usageMetadata": _usage(reply, sent),
            "modelVersion": reply.model,
            "responseId": response_id,
        }
        data = json.dumps(chunk, separators=(",", ":"))
        if opts.sse:
            out = f"data: {data}\r\n\r\n"
        else:
            out = ("[" if step == 0 else ",\r\n") + data + ("]" if last else "")
        yield step, out.encode()


def error_json(err: ApiError) -> dict[str, Any]:
    """Google's error body for an ApiError raised anywhere in the pipeline."""
    status = _STATUS.get(err.status, "UNKNOWN" if err.status >= 500 else "INVALID_ARGUMENT")
    message = err.message
    details: list[dict[str, Any]] = []
    if err.status == 429:
        message = QUOTA_MESSAGE
        retry = err.headers.get("retry-after-ms")
        delay = f"{int(retry) / 1000:g}s" if retry else f"{err.headers.get('retry-after', '1')}s"
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": QUOTA_METRIC, "quotaId": "llmsim"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
        ]
    if err.code == "model_not_found":
        model = err.message.split("`")[1] if "`" in err.message else "model"
        message = (
            f"models/{model} is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their "
            "supported methods."
        )
    body: dict[str, Any] = {"code": err.status, "message": message, "status": status}
    if details:
        body["details"] = details
    return {"error": body}


def not_found(what: str) -> ApiError:
    """Google's 404 NOT_FOUND for an unknown model or method, with `what` as the message."""
    return ApiError(404, what, type="NOT_FOUND", code="not_found")


def model_info(model: str) -> dict[str, Any]:
    """A Model resource as GET /v1beta/models returns it."""
    # Gemini 2.x's published limits; other names get a common 128k window.
    context, output = (1_048_576, 65_536) if model.startswith("gemini") else (128_000, 16_384)
    return {
        "name": f"models/{model}",
        "version": "001",
        "displayName": model,
        "description": f"{model}, simulated by llmsim",
        "inputTokenLimit": context,
        "outputTokenLimit": output,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2,
    }


class GeminiWire:
    """The Gemini wire format for one request (the model and the method come from the URL)."""

    name = "gemini.generate"
    # Gemini's models publish an input token limit and an output limit, each checked alone.
    window_counts_output = False

    def __init__(self, model: str = "", stream: bool = False, sse: bool = True) -> None:
        self.model = model
        self.stream = stream
        self.sse = sse
        self.response_id = hex_id(11)

    def parse(self, body: Any) -> tuple[EngineRequest, GeminiOptions]:
        """Validate a generateContent body for the URL's model; see parse_request."""
        return parse_request(body, self.model, self.stream, self.sse)

    def render(self, reply: Reply, opts: GeminiOptions, ctx: RenderContext) -> dict[str, Any]:
        """The GenerateContentResponse body (render)."""
        return render(reply, self.response_id)

    def stream_events(
        self, reply: Reply, opts: GeminiOptions, ctx: RenderContext
    ) -> Iterator[tuple[int, bytes]]:
        """The streamGenerateContent events (stream_events): SSE, or a JSON array's elements."""
        return stream_events(reply, opts, self.response_id)

    def error_body(self, err: ApiError) -> bytes:
        """Google's error body (error_json) as JSON bytes."""
        return json.dumps(error_json(err)).encode()

    def stream_error(self, err: ApiError, sent_events: int = 0) -> bytes:
        """The error inside a stream: an SSE event; without alt=sse the JSON array's last element,
        opening the array too when `sent_events` is 0.
        """
        data = json.dumps(error_json(err))
        if self.sse:
            return f"data: {data}\r\n\r\n".encode()
        return (("," if sent_events else "[") + data + "]").encode()

    def limit_error(self, violation: Any) -> ApiError:
        """Gemini's 400 for a request beyond the model's limits."""
        if violation.kind == "context":
            return invalid(
                f"The input token count ({violation.prompt_tokens}) exceeds the maximum number "
                f"of tokens allowed ({violation.limit})."
            )
        if violation.kind == "total_output":  # candidateCount x maxOutputTokens
            return invalid(
                f"Unable to submit request because candidateCount x maxOutputTokens is "
                f"{violation.requested} output tokens, above this server's limit of "
                f"{violation.limit} per request. Update the values and try again."
            )
        return invalid(
            f"Unable to submit request because it has a maxOutputTokens value of "
            f"{violation.requested} but the supported range is from 1 (inclusive) to "
            f"{violation.limit + 1} (exclusive). Update the value and try again."
        )
