"""Azure OpenAI: the OpenAI wire formats as Azure serves them.

Routes (see llmsim.server.app): `/openai/deployments/{deployment}/chat/completions`,
`/completions` and `/embeddings` with a required `?api-version=`, and the v1 GA paths
`/openai/v1/chat/completions`, `/completions`, `/embeddings`, `/models` (no api-version). The
deployment is the model: `--azure-deployment NAME=MODEL` maps a name to the model whose latency
profile it gets; unmapped, the name is the model. What Azure adds to OpenAI's bodies is added
here: `prompt_filter_results` and per-choice `content_filter_results` (the content filter found
nothing, as it does for simulated text), a first stream chunk with no choices that carries the
prompt's filter results, and Azure's own 429 body (the retry-after headers are the limiter's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from llmsim.api.errors import ApiError
from llmsim.api.wire import RenderContext, WireFormat
from llmsim.engine.request import EngineRequest, Reply

_SAFE = {"filtered": False, "severity": "safe"}
CONTENT_FILTER_RESULTS = {
    "hate": _SAFE,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            **CONTENT_FILTER_RESULTS,
            "jailbreak": {"filtered": False, "detected": False},
        },
    }
]
# The operation names Azure's 429 message uses.
_OPERATIONS = {
    "openai.chat": "ChatCompletions_Create",
    "openai.completions": "Completions_Create",
    "openai.embeddings": "Embeddings_Create",
}
_FILTERED_APIS = ("openai.chat", "openai.completions")


_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?|preview|latest")


def api_version_error(version: str | None) -> ApiError | None:
    """Azure's answer to a data-plane request whose ?api-version= is missing or malformed.

    Missing: 404 "Resource not found", which is what Azure OpenAI really answers (reported in
    MicrosoftDocs/azure-docs#114602 and by litellm and aisuite users), not a 400. A value that
    is not a version: 400 "API version not supported".
    """
    if not version:
        return ApiError(404, "Resource not found", code="404")
    if not _VERSION.fullmatch(version):
        return ApiError(400, "API version not supported", code="BadRequest")
    return None


def deployment_model(deployments: dict[str, str], name: str) -> str:
    """The model a deployment serves: its --azure-deployment mapping, else its own name."""
    return deployments.get(name, name)


def _azure_error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _has_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content"))
    return bool(choice.get("text"))


def _filtered_chunk(data: bytes) -> bytes:
    """One SSE event with Azure's per-choice content_filter_results added."""
    if not data.startswith(b"data: {"):
        return data
    chunk = json.loads(data[6:])
    for choice in chunk.get("choices") or ():
        choice["content_filter_results"] = CONTENT_FILTER_RESULTS if _has_text(choice) else {}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


class AzureWire:
    """An OpenAI wire format served the Azure way, for one request.

    `model` is the deployment's model (None on the v1 paths: the body's `model`, mapped);
    `api_version` goes into Azure's 429 message.
    """

    def __init__(
        self,
        inner: WireFormat,
        model: str | None = None,
        api_version: str | None = None,
        deployments: dict[str, str] | None = None,
    ) -> None:
        self.inner = inner
        self.name = "azure." + inner.name.split(".", 1)[-1]
        self.model = model
        self.api_version = api_version
        self.deployments = deployments or {}
        # What the pipeline asks a format with getattr: the inner format's answers, so Azure's
        # embeddings skip the window check (it is per input) and stream their large bodies.
        self.checks_limits: bool = getattr(inner, "checks_limits", True)
        render_json = getattr(inner, "render_json", None)
        if render_json is not None and inner.name not in _FILTERED_APIS:
            self.render_json = render_json

    def parse(self, body: Any) -> tuple[EngineRequest, Any]:
        """Set the body's model to the deployment's (on the v1 paths, map the body's own through
        --azure-deployment), then parse with the inner format.
        """
        if isinstance(body, dict):
            if self.model is not None:
                body["model"] = self.model  # the deployment decides, whatever the body says
            elif isinstance(body.get("model"), str):
                body["model"] = deployment_model(self.deployments, body["model"])
        return self.inner.parse(body)

    def render(self, reply: Reply, opts: Any, ctx: RenderContext) -> dict[str, Any]:
        """The inner format's body, with Azure's prompt_filter_results and per-choice
        content_filter_results for chat and completions.
        """
        out = self.inner.render(reply, opts, ctx)
        if self.inner.name in _FILTERED_APIS:
            out["prompt_filter_results"] = PROMPT_FILTER_RESULTS
            for choice in out.get("choices", ()):
                choice["content_filter_results"] = CONTENT_FILTER_RESULTS
        return out

    def stream_events(
        self, reply: Reply, opts: Any, ctx: RenderContext
    ) -> Iterator[tuple[int, bytes]]:
        """The inner format's events; for chat and completions, Azure's first chunk (no choices,
        the prompt's filter results) and content_filter_results on every choice (empty when the
        chunk has no text).
        """
        first = True
        for step, data in self.inner.stream_events(reply, opts, ctx):
            if self.inner.name not in _FILTERED_APIS:
                yield step, data
                continue
            events = [_filtered_chunk(e + b"\n\n") for e in data.split(b"\n\n") if e]
            if first:
                # Azure's first chunk: no choices, the prompt's filter results.
                head = {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": PROMPT_FILTER_RESULTS,
                }
                events.insert(0, b"data: " + json.dumps(head).encode() + b"\n\n")
                first = False
            yield step, b"".join(events)

    def error_body(self, err: ApiError) -> bytes:
        """Azure's own bodies for a 429, an unknown deployment, a bad api-version and an unknown
        URL; other errors in the inner (OpenAI) format's shape.
        """
        if err.status == 429 and err.code in ("rate_limit_exceeded", None):
            retry = err.headers.get("retry-after", "1")
            unit = "token" if err.type == "tokens" else "call"
            operation = _OPERATIONS.get(self.inner.name, "ChatCompletions_Create")
            version = self.api_version or "v1"
            return _azure_error(
                "429",
                f"Requests to the {operation} Operation under Azure OpenAI API version {version} "
                f"have exceeded {unit} rate limit of your current OpenAI S0 pricing tier. "
                f"Please retry after {retry} seconds. Please go here: "
                "https://aka.ms/oai/quotaincrease if you would like to further increase the "
                "default rate limit.",
            )
        if err.code == "model_not_found":
            return _azure_error(
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        if err.code in ("404", "BadRequest"):
            return _azure_error(err.code, err.message)
        if err.code == "unknown_url":
            return _azure_error("404", "Resource not found")
        # Validation errors come through in OpenAI's shape, as Azure passes them on.
        return self.inner.error_body(err)

    def stream_error(self, err: ApiError, sent_events: int = 0) -> bytes:
        """The inner format's error event."""
        return self.inner.stream_error(err, sent_events)

    def limit_error(self, violation: Any) -> ApiError:
        """The inner format's 400 for a request beyond the model's limits."""
        return self.inner.limit_error(violation)
