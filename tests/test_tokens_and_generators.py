"""Offline token counting and reply text that re-tokenizes to exactly what was streamed."""

from __future__ import annotations

import random

import pytest

from llmsim.engine import generators
from llmsim.engine.tokens import (
    count_chat_prompt_tokens,
    encoding_for_model,
    encoding_name_for_model,
    exact_len,
    get_encoding,
)


def test_bundled_encodings_load_offline_and_match_known_ids():
    # Reference ids published for these encodings (tiktoken's own test suite).
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert get_encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert get_encoding("o200k_base") is get_encoding("o200k_base"), "loaded once per process"


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("claude-sonnet-4", "o200k_base"),
        ("meta-llama/Llama-3-8B", "o200k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", "cl100k_base"),
        ("openai/ft:gpt-3.5-turbo-0125:acme::abc123", "cl100k_base"),
    ],
)
def test_model_to_encoding(model, encoding):
    assert encoding_name_for_model(model) == encoding


def test_chat_prompt_counting_includes_openai_overhead():
    enc = encoding_for_model("gpt-4o")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
        {"role": "user", "name": "bob", "content": "Yo"},
    ]
    content = sum(len(enc.encode(t)) for t in ("Be brief.", "Hi there", "Yo"))
    roles = sum(len(enc.encode(r)) for r in ("system", "user", "user"))
    expected = 3 + 3 * 3 + content + roles + 1 + len(enc.encode("bob"))
    assert count_chat_prompt_tokens(messages, "gpt-4o") == expected


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_buffer_count_equals_encode_for_long_and_odd_texts(name):
    """Long texts are counted in a buffer (no list of ints): the count is tiktoken's, exactly."""
    enc = get_encoding(name)
    rng = random.Random(7)
    words = generators.words()
    texts = [
        "a" * 30_000,  # one unbroken run: a single BPE piece
        " ".join(rng.choice(words) for _ in range(3000)),
        "<|endoftext|> as text " * 300,  # special tokens count as plain text
        "x\ud800y" * 1000,  # lone surrogates, which encode() replaces before encoding
        "é😀\n\n  \t1234567" * 400,
        "b" * 2047 + "c",  # at the threshold
    ]
    for text in texts:
        assert exact_len(enc, text) == len(enc.encode(text, disallowed_special=())), text[:20]


def test_every_word_is_one_token_in_every_form_and_encoding():
    for name in ("o200k_base", "cl100k_base"):
        enc = get_encoding(name)
        for w in generators.words():
            for form in (" " + w, " " + w.capitalize(), w.capitalize()):  # the forms we emit
                assert len(enc.encode(form)) == 1, (name, form)


@pytest.mark.parametrize("name", ["lorem", "random", "sequence"])
@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_generated_text_retokenizes_to_the_streamed_count(name, encoding):
    enc = get_encoding(encoding)
    gen = generators.make_generator(name)
    rng = random.Random(3)
    for count in [1, 2, 3, 5, 17, 100, 257, 1000]:
        for _ in range(5):
            toks = gen.tokens(count, rng, "", enc)
            assert len(toks) == count
            assert len(enc.encode("".join(toks))) == count
            assert all(len(enc.encode(t)) == 1 for t in toks)


def test_fixed_and_echo_follow_the_text():
    enc = get_encoding("o200k_base")
    fixed = generators.make_generator("fixed:Hello load tester.")
    assert fixed.natural_length("", enc) == len(enc.encode("Hello load tester."))
    assert "".join(fixed.tokens(4, random.Random(), "", enc)) == "Hello load tester."
    longer = fixed.tokens(10, random.Random(), "", enc)
    assert len(longer) == 10 and "".join(longer).startswith("Hello load tester. Hello")
    echo = generators.make_generator("echo")
    prompt = "Repeat after me: the quick brown fox"
    assert echo.natural_length(prompt, enc) == len(enc.encode(prompt))
    assert "".join(echo.tokens(echo.natural_length(prompt, enc), random.Random(), prompt, enc)) == (
        prompt
    )


def test_multibyte_characters_are_never_split():
    enc = get_encoding("o200k_base")
    text = "naïve café 日本語のテキスト 🚀🚀"
    pieces = generators.text_tokens(text, enc)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_unknown_generator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown generator"):
        generators.make_generator("poetry")
    with pytest.raises(ValueError, match="needs a text"):
        generators.make_generator("fixed:")
