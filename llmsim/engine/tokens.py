"""Bundled tiktoken encodings: prompt counting and the token text replies are made of.

tiktoken downloads encodings on first use; we ship the published rank files as package data
(checked against tiktoken's own hashes) so counting works with no network.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from functools import cache
from importlib import resources
from typing import Any

import tiktoken

# Constructor arguments from tiktoken's tiktoken_ext/openai_public.py.
_SPECS: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": (
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501
        ),
        "special_tokens": {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    },
}

ENCODINGS = tuple(_SPECS)

# Model-name prefixes, most specific first. Anything else gets o200k_base as a stated
# approximation (other vendors' tokenizers are not public or not bundled).
_PREFIX_TO_ENCODING = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding", "cl100k_base"),
)

_lock = threading.Lock()


class EncodingLoadError(RuntimeError):
    """A bundled encoding file is missing or damaged."""


def encoding_name_for_model(model: str) -> str:
    """The bundled encoding a model name counts with: OpenAI's by prefix, else o200k_base."""
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" style names from routers
    if name.startswith("ft:"):  # after the router's prefix: "openai/ft:gpt-3.5-turbo:org::id"
        name = name[3:]
    for prefix, enc in _PREFIX_TO_ENCODING:
        if name.startswith(prefix):
            return enc
    return "o200k_base"


@cache
def _load(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    data = resources.files("llmsim.data.tiktoken").joinpath(f"{name}.tiktoken").read_bytes()
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise EncodingLoadError(f"bundled encoding {name}.tiktoken is damaged (sha256 mismatch)")
    ranks = {
        base64.b64decode(tok): int(rank)
        for tok, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        name=name,
        pat_str=spec["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=spec["special_tokens"],
    )


def get_encoding(name: str) -> tiktoken.Encoding:
    """Load a bundled encoding once per process (thread-safe)."""
    if name not in _SPECS:
        raise KeyError(f"unknown encoding {name!r}; bundled: {', '.join(_SPECS)}")
    with _lock:
        return _load(name)


def preload_encodings() -> None:
    """Load every bundled encoding now (~0.4 s each), so no request pays for it in its TTFT."""
    for name in _SPECS:
        get_encoding(name)


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The bundled encoding for a model name (see encoding_name_for_model), loaded once."""
    return get_encoding(encoding_name_for_model(model))


# Token counts of recent texts: benchmark tools send the same prompts (and always the same
# roles) again and again, and encoding is the costliest part of reading a request.
_COUNTS: dict[tuple[str, str], int] = {}
_COUNTS_CHARS = 0
_COUNTS_MAX_CHARS = 4_000_000  # ~4-16 MB of keys at most; the cache starts over past that


# From this length on, tokens are counted in a buffer rather than a list of ints.
_BUFFER_MIN_CHARS = 2048


def exact_len(enc: tiktoken.Encoding, text: str) -> int:
    """len(enc.encode(text, disallowed_special=())), exactly, holding the GIL for O(1) objects.

    tiktoken's core runs without the GIL; what holds it is building the list of ints (45 ms for
    the 1M tokens of an 8 MB prompt, and 25 ms more to free it). A long text's tokens are kept
    in one numpy buffer instead (the same core call `encode` makes), so a thread counting it
    leaves the event loop free for the whole count.
    """
    to_buffer = getattr(enc, "encode_to_numpy", None)  # tiktoken 0.8+
    if len(text) < _BUFFER_MIN_CHARS or to_buffer is None:
        return len(enc.encode(text, disallowed_special=()))
    try:
        return len(to_buffer(text, disallowed_special=()))
    except UnicodeEncodeError:
        # A lone surrogate (valid in JSON strings): encode() replaces it so, then encodes.
        return len(to_buffer(replace_lone_surrogates(text), disallowed_special=()))


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate (valid in a JSON string, but no UTF-8) made U+FFFD, as
    tiktoken's encode() does before encoding."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def encoded_len(enc: tiktoken.Encoding, text: str) -> int:
    """exact_len(enc, text), remembered for texts seen before."""
    global _COUNTS_CHARS
    key = (enc.name, text)
    n = _COUNTS.get(key)
    if n is None:
        n = exact_len(enc, text)
        if _COUNTS_CHARS + len(text) > _COUNTS_MAX_CHARS:
            _COUNTS.clear()
            _COUNTS_CHARS = 0
        if len(text) <= _COUNTS_MAX_CHARS // 16:
            _COUNTS[key] = n
            _COUNTS_CHARS += len(text) + 16
    return n


def count_tokens(text: str, model: str) -> int:
    """Tokens of `text` in `model`'s encoding (remembered for texts seen before)."""
    return encoded_len(encoding_for_model(model), text)


# OpenAI's documented accounting for chat prompts: each message costs 3 tokens of framing
# (4 for gpt-3.5-turbo-0301 era models is no longer served), a name costs 1 more, and the
# reply is primed with 3 tokens (<|start|>assistant<|message|>).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content array."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                parts.append(part["refusal"])
    return "".join(parts)


def count_chat_prompt_tokens(messages: list[dict[str, Any]], model: str) -> int:
    """A chat prompt's tokens as OpenAI bills them: each message's framing, role, text, name
    and tool calls, plus the reply's priming (see the constants above)."""
    enc = encoding_for_model(model)
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += encoded_len(enc, message.get("role", ""))
        total += encoded_len(enc, message_text(message.get("content")))
        if message.get("name"):
            total += TOKENS_PER_NAME
            total += exact_len(enc, str(message["name"]))
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            total += exact_len(enc, str(fn.get("name", "")))
            total += exact_len(enc, str(fn.get("arguments", "")))
    return total


def messages_text(messages: list[dict[str, Any]], system: str = "") -> str:
    """A conversation as one text in order (system first), for prefix comparisons."""
    parts = [system] if system else []
    for m in messages:
        parts.append(str(m.get("role", "")))
        parts.append(message_text(m.get("content")))
    return "\n".join(parts)
