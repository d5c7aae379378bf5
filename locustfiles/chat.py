"""Streaming chat completions against any OpenAI-compatible server (llmsim's default workload).

    locust -f locustfiles/chat.py --host http://127.0.0.1:8000/v1 -u 50 -r 10 -t 1m --headless

Options (also in the web UI's start form, or as LOCUST_LLM_* environment variables):
  --llm-model NAME             model sent in each request                   (gpt-4o-mini)
  --llm-prompt-tokens SPEC     prompt length: 512, normal:mean=512,stddev=64,min=16,max=2048,
                               uniform:min=A,max=B, lognormal:mean=M,stddev=S       (128)
  --llm-max-tokens SPEC        max_tokens, same syntax                                (128)
  --llm-ignore-eos             replies exactly max_tokens long (vLLM, llmsim)
  --llm-no-stream              whole replies instead of SSE
  --llm-no-usage               no stream_options.include_usage (tokens are counted)
  --llm-system-prompt TEXT, --llm-temperature T, --llm-headers JSON, --llm-body JSON
  --llm-dataset FILE           prompts from JSONL / ShareGPT instead of synthetic ones
  --llm-turns K                multi-turn conversations of K turns
  --llm-requests-per-user N    each user stops after N requests
  --llm-seed N, --llm-timeout SECONDS, --llm-api-key KEY ($OPENAI_API_KEY)
  --llm-results-dir DIR        write DIR/llm_metrics.json and DIR/requests.csv at the end
"""

from llmsim.locust import OpenAIChatUser


class ChatUser(OpenAIChatUser):
    """One streaming chat completion after another, no think time."""
