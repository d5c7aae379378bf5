"""Bench's users: llmsim's streaming user for each API, configured by `--llm-…` options.

Bench names one class on Locust's command line (`--api`, see swarm.API_USERS), so only that
one runs. A file of its own because Locust loads locustfiles by path and refuses `locust.py`.
Users spawned in one of Locust's batches spread their first requests over a second
(LLMUser.batch_start_spread_s); open-loop users start their schedule at once.
"""

from llmsim.locust import (
    AnthropicMessagesUser,
    AzureOpenAIUser,
    GeminiUser,
    OpenAIChatUser,
    OpenAICompletionsUser,
    OpenAIEmbeddingsUser,
    OpenAIResponsesUser,
)


class ChatUser(OpenAIChatUser):
    """Streams chat completions back to back; the workload comes from bench's options."""


class ResponsesUser(OpenAIResponsesUser):
    """Streams OpenAI Responses back to back (--api responses)."""


class AnthropicUser(AnthropicMessagesUser):
    """Streams Anthropic Messages back to back (--api anthropic)."""


class CompletionsUser(OpenAICompletionsUser):
    """Streams legacy completions back to back (--api completions)."""


class EmbeddingsUser(OpenAIEmbeddingsUser):
    """Embeds prompts back to back (--api embeddings)."""


class AzureUser(AzureOpenAIUser):
    """Streams Azure OpenAI chat completions back to back (--api azure)."""


class GeminiApiUser(GeminiUser):
    """Streams Gemini generateContent back to back (--api gemini)."""
