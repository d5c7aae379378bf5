"""The API-independent engine: lengths, finish reasons, seeds, profiles and sampling."""

from __future__ import annotations

import random
import statistics

import pytest

from llmsim.engine.profiles import PROFILES, profile_name_for_model, sample_ms
from llmsim.engine.request import EngineRequest
from llmsim.engine.simulator import Engine, apply_stop
from llmsim.engine.timing import TokenClock, TokenSchedule
from llmsim.server.config import engine_config
from llmsim.settings import load_settings


def engine(**overrides) -> Engine:
    return Engine(engine_config(load_settings(env={}, overrides=overrides)))


def req(**kw) -> EngineRequest:
    kw.setdefault("model", "gpt-4o")
    kw.setdefault("prompt_tokens", 10)
    return EngineRequest(**kw)


def test_reply_never_exceeds_the_cap_and_says_why_it_ended():
    e = engine(output_tokens=50, seed=1)
    for _ in range(200):
        reply = e.plan(req(max_tokens=40))
        (choice,) = reply.choices
        assert len(choice.tokens) <= 40
        if choice.finish_reason == "length":
            assert len(choice.tokens) == 40
        else:  # a reply may end by itself exactly at the cap
            assert choice.finish_reason == "stop"
    reasons = {e.plan(req(max_tokens=40)).choices[0].finish_reason for _ in range(100)}
    assert reasons == {"stop", "length"}, "mean 50 ± 12 straddles a cap of 40"


def test_ignore_eos_gives_exactly_the_cap():
    e = engine(output_tokens=5, output_tokens_stddev=0)
    reply = e.plan(req(max_tokens=300, ignore_eos=True, n=2))
    assert [len(c.tokens) for c in reply.choices] == [300, 300]
    assert reply.completion_tokens == 600
    assert {c.finish_reason for c in reply.choices} == {"length"}


def test_output_tokens_sets_the_natural_length():
    e = engine(output_tokens=40, output_tokens_stddev=0)
    assert len(e.plan(req()).choices[0].tokens) == 40
    lengths = [
        len(engine(output_tokens=100, seed=s).plan(req()).choices[0].tokens) for s in range(300)
    ]
    assert 90 < statistics.mean(lengths) < 110
    assert 15 < statistics.stdev(lengths) < 35  # default: a quarter of the mean


def test_seed_fixes_the_text_not_the_timing():
    e = engine()
    a = e.plan(req(seed=5, fingerprint="conv", max_tokens=20))
    b = e.plan(req(seed=5, fingerprint="conv", max_tokens=20))
    c = e.plan(req(seed=5, fingerprint="other", max_tokens=20))
    assert a.choices[0].tokens == b.choices[0].tokens
    assert a.choices[0].tokens != c.choices[0].tokens


def test_server_seed_makes_a_run_repeatable():
    def run(seed):
        e = engine(seed=seed)
        return [(r.ttft_s, r.tbt_s, r.choices[0].text) for r in (e.plan(req()) for _ in range(5))]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_stop_cuts_at_a_token_boundary():
    toks = ["Hello", " big", " world", ".", " Bye"]
    assert apply_stop(toks, (" world",)) == (["Hello", " big"], True)
    assert apply_stop(toks, ("orl",)) == (["Hello", " big"], True)  # inside a token: drop it
    assert apply_stop(toks, ("zzz",)) == (toks, False)
    assert apply_stop(toks, ("Hello",)) == ([], True)
    assert apply_stop(toks, (" Bye", " big")) == (["Hello"], True)  # earliest match wins


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("gpt-5", "gpt-5"),
        ("gpt-5-mini", "gpt-5-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-mini", "gpt-5-mini"),
        ("gpt-4-turbo", "gpt-4"),
        ("o3-mini", "o-series"),
        ("claude-opus-4-1", "claude-opus"),
        ("claude-sonnet-4-5", "claude-sonnet"),
        ("claude-3-5-haiku-latest", "claude-haiku"),
        ("gemini-2.5-pro", "gemini-pro"),
        ("gemini-2.5-flash", "gemini-flash"),
        ("deepseek-chat", "deepseek"),
        ("deepseek-reasoner", "deepseek-reasoner"),
        ("fast", "fast"),
        ("text-embedding-3-small", "embedding"),
        ("nomic-embed-text", "embedding"),
        ("some-local-model", "gpt-4o"),
    ],
)
def test_profile_is_chosen_by_model_family(model, profile):
    assert profile_name_for_model(model) == profile


def test_forced_profile_and_overrides():
    e = engine(profile="gpt-5", ttft_ms=123, ttft_stddev_ms=0, tbt_stddev_ms=0)
    p = e.timing_for("claude-haiku-4")
    assert (p.ttft_ms, p.ttft_stddev_ms, p.tbt_ms, p.tbt_stddev_ms) == (123, 0, 40, 0)
    reply = e.plan(req(model="claude-haiku-4"))
    assert reply.ttft_s == pytest.approx(0.123) and reply.tbt_s == pytest.approx(0.040)


def test_instant_profile_is_zero():
    reply = engine(profile="instant").plan(req(max_tokens=10, ignore_eos=True))
    assert reply.ttft_s == 0 and reply.tbt_s == 0 and reply.duration_s == 0


@pytest.mark.parametrize("distribution", ["lognormal", "normal"])
def test_sampling_has_the_profile_mean_and_stddev(distribution):
    rng = random.Random(1)
    xs = [sample_ms(rng, 600, 150, distribution) for _ in range(40_000)]
    assert statistics.mean(xs) == pytest.approx(600, rel=0.02)
    assert statistics.stdev(xs) == pytest.approx(150, rel=0.05)
    assert min(xs) >= 0


def test_lognormal_is_right_skewed():
    rng = random.Random(2)
    xs = sorted(sample_ms(rng, 600, 150, "lognormal") for _ in range(40_000))
    assert statistics.median(xs) < statistics.mean(xs)
    assert xs[int(0.99 * len(xs))] - 600 > 600 - xs[int(0.01 * len(xs))]


def test_constant_and_zero_stddev_are_exact():
    rng = random.Random()
    assert {sample_ms(rng, 200, 50, "constant") for _ in range(10)} == {200}
    assert {sample_ms(rng, 200, 0, "lognormal") for _ in range(10)} == {200}


def test_every_profile_from_the_issue_is_there():
    assert PROFILES["gpt-5"].ttft_ms == 600 and PROFILES["gpt-5"].tbt_stddev_ms == 12
    assert PROFILES["deepseek-reasoner"].ttft_ms == 1500
    assert PROFILES["instant"].ttft_ms == 0 and PROFILES["instant"].tbt_ms == 0
    assert PROFILES["embedding"].tbt_ms == 0
    assert len(PROFILES) == 15


def test_due_times_follow_ttft_then_tbt():
    e = engine(
        profile="gpt-4o",
        ttft_ms=100,
        ttft_stddev_ms=0,
        tbt_ms=10,
        tbt_stddev_ms=0,
        prefill_ms_per_1k=0,
    )
    reply = e.plan(req(max_tokens=5, ignore_eos=True))
    clock = TokenClock(e.timing_for("gpt-4o"), reply.tbt_s, e.rng)
    schedule = TokenSchedule(reply.first_s, clock)
    assert [round(schedule.due(i), 6) for i in range(5)] == [0.1, 0.11, 0.12, 0.13, 0.14]
    assert reply.duration_s == pytest.approx(0.14)
