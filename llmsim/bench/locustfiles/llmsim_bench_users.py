"""Bench's users: llmsim's streaming user for each API, configured by `--llm-…` options.

Bench names one class on Locust's command line (`--api`, see swarm.API_USERS), so only that
one runs. A file of its own because Locust loads locustfiles by path and refuses `locust.py`.
"""

import random

import gevent

from llmsim.locust import (
    AnthropicMessagesUser,
    AzureOpenAIUser,
    GeminiUser,
    OpenAIChatUser,
    OpenAICompletionsUser,
    OpenAIEmbeddingsUser,
    OpenAIResponsesUser,
)


class _Staggered:
    """Each user waits a random part of a second before its first request.

    Locust starts floor(spawn rate) users in one tight loop once a second, so at 50 users/s
    fifty first requests (connections, prompts) land at the same instant and stall the client and
    the simulator for tens of milliseconds: TTFT error that real, independent clients would never
    cause. Spreading each batch over its second removes it; a user's first request comes at most
    a second later, well inside the ramp-up.
    """

    def on_start(self) -> None:
        gevent.sleep(random.random())
        super().on_start()  # type: ignore[misc]


class ChatUser(_Staggered, OpenAIChatUser):
    """Streams chat completions back to back; the workload comes from bench's options."""


class ResponsesUser(_Staggered, OpenAIResponsesUser):
    """Streams OpenAI Responses back to back (--api responses)."""


class AnthropicUser(_Staggered, AnthropicMessagesUser):
    """Streams Anthropic Messages back to back (--api anthropic)."""


class CompletionsUser(_Staggered, OpenAICompletionsUser):
    """Streams legacy completions back to back (--api completions)."""


class EmbeddingsUser(_Staggered, OpenAIEmbeddingsUser):
    """Embeds prompts back to back (--api embeddings)."""


class AzureUser(_Staggered, AzureOpenAIUser):
    """Streams Azure OpenAI chat completions back to back (--api azure)."""


class GeminiApiUser(_Staggered, GeminiUser):
    """Streams Gemini generateContent back to back (--api gemini)."""
