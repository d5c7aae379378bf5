"""OpenAI chat completions: the Locust user llmsim's load tests start from.

Everything but the body and the reader lives in `LLMUser` (llmsim/load/base.py); the other
APIs' users are in llmsim/load/apis.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmsim.load.base import ChatResult, LLMUser, split_host
from llmsim.load.readers import ChatReader
from llmsim.load.stream import EventReader


class OpenAIChatUser(LLMUser):
    """Streams chat completions from `host` and records TTFT, ITL, TPOT, E2E and tokens.

    Subclass it in a locustfile; every attribute can also be set with the matching
    `--llm-...` option or LOCUST_LLM_... environment variable (see llmsim/load/options.py).
    """

    abstract = True
    api_path = "/chat/completions"
    reader: ClassVar[EventReader] = ChatReader()
    max_tokens_param: str = "max_tokens"  # "max_completion_tokens" for OpenAI reasoning models

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """A chat completion request."""
        body: dict[str, Any] = {"model": self.llm.model, "messages": messages}
        if max_tokens is not None:
            body[self.max_tokens_param] = max_tokens
        return self.common_fields(body, stream_options=True)


__all__ = ["ChatResult", "OpenAIChatUser", "split_host"]
