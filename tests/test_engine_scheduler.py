"""The vllm-mode replica as a pure simulation: admission, chunking, preemption, prefix cache."""

from __future__ import annotations

import pytest

from llmsim.engine.kv_cache import KVCache, block_hashes
from llmsim.engine.scheduler import Replica, ReplicaConfig, Seq, SeqListener
from llmsim.engine.steptime import StepTimeModel, calibrated_step_time, load_preset, preset_names

# 1 ms per step plus 0.01 ms per token: easy to reason about.
FLAT = StepTimeModel(table_tokens=(1, 1001), table_ms=(1.01, 11.0))


class Log(SeqListener):
    def __init__(self) -> None:
        self.tokens: dict[str, list[float]] = {}
        self.finished: dict[str, float] = {}

    def on_tokens(self, seq: Seq, n: int, now: float) -> None:
        self.tokens.setdefault(seq.request_id, []).extend([now] * n)

    def on_finish(self, seq: Seq, now: float) -> None:
        self.finished[seq.request_id] = now


def run(replica: Replica, until_idle: int = 100_000) -> float:
    """Step the replica on a fake clock until nothing is left; the end time."""
    now = 0.0
    for _ in range(until_idle):
        dt = replica.step(now)
        if dt is None:
            return now
        now += dt
        replica.finish_step(now)
    raise AssertionError("the replica never went idle")


def make(**kw) -> tuple[Replica, Log]:
    cfg = ReplicaConfig(**{"num_gpu_blocks": 1000, "max_model_len": 4096, **kw})
    return Replica(cfg, FLAT), Log()


def add(r: Replica, log: Log, rid: str, prompt: int, out: int, ids=(), now=0.0) -> Seq:
    seq = Seq(rid, prompt, out, token_ids=ids, listener=log, arrival=now)
    r.add(seq, now)
    return seq


def test_each_request_gets_its_tokens_one_per_step_after_prefill() -> None:
    r, log = make()
    a = add(r, log, "a", 100, 5)
    b = add(r, log, "b", 50, 3)
    run(r)
    assert len(log.tokens["a"]) == 5 and len(log.tokens["b"]) == 3
    assert set(log.finished) == {"a", "b"}
    # Both prefilled in the first step (budget 8192): first tokens at the same step end.
    assert log.tokens["a"][0] == log.tokens["b"][0] == a.first_token_at == b.first_token_at
    # One token per step, and each step ends later than the previous.
    gaps = [y - x for x, y in zip(log.tokens["a"], log.tokens["a"][1:], strict=False)]
    assert all(g > 0 for g in gaps)
    assert r.kv.free_blocks == r.kv.num_blocks  # everything given back
    assert r.counters.finished == 2 and r.counters.generation_tokens == 8


def test_admission_stops_at_max_num_seqs_and_is_fifo() -> None:
    r, log = make(max_num_seqs=2)
    for i in range(4):
        add(r, log, f"r{i}", 10, 4)
    r.step(0.0)
    assert [s.request_id for s in r.running] == ["r0", "r1"]
    assert [s.request_id for s in r.waiting] == ["r2", "r3"]
    r.finish_step(0.001)
    run(r)
    firsts = [log.tokens[f"r{i}"][0] for i in range(4)]
    assert firsts[0] == firsts[1] < firsts[2] == firsts[3]


def test_long_prompt_is_prefilled_in_chunks_within_the_token_budget() -> None:
    r, log = make(max_num_batched_tokens=256)
    short = add(r, log, "short", 10, 50)
    r.step(0.0)
    r.finish_step(1.0)  # short is now decoding
    long = add(r, log, "long", 1000, 2, now=1.0)
    budgets = []
    now = 1.0
    while long.first_token_at is None:
        dt = r.step(now)
        budgets.append(r.last_step_tokens)
        now += dt
        r.finish_step(now)
    # Each step: one decode for `short` plus a chunk of 255, three times, then the last 235.
    assert budgets == [256, 256, 256, 236]
    assert long.computed == 1000 and long.produced == 1
    # The short request kept decoding in every one of those steps (chunked prefill's point).
    assert short.produced == 1 + len(budgets)


def test_without_chunked_prefill_a_prefill_step_carries_no_decodes() -> None:
    r, log = make(chunked_prefill=False, max_num_batched_tokens=4096)
    short = add(r, log, "short", 10, 50)
    r.step(0.0)
    r.finish_step(1.0)
    assert short.produced == 1
    add(r, log, "long", 1000, 2, now=1.0)
    r.step(1.0)
    assert r.last_step_tokens == 1000  # the whole prompt, and no decode for `short`
    r.finish_step(2.0)
    assert short.produced == 1
    r.step(2.0)
    assert r.last_step_tokens == 2  # then a decode step for both
    r.finish_step(3.0)
    assert short.produced == 2


def test_v0_mode_refuses_a_budget_below_max_model_len() -> None:
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        Replica(ReplicaConfig(chunked_prefill=False, max_num_batched_tokens=512), FLAT)


def test_kv_shortage_preempts_the_newest_and_everyone_still_finishes() -> None:
    # 10 blocks of 16 tokens: three 40-token prompts fit (3 blocks each) but not their growth.
    r, log = make(num_gpu_blocks=10, block_size=16)
    for i in range(3):
        add(r, log, f"r{i}", 40, 30)
    run(r)
    assert r.counters.preemptions > 0
    assert all(len(log.tokens[f"r{i}"]) == 30 for i in range(3))
    assert r.kv.free_blocks == 10
    # The oldest request is never the one preempted, so it finishes first.
    assert log.finished["r0"] <= min(log.finished["r1"], log.finished["r2"])


def test_preempted_request_recomputes_prompt_and_produced_tokens() -> None:
    r, log = make(num_gpu_blocks=6, block_size=16, prefix_caching=False)
    a = add(r, log, "a", 40, 40)
    b = add(r, log, "b", 40, 40)
    prefilled_before = 0
    now = 0.0
    while b.preemptions == 0:
        dt = r.step(now)
        now += dt
        r.finish_step(now)
    prefilled_before = r.counters.prompt_tokens
    produced = b.produced
    run(r)
    assert a.preemptions == 0
    # b prefilled again its prompt and what it had produced (recompute, not swap).
    assert r.counters.prompt_tokens >= prefilled_before + 40 + produced
    assert len(log.tokens["b"]) == 40


def test_requests_that_can_never_fit_are_refused_up_front() -> None:
    r, log = make(num_gpu_blocks=4, block_size=16)
    with pytest.raises(ValueError, match="KV blocks"):
        add(r, log, "big", 60, 10)
    with pytest.raises(ValueError, match="max_model_len"):
        add(r, log, "long", 4000, 200)


def test_shared_prefix_reuses_cached_blocks_and_prefills_only_the_rest() -> None:
    r, log = make(block_size=16)
    shared = list(range(1000, 1064))  # four full blocks
    a = add(r, log, "a", 80, 2, ids=[*shared, *range(16)])
    run(r)
    b = add(r, log, "b", 80, 2, ids=[*shared, *range(500, 516)])
    r.step(10.0)
    assert b.hit_tokens == 64
    assert r.last_step_tokens == 16  # only the unshared block
    r.finish_step(11.0)
    run(r)
    assert r.counters.prefix_queries == 160 and r.counters.prefix_hits == 64
    assert a.hit_tokens == 0


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    r, log = make(block_size=16)
    ids = list(range(64))
    add(r, log, "a", 64, 1, ids=ids)
    run(r)
    b = add(r, log, "b", 64, 1, ids=ids)
    r.step(5.0)
    assert b.hit_tokens == 48 and r.last_step_tokens == 16


def test_prefix_caching_off_never_hits() -> None:
    r, log = make(prefix_caching=False)
    ids = list(range(64))
    add(r, log, "a", 64, 1, ids=ids)
    run(r)
    b = add(r, log, "b", 64, 1, ids=ids)
    run(r)
    assert b.hit_tokens == 0 and r.counters.prefix_queries == 0


def test_lru_eviction_keeps_the_most_recently_used_prefix() -> None:
    kv = KVCache(num_blocks=4, block_size=2)
    a, b = kv.allocate(2), kv.allocate(2)
    assert a is not None and b is not None
    ha, hb = block_hashes([1, 2, 3, 4], 2), block_hashes([5, 6, 7, 8], 2)
    for blk, h in zip(a + b, ha + hb, strict=True):
        kv.publish(blk, h)
    kv.release(a)
    kv.release(b)  # b freed last: more recently used
    assert kv.lookup(ha) == a and kv.lookup(hb) == b
    got = kv.allocate(2)  # evicts a's blocks, the least recently freed
    assert got is not None and set(got) == set(a)
    assert kv.lookup(ha) == [] and kv.lookup(hb) == b
    assert kv.evictions == 2


def test_eviction_takes_a_prompts_tail_before_its_head() -> None:
    kv = KVCache(num_blocks=3, block_size=2)
    blocks = kv.allocate(3)
    hashes = block_hashes([1, 2, 3, 4, 5, 6], 2)
    for blk, h in zip(blocks, hashes, strict=True):
        kv.publish(blk, h)
    kv.release(blocks)
    kv.allocate(1)
    assert kv.lookup(hashes) == blocks[:2]  # the first two blocks still hit


def test_block_hashes_chain_the_prefix() -> None:
    x = block_hashes([1, 2, 3, 4], 2)
    y = block_hashes([9, 9, 3, 4], 2)
    assert x[1] != y[1]  # same tokens in block 2, different prefix
    assert block_hashes([1, 2, 3], 2) == x[:1]  # only full blocks


def test_step_time_grows_with_batch_and_context() -> None:
    st = load_preset("llama-3-8b-a100").step_time
    one = st.step_ms(1, 1, 600)
    many = st.step_ms(128, 128, 128 * 600)
    longer = st.step_ms(128, 128, 128 * 4000)
    with_prefill = st.step_ms(128 + 512, 128, 128 * 600, [(512, 0)])
    assert one < many < longer
    assert with_prefill > many
    assert 8 < one < 13  # about one weight read on an A100 (~10 ms)


def test_every_preset_loads_and_names_its_sources() -> None:
    names = preset_names()
    for wanted in ("llama-3-8b-a100", "llama-3-8b-h100", "llama-3-70b-h100-tp4", "qwen2.5-7b-h100"):
        assert wanted in names
    for name in names:
        p = load_preset(name)
        assert p.num_gpu_blocks > 1000 and p.raw["sources"] and p.raw["fit"]
        assert p.step_time.step_ms(1, 1, 100) > 0
    with pytest.raises(KeyError, match="known"):
        load_preset("nope")


def test_a_cost_per_sequence_grows_a_step_with_its_batch() -> None:
    m = FLAT.with_per_seq(0.02)
    for b in (1, 10, 200):  # each decoding sequence adds it
        assert m.step_ms(b, b, b * 50) - FLAT.step_ms(b, b, b * 50) == pytest.approx(0.02 * b)
    # So does each prefill chunk, and a round of K steps pays it K times per sequence.
    assert m.step_ms(300, 0, 0, [(100, 0), (200, 0)]) - FLAT.step_ms(
        300, 0, 0, [(100, 0), (200, 0)]
    ) == pytest.approx(0.04)
    assert m.scaled(2.0).per_seq_ms == pytest.approx(0.04)
    r = Replica(ReplicaConfig(num_gpu_blocks=1000, max_model_len=4096, chunked_prefill=False,
                              num_scheduler_steps=4), m)  # fmt: skip
    r0 = Replica(r.config, FLAT)
    for rep in (r, r0):
        for i in range(8):
            rep.add(Seq(str(i), 16, 9), 0.0)
        rep.finish_step(rep.step(0.0))  # the prefill step
    assert r.step(1.0) - r0.step(1.0) == pytest.approx(4 * 8 * 0.02e-3)


def test_a_presets_calibration_scales_every_step_and_adds_its_cost_per_sequence() -> None:
    d = load_preset("llama-3-8b-a100").raw
    raw = StepTimeModel.from_dict(d["step_time"])
    cal = d["calibration"]
    assert cal["per_sequence_ms"] > 0 and cal["step_time_scale"] > 1
    got = calibrated_step_time(d)
    for b in (1, 64, 256):
        want = cal["step_time_scale"] * raw.step_ms(b, b, b * 600) + cal["per_sequence_ms"] * b
        assert got.step_ms(b, b, b * 600) == pytest.approx(want)
    assert load_preset("llama-3-70b-h100-tp4").step_time.per_seq_ms == 0.0  # uncalibrated


def test_prefill_scale_stretches_the_prefill_terms_only() -> None:
    m = StepTimeModel(table_tokens=(1, 1001), table_ms=(1.0, 101.0), decode_step_ms=0.5,
                      decode_ctx_ms=0.001, prefill_chunk_ms=0.8, prefill_pair_ms=1e-5,
                      overhead_ms=0.3, per_seq_ms=0.02)  # fmt: skip
    f = m.with_prefill_scale(0.5)
    # A decode-only step: unchanged.
    assert f.step_ms(64, 64, 64 * 600) == pytest.approx(m.step_ms(64, 64, 64 * 600))
    # A prefill-only step: dense part and prefill attention halved; overhead, cost per
    # sequence unchanged.
    chunks = [(300, 0), (200, 100)]
    attn = 2 * 0.8 + 1e-5 * (300 * 150 + 200 * 200)
    assert m.step_ms(500, 0, 0, chunks) == pytest.approx(0.3 + 50.9 + attn + 2 * 0.02)
    assert f.step_ms(500, 0, 0, chunks) == pytest.approx(0.3 + 0.5 * (50.9 + attn) + 2 * 0.02)
    # A mixed step: only the prefill tokens' share of the dense part (400 of 500) is scaled.
    mixed = f.step_ms(500, 100, 100 * 50, [(400, 0)])
    dense = 50.9 * (100 + 0.5 * 400) / 500
    decode = 0.5 + 0.001 * 100 * 50
    prefill = 0.5 * (0.8 + 1e-5 * 400 * 200)
    assert mixed == pytest.approx(0.3 + dense + decode + prefill + 101 * 0.02)
    # A uniform stretch keeps the ratio between the terms.
    assert f.scaled(2.0).prefill_scale == 0.5


def test_a_presets_prefill_scale_applies_on_top_of_its_factor() -> None:
    d = load_preset("llama-3-8b-a100").raw
    cal = d["calibration"]
    ps, scale, per_seq = cal["prefill_scale"], cal["step_time_scale"], cal["per_sequence_ms"]
    assert 0 < ps < 1
    raw = StepTimeModel.from_dict(d["step_time"])
    got = calibrated_step_time(d)
    chunks = [(400, 0)] * 5
    want = ps * scale * raw.step_ms(2000, 0, 0, chunks) + per_seq * 5
    assert got.step_ms(2000, 0, 0, chunks) == pytest.approx(want)
    # Without the key a preset is as it was: one factor on every term.
    plain = {**d, "calibration": {k: v for k, v in cal.items() if k != "prefill_scale"}}
    old = calibrated_step_time(plain)
    assert old.prefill_scale == 1.0
    assert old.step_ms(2000, 0, 0, chunks) == pytest.approx(
        scale * raw.step_ms(2000, 0, 0, chunks) + per_seq * 5
    )
    assert load_preset("llama-3-8b-h100").step_time.prefill_scale == 1.0


def test_jitter_changes_step_times_but_keeps_their_mean() -> None:
    import random

    cfg = ReplicaConfig(step_jitter_cv=0.2, num_gpu_blocks=100)
    r = Replica(cfg, FLAT, rng=random.Random(1))
    times = []
    for i in range(400):
        r.add(Seq(str(i), 10, 1), 0.0)
        times.append(r.step(0.0))
        r.finish_step(0.0)
    mean = sum(times) / len(times)
    assert len(set(times)) > 100
    assert abs(mean - FLAT.step_s(10, 0, 0, [(10, 0)])) / mean < 0.05


def test_abort_gives_blocks_back_at_once() -> None:
    r, log = make(num_gpu_blocks=20)
    a = add(r, log, "a", 100, 50)
    r.step(0.0)
    r.finish_step(0.01)
    assert r.kv.free_blocks < 20
    r.abort(a)
    assert r.kv.free_blocks == 20 and r.idle
    assert r.step(0.02) is None
