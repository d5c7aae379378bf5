"""Locust users for Anthropic Messages, OpenAI Responses, legacy completions and embeddings.

Each is `LLMUser` with its own path, body and reader (llmsim/load/readers.py says what counts as
output in each), so the workload options (`--llm-…`), the metrics, the error kinds and the Locust
rows are the chat user's.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from llmsim.load.base import LLMUser
from llmsim.load.readers import (
    AnthropicReader,
    CompletionsReader,
    EmbeddingsReader,
    ResponsesReader,
)
from llmsim.load.stream import EventReader
from llmsim.load.workload import prompt_text


class AnthropicMessagesUser(LLMUser):
    """Streams Anthropic Messages (POST {host}/v1/messages) with the chat user's metrics.

    `host` is the API's base URL, as the anthropic SDK takes it (http://host:port, or with
    /anthropic or /v1 after it). The key comes from --llm-api-key or $ANTHROPIC_API_KEY.
    """

    abstract = True
    model = "claude-sonnet-4"
    api_path = "/messages"
    reader: ClassVar[EventReader] = AnthropicReader()
    anthropic_version = "2023-06-01"
    default_max_tokens = 1024  # max_tokens is required by the API

    def request_path(self, stream: bool) -> str:
        """{base}/v1/messages: /v1 is added unless the host's path already ends with it."""
        base = self.base_path if self.base_path.endswith("/v1") else self.base_path + "/v1"
        return base + self.api_path

    def auth_headers(self) -> dict[str, str]:
        """`anthropic-version`, and `x-api-key` when there is a key: --llm-api-key, else
        $ANTHROPIC_API_KEY (never $OPENAI_API_KEY, which the OpenAI users read).
        """
        headers = {"anthropic-version": self.anthropic_version}
        key = self.llm.api_key or os.environ.get("ANTHROPIC_API_KEY")
        if key:
            headers["x-api-key"] = key
        return headers

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """A Messages body: system turns joined into `system`, the other turns as `messages`.

        max_tokens falls back to `default_max_tokens` (the API requires one); stream, ignore_eos,
        temperature and --llm-body fields are added, stream_options is not.
        """
        system = [m["content"] for m in messages if m.get("role") == "system"]
        body: dict[str, Any] = {
            "model": self.llm.model,
            "max_tokens": max_tokens or self.default_max_tokens,
            "messages": [m for m in messages if m.get("role") != "system"],
        }
        if system:
            body["system"] = "\n\n".join(system)
        return self.common_fields(body, stream_options=False)


class OpenAIResponsesUser(LLMUser):
    """Streams OpenAI Responses (POST {host}/responses) with the chat user's metrics."""

    abstract = True
    api_path = "/responses"
    reader: ClassVar[EventReader] = ResponsesReader()

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """A Responses body: the messages as `input`, max_tokens as `max_output_tokens`, and the
        shared fields without stream_options (usage arrives with response.completed).
        """
        body: dict[str, Any] = {"model": self.llm.model, "input": messages}
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
        return self.common_fields(body, stream_options=False)


class OpenAICompletionsUser(LLMUser):
    """Streams legacy completions (POST {host}/completions): the prompt is the turns' text."""

    abstract = True
    model = "gpt-3.5-turbo-instruct"
    api_path = "/completions"
    reader: ClassVar[EventReader] = CompletionsReader()

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """A legacy completions body: `prompt` is the non-system turns' text (prompt_text), plus
        max_tokens and the shared fields with stream_options.
        """
        body: dict[str, Any] = {"model": self.llm.model, "prompt": prompt_text(messages)}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return self.common_fields(body, stream_options=True)


class OpenAIEmbeddingsUser(LLMUser):
    """Embeds the workload's prompts (POST {host}/embeddings): E2E and input tokens.

    `inputs_per_request` prompts go in each request (a batch); --llm-prompt-tokens sets their
    length. There is no stream and no output, so TTFT, ITL and TPOT stay empty.
    """

    abstract = True
    model = "text-embedding-3-small"
    api_path = "/embeddings"
    reader: ClassVar[EventReader] = EmbeddingsReader()
    inputs_per_request: int = 1
    dimensions: int | None = None
    encoding_format: str = "float"

    def is_streaming(self, body: dict[str, Any]) -> bool:
        """Always False: an embeddings reply is one JSON body, whatever --llm-no-stream says."""
        return False

    def send_next(
        self, scheduled: float | None = None, name: str | None = None, planned: Any = None
    ) -> Any:
        """One embeddings request; a batch of `inputs_per_request` workload prompts when above 1.

        A planned request (open loop) or a single input goes through LLMUser.send_next. A batch
        sends `input` as a list of prompt texts, with no planned prompt-token count (the reply's
        usage gives it), and reports nothing back to the workload.
        """
        if self.inputs_per_request <= 1 or planned is not None:
            return super().send_next(scheduled, name, planned)
        batch = [
            prompt_text(self.workload.next_request().messages)
            for _ in range(self.inputs_per_request)
        ]
        return self.chat([], input=batch, scheduled=scheduled, name=name)

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """An embeddings body: the prompt text as `input`, `encoding_format`, `dimensions` when set,
        and --llm-body fields; no stream, ignore_eos or temperature.
        """
        body: dict[str, Any] = {
            "model": self.llm.model,
            "input": prompt_text(messages),
            "encoding_format": self.encoding_format,
        }
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        body.update(self.llm.extra_body)
        return body


__all__ = [
    "AnthropicMessagesUser",
    "OpenAICompletionsUser",
    "OpenAIEmbeddingsUser",
    "OpenAIResponsesUser",
    "prompt_text",
]
