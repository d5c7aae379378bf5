"""What each request asks: prompts of exact token lengths, length distributions, datasets, turns.

Synthetic prompts are built from words that are one token each in the model's encoding, with or
without their leading space, so a prompt of k words is exactly k tokens; the chat framing OpenAI
bills (see `llmsim.engine.tokens.count_chat_prompt_tokens`) is added on top so that the whole
prompt, as `usage.prompt_tokens` reports it, hits the requested length.
"""

from __future__ import annotations

import json
import math
import random
import threading
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from llmsim.engine.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    count_chat_prompt_tokens,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
    message_text,
)

# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class Distribution:
    """An integer length: fixed, or drawn from normal/uniform/lognormal, clamped to [min, max]."""

    kind: str = "fixed"
    mean: float = 128.0
    stddev: float = 0.0
    min: int = 1
    max: int = 1_000_000

    def sample(self, rng: random.Random) -> int:
        """One length drawn with `rng`, rounded and clamped to [min, max]."""
        if self.kind == "fixed":
            value = self.mean
        elif self.kind == "normal":
            value = rng.gauss(self.mean, self.stddev)
        elif self.kind == "uniform":
            return rng.randint(self.min, self.max)
        else:  # lognormal, parameterised by the distribution's own mean and stddev
            sigma2 = math.log1p((self.stddev / self.mean) ** 2)
            value = rng.lognormvariate(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2))
        return int(min(self.max, max(self.min, round(value))))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.mean))
        if self.kind == "uniform":
            return f"uniform:min={self.min},max={self.max}"
        bounds = f"min={self.min},max={self.max}"
        return f"{self.kind}:mean={self.mean:g},stddev={self.stddev:g},{bounds}"


def parse_distribution(spec: Any) -> Distribution:
    """`128`, `"normal:mean=512,stddev=128,min=16,max=2048"`, `"uniform:min=10,max=100"`,
    `"lognormal:mean=512,stddev=256"`, a dict with the same keys plus `kind`, or a Distribution."""
    if isinstance(spec, Distribution):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"not a length: {spec!r}")
    if isinstance(spec, (int, float)):
        return _checked(Distribution("fixed", float(spec), 0.0, int(spec), int(spec)))
    if isinstance(spec, dict):
        params = {k: v for k, v in spec.items() if k != "kind"}
        return _build(str(spec.get("kind", "fixed")), params, spec)
    text = str(spec).strip()
    if not text:
        raise ValueError("empty length")
    kind, sep, rest = text.partition(":")
    if not sep:
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"not a length or distribution: {text!r}") from None
        return parse_distribution(n)  # outside the try: its own error says what is wrong
    params = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"expected key=value in {text!r}, got {part!r}")
        params[key.strip()] = float(value)
    return _build(kind.strip().lower(), params, text)


def _build(kind: str, p: dict[str, Any], spec: Any) -> Distribution:
    known = {"mean", "stddev", "min", "max"}
    if unknown := set(p) - known:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} in {spec!r}")
    for key in ("min", "max"):
        # int() would quietly turn min=0.5 into 0: a bound is a token count, a whole number.
        if key in p and p[key] != int(p[key]):
            raise ValueError(f"{key}={p[key]:g} is not a whole number of tokens")
    lo, hi = int(p.get("min", 1)), int(p.get("max", 1_000_000))
    if kind == "fixed":
        if "mean" not in p or p["mean"] != int(p["mean"]):
            raise ValueError(f"fixed needs a whole mean: {spec!r}")
        return parse_distribution(int(p["mean"]))
    if kind == "uniform":
        if "min" not in p or "max" not in p:
            raise ValueError(f"uniform needs min and max: {spec!r}")
        return _checked(Distribution("uniform", (lo + hi) / 2, 0.0, lo, hi))
    if kind in ("normal", "lognormal"):
        if "mean" not in p or "stddev" not in p:
            raise ValueError(f"{kind} needs mean and stddev: {spec!r}")
        return _checked(Distribution(kind, float(p["mean"]), float(p["stddev"]), lo, hi))
    raise ValueError(f"unknown distribution {kind!r} (fixed, normal, uniform, lognormal)")


def _checked(d: Distribution) -> Distribution:
    # Every length is at least 1 token: a prompt of 0 tokens was sent as the chat framing
    # with one word, and max_tokens=0 is a request no API accepts, so 0 is a typo, not a load.
    if d.kind == "fixed" and d.mean < 1:
        raise ValueError(f"a length is at least 1 token, got {d.mean:g}")
    if d.min < 1:
        raise ValueError(f"a length is at least 1 token, got min={d.min}")
    if d.max < d.min:
        raise ValueError(f"bad bounds min={d.min} max={d.max}")
    if d.kind in ("normal", "lognormal") and not d.min <= d.mean <= d.max:
        # The clamp would pile every sample on one bound: the mean asked for is never seen.
        raise ValueError(f"mean={d.mean:g} is outside min={d.min},max={d.max}")
    if d.stddev < 0:
        raise ValueError("stddev must be >= 0")
    return d


# --------------------------------------------------------------------------- synthetic text

_WORDS_LOCK = threading.Lock()


@cache
def _word_pool(encoding_name: str) -> tuple[str, ...]:
    enc = get_encoding(encoding_name)
    words = []
    # Frequent ranks first: common lowercase words, which also read like text.
    for rank in range(min(enc.n_vocab, 60_000)):
        try:
            b = enc.decode_single_token_bytes(rank)
        except KeyError:
            continue
        tail = b[1:]
        if 3 <= len(tail) <= 10 and b[:1] == b" " and tail.isalpha() and tail.islower():
            word = tail.decode("ascii")
            if len(enc.encode(word)) == 1:
                words.append(word)
    return tuple(words)


def word_pool(model: str) -> tuple[str, ...]:
    """Words that are exactly one token each in `model`'s encoding, alone or after a space."""
    with _WORDS_LOCK:
        return _word_pool(encoding_name_for_model(model))


def synthetic_text(n_tokens: int, model: str, rng: random.Random) -> str:
    """Random words, exactly `n_tokens` tokens (random from the first word on, which keeps
    servers' prefix caches from turning a load test into a cache test)."""
    if n_tokens <= 0:
        return ""
    return " ".join(rng.choices(word_pool(model), k=n_tokens))


@lru_cache(maxsize=4096)
def shared_text(model: str, key: tuple[Any, ...], n_tokens: int) -> str:
    """`n_tokens` one-token words fixed by `key`: equal keys give equal text, in every process
    and run, so prompts built from it share a prefix a server's cache can see."""
    rng = random.Random(repr(key))
    return " ".join(rng.choices(word_pool(model), k=n_tokens))


def framing_tokens(model: str, system_prompt: str | None) -> int:
    """Tokens a one-user-message chat prompt costs beyond its text."""
    return _framing(model, system_prompt)


@lru_cache(maxsize=256)
def _framing(model: str, system_prompt: str | None) -> int:
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": ""})
    return count_chat_prompt_tokens(messages, model)


# A user message costs its framing plus the role name "user" (one token in both encodings).
USER_MESSAGE_OVERHEAD = TOKENS_PER_MESSAGE + 1


def synthetic_messages(
    target: int,
    model: str,
    system_prompt: str | None,
    rng: random.Random,
    prefix: tuple[tuple[Any, ...], int] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Messages whose whole chat prompt is `target` tokens (or the least possible, if larger).

    `prefix` (key, k): the text starts with `shared_text(model, key, k)`. Returns the messages
    and their exact prompt token count.
    """
    overhead = _framing(model, system_prompt)
    n = max(1, target - overhead)
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if prefix is not None:
        key, k = prefix
        k = min(k, n)
        rest = synthetic_text(n - k, model, rng)
        text = shared_text(model, key, k) + (" " + rest if rest else "")
    else:
        text = synthetic_text(n, model, rng)
    messages.append({"role": "user", "content": text})
    return messages, overhead + n


def warm_up(model: str, system_prompt: str | None, dataset: str | None) -> None:
    """Load what the first request would otherwise load (encoding, word pool, dataset)."""
    word_pool(model)
    _framing(model, system_prompt)
    if dataset:
        load_dataset(dataset)


# --------------------------------------------------------------------------- datasets


@dataclass
class DatasetItem:
    """One prompt or conversation: user turns in order, with optional system prompt."""

    turns: list[str]
    system: str | None = None
    messages: list[dict[str, Any]] | None = None  # a full OpenAI message list, sent as-is
    max_tokens: int | None = None


def _item_from_record(rec: Any, where: str) -> DatasetItem | None:
    if isinstance(rec, str):
        return DatasetItem([rec]) if rec else None
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a string or an object, got {type(rec).__name__}")
    max_tokens = rec.get("max_tokens", rec.get("output_tokens"))
    max_tokens = int(max_tokens) if max_tokens is not None else None
    if "conversations" in rec or "conversation" in rec:  # ShareGPT
        conv = rec.get("conversations", rec.get("conversation")) or []
        system = None
        turns = []
        for msg in conv:
            who = str(msg.get("from", msg.get("role", ""))).lower()
            text = msg.get("value", msg.get("content", ""))
            if who == "system":
                system = text
            elif who in ("human", "user") and text:
                turns.append(text)
        return DatasetItem(turns, system, None, max_tokens) if turns else None
    if "messages" in rec:
        messages = rec["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError(f"{where}: 'messages' must be a list of objects")
        turns = [m.get("content") for m in messages if m.get("role") == "user"]
        system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
        return DatasetItem([t for t in turns if isinstance(t, str)], system, messages, max_tokens)
    for key in ("prompt", "text", "question", "input"):
        if isinstance(rec.get(key), str) and rec[key]:
            return DatasetItem([rec[key]], rec.get("system"), None, max_tokens)
    raise ValueError(f"{where}: no prompt, text, messages or conversations field")


@lru_cache(maxsize=8)
def load_dataset(path: str) -> tuple[DatasetItem, ...]:
    """Read a JSONL file (one prompt, chat or ShareGPT record per line) or a JSON array."""
    p = Path(path)
    raw = p.read_text(encoding="utf-8")
    stripped = raw.lstrip()
    records: list[tuple[Any, str]]
    if stripped.startswith("["):
        records = [(rec, f"{p}[{i}]") for i, rec in enumerate(json.loads(raw))]
    else:
        records = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    records.append((json.loads(line), f"{p}:{lineno}"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{lineno}: invalid JSON ({e.msg})") from None
    items = [it for rec, where in records if (it := _item_from_record(rec, where))]
    if not items:
        raise ValueError(f"{p}: no usable prompts")
    return tuple(items)


# --------------------------------------------------------------------------- per-user workload


@dataclass
class PlannedRequest:
    """One request a workload planned: its messages, max_tokens, and the prompt's token count."""

    messages: list[dict[str, Any]]
    max_tokens: int
    prompt_tokens: int | None  # exact count when known (synthetic), else None (count lazily)


@dataclass
class Workload:
    """One user's source of requests; keeps the conversation between turns."""

    model: str
    prompt_tokens: Distribution
    max_tokens: Distribution
    system_prompt: str | None = None
    dataset: tuple[DatasetItem, ...] | None = None
    turns: int = 1
    rng: random.Random = field(default_factory=random.Random)
    prefix_tokens: int = 0  # each prompt starts with one of `prefix_groups` shared prefixes
    prefix_groups: int = 1
    _history: list[dict[str, Any]] = field(default_factory=list)
    _history_tokens: int | None = 0
    _turn: int = 0
    _item: DatasetItem | None = None

    @property
    def multi_turn(self) -> bool:
        """More than one turn per conversation (--llm-turns above 1): replies join the history."""
        return self.turns > 1

    def next_request(self) -> PlannedRequest:
        """The next request: a new conversation's first prompt, or its next user turn.

        The first prompt is synthetic, of a sampled length (with a shared prefix when
        `prefix_tokens` is set), or a dataset item; max_tokens is sampled each time, and a dataset
        item's own max_tokens wins. Later turns append a user message to the history.
        """
        max_tokens = self.max_tokens.sample(self.rng)
        if self._turn == 0 or self._turn >= self.turns:
            self._start_conversation()
        if self.dataset is not None:
            return self._next_from_dataset(max_tokens)
        if self._turn == 0:
            prefix = None
            if self.prefix_tokens > 0:
                group = self.rng.randrange(max(1, self.prefix_groups))
                prefix = (("prefix", group), self.prefix_tokens)
            messages, n = synthetic_messages(
                self.prompt_tokens.sample(self.rng),
                self.model,
                self.system_prompt,
                self.rng,
                prefix,
            )
            self._history, self._history_tokens = messages, n
        else:
            content_tokens = max(1, self.prompt_tokens.sample(self.rng) - USER_MESSAGE_OVERHEAD)
            text = synthetic_text(content_tokens, self.model, self.rng)
            self._history.append({"role": "user", "content": text})
            if self._history_tokens is not None:
                self._history_tokens += USER_MESSAGE_OVERHEAD + content_tokens
        self._turn += 1
        return PlannedRequest(list(self._history), max_tokens, self._history_tokens)

    def _start_conversation(self) -> None:
        self._turn = 0
        self._history = []
        self._history_tokens = 0
        self._item = self.rng.choice(self.dataset) if self.dataset is not None else None

    def _next_from_dataset(self, max_tokens: int) -> PlannedRequest:
        item = self._item
        assert item is not None
        if item.max_tokens is not None:
            max_tokens = item.max_tokens
        if item.messages is not None and (not self.multi_turn or not item.turns):
            # A one-shot record (also in multi-turn runs when it has no text user turns, e.g.
            # content parts only): sent as it is, and the next call starts over.
            self._turn = self.turns
            return PlannedRequest(list(item.messages), max_tokens, None)
        if self._turn == 0:
            system = item.system if item.system is not None else self.system_prompt
            self._history = [{"role": "system", "content": system}] if system else []
        self._history.append({"role": "user", "content": item.turns[self._turn]})
        self._turn += 1
        if self._turn >= len(item.turns):
            self._turn = self.turns  # conversation exhausted: start over next time
        self._history_tokens = None
        return PlannedRequest(list(self._history), max_tokens, None)

    def on_reply(self, text: str, completion_tokens: int | None) -> None:
        """Append the assistant's reply so the next turn carries the conversation."""
        if not self.multi_turn or self._turn == 0 or self._turn >= self.turns:
            return
        self._history.append({"role": "assistant", "content": text})
        if self._history_tokens is not None:
            # Re-encoding the reply may not give the streamed token count, so count the text.
            enc = encoding_for_model(self.model)
            self._history_tokens += (
                TOKENS_PER_MESSAGE
                + len(enc.encode("assistant"))
                + len(enc.encode(text, disallowed_special=()))
            )

    def on_failure(self) -> None:
        """A failed turn ends the conversation: its history no longer matches the server's."""
        self._turn = self.turns


def prompt_tokens_of(messages: list[dict[str, Any]], model: str) -> int:
    """Count a prompt the way OpenAI bills it (used only when the server sends no usage)."""
    return count_chat_prompt_tokens(messages, model)


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The conversation's text without its system turns, for APIs that take one prompt string:
    in a multi-turn run the replies so far are part of the prompt, as they are of a chat's.
    Content arrays (datasets) give their text parts, not their Python repr."""
    turns = (m for m in messages if m.get("role") != "system")
    return "\n\n".join(message_text(m.get("content")) for m in turns)


__all__ = [
    "REPLY_PRIMING_TOKENS",
    "DatasetItem",
    "Distribution",
    "PlannedRequest",
    "Workload",
    "framing_tokens",
    "load_dataset",
    "parse_distribution",
    "prompt_text",
    "prompt_tokens_of",
    "shared_text",
    "synthetic_messages",
    "synthetic_text",
    "word_pool",
]
