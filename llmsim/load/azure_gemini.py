"""Locust users for Azure OpenAI and Google Gemini, with the chat user's metrics.

Like the other APIs' users (llmsim/load/apis.py) each is a small `LLMUser` subclass: its path,
key header, body and reader; the `--llm-…` options, TTFT/ITL/TPOT/E2E, tokens, error kinds and
Locust rows are the base user's.

- AzureOpenAIUser: POST {host}/openai/deployments/{model}/chat/completions?api-version=…, key
  in `api-key`. `model` (`--llm-model`) is the deployment name. Azure's first stream chunk has
  no choices (it carries prompt_filter_results) and does not count as output.
- GeminiUser: POST {host}/v1beta/models/{model}:streamGenerateContent?alt=sse (or
  :generateContent), key in `x-goog-api-key`. A Gemini event carries several tokens: TTFT is the
  first event with text and ITL the gaps between events, as a client sees them; output tokens
  come from `usageMetadata.candidatesTokenCount`, so TPOT is per token.

`host` is the service's origin (https://generativelanguage.googleapis.com, https://NAME.openai.
azure.com, or llmsim's http://127.0.0.1:8080); a trailing /v1, as OpenAI base URLs have, is
dropped, so bench's --target works for every API.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from llmsim.load import errors as E
from llmsim.load.base import LLMUser
from llmsim.load.stream import EventReader, StreamState, parse_event_json
from llmsim.load.users import OpenAIChatUser


class AzureOpenAIUser(OpenAIChatUser):
    """Streams Azure OpenAI chat completions of deployment `model`."""

    abstract = True
    api_version: str = "2024-10-21"

    def request_path(self, stream: bool) -> str:
        """The deployment's chat completions path with ?api-version=`api_version` (streamed or not);
        a /v1 ending the host's path is dropped.
        """
        base = self.base_path.removesuffix("/v1")
        deployment = self.llm.model
        return (
            f"{base}/openai/deployments/{deployment}/chat/completions"
            f"?api-version={self.api_version}"
        )

    def auth_headers(self) -> dict[str, str]:
        """`api-key` from --llm-api-key, else $AZURE_OPENAI_API_KEY; no header without a key."""
        key = self.llm.api_key or os.environ.get("AZURE_OPENAI_API_KEY")
        return {"api-key": key} if key else {}

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """The chat body without `model`: the deployment in the path names the model."""
        body = super().build_body(messages, max_tokens)
        body.pop("model", None)  # the deployment in the path is the model
        return body


def gemini_contents(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI-style messages as Gemini's `contents` and `systemInstruction`."""
    body: dict[str, Any] = {
        "contents": [
            {
                "role": "model" if m.get("role") == "assistant" else "user",
                "parts": [{"text": str(m.get("content") or "")}],
            }
            for m in messages
            if m.get("role") != "system"
        ]
    }
    system = [str(m.get("content") or "") for m in messages if m.get("role") == "system"]
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    return body


def _candidate_text(cand: dict[str, Any]) -> str:
    parts = (cand.get("content") or {}).get("parts") or ()
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict))


def _usage(st: StreamState, obj: dict[str, Any]) -> None:
    u = obj.get("usageMetadata") or {}
    out = u.get("candidatesTokenCount")
    if isinstance(out, int):
        st.usage = {"prompt_tokens": u.get("promptTokenCount"), "completion_tokens": out}


class GeminiReader(EventReader):
    """GenerateContentResponse events (`alt=sse`); the one with a finishReason ends it."""

    end_marker = "a finishReason"
    ends_with_body = True  # Gemini sends no end event: the body's end is the stream's
    whole_name = "GenerateContentResponse"

    def event(self, name: bytes | None, data: bytes, now: float, st: StreamState) -> bool:
        """Time each candidate's text as output and keep usageMetadata's counts; True once a
        candidate has a finishReason. An event with `error` raises STREAM_ERROR_EVENT.
        """
        obj = parse_event_json(data)
        if "error" in obj:
            raise E.LLMError(E.STREAM_ERROR_EVENT, str(obj["error"].get("message") or "error"))
        _usage(st, obj)
        done = False
        for cand in obj.get("candidates") or ():
            text = _candidate_text(cand)
            if text:
                st.output(now, text)
            if cand.get("finishReason"):
                st.finish_reason = cand["finishReason"]
                done = True
        return done

    def whole(self, obj: Any, st: StreamState) -> None:
        """The first candidate's text and finishReason, and usageMetadata's token counts."""
        cand = obj["candidates"][0]
        st.text.append(_candidate_text(cand))
        st.finish_reason = cand.get("finishReason")
        _usage(st, obj)


class GeminiUser(LLMUser):
    """Streams Gemini generateContent (SSE) of `model` with the chat user's metrics."""

    abstract = True
    model = "gemini-2.5-flash"
    api_version_path: str = "/v1beta"
    reader: ClassVar[EventReader] = GeminiReader()

    def request_path(self, stream: bool) -> str:
        """{base}/v1beta/models/{model}:streamGenerateContent?alt=sse when streaming, else
        :generateContent; a /v1 ending the host's path is dropped.
        """
        base = self.base_path.removesuffix("/v1")
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{base}{self.api_version_path}/models/{self.llm.model}:{method}"

    def auth_headers(self) -> dict[str, str]:
        """`x-goog-api-key` from --llm-api-key, else $GEMINI_API_KEY, else $GOOGLE_API_KEY; no
        header without a key."""
        key = (
            self.llm.api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        )
        return {"x-goog-api-key": key} if key else {}

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """Gemini `contents` and `systemInstruction`, maxOutputTokens and temperature in
        `generationConfig` when set, and --llm-body fields; stream and ignore_eos are not sent.
        """
        body = gemini_contents(messages)
        config: dict[str, Any] = {}
        if max_tokens is not None:
            config["maxOutputTokens"] = max_tokens
        if self.llm.temperature is not None:
            config["temperature"] = self.llm.temperature
        if config:
            body["generationConfig"] = config
        body.update(self.llm.extra_body)
        return body

    def is_streaming(self, body: dict[str, Any]) -> bool:
        """--llm-no-stream alone decides: the choice is in the URL, the body has no stream field."""
        return self.llm.stream  # in the URL, not the body: Gemini refuses unknown fields


__all__ = ["AzureOpenAIUser", "GeminiReader", "GeminiUser", "gemini_contents"]
