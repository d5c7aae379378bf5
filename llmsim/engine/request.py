"""The API-independent request and reply every wire format is rendered from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmsim.engine.timing import Chunking, ChunkSpec

if TYPE_CHECKING:
    from llmsim.engine.structured import OutputSpec

ONE_PER_EVENT = ChunkSpec()


@dataclass
class EngineRequest:
    """A request as every wire format hands it to the engine: the model, the prompt's size in
    tokens, the output limits, and what shapes the reply (stops, seed, tools, formats)."""

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
    # The request field that set max_tokens (for the limit errors' wording and param).
    max_tokens_param: str = "max_tokens"
    # The API renders the whole reply at some point (non-streaming, or a Responses stream's
    # final events): n × max_tokens is then bounded, as it costs memory.
    whole_reply: bool = False
    # The whole prompt's text in order (system, every message), for engine mode's prefix cache:
    # equal prompt prefixes give equal token ids and so share KV blocks. A function, so api
    # mode never pays for building it.
    prefix_text: Callable[[], str] | None = None
    replay_key: str | None = None  # model and conversation digest, set when replaying


@dataclass
class ToolCall:
    """One tool call of a choice: its arguments are the choice's tokens[start:end]."""

    id: str  # a unique suffix; each API adds its own prefix (call_, toolu_, fc_)
    name: str
    start: int
    end: int


@dataclass
class Choice:
    """One of a reply's `n` alternatives: its tokens, why it ended, and any tool calls."""

    index: int
    tokens: Sequence[str]  # a list, or LazyTokens made as the stream reads them
    finish_reason: str  # "stop", "length" or "tool_calls"
    tool_calls: list[ToolCall] | None = None  # set when the reply is tool calls, not text
    stop_sequence: str | None = None  # the stop sequence that ended it, if one did

    @property
    def text(self) -> str:
        """The choice's content as one string (its tokens joined)."""
        return "".join(self.tokens)


@dataclass
class Reply:
    """What the simulated model answers, and when each token is due.

    `ttft_s` and `tbt_s` are the request's planned first-token offset and mean gap; the stream
    loop draws each token's gap around it (engine.timing). A streamed reply's events each carry
    the tokens of one step of `chunking`. `id` is a bare hex suffix: each API adds its prefix.
    """

    id: str
    created: int
    model: str
    prompt_tokens: int
    ttft_s: float
    tbt_s: float
    choices: list[Choice] = field(default_factory=list)
    reasoning_tokens: int = 0  # hidden thinking of reasoning models, spent within the TTFT
    chunking: Chunking = field(default_factory=lambda: Chunking(ONE_PER_EVENT, 0))
    prefill_s: float = 0.0  # the prompt's prefill time, added to the TTFT
    # A replayed reply (llmsim.record.replay): token i is due first_s + offsets_s[i].
    offsets_s: list[float] | None = None

    @property
    def first_s(self) -> float:
        """Offset of the first token from the request's arrival, before any queueing."""
        return self.ttft_s + self.prefill_s

    @property
    def completion_tokens(self) -> int:
        """Output tokens over every choice (the usage figure)."""
        return sum(len(c.tokens) for c in self.choices)

    @property
    def steps(self) -> int:
        """How many events the reply's content spans (the longest choice; 0 when empty)."""
        longest = max((len(c.tokens) for c in self.choices), default=0)
        return self.chunking.steps_for(longest) if longest else 0

    def steps_of(self, c: Choice) -> int:
        """How many steps carry choice c's content (0 when it has none)."""
        return self.chunking.steps_for(len(c.tokens)) if c.tokens else 0

    def text_at(self, c: Choice, step: int) -> str:
        """The text of choice c's content event at `step`: whole tokens, one or several."""
        a, b = self.chunking.start(step), min(self.chunking.end(step), len(c.tokens))
        toks = c.tokens
        if b - a == 1:
            return toks[a]
        return "".join([toks[i] for i in range(a, b)])

    def step_end(self, step: int) -> int:
        """Tokens of the reply that exist once step `step` is out."""
        return self.chunking.end(step)

    @property
    def duration_s(self) -> float:
        """The planned time from arrival to the last token (mean gaps)."""
        longest = max((len(c.tokens) for c in self.choices), default=0)
        return self.first_s + max(longest - 1, 0) * self.tbt_s
