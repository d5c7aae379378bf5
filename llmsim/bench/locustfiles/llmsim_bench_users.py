"""Bench's default user: llmsim's streaming OpenAI chat user, configured by `--llm-…` options.

A file of its own because Locust loads locustfiles by path and refuses one named `locust.py`.
"""

from llmsim.locust import OpenAIChatUser


class ChatUser(OpenAIChatUser):
    """Streams chat completions back to back; the workload comes from bench's options."""
