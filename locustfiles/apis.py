"""One user per API beside chat completions; pick one by its class name (all of them, weighted
alike, if none is named):

    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 AnthropicUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 ResponsesUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 CompletionsUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080/v1 EmbeddingsUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080 AzureUser
    locust -f locustfiles/apis.py --host http://127.0.0.1:8080 GeminiApiUser

Every `--llm-…` option of locustfiles/chat.py applies (--llm-model names the API's model:
the defaults are claude-sonnet-4, gpt-4o-mini, gpt-3.5-turbo-instruct, text-embedding-3-small,
the deployment gpt-4o-mini and gemini-2.5-flash).
"""

from llmsim.locust import (
    AnthropicMessagesUser,
    AzureOpenAIUser,
    GeminiUser,
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


class AzureUser(AzureOpenAIUser):
    """Streaming Azure OpenAI chat completions (--llm-model is the deployment), no think time."""


class GeminiApiUser(GeminiUser):
    """Streaming Gemini generateContent, no think time."""
