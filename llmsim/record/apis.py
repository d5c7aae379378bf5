"""What a request to each provider API looks like on the wire: its API, model and stream flag,
its conversation (what makes two requests "the same"), and where the text and usage are in
its response, streamed or not.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

_AZURE = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)$")
_GEMINI = re.compile(r"^/v1(?:beta)?/models/([^/:]+):(generateContent|streamGenerateContent)$")
_OPENAI = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
}


@dataclass
class RequestInfo:
    """What the recording reads from a request (in the analysis process, after the exchange)."""

    api: str
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    key: str | None = None  # request_key(): same model and conversation, same key


def api_for_path(path: str) -> tuple[str, str | None]:
    """(api, model named by the path) for a request path; api "other" when not an LLM API."""
    if path.startswith("/anthropic/"):
        path = path[len("/anthropic") :]
    if path in _OPENAI:
        return _OPENAI[path], None
    if path.startswith("/v1/models/"):
        return "models", None
    if path in ("/v1/messages", "/v1/messages/count_tokens"):
        return ("anthropic" if path == "/v1/messages" else "other"), None
    m = _AZURE.match(path)
    if m:
        return "azure-" + m.group(2).replace("/", "-").replace("chat-completions", "chat"), m[1]
    m = _GEMINI.match(path)
    if m:
        return "gemini", m.group(1)
    return "other", None


def conversation(body: dict[str, Any]) -> Any:
    """The part of a request body that says what is asked, whatever the API."""
    for fields in (("system", "messages"), ("instructions", "input"), ("prompt",)):
        if fields[-1] in body:
            return [body.get(f) for f in fields]
    if "contents" in body:
        return [body.get("systemInstruction"), body.get("contents")]
    if "input" in body:
        return [body.get("input")]
    return None


def request_key(model: str | None, body: Any) -> str | None:
    """A digest of model and conversation: the recording stores it (never the prompt itself,
    unless asked) and replay matches on it."""
    if not isinstance(body, dict) or model is None:
        return None
    conv = conversation(body)
    if conv is None:
        return None
    text = json.dumps([model, conv], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    cfg = body.get("generationConfig")
    if isinstance(cfg, dict) and isinstance(cfg.get("maxOutputTokens"), int):
        return cfg["maxOutputTokens"]
    return None


def read_request(path: str, query: str, raw: bytes) -> RequestInfo:
    """Parse what the recording needs from a request; never raises (a bad body was forwarded
    as it is, and the upstream answered it)."""
    api, path_model = api_for_path(path)
    info = RequestInfo(api, path_model)
    if api == "gemini":
        info.stream = path.endswith(":streamGenerateContent")
    if not raw:
        return info
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return info
    if not isinstance(body, dict):
        return info
    if isinstance(body.get("model"), str) and info.model is None:
        info.model = body["model"]
    if api != "gemini":
        info.stream = body.get("stream") is True
    info.max_tokens = _max_tokens(body)
    info.key = request_key(info.model, body)
    return info


@dataclass
class Extracted:
    """What one response carries: text per content event, usage and how it ended."""

    texts: list[str] = field(default_factory=list)  # content events' text, in order
    content_index: list[int] = field(default_factory=list)  # which SSE event each text is
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    error: Any = None  # an error object sent inside the stream
    model: str | None = None


def _chat_delta_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or {}
    text = delta.get("content") or ""
    if delta.get("reasoning_content"):
        text = delta["reasoning_content"] + text
    for call in delta.get("tool_calls") or ():
        fn = call.get("function") or {}
        text += (fn.get("name") or "") + (fn.get("arguments") or "")
    return text


def stream_event(api: str, data: Any, out: Extracted) -> str:
    """Fold one decoded SSE data object into `out`; the content text it carries ('' if none)."""
    if not isinstance(data, dict):
        return ""
    if "error" in data and data.get("type") in (None, "error"):
        out.error = data["error"]
        return ""
    if isinstance(data.get("model"), str):
        out.model = data["model"]
    if api in ("chat", "azure-chat", "completions", "azure-completions"):
        usage = data.get("usage")
        if isinstance(usage, dict):
            out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
            out.output_tokens = usage.get("completion_tokens", out.output_tokens)
        text = ""
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                out.finish_reason = choice["finish_reason"]
            text += choice.get("text") or "" if "text" in choice else _chat_delta_text(choice)
        return text
    if api == "anthropic":
        kind = data.get("type")
        if kind == "message_start":
            msg = data.get("message") or {}
            out.model = msg.get("model", out.model)
            out.prompt_tokens = (msg.get("usage") or {}).get("input_tokens", out.prompt_tokens)
        elif kind == "message_delta":
            out.output_tokens = (data.get("usage") or {}).get("output_tokens", out.output_tokens)
            out.finish_reason = (data.get("delta") or {}).get("stop_reason") or out.finish_reason
        elif kind == "content_block_delta":
            d = data.get("delta") or {}
            return d.get("text") or d.get("partial_json") or d.get("thinking") or ""
        return ""
    if api == "responses":
        kind = data.get("type", "")
        if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
            return data.get("delta") or ""
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            resp = data.get("response") or {}
            usage = resp.get("usage") or {}
            out.prompt_tokens = usage.get("input_tokens", out.prompt_tokens)
            out.output_tokens = usage.get("output_tokens", out.output_tokens)
            out.finish_reason = resp.get("status")
            if kind == "response.failed":
                out.error = resp.get("error") or {"type": "response.failed"}
        return ""
    if api == "gemini":
        return _gemini(data, out)
    return ""


def _gemini(data: dict[str, Any], out: Extracted) -> str:
    usage = data.get("usageMetadata") or {}
    out.prompt_tokens = usage.get("promptTokenCount", out.prompt_tokens)
    out.output_tokens = usage.get("candidatesTokenCount", out.output_tokens)
    text = ""
    for cand in data.get("candidates") or ():
        if cand.get("finishReason"):
            out.finish_reason = cand["finishReason"]
        for part in (cand.get("content") or {}).get("parts") or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                text += part["text"]
    return text


def whole_body(api: str, body: Any) -> Extracted:
    """The text and usage of a non-streamed response body."""
    out = Extracted()
    if not isinstance(body, dict):
        return out
    if isinstance(body.get("model"), str):
        out.model = body["model"]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    text = ""
    if api in ("chat", "azure-chat", "completions", "azure-completions", "embeddings"):
        out.prompt_tokens = usage.get("prompt_tokens")
        out.output_tokens = usage.get("completion_tokens")
        for choice in body.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            out.finish_reason = choice.get("finish_reason") or out.finish_reason
            msg = choice.get("message") or {}
            text += choice.get("text") or msg.get("content") or ""
    elif api == "anthropic":
        out.prompt_tokens = usage.get("input_tokens")
        out.output_tokens = usage.get("output_tokens")
        out.finish_reason = body.get("stop_reason")
        for block in body.get("content") or ():
            if isinstance(block, dict):
                text += block.get("text") or block.get("thinking") or ""
    elif api == "responses":
        out.prompt_tokens = usage.get("input_tokens")
        out.output_tokens = usage.get("output_tokens")
        out.finish_reason = body.get("status")
        for item in body.get("output") or ():
            for part in (item.get("content") or ()) if isinstance(item, dict) else ():
                if isinstance(part, dict):
                    text += part.get("text") or ""
    elif api == "gemini":
        text = _gemini(body, out)
    if text:
        out.texts.append(text)
    return out
