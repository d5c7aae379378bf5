"""Public import point for Locust: ``from llmsim.locust import OpenAIChatUser`` (and
AnthropicMessagesUser, OpenAIResponsesUser, OpenAICompletionsUser, OpenAIEmbeddingsUser,
AzureOpenAIUser, GeminiUser).

A new API's user subclasses ``LLMUser`` with its path, body and an ``EventReader``; see
llmsim/load/base.py.

Importing this module installs llmsim's Locust plugin in the process: the ``--llm-...``
options, finer percentile buckets, the TTFT/TPOT rows, the LLM web UI tab, distributed merging
and, with ``--llm-results-dir``, the results files.
"""

from llmsim.load.plugin import install

install()

from llmsim.load.apis import (  # noqa: E402
    AnthropicMessagesUser,
    OpenAICompletionsUser,
    OpenAIEmbeddingsUser,
    OpenAIResponsesUser,
)
from llmsim.load.azure_gemini import AzureOpenAIUser, GeminiUser  # noqa: E402
from llmsim.load.base import ChatResult, LLMUser  # noqa: E402
from llmsim.load.stream import EventReader, StreamState  # noqa: E402
from llmsim.load.users import OpenAIChatUser, OpenLoopUser  # noqa: E402
from llmsim.load.workload import Distribution, parse_distribution  # noqa: E402

__all__ = [
    "AnthropicMessagesUser",
    "AzureOpenAIUser",
    "ChatResult",
    "Distribution",
    "EventReader",
    "GeminiUser",
    "LLMUser",
    "OpenAIChatUser",
    "OpenAICompletionsUser",
    "OpenAIEmbeddingsUser",
    "OpenAIResponsesUser",
    "OpenLoopUser",
    "StreamState",
    "parse_distribution",
]
