"""Open-loop pieces without a network: arrival schedules on a fake clock, traces, prefixes,
chunked decoding, goodput objectives."""

from __future__ import annotations

import json
import random
import statistics
from itertools import islice, pairwise

import pytest

from llmsim.bench.goodput import meets, parse_goodput
from llmsim.engine.tokens import count_chat_prompt_tokens
from llmsim.load.arrivals import Arrival, parse_arrival, schedule
from llmsim.load.chunked import ChunkError, Dechunker
from llmsim.load.trace import BLOCK_TOKENS, load_trace, trace_request
from llmsim.load.workload import Workload, framing_tokens, parse_distribution

MODEL = "gpt-4o-mini"


def _gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(offsets)]


@pytest.mark.parametrize(
    ("spec", "cv"),
    [("poisson", 1.0), ("constant", 0.0), ("gamma:cv=2", 2.0), ("gamma:cv=0.5", 0.5)],
)
def test_arrivals_have_their_rate_and_cv(spec: str, cv: float) -> None:
    offsets = list(islice(schedule(parse_arrival(spec), 40.0, random.Random(1)), 20_000))
    gaps = _gaps(offsets)
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / 40.0, rel=0.03)
    assert statistics.pstdev(gaps) / mean == pytest.approx(cv, abs=0.06)
    assert offsets[-1] == pytest.approx(20_000 / 40.0, rel=0.03)  # the achieved rate


def test_phase_shifted_constant_schedules_add_up_to_one() -> None:
    # Four processes at a quarter of the rate each: the swarm's arrivals are evenly spaced.
    merged = sorted(
        t
        for i in range(4)
        for t in islice(schedule(Arrival("constant", 0.0), 5.0, random.Random(), i / 4), 50)
    )
    assert all(g == pytest.approx(0.05) for g in _gaps(merged))


def test_poisson_shares_superpose_to_the_full_rate() -> None:
    merged = sorted(
        t
        for i in range(3)
        for t in islice(schedule(Arrival(), 10.0 / 3, random.Random(i)), 4000)
        if t < 1000
    )
    gaps = _gaps(merged)
    assert len(merged) / 1000 == pytest.approx(10.0, rel=0.04)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("bad", ["gamma", "gamma:cv=0", "gamma:cv=-1", "gamma:k=2", "burst", ""])
def test_bad_arrivals_say_why(bad: str) -> None:
    with pytest.raises(ValueError, match=r"poisson, constant or gamma|gamma:cv=C"):
        parse_arrival(bad)


def _trace(tmp_path, records, suffix=".jsonl"):
    p = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        lines = ["timestamp,input_length,output_length,hash_ids"]
        lines += [
            f"{r['timestamp']},{r['input_length']},{r['output_length']},"
            f'"{" ".join(map(str, r.get("hash_ids", [])))}"'
            for r in records
        ]
        p.write_text("\n".join(lines) + "\n")
    else:
        p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return p


RECORDS = [
    {"timestamp": 1000, "input_length": 700, "output_length": 12, "hash_ids": [1, 2]},
    {"timestamp": 1250, "input_length": 900, "output_length": 3, "hash_ids": [1, 2, 7]},
    {"timestamp": 1100, "input_length": 40, "output_length": 5},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_trace_offsets_lengths_and_shared_blocks(tmp_path, suffix) -> None:
    entries = load_trace(str(_trace(tmp_path, RECORDS, suffix)))
    assert [e.offset_s for e in entries] == [0.0, 0.1, 0.25]  # sorted, from the first
    assert [e.output_length for e in entries] == [12, 5, 3]
    framing = framing_tokens(MODEL, None)
    reqs = [trace_request(e, MODEL, random.Random(i), framing) for i, e in enumerate(entries)]
    for e, r in zip(entries, reqs, strict=True):
        assert count_chat_prompt_tokens(r.messages, MODEL) == e.input_length == r.prompt_tokens
        assert r.max_tokens == e.output_length
    a, c = reqs[0].messages[0]["content"], reqs[2].messages[0]["content"]
    # Equal hash_ids, equal text: the first two blocks (and the 700-token prompt's end of
    # block 2) are the same text in both prompts.
    shared = a.split(" ")
    assert c.split(" ")[: len(shared)] == shared
    assert len(shared) == 700 - framing and len(shared) > BLOCK_TOKENS


def test_bad_traces_are_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 1, "input_length": 5}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: no 'output_length' field"):
        load_trace(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no requests"):
        load_trace(str(empty))


def test_prefix_groups_share_their_prefix() -> None:
    w = Workload(
        model=MODEL,
        prompt_tokens=parse_distribution(300),
        max_tokens=parse_distribution(10),
        rng=random.Random(3),
        prefix_tokens=100,
        prefix_groups=2,
    )
    reqs = [w.next_request() for _ in range(20)]
    prefixes = {" ".join(r.messages[0]["content"].split(" ")[:100]) for r in reqs}
    assert len(prefixes) == 2
    assert all(count_chat_prompt_tokens(r.messages, MODEL) == 300 for r in reqs)
    rests = {" ".join(r.messages[0]["content"].split(" ")[100:]) for r in reqs}
    assert len(rests) == 20  # the rest of each prompt is its own


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_dechunker_any_split() -> None:
    parts = [b'data: {"i": %d}\n\n' % i for i in range(40)] + [b"x\r\n" * 50]
    wire = _chunked(parts)
    rng = random.Random(5)
    for trial in range(200):
        d = Dechunker()
        data = (b"\r\n" if trial % 2 else b"") + wire  # llhttp may stop before a CRLF
        out, pos = [], 0
        while pos < len(data):
            n = rng.choice([1, 2, 3, 7, 64, len(data)])
            out.append(d.feed(data[pos : pos + n]))
            pos += n
        assert d.done and b"".join(out) == b"".join(parts)


@pytest.mark.parametrize("bad", [b"zz\r\n", b"3\r\nabcXY", b"9" * 2000])
def test_dechunker_rejects_bad_framing(bad: bytes) -> None:
    with pytest.raises(ChunkError):
        Dechunker().feed(bad)


def test_goodput_objectives() -> None:
    objs = parse_goodput("ttft<=500ms,tpot<=50ms,e2e<2s")
    assert meets(objs, {"ttft": 500, "tpot": 49.9, "e2e": 1999})
    assert not meets(objs, {"ttft": 501, "tpot": 10, "e2e": 100})
    assert not meets(objs, {"ttft": None, "tpot": 10, "e2e": 100})
    for bad, msg in (("itl<=5ms", "use tpot"), ("ttft>=5", "expected"), ("", "no objective")):
        with pytest.raises(ValueError, match=msg):
            parse_goodput(bad)
