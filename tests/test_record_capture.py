"""What the recorder keeps of an exchange (raw reads, framed as they came) and what the analysis
makes of it: the same line whatever the reads' boundaries and framing, with every content
event timed by the read that completed it. No servers: the capture is built by hand."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from llmsim.engine.tokens import count_tokens
from llmsim.record.framing import ChunkEnd, Dechunker, ProtocolError
from llmsim.record.recording import Capture, analyse

BODY = b"4;ext=1\r\nWiki\r\n7\r\npedia i\r\nB\r\nn \r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n"
TEXTS = ["Hel", "lo,", " wor", "", "ld! \u00e9t\u00e9", "\n\nok"]  # "" is no content event
START = 100.0


def test_chunk_end_finds_the_end_where_the_dechunker_does_at_any_split():
    for cut in range(1, len(BODY)):  # every place a read can end
        follow, dechunk = ChunkEnd(), Dechunker()
        follow.feed(BODY[:cut])
        dechunk.feed(BODY[:cut])
        assert not follow.done and not dechunk.done
        follow.feed(BODY[cut:])
        dechunk.feed(BODY[cut:])
        assert follow.done and dechunk.done
    follow = ChunkEnd()
    for i, c in enumerate(BODY):
        follow.feed(bytes([c]))
        assert follow.done == (i == len(BODY) - 1)
    for bad in (b"zz\r\n", b"0\r\n\r\nextra", b"f" * 5000, b"-5\r\n"):
        for kind in (ChunkEnd, Dechunker):
            with pytest.raises(ProtocolError):
                kind().feed(bad)
    done = ChunkEnd()
    done.feed(b"0\r\n\r\n")
    with pytest.raises(ProtocolError):
        done.feed(b"x")  # nothing may follow the end of the body


def _sse() -> tuple[bytes, list[int], list[int]]:
    """An OpenAI chat stream (one event per chunk, as a server writes it), for each text in
    TEXTS the offset in the framed body just past the blank line that ends its event, and
    where each chunk ends."""
    events = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]}]
    events += [{"choices": [{"delta": {"content": t}}]} for t in TEXTS]
    events += [{"choices": [{"delta": {}, "finish_reason": "stop"}]}]
    events += [{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}}]
    framed, ends, chunks = b"", [], []
    for i, ev in enumerate([*events, "[DONE]"]):
        payload = b"data: " + (ev.encode() if isinstance(ev, str) else json.dumps(ev).encode())
        payload += b"\n\n"
        head = b"%x\r\n" % len(payload)
        if 1 <= i <= len(TEXTS):
            ends.append(len(framed) + len(head) + len(payload))
        framed += head + payload + b"\r\n"
        chunks.append(len(framed))
    return framed + b"0\r\n\r\n", ends, chunks


def _capture(body: bytes, cuts: list[int], chunked: bool) -> Capture:
    cap = Capture(1.7e9, START, "POST", "/v1/chat/completions", "", _REQUEST, ["sk-x"])
    cap.status, cap.chunked = 200, chunked
    cap.headers = [("Content-Type", "text/event-stream"), ("x-ratelimit-remaining-tokens", "9")]
    cap.first_byte, cap.end = START + 0.05, START + 1.0
    bounds = [0, *cuts, len(body)]
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        cap.reads.append(body[a:b])
        cap.times.append(START + 0.1 + 0.01 * k)  # read k arrived at 100 + 10 k ms
    return cap


_REQUEST = json.dumps(
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}], "max_tokens": 20}
).encode()


def _read_at(cuts: list[int], offset: int) -> int:
    """Which read holds byte `offset - 1` (the last byte of an event)."""
    return sum(1 for c in cuts if c < offset)


def test_every_content_event_is_timed_and_counted_whatever_the_reads_were():
    framed, ends, chunks = _sse()
    payload = Dechunker().feed(framed)
    rng = random.Random(13)
    # One read; one per chunk (the common case); one per byte; and reads cut anywhere.
    splits = [[], chunks, list(range(1, len(framed)))]
    splits += [sorted(rng.sample(range(1, len(framed)), k)) for k in (3, 10, 40) for _ in range(5)]
    content = [i for i, t in enumerate(TEXTS) if t]
    for cuts in splits:
        line = analyse(_capture(framed, cuts, chunked=True), count_tokens, with_bodies=True)
        arrivals = [100 + 10 * _read_at(cuts, ends[i]) for i in content]  # ms after START
        assert line["ttft_ms"] == pytest.approx(arrivals[0])
        assert line["gaps_ms"] == pytest.approx([b - a for a, b in itertools.pairwise(arrivals)])
        assert line["texts"] == [TEXTS[i] for i in content]
        assert line["event_tokens"] == [count_tokens(TEXTS[i], "gpt-4o") for i in content]
        assert (line["prompt_tokens"], line["output_tokens"], line["usage"]) == (7, 9, "reported")
        assert line["finish_reason"] == "stop" and line["error_kind"] is None
        assert line["model"] == "gpt-4o" and line["max_tokens"] == 20 and line["key"]
        assert line["rate_limit"] == {"x-ratelimit-remaining-tokens": "9"}
        assert (line["first_byte_ms"], line["e2e_ms"]) == (50.0, 1000.0)
        # The same body unframed (a Content-Length or close-delimited upstream), cut at the
        # same payload bytes: the same line.
        plain_cuts = sorted({len(Dechunker().feed(framed[:c])) for c in cuts} - {0})
        plain = analyse(_capture(payload, plain_cuts, chunked=False), count_tokens, True)
        assert plain["texts"] == line["texts"] and plain["event_tokens"] == line["event_tokens"]
        assert len(plain["gaps_ms"]) == len(line["gaps_ms"])


def test_the_capture_crosses_to_the_analysis_process_whole():
    framed, _, _ = _sse()
    cap = _capture(framed, [5, 90, 300], chunked=True)
    cap.outcome, cap.detail, cap.truncated = "drop", "upstream closed mid-reply", True
    back = Capture.from_wire(cap.to_wire())
    assert back == cap
    assert analyse(back, count_tokens, True) == analyse(cap, count_tokens, True)
    line = analyse(back, count_tokens)
    assert line["error_kind"] == "drop" and line["truncated"] and "texts" not in line


def test_captures_waiting_for_the_analysis_are_bounded_and_the_overflow_counted(tmp_path):
    """A writer that falls behind for good must not grow the proxy's memory: past the bound an
    exchange is still forwarded but not recorded, and counted where /health and the exit line
    show it; once the writer catches up, exchanges are recorded again."""
    from llmsim.record.proxy import RecordConfig, Recorder

    written: list[Capture] = []
    rec = Recorder(
        RecordConfig(target="http://127.0.0.1:9", out=str(tmp_path / "r.jsonl")), written.append
    )
    rec.max_queued_bytes = 10_000

    def cap() -> Capture:  # 3,000 + 500 bytes, and one read's bookkeeping
        return Capture(
            0.0, START, "POST", "/v1/chat/completions", body=b"x" * 3000, reads=[b"y" * 500]
        )

    for _ in range(5):
        rec.enqueue(cap())
    assert rec.dropped == 3 and rec.health()["not_recorded"] == 3
    assert 0 < rec.queued_bytes <= rec.max_queued_bytes
    rec.queue.put(None)
    rec.write_loop()  # the writer catches up
    assert len(written) == rec.recorded == 2 and rec.queued_bytes == 0
    rec.enqueue(cap())
    assert rec.queue.qsize() == 1 and rec.dropped == 3
