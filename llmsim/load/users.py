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


class OpenLoopUser(OpenAIChatUser):
    """Chat completions in open loop: `rate` requests/s for the whole swarm, each request in
    its own greenlet at its scheduled time (llmsim/load/openloop.py). Run one user per process.

    Set `rate`, `arrival` ("poisson", "constant", "gamma:cv=C") and `max_in_flight`, or give
    --llm-rate/--llm-arrival/--llm-max-in-flight; any llmsim user becomes open loop with them.
    """

    abstract = True
    rate: float | None = 1.0


__all__ = ["ChatResult", "OpenAIChatUser", "OpenLoopUser", "split_host"]
