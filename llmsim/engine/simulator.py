"""The engine: turns an EngineRequest into a Reply (tokens, finish reasons, timing)."""

from __future__ import annotations

import random
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmsim.engine.config import EngineConfig, ModelConfig
from llmsim.engine.generators import LazyTokens, make_generator
from llmsim.engine.ids import hex_id
from llmsim.engine.reasoning import reasoning_tokens
from llmsim.engine.request import ONE_PER_EVENT, Choice, EngineRequest, Reply
from llmsim.engine.structured import plan_choice
from llmsim.engine.timing import Chunking, ChunkSpec, TimingConfig, plan, sample_ms
from llmsim.engine.tokens import encoding_for_model

if TYPE_CHECKING:
    import tiktoken


def apply_stop(tokens: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    """Cut the reply before the first stop sequence, at a token boundary.

    The token in which the stop sequence starts is dropped whole, so the text never contains
    the stop sequence and every remaining chunk is still exactly one token.
    """
    if not stops or not tokens:
        return tokens, False
    text = "".join(tokens)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return tokens, False
    pos = 0
    for i, tok in enumerate(tokens):
        if pos + len(tok) > cut:
            return tokens[:i], True
        pos += len(tok)
    return tokens, True


def first_stop(tokens: list[str], stops: tuple[str, ...]) -> str | None:
    """Which stop sequence apply_stop will cut at (the earliest in the text), if any."""
    if not stops:
        return None
    text = "".join(tokens)
    found = [(i, s) for s in stops if (i := text.find(s)) >= 0]
    return min(found)[1] if found else None


def scan_stops(
    tokens: Sequence[str], stops: tuple[str, ...], cooperate: Callable[[], None] | None = None
) -> tuple[int, str | None]:
    """apply_stop for tokens read one by one: (tokens kept, the stop sequence matched).

    Keeps only a window of the last tokens (as long as the longest stop sequence), so a long
    lazy reply is scanned without being built. The earliest match in the text wins, as in
    apply_stop; `cooperate` is called every few thousand tokens (the server yields there).
    """
    stops = tuple(s for s in stops if s)
    if not stops:
        return len(tokens), None
    longest = max(len(s) for s in stops)
    window: list[tuple[int, str]] = []  # (token index, text) covering the last `longest` chars
    text = ""
    text_start = 0  # offset in the reply's text of window's first char
    pos = 0
    best: tuple[int, str] | None = None
    for i, tok in enumerate(tokens):
        if cooperate is not None and i and i % 4096 == 0:
            cooperate()
        window.append((pos, tok))
        text += tok
        pos += len(tok)
        for s in stops:
            j = text.find(s)
            if j >= 0 and (best is None or text_start + j < best[0]):
                best = (text_start + j, s)
        if best is not None and pos - best[0] > longest:
            break
        while len(window) > 1 and pos - window[1][0] >= longest:
            dropped = window.pop(0)
            text = text[len(dropped[1]) :]
            text_start = window[0][0]
    if best is None:
        return len(tokens), None
    # Keep the tokens that end at or before the match starts.
    cut, kept = best[0], 0
    for i, tok in enumerate(tokens):
        if kept + len(tok) > cut:
            return i, best[1]
        kept += len(tok)
    return len(tokens), best[1]


@dataclass(frozen=True)
class LimitViolation:
    """A request the model's limits refuse; each API words it its own way."""

    kind: str  # "max_tokens" (above the model's output limit), "context" or "total_output"
    param: str  # the request field at fault
    model: str
    limit: int
    requested: int
    prompt_tokens: int = 0
    max_tokens: int = 0


class Engine:
    """API-independent simulation shared by every wire format."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.generator = make_generator(config.generator)
        seed = config.seed if config.seed is not None else secrets.randbits(64)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._models: dict[str, ModelConfig] = {}
        self.system_fingerprint = "fp_llmsim_" + format(zlib.crc32(str(seed).encode()), "08x")[:6]
        # Called now and then while scanning a long reply for stop sequences (the server
        # makes it yield to other greenlets).
        self.cooperate: Callable[[], None] | None = None

    @property
    def rng(self) -> random.Random:
        """The server's own random stream (timing draws; one thread uses it at a time)."""
        return self._rng

    def model(self, name: str) -> ModelConfig:
        """A model's config (timing and limits), cached per name."""
        cached = self._models.get(name)
        if cached is not None:
            return cached
        cfg = self.config.model(name)
        if len(self._models) < 4096:
            self._models[name] = cfg
        return cfg

    def timing_for(self, model: str) -> TimingConfig:
        """A model's timing config."""
        return self.model(model).timing

    def check_limits(
        self, req: EngineRequest, window_counts_output: bool = True
    ) -> LimitViolation | None:
        """Whether the model's limits refuse this request (before any work is done).

        window_counts_output: the context window bounds prompt plus max_tokens (OpenAI,
        Anthropic); False bounds the prompt alone (Gemini publishes separate input and output
        token limits).
        """
        limits = self.model(req.model).limits
        cap = req.max_tokens
        if cap is not None and limits.max_output_tokens and cap > limits.max_output_tokens:
            return LimitViolation(
                "max_tokens",
                req.max_tokens_param,
                req.model,
                limits.max_output_tokens,
                cap,
                req.prompt_tokens,
                cap,
            )
        wanted = req.prompt_tokens + ((cap or 0) if window_counts_output else 0)
        if limits.context_window and wanted > limits.context_window:
            return LimitViolation(
                "context",
                "messages",
                req.model,
                limits.context_window,
                wanted,
                req.prompt_tokens,
                cap or 0,
            )
        builds_whole = req.whole_reply or not req.stream
        if builds_whole and cap is not None and req.n * cap > self.config.max_total_output_tokens:
            return LimitViolation(
                "total_output",
                "n",
                req.model,
                self.config.max_total_output_tokens,
                req.n * cap,
                req.prompt_tokens,
                cap,
            )
        return None

    def _request_rng(self, req: EngineRequest) -> random.Random:
        if req.seed is not None:
            # Same seed and same request give the same reply, whatever else the server did.
            return random.Random(f"{req.seed}\x00{req.model}\x00{req.fingerprint}")
        # The server's own stream (no per-request Random: seeding one costs ~4 us); replies
        # still follow from --seed and the order requests arrive in.
        return self._rng

    def _natural_length(
        self, rng: random.Random, req: EngineRequest, encoding: tiktoken.Encoding, cap: int
    ) -> int:
        fixed = self.generator.natural_length(req.prompt_text, encoding)
        if fixed is not None:
            return fixed
        t = self.timing_for(req.model)
        mean = t.output_tokens
        sd = mean / 4 if t.output_tokens_stddev is None else t.output_tokens_stddev
        return max(1, min(cap, round(sample_ms(rng, mean, sd, "lognormal"))))

    def plan(self, req: EngineRequest, api_chunks: ChunkSpec | None = None) -> Reply:
        """The reply: its tokens (made lazily for plain text), timing plan and chunking.

        `api_chunks` is the API's default tokens per event, used unless the model's settings
        give chunk_tokens.
        """
        if self.config.replay is not None and req.replay_key is not None:
            recorded = self.config.replay(req)
            if recorded is not None:
                return recorded
        mcfg = self.model(req.model)
        timing = mcfg.timing
        with self._lock:
            # Timing comes from the server's stream so a request's seed fixes its text only.
            rt = plan(timing, self._rng, 0)
        rng = self._request_rng(req)
        encoding = encoding_for_model(req.model)
        limit = mcfg.limits.max_output_tokens or (1 << 30)
        reasoning = reasoning_tokens(req.model, rt.ttft_s, rt.tbt_s, req.reasoning_effort)
        cap = req.max_tokens
        if cap is not None and reasoning and req.max_tokens_param != "max_tokens":
            # max_completion_tokens and max_output_tokens count reasoning and visible tokens
            # together, as OpenAI's do (the legacy max_tokens caps the visible text).
            reasoning = min(reasoning, cap)
            cap -= reasoning
        choices = []
        for index in range(req.n):
            natural = self._natural_length(rng, req, encoding, limit)
            if req.output is not None:  # tools or a response format
                rate = self.config.tool_call_rate
                shaped = plan_choice(req.output, index, natural, cap, rng, encoding, rate)
                if shaped is not None:
                    choices.append(shaped)
                    continue
            if cap is not None and (req.ignore_eos or natural > cap):
                length, finish = cap, "length"
            else:
                length, finish = natural, "stop"
            tokens: Sequence[str] = self.generator.lazy(
                length, rng.getrandbits(64), req.prompt_text, encoding
            )
            matched = None
            if req.stop:
                kept, matched = scan_stops(tokens, req.stop, self.cooperate)
                if matched is not None:
                    finish = "stop"
                    assert isinstance(tokens, LazyTokens)
                    tokens = tokens.truncated(kept)
            choices.append(Choice(index, tokens, finish, stop_sequence=matched))
        longest = max((len(c.tokens) for c in choices), default=0)
        spec = mcfg.chunk_tokens or api_chunks or ONE_PER_EVENT
        if any(c.tool_calls is not None for c in choices):
            spec = ONE_PER_EVENT  # tool-call arguments stream one token per event
        with self._lock:
            chunk_seed = self._rng.getrandbits(32) if spec.exact is None else 0
        return Reply(
            id=hex_id(12),
            created=int(time.time()),
            model=req.model,
            prompt_tokens=req.prompt_tokens,
            ttft_s=rt.ttft_s,
            tbt_s=rt.tbt_s,
            choices=choices,
            reasoning_tokens=reasoning,
            chunking=Chunking(spec, longest, chunk_seed),
            prefill_s=timing.prefill_ms_per_1k * req.prompt_tokens / 1e6,
        )
