"""The round trip, small: simulator A with known noisy timing, recorded through `llmsim record`
under 16 streaming clients, calibrated; the profile then makes simulator B plan what A did.
benchmarks/record_fidelity.py runs it at size under `llmsim bench` and compares what a client
measures against A and B (test_bench_runs checks that bench --target writes the recording)."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llmsim.engine.request import EngineRequest
from llmsim.engine.simulator import Engine
from llmsim.record.bench_hook import RECORDING, start_recorder
from llmsim.record.calibrate import calibrate, write_profile
from llmsim.server.config import engine_config
from llmsim.settings import load_settings

A = ("--ttft-ms", "300", "--ttft-stddev-ms", "90", "--tbt-ms", "25", "--tbt-stddev-ms", "6")


def _quantiles(values: list[float], ps=(0.5, 0.9)) -> list[float]:
    v = sorted(values)
    return [v[min(len(v) - 1, int(p * len(v)))] for p in ps]


def _drive(base_url: str, each: int, users: int = 16, limit_s: float = 60) -> int:
    """`each` streamed chat requests from each of `users` threads: how many were sent."""

    def user(i: int) -> int:
        sent = 0
        deadline = time.monotonic() + limit_s
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while sent < each and time.monotonic() < deadline:
                body = {
                    "model": "gpt-4o",
                    "messages": [{"role": "user", "content": f"user {i} request {sent}"}],
                    "stream": True,
                    "max_tokens": 200,
                }
                with client.stream("POST", "/chat/completions", json=body) as r:
                    for _ in r.iter_bytes():
                        pass
                sent += 1
        return sent

    with ThreadPoolExecutor(users) as pool:
        return sum(pool.map(user, range(users)))


def test_recorded_noisy_simulator_calibrates_back_to_its_parameters(llmsim_server, tmp_path):
    server = llmsim_server(*A, "--output-tokens", "30", "--fault", "500=0.1", "--seed", "5")
    rec = start_recorder(server.base_url, tmp_path)
    try:
        sent = _drive(rec.base_url, 5)
    finally:
        rec.stop()
    recording = tmp_path / RECORDING
    lines = [json.loads(x) for x in recording.read_text().splitlines()]
    assert len(lines) == sent == 80
    cal = calibrate([recording])
    (fit,) = cal.models
    p = fit.profile
    n = p.quality["requests"]
    # Honest bounds for ~60-100 requests: the mean TTFT within 15 %, its spread within 45 %,
    # the per-request ITL within 12 % (what the client sees adds loopback time), errors
    # within 4 binomial standard deviations of the 10 % A injected.
    assert p.ttft.mean_ms == pytest.approx(300, rel=0.15)
    assert p.ttft.stddev_ms == pytest.approx(90, rel=0.45)
    assert p.itl.mean_ms == pytest.approx(25, rel=0.12)
    assert p.itl.stddev_ms == pytest.approx(6, rel=0.5)
    assert p.output_tokens.mean == pytest.approx(30, rel=0.2)
    assert abs(p.errors.get("500", 0) - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n)

    # B plans from the profile: its TTFT and TBT quantiles match A's plan.
    profile = tmp_path / "profile.yaml"
    write_profile(cal, profile)
    model = lines[0]["model"]
    known = {"ttft_ms": 300, "ttft_stddev_ms": 90, "tbt_ms": 25, "tbt_stddev_ms": 6}
    a = Engine(engine_config(load_settings(env={}, overrides={**known, "seed": 1})))
    b = Engine(engine_config(load_settings(env={}, overrides={"profile_file": str(profile)})))
    req = EngineRequest(model=model, prompt_tokens=20, max_tokens=1)
    plans = {name: [e.plan(req) for _ in range(3000)] for name, e in (("a", a), ("b", b))}
    for attr, rel in (("ttft_s", 0.2), ("tbt_s", 0.15)):
        qa = _quantiles([getattr(r, attr) for r in plans["a"]])
        qb = _quantiles([getattr(r, attr) for r in plans["b"]])
        for x, y in zip(qa, qb, strict=True):
            assert y == pytest.approx(x, rel=rel), (attr, qa, qb)
