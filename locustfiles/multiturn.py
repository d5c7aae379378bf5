"""Multi-turn conversations: each reply and a new user turn are appended, 4 turns, then anew.

    locust -f locustfiles/multiturn.py --host http://127.0.0.1:8000/v1 -u 20 -r 5 -t 5m --headless

The first turn's prompt is --llm-prompt-tokens long (default here 300); each later turn adds the
assistant's reply and a new user message of that many tokens, so input tokens grow with every
turn, as in a real chat. --llm-turns K changes the number of turns; --llm-dataset FILE replays
the human turns of ShareGPT conversations instead of synthetic ones. A failed turn ends its
conversation (its history no longer matches what the server saw). Every other --llm-... option
of chat.py applies.
"""

from llmsim.locust import OpenAIChatUser


class ConversationUser(OpenAIChatUser):
    """A chat session: think for a moment between turns, like a person."""

    turns = 4
    prompt_tokens = 300
    max_tokens = 200
    system_prompt = "You are a helpful assistant. Keep answers short."

    def wait_time(self) -> float:
        """Half a second between conversations, as a person pausing before the next one."""
        return 0.5
