"""llmsim calibrate and profile files: fits recover known parameters, bad input is named."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmsim.cli import cli
from llmsim.record.calibrate import calibrate
from llmsim.record.profile_file import ProfileError, dump_profile, load_profile, parse_profile
from llmsim.record.recording import read_recordings


def _lognormal(rng: random.Random, mean: float, sd: float) -> float:
    s2 = math.log1p((sd / mean) ** 2)
    return rng.lognormvariate(math.log(mean) - s2 / 2, math.sqrt(s2))


def synthetic_line(rng: random.Random, model: str = "m", prefill_per_token: float = 0.0):
    """A recording line drawn from known parameters: TTFT lognormal 300/90 (+ prefill),
    per-request TBT lognormal 25/6, per-token jitter CV 0.2, 1 % stalls of 200 ms, 3 tokens
    per event, output lognormal 120/30, 2 % 503s."""
    prompt = rng.randint(100, 4000)
    if rng.random() < 0.02:
        return {"v": 1, "api": "chat", "model": model, "status": 503, "stream": True,
                "error_kind": "503", "gaps_ms": [], "prompt_tokens": prompt}  # fmt: skip
    tbt = _lognormal(rng, 25, 6)
    n = max(4, round(_lognormal(rng, 120, 30)))
    events = [3] * (n // 3) + ([n % 3] if n % 3 else [])
    gaps = []
    for k in events[1:]:
        g = sum(_lognormal(rng, tbt, 0.2 * tbt) for _ in range(k))
        if rng.random() < 0.01:
            g += rng.expovariate(1 / 200)
        gaps.append(g)
    ttft = _lognormal(rng, 300, 90) + prefill_per_token * prompt
    return {"v": 1, "api": "chat", "model": model, "status": 200, "stream": True,
            "error_kind": None, "prompt_tokens": prompt, "output_tokens": n,
            "finish_reason": "stop", "ttft_ms": ttft,
            "gaps_ms": gaps, "event_tokens": events, "e2e_ms": 1.0}  # fmt: skip


def _write(path: Path, lines: list, extra: str = "") -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + extra)
    return path


def test_fits_recover_the_parameters_they_were_drawn_from(tmp_path):
    rng = random.Random(7)
    path = _write(tmp_path / "r.jsonl", [synthetic_line(rng) for _ in range(1500)])
    cal = calibrate([path])
    (fit,) = cal.models
    p = fit.profile
    assert p.ttft.distribution == "lognormal" and p.ttft.prefill_ms_per_1k == 0
    assert p.ttft.mean_ms == pytest.approx(300, rel=0.05)
    assert p.ttft.stddev_ms == pytest.approx(90, rel=0.12)
    assert p.itl.mean_ms == pytest.approx(25, rel=0.05)
    assert p.itl.stddev_ms == pytest.approx(6, rel=0.15)
    assert p.itl.jitter_cv == pytest.approx(0.2, rel=0.15)
    assert p.itl.stall_probability == pytest.approx(0.01, rel=0.4)
    assert p.itl.stall_ms == pytest.approx(200, rel=0.3)
    assert p.chunk_tokens.mean == pytest.approx(3, rel=0.1)
    assert p.output_tokens.mean == pytest.approx(120, rel=0.05)
    assert p.errors["503"] == pytest.approx(0.02, abs=0.01)
    assert "KS" in cal.report() and not fit.warnings


def test_prompt_length_term_bimodal_ttft_and_few_requests(tmp_path):
    rng = random.Random(3)
    lines = [synthetic_line(rng, "long", prefill_per_token=0.5) for _ in range(800)]
    for i in range(600):  # two clusters: no lognormal fits that
        line = synthetic_line(rng, "bimodal")
        if line["status"] == 200:
            line["ttft_ms"] = (100 if i % 2 else 900) + rng.random() * 20
        lines.append(line)
    lines += [synthetic_line(rng, "rare") for _ in range(10)]
    cal = calibrate([_write(tmp_path / "r.jsonl", lines)])
    by = {m.model: m for m in cal.models}
    assert by["long"].profile.ttft.prefill_ms_per_1k == pytest.approx(500, rel=0.1)
    assert by["long"].profile.ttft.mean_ms == pytest.approx(300, rel=0.1)
    bi = by["bimodal"].profile.ttft
    assert bi.distribution == "empirical" and bi.prefill_ms_per_1k == 0
    assert bi.quantiles_ms[25] < 130 and bi.quantiles_ms[75] > 880
    assert any("fewer than 50" in w for w in by["rare"].warnings)
    # What calibrate writes, load_profile reads back the same.
    text = dump_profile(cal.profile_file())
    (tmp_path / "p.yaml").write_text(text)
    again = load_profile(tmp_path / "p.yaml")
    assert again.models["bimodal"].ttft.quantiles_ms == pytest.approx(bi.quantiles_ms, abs=1e-3)


def test_truncated_and_foreign_lines_are_skipped_and_counted(tmp_path):
    rng = random.Random(1)
    good = [synthetic_line(rng) for _ in range(60)]
    bad = 'not json\n{"v": 2, "api": "chat"}\n["a list"]\n{"v":1,"api":"chat","status":"200"}\n'
    path = _write(tmp_path / "r.jsonl", good, bad + '{"v": 1, "api": "chat", "sta')
    rec = read_recordings([path])
    assert len(rec.lines) == 60 and rec.skipped == 5
    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(cli, ["calibrate", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 truncated or foreign, skipped" in result.stdout and out.exists()
    assert load_profile(out).models["m"].ttft.mean_ms > 0


PROFILE = {"version": 1, "models": {"m": {"ttft": {"mean_ms": 100}, "itl": {"mean_ms": 5}}}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("m", "ttft", "meen_ms", 1), "models.m.ttft.meen_ms: unknown key"),
        (("m", "itl", "jitter_cv", -1), "models.m.itl.jitter_cv: must be at least 0"),
        (("m", "itl", "stall_probability", 2), "models.m.itl.stall_probability: must be at most 1"),
        (("m", "ttft", "mean_ms", "fast"), "models.m.ttft.mean_ms: expected a number"),
        (("m", "errors", None, {"418": 0.1}), "models.m.errors.418: unknown key"),
        (("m", "errors", None, {"500": 0.7, "503": 0.6}), "models.m.errors: rates add up"),
        (("m", "ttft", "distribution", "weibull"), "ttft.distribution: must be lognormal or"),
        (("m", "ttft", "quantiles_ms", [3, 2]), "quantiles_ms: must not decrease"),
        (("m", "colour", None, 1), "models.m.colour: unknown key"),
    ],
)
def test_bad_profile_values_are_named(change, message):
    doc = json.loads(json.dumps(PROFILE))
    model, section, key, value = change
    if key is None:
        doc["models"][model][section] = value
    else:
        doc["models"][model][section][key] = value
    if section == "ttft" and key == "quantiles_ms":
        doc["models"][model]["ttft"]["distribution"] = "empirical"
    with pytest.raises(ProfileError) as info:
        parse_profile(doc, "p.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_serve_rejects_a_bad_profile_file_in_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nmodels:\n  gpt-4o:\n    ttft: {mean_ms: 1}\n    itl: {mean: 3}\n")
    result = CliRunner().invoke(cli, ["serve", "--port", "0", "--profile-file", str(path)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("llmsim: error: --profile-file:") and "models.gpt-4o.itl.mean" in line
