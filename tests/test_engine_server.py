"""`llmsim serve --engine vllm` with real clients: latency that responds to load like a GPU."""

from __future__ import annotations

import re
import statistics
import threading
import time

import httpx
import openai
import pytest

from llmsim.engine.generators import sequence_tokens

from streaming_client import Timed, stream_chat

MODEL = "meta-llama/Meta-Llama-3-8B"


def _words(n: int, seed: int) -> str:
    """About n tokens of text that shares nothing with another seed's."""
    return " ".join(f"w{seed}x{i}" for i in range(n // 3))


def _parallel(base_url: str, bodies: list[dict]) -> list[Timed]:
    out: list[Timed | None] = [None] * len(bodies)

    def run(i: int) -> None:
        with httpx.Client(timeout=120) as client:
            out[i] = stream_chat(base_url, bodies[i], client)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _tpot(r: Timed) -> float:
    t = r.content_times
    return (t[-1] - t[0]) / (len(t) - 1)


@pytest.fixture(scope="module")
def engine_server():
    from conftest import start_server

    server = start_server("--engine", "vllm", "--seed", "1")
    yield server
    server.stop()


def test_tpot_grows_with_the_batch(engine_server) -> None:
    base = engine_server.base_url
    # One long system prompt, prefilled once and then served from the prefix cache: every
    # sequence still attends its whole context at each decode step.
    system = {"role": "system", "content": _words(1800, 0)}
    body = {"model": MODEL, "max_tokens": 48, "ignore_eos": True}
    alone = stream_chat(base, {**body, "messages": [system, {"role": "user", "content": "a"}]})
    assert alone.status == 200 and len(alone.content_times) == 48
    bodies = [
        {**body, "messages": [system, {"role": "user", "content": f"q{i}"}]} for i in range(48)
    ]
    batch = _parallel(base, bodies)
    assert all(len(r.content_times) == 48 for r in batch)
    # 48 decodes a step, each reading ~1,850 tokens of KV cache: about 18 ms a step against a
    # lone sequence's ~10.5 ms.
    batched = statistics.median(_tpot(r) for r in batch)
    assert batched > 1.3 * _tpot(alone), (batched, _tpot(alone))


def test_ttft_explodes_past_the_prefill_capacity(engine_server) -> None:
    base = engine_server.base_url
    body = {"model": MODEL, "max_tokens": 2, "ignore_eos": True}
    alone = stream_chat(
        base, {**body, "messages": [{"role": "user", "content": _words(2400, 100)}]}
    )
    # 12 prompts of ~2,400 tokens at once: ~29k tokens to prefill, 8,192 per step.
    bodies = [
        {**body, "messages": [{"role": "user", "content": _words(2400, 200 + i)}]}
        for i in range(12)
    ]
    burst = _parallel(base, bodies)
    ttfts = sorted(r.ttft_s for r in burst if r.ttft_s is not None)
    assert len(ttfts) == 12
    assert alone.ttft_s is not None and alone.ttft_s < 0.6
    assert statistics.median(ttfts) > 2.5 * alone.ttft_s
    assert ttfts[-1] > 4 * alone.ttft_s


def test_a_shared_prefix_lowers_ttft_and_counts_hits(engine_server) -> None:
    base = engine_server.base_url
    system = {"role": "system", "content": _words(4500, 300)}
    body = {"model": MODEL, "max_tokens": 2, "ignore_eos": True}
    before = _metric(httpx.get(engine_server.url + "/metrics").text, "vllm:prefix_cache_hits_total")
    cold = stream_chat(base, {**body, "messages": [system, {"role": "user", "content": "one"}]})
    warm = stream_chat(base, {**body, "messages": [system, {"role": "user", "content": "two"}]})
    assert cold.ttft_s is not None and warm.ttft_s is not None
    assert warm.ttft_s < cold.ttft_s / 2, (warm.ttft_s, cold.ttft_s)
    metrics = httpx.get(engine_server.url + "/metrics").text
    hits = _metric(metrics, "vllm:prefix_cache_hits_total") - before
    assert hits >= 4000  # the system prompt's full blocks
    assert _metric(metrics, "vllm:prefix_cache_queries_total") >= hits


def test_tiny_kv_cache_preempts_and_every_request_completes_exactly(llmsim_server) -> None:
    server = llmsim_server(
        "--engine", "vllm", "--num-gpu-blocks-override", "48", "--block-size", "16",
        "--max-model-len", "640", "--generator", "sequence",
    )  # fmt: skip
    body = {"model": MODEL, "max_tokens": 60, "ignore_eos": True}
    # Ten prompts of ~140 tokens: five fit the 48 blocks at admission (9 blocks each), then
    # their 60 tokens need 4 more blocks apiece, which are not there: preemption.
    bodies = [
        {**body, "messages": [{"role": "user", "content": _words(100, 400 + i)}]} for i in range(10)
    ]
    results = _parallel(server.base_url, bodies)
    expected = "".join(sequence_tokens(60))
    for r in results:
        assert r.status == 200 and r.done
        assert r.text == expected
    metrics = httpx.get(server.url + "/metrics").text
    assert _metric(metrics, "vllm:num_preemptions_total") > 0
    stats = httpx.get(server.url + "/llmsim/stats").json()
    (replica,) = stats["engine"]["replicas"]
    assert replica["kv_blocks_free"] == replica["kv_blocks_total"] == 48
    assert replica["preemptions"] > 0 and replica["running"] == 0


def test_engine_mode_keeps_the_apis_faults_and_limits(llmsim_server) -> None:
    server = llmsim_server("--engine", "vllm", "--rpm", "1000", "--replicas", "2")
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.usage.completion_tokens == 5
    done = client.completions.create(model=MODEL, prompt="hello", max_tokens=3)
    assert done.usage.completion_tokens == 3
    models = httpx.get(server.base_url + "/models").json()["data"]
    assert models[0]["id"] == MODEL and models[0]["max_model_len"] == 8192
    # An injected stream error after some tokens, on the engine's schedule.
    with httpx.stream(
        "POST",
        server.base_url + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True,
              "max_tokens": 50},
        headers={"x-llmsim-fault": "stream-error"},
        timeout=30,
    ) as r:  # fmt: skip
        text = r.read().decode()
    assert r.status_code == 200 and '"error"' in text and "[DONE]" not in text
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-llmsim-fault": "500"},
        )
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=9000
        )
    # Two requests at once go to the two replicas (least loaded); clients that hang up
    # mid-stream give their KV blocks back.
    long_body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": _words(600, 9)}],
        "stream": True,
        "max_tokens": 2000,
        "ignore_eos": True,
    }
    url = server.base_url + "/chat/completions"
    with httpx.Client(timeout=30) as client2, client2.stream("POST", url, json=long_body) as first:
        reading = first.iter_raw()  # kept: a dropped iterator closes the response
        next(reading)  # in replica 0's batch, and ~20 s from done
        with httpx.stream("POST", url, json=long_body, timeout=30) as second:
            next(second.iter_raw())
            replicas = (first.headers["x-llmsim-replica"], second.headers["x-llmsim-replica"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = httpx.get(server.url + "/llmsim/stats").json()["engine"]["replicas"]
        free = [row["kv_blocks_free"] == row["kv_blocks_total"] for row in rows]
        if all(row["running"] == 0 for row in rows) and all(free):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(rows)
    assert len(rows) == 2 and replicas == ("0", "1")
    assert all(row["finished"] + row["iterations"] > 0 for row in rows)
    tok = httpx.post(server.url + "/tokenize", json={"prompt": "hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 8192
    back = httpx.post(server.url + "/detokenize", json={"tokens": tok["tokens"]}).json()
    assert back == {"prompt": "hello world"}
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [-1]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    assert re.match(r"\d+\.\d+", httpx.get(server.url + "/version").json()["version"])


def test_engine_cli_mistakes_get_one_line(tmp_path) -> None:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "llmsim", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    r = run("--engine", "vllm", "--num-gpu-blocks-override", "4")
    assert r.returncode == 2 and "max_model_len" in r.stderr and "Traceback" not in r.stderr
    r = run("--engine", "vllm", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "512")
    assert r.returncode == 2 and "at least max_model_len" in r.stderr
    r = run("--preset", "gpt-9-on-a-toaster")
    assert r.returncode == 2 and "llama-3-8b-a100" in r.stderr
