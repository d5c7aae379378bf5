"""Reply text, as a list of token strings.

Every generator returns text in which each list item is exactly one token of the model's
encoding and the joined text re-tokenizes to the same count. Benchmark tools count output
tokens by re-tokenizing the text; if that disagrees with the stream, their inter-token figures
are wrong.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from importlib import resources

import tiktoken

GENERATOR_NAMES = ("lorem", "echo", "random", "sequence", "fixed:TEXT")


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """Words that are single tokens alone, capitalised and space-prefixed in both encodings."""
    text = resources.files("llmsim.data").joinpath("words.txt").read_text("utf-8")
    return tuple(w for w in text.split("\n") if w and not w.startswith("#"))


@lru_cache(maxsize=1)
def _word_forms() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    ws = words()
    return (
        tuple(" " + w for w in ws),
        tuple(" " + w.capitalize() for w in ws),
        tuple(w.capitalize() for w in ws),
    )


def lorem_tokens(count: int, rng: random.Random) -> list[str]:
    """Sentences of filler words with commas and full stops; each item is one token."""
    spaced, spaced_cap, cap = _word_forms()
    out: list[str] = []
    n_words = len(spaced)
    new_sentence = True
    rand = rng.random
    while len(out) < count:
        i = int(rand() * n_words)
        if new_sentence:
            out.append(spaced_cap[i] if out else cap[i])
            new_sentence = False
            continue
        out.append(spaced[i])
        remaining = count - len(out)
        if remaining >= 2:  # punctuation never ends a reply early or starts one
            r = rand()
            if r < 0.08:
                out.append(".")
                new_sentence = True
            elif r < 0.14:
                out.append(",")
    return out


def lorem_iter(count: int, rng: random.Random) -> Iterator[str]:
    """lorem_tokens(count, rng), one token at a time (the same tokens for the same rng)."""
    spaced, spaced_cap, cap = _word_forms()
    n_words = len(spaced)
    new_sentence = True
    rand = rng.random
    n = 0
    while n < count:
        i = int(rand() * n_words)
        if new_sentence:
            yield spaced_cap[i] if n else cap[i]
            n += 1
            new_sentence = False
            continue
        yield spaced[i]
        n += 1
        if count - n >= 2:
            r = rand()
            if r < 0.08:
                yield "."
                n += 1
                new_sentence = True
            elif r < 0.14:
                yield ","
                n += 1


def random_iter(count: int, rng: random.Random) -> Iterator[str]:
    """random_tokens(count, rng), one token at a time."""
    spaced, _, cap = _word_forms()
    n = len(spaced)
    for k in range(count):
        yield (cap if k == 0 else spaced)[int(rng.random() * n)]


def sequence_iter(count: int) -> Iterator[str]:
    """sequence_tokens(count), one token at a time."""
    spaced, _, cap = _word_forms()
    n = len(spaced)
    for k in range(count):
        yield cap[0] if k == 0 else spaced[k % n]


def repeat_iter(text: str, count: int, encoding: tiktoken.Encoding) -> Iterator[str]:
    """The tokens of text, then of " " + text again and again, `count` in all."""
    if count <= 0 or not text:
        return
    base = text_tokens(text, encoding)
    n = 0
    for tok in base:
        if n >= count:
            return
        yield tok
        n += 1
    again = text_tokens(" " + text, encoding) or base
    while True:
        for tok in again:
            if n >= count:
                return
            yield tok
            n += 1


class LazyTokens(Sequence[str]):
    """A reply's tokens, made as they are read: memory does not grow with the reply's length.

    `factory()` returns a fresh iterator over the same tokens each time. Reading forward (the
    way a stream does) costs one step per token; reading an earlier token or iterating again
    replays the factory from the start. Slices are materialised (use them on short spans).
    """

    __slots__ = ("_count", "_factory", "_it", "_last", "_pos")

    def __init__(self, count: int, factory: Callable[[], Iterator[str]]) -> None:
        self._count = count
        self._factory = factory
        self._it: Iterator[str] | None = None
        self._pos = 0  # index of the token the iterator yields next
        self._last = ""

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return itertools.islice(self._factory(), self._count)

    def __getitem__(self, index: int | slice) -> str | list[str]:  # type: ignore[override]
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("token index out of range")
        if index == self._pos - 1:
            return self._last
        if self._it is None or index < self._pos:
            self._it = self._factory()
            self._pos = 0
        it = self._it
        while self._pos <= index:
            self._last = next(it)
            self._pos += 1
        return self._last

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, LazyTokens)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LazyTokens({self._count} tokens)"

    def truncated(self, count: int) -> LazyTokens:
        """The first `count` tokens, made the same way."""
        return LazyTokens(min(count, self._count), self._factory)


def random_tokens(count: int, rng: random.Random) -> list[str]:
    """`count` words drawn independently, the first capitalised, no punctuation; one token each."""
    spaced, _, cap = _word_forms()
    n = len(spaced)
    if count <= 0:
        return []
    return [cap[int(rng.random() * n)]] + [spaced[int(rng.random() * n)] for _ in range(count - 1)]


def sequence_tokens(count: int) -> list[str]:
    """The word list in order, the same for every reply: makes lost or reordered tokens obvious."""
    spaced, _, cap = _word_forms()
    n = len(spaced)
    if count <= 0:
        return []
    return [cap[0]] + [spaced[i % n] for i in range(1, count)]


def text_tokens(text: str, encoding: tiktoken.Encoding) -> list[str]:
    """Split text into its tokens' strings.

    A token that ends inside a multi-byte UTF-8 character cannot be sent as text on its own; it
    is joined to the next one (that chunk then carries two or more tokens).
    """
    out: list[str] = []
    pending = b""
    for tok in encoding.encode(text, disallowed_special=()):
        pending += encoding.decode_single_token_bytes(tok)
        try:
            out.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:
        out.append(pending.decode("utf-8", errors="replace"))
    return out


def repeat_text_tokens(text: str, count: int, encoding: tiktoken.Encoding) -> list[str]:
    """The first `count` tokens of text, repeated (space-separated) as often as needed."""
    if count <= 0 or not text:
        return []
    toks = text_tokens(text, encoding)
    if len(toks) >= count:
        return toks[:count]
    reps = count // max(1, len(toks)) + 2
    return text_tokens(" ".join([text] * reps), encoding)[:count]


def _repeat_count(text: str, count: int) -> int:
    return count if text else 0


class Generator:
    """What a reply says. `natural_length` is how long it is when nothing caps it."""

    name = "lorem"

    def natural_length(self, prompt_text: str, encoding: tiktoken.Encoding) -> int | None:
        """The reply's length in tokens when nothing caps it; None: the engine samples one."""
        return None  # the engine samples --output-tokens

    def tokens(
        self, count: int, rng: random.Random, prompt_text: str, encoding: tiktoken.Encoding
    ) -> list[str]:
        """`count` tokens of the reply as a list, drawn from `rng`: here filler sentences."""
        return lorem_tokens(count, rng)

    def lazy(
        self, count: int, seed: int, prompt_text: str, encoding: tiktoken.Encoding
    ) -> LazyTokens:
        """The same kind of text as tokens(), made only as it is read (seeded by `seed`)."""
        return LazyTokens(count, lambda: lorem_iter(count, random.Random(seed)))


class RandomGenerator(Generator):
    """Words drawn independently of each other, without sentences or punctuation."""

    name = "random"

    def tokens(  # type: ignore[override]
        self, count: int, rng: random.Random, prompt_text: str, encoding: tiktoken.Encoding
    ) -> list[str]:
        """`count` random words drawn from `rng` (random_tokens)."""
        return random_tokens(count, rng)

    def lazy(  # type: ignore[override]
        self, count: int, seed: int, prompt_text: str, encoding: tiktoken.Encoding
    ) -> LazyTokens:
        """The same words as tokens() with a Random(seed), made only as they are read."""
        return LazyTokens(count, lambda: random_iter(count, random.Random(seed)))


class SequenceGenerator(Generator):
    """The word list in order, the same for every reply: a lost or reordered token shows."""

    name = "sequence"

    def tokens(  # type: ignore[override]
        self, count: int, rng: random.Random, prompt_text: str, encoding: tiktoken.Encoding
    ) -> list[str]:
        """The first `count` words of the list, in order (`rng` is not used)."""
        return sequence_tokens(count)

    def lazy(  # type: ignore[override]
        self, count: int, seed: int, prompt_text: str, encoding: tiktoken.Encoding
    ) -> LazyTokens:
        """The same words as tokens(), made only as they are read (`seed` is not used)."""
        return LazyTokens(count, lambda: sequence_iter(count))


class EchoGenerator(Generator):
    """Replies with the last user message (repeated when ignore_eos asks for more)."""

    name = "echo"

    def natural_length(  # type: ignore[override]
        self, prompt_text: str, encoding: tiktoken.Encoding
    ) -> int:
        """`prompt_text`'s length in tokens: an uncapped echo says it once."""
        return len(text_tokens(prompt_text, encoding))

    def tokens(  # type: ignore[override]
        self, count: int, rng: random.Random, prompt_text: str, encoding: tiktoken.Encoding
    ) -> list[str]:
        """`prompt_text`'s first `count` tokens, repeated (space-separated) when it is shorter."""
        return repeat_text_tokens(prompt_text, count, encoding)

    def lazy(  # type: ignore[override]
        self, count: int, seed: int, prompt_text: str, encoding: tiktoken.Encoding
    ) -> LazyTokens:
        """`prompt_text` repeated to `count` tokens, made only as read (none if it is empty)."""
        count = min(count, _repeat_count(prompt_text, count))
        return LazyTokens(count, lambda: repeat_iter(prompt_text, count, encoding))


class FixedGenerator(Generator):
    """Replies with a set text (`fixed:TEXT`), repeated when ignore_eos asks for more."""

    name = "fixed"

    def __init__(self, text: str) -> None:
        self.text = text

    def natural_length(  # type: ignore[override]
        self, prompt_text: str, encoding: tiktoken.Encoding
    ) -> int:
        """The text's length in tokens: an uncapped reply says it once."""
        return len(text_tokens(self.text, encoding))

    def tokens(  # type: ignore[override]
        self, count: int, rng: random.Random, prompt_text: str, encoding: tiktoken.Encoding
    ) -> list[str]:
        """The text's first `count` tokens, repeated (space-separated) when it is shorter."""
        return repeat_text_tokens(self.text, count, encoding)

    def lazy(  # type: ignore[override]
        self, count: int, seed: int, prompt_text: str, encoding: tiktoken.Encoding
    ) -> LazyTokens:
        """The text repeated to `count` tokens, made only as they are read."""
        text = self.text
        return LazyTokens(count, lambda: repeat_iter(text, count, encoding))


def make_generator(spec: str) -> Generator:
    """Build a generator from its CLI spelling: lorem, echo, random, sequence or fixed:TEXT."""
    if spec.startswith("fixed:"):
        text = spec[len("fixed:") :]
        if not text:
            raise ValueError("fixed: needs a text, e.g. fixed:Hello world")
        return FixedGenerator(text)
    simple = {
        "lorem": Generator,
        "random": RandomGenerator,
        "sequence": SequenceGenerator,
        "echo": EchoGenerator,
    }
    if spec not in simple:
        raise ValueError(f"unknown generator {spec!r}; choose from {', '.join(GENERATOR_NAMES)}")
    return simple[spec]()
