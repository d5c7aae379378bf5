"""A mixed workload: short chat turns and long-document prompts, by weight (3 : 1).

    locust -f locustfiles/mixed.py --host http://127.0.0.1:8000/v1 -u 100 -r 10 -t 5m --headless

Each class has its own rows in Locust's tables ("short" and "long": POST, TTFT and TPOT), and
all of them feed the LLM tab and --llm-results-dir files. Every --llm-... option of chat.py
applies; note that an option given explicitly overrides the class attributes below, so
--llm-prompt-tokens would give both classes the same prompt length.
"""

from llmsim.locust import OpenAIChatUser


class ShortChat(OpenAIChatUser):
    """Chat-sized prompts and replies."""

    weight = 3
    request_name = "short"
    prompt_tokens = "normal:mean=200,stddev=60,min=20,max=600"
    max_tokens = "normal:mean=150,stddev=50,min=10,max=400"


class LongDocument(OpenAIChatUser):
    """Summarise-a-document prompts: long prefill, short answer."""

    weight = 1
    request_name = "long"
    prompt_tokens = "lognormal:mean=4000,stddev=1500,min=1000,max=12000"
    max_tokens = "uniform:min=100,max=300"
