"""The API-independent request and reply every wire format is rendered from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmsim.engine.structured import OutputSpec


@dataclass
class EngineRequest:
    model: str
    prompt_tokens: int
    max_tokens: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    stream: bool = False
    # Text the echo generator repeats, and what makes "the same request" for seeded replies.
    prompt_text: str = ""
    fingerprint: str = ""
    # Tools and response formats (llmsim.engine.structured); None: plain text.
    output: OutputSpec | None = None
    reasoning_effort: str | None = None  # for reasoning models: how much of the TTFT is thinking


@dataclass
class ToolCall:
    """One tool call of a choice: its arguments are the choice's tokens[start:end]."""

    id: str  # a unique suffix; each API adds its own prefix (call_, toolu_, fc_)
    name: str
    start: int
    end: int


@dataclass
class Choice:
    index: int
    tokens: list[str]
    finish_reason: str  # "stop", "length" or "tool_calls"
    tool_calls: list[ToolCall] | None = None  # set when the reply is tool calls, not text
    stop_sequence: str | None = None  # the stop sequence that ended it, if one did

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass
class Reply:
    """What the simulated model answers, and when each token is due.

    Token i of every choice is due `ttft_s + i * tbt_s` after the request arrived; a
    non-streaming reply is sent when the last token is due, so it takes as long as streaming.
    """

    id: str
    created: int
    model: str
    prompt_tokens: int
    ttft_s: float
    tbt_s: float
    choices: list[Choice] = field(default_factory=list)
    reasoning_tokens: int = 0  # hidden thinking of reasoning models, spent within the TTFT

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)

    @property
    def steps(self) -> int:
        """How many token times the reply spans (the longest choice)."""
        return max((len(c.tokens) for c in self.choices), default=0)

    def due_s(self, step: int) -> float:
        return self.ttft_s + step * self.tbt_s

    @property
    def duration_s(self) -> float:
        return self.due_s(max(self.steps - 1, 0))
