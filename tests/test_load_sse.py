"""The incremental SSE parser: same events whatever the byte boundaries."""

from __future__ import annotations

import random

import pytest

from llmsim.load.sse import SSEParser

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a":1}\n\n'
    b'data:{"b":2}\r\n\r\n'
    b"event: error\r\n"
    b'data: {"error":{"message":"x"}}\r\n\r\n'
    b"data: line one\n"
    b"data: line two\n\n"
    b"id: 7\rdata: cr only\r\r"
    b"\n\n\n"
    b"data: [DONE]\n\n"
    b"data: trailing, never terminated"
)

EXPECTED = [
    (None, b'{"a":1}'),
    (None, b'{"b":2}'),
    (b"error", b'{"error":{"message":"x"}}'),
    (None, b"line one\nline two"),
    (None, b"cr only"),
    (None, b"[DONE]"),
]


def _feed_all(chunks: list[bytes]) -> list:
    parser = SSEParser()
    out = []
    for c in chunks:
        out.extend(parser.feed(c))
    return out


def test_whole_stream():
    assert _feed_all([STREAM]) == EXPECTED


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_every_two_way_split(split):
    assert _feed_all([STREAM[:split], STREAM[split:]]) == EXPECTED


def test_byte_by_byte():
    assert _feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_random_chunkings():
    rng = random.Random(3)
    for _ in range(500):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 30)))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert _feed_all(chunks) == EXPECTED


def test_event_is_handed_over_as_soon_as_its_blank_line_arrives():
    parser = SSEParser()
    assert parser.feed(b'data: {"x":1}\n') == []
    assert parser.feed(b"\n") == [(None, b'{"x":1}')]
    assert parser.pending == b""


def test_crlf_split_between_cr_and_lf_is_one_line_end():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [(None, b"a")]
    assert parser.feed(b"\ndata: b\r\n\r\n") == [(None, b"b")]


def test_openai_style_stream_fast_path():
    body = b"".join(b'data: {"i":%d}\n\n' % i for i in range(1000)) + b"data: [DONE]\n\n"
    events = _feed_all([body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert len(events) == 1001
    assert events[-1] == (None, b"[DONE]")
