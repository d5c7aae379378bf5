"""The engine: turns an EngineRequest into a Reply (tokens, finish reasons, timing)."""

from __future__ import annotations

import random
import secrets
import threading
import time
import zlib

from llmsim.engine.generators import make_generator
from llmsim.engine.ids import hex_id
from llmsim.engine.profiles import PROFILES, LatencyProfile, profile_name_for_model, sample_ms
from llmsim.engine.reasoning import reasoning_tokens
from llmsim.engine.request import Choice, EngineRequest, Reply
from llmsim.engine.structured import plan_choice
from llmsim.engine.tokens import encoding_for_model
from llmsim.settings import Settings


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


class Engine:
    """API-independent simulation shared by every wire format."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.generator = make_generator(settings.generator)
        seed = settings.seed if settings.seed is not None else secrets.randbits(64)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._profiles: dict[str, LatencyProfile] = {}
        self.system_fingerprint = "fp_llmsim_" + format(zlib.crc32(str(seed).encode()), "08x")[:6]

    def profile_for(self, model: str) -> LatencyProfile:
        cached = self._profiles.get(model)
        if cached is not None:
            return cached
        s = self.settings.for_model(model)
        name = s.profile or profile_name_for_model(model)
        profile = PROFILES[name].with_overrides(
            s.ttft_ms, s.ttft_stddev_ms, s.tbt_ms, s.tbt_stddev_ms
        )
        if len(self._profiles) < 4096:
            self._profiles[model] = profile
        return profile

    def _request_rng(self, req: EngineRequest) -> random.Random:
        if req.seed is not None:
            # Same seed and same request give the same reply, whatever else the server did.
            return random.Random(f"{req.seed}\x00{req.model}\x00{req.fingerprint}")
        # The server's own stream (no per-request Random: seeding one costs ~4 us); replies
        # still follow from --seed and the order requests arrive in.
        return self._rng

    def _natural_length(self, rng: random.Random, req: EngineRequest, encoding) -> int:
        fixed = self.generator.natural_length(req.prompt_text, encoding)
        if fixed is not None:
            return fixed
        s = self.settings.for_model(req.model)
        sd = s.output_tokens / 4 if s.output_tokens_stddev is None else s.output_tokens_stddev
        return max(1, round(sample_ms(rng, s.output_tokens, sd, "lognormal")))

    def plan(self, req: EngineRequest) -> Reply:
        profile = self.profile_for(req.model)
        dist = self.settings.for_model(req.model).latency_distribution
        with self._lock:
            # Timing comes from the server's stream so a request's seed fixes its text only.
            ttft = sample_ms(self._rng, profile.ttft_ms, profile.ttft_stddev_ms, dist)
            tbt = sample_ms(self._rng, profile.tbt_ms, profile.tbt_stddev_ms, dist)
        rng = self._request_rng(req)
        encoding = encoding_for_model(req.model)
        choices = []
        for index in range(req.n):
            natural = self._natural_length(rng, req, encoding)
            if req.output is not None:  # tools or a response format
                rate = self.settings.tool_call_rate
                shaped = plan_choice(
                    req.output, index, natural, req.max_tokens, rng, encoding, rate
                )
                if shaped is not None:
                    choices.append(shaped)
                    continue
            if req.max_tokens is not None and (req.ignore_eos or natural > req.max_tokens):
                length, finish = req.max_tokens, "length"
            else:
                length, finish = natural, "stop"
            tokens = self.generator.tokens(length, rng, req.prompt_text, encoding)
            matched = first_stop(tokens, req.stop)
            tokens, stopped = apply_stop(tokens, req.stop)
            if stopped:
                finish = "stop"
            choices.append(Choice(index, tokens, finish, stop_sequence=matched))
        return Reply(
            id="chatcmpl-" + hex_id(12),
            created=int(time.time()),
            model=req.model,
            prompt_tokens=req.prompt_tokens,
            ttft_s=ttft / 1000.0,
            tbt_s=tbt / 1000.0,
            choices=choices,
            reasoning_tokens=reasoning_tokens(
                req.model, ttft / 1e3, tbt / 1e3, req.reasoning_effort
            ),
        )
