"""One user per API beside chat completions; pick one by its class name (all four, weighted
alike, if none is named):

    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 AnthropicUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 ResponsesUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 CompletionsUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 EmbeddingsUser

Every `--llm-…` option of locustfiles/chat.py applies (--llm-model names the API's model:
the defaults are claude-sonnet-4, gpt-4o-mini, gpt-3.5-turbo-instruct, text-embedding-3-small).
"""

from llmsim.locust import (
    AnthropicMessagesUser,
    OpenAICompletionsUser,
    OpenAIEmbeddingsUser,
    OpenAIResponsesUser,
)


class AnthropicUser(AnthropicMessagesUser):
    """Streaming Anthropic Messages, no think time."""


class ResponsesUser(OpenAIResponsesUser):
    """Streaming OpenAI Responses, no think time."""


class CompletionsUser(OpenAICompletionsUser):
    """Streaming legacy completions, no think time."""


class EmbeddingsUser(OpenAIEmbeddingsUser):
    """Embeddings of the workload's prompts, no think time."""
