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


def _parallel(base_url: str, bodies: list[dict], client: httpx.Client) -> list[Timed]:
    """Stream every body at once, one thread each, over one shared (thread-safe) client."""
    out: list[Timed | None] = [None] * len(bodies)

    def run(i: int) -> None:
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


# Every server this module needs, started at once (each start is mostly imports: ~1.5 s of
# CPU that two cores can overlap). `engine` has a 2,048-token step budget so that a burst
# reaches past its prefill capacity with small prompts, in a fraction of a second.
SERVERS = {
    "engine": ("--engine", "vllm", "--seed", "1", "--max-num-batched-tokens", "2048"),
    "tiny_kv": (
        "--engine", "vllm", "--num-gpu-blocks-override", "48", "--block-size", "16",
        "--max-model-len", "640", "--generator", "sequence",
    ),
    "replicas": ("--engine", "vllm", "--rpm", "1000", "--replicas", "2"),
}  # fmt: skip


@pytest.fixture(scope="module")
def servers():
    from concurrent.futures import ThreadPoolExecutor

    from conftest import start_server

    with ThreadPoolExecutor(len(SERVERS)) as pool:
        futures = {name: pool.submit(start_server, *args) for name, args in SERVERS.items()}
    started = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for f in futures.values():
            if f.exception() is not None:
                raise f.exception()
        yield started
    finally:
        for server in started.values():
            server.stop()
            if server.proc.stdout:
                server.proc.stdout.close()


@pytest.fixture(scope="module")
def engine_server(servers):
    return servers["engine"]


@pytest.fixture(scope="module")
def client():
    """One client for every request of the module: building an httpx.Client costs ~50 ms."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    with httpx.Client(timeout=120, limits=limits) as c:
        yield c


def test_tpot_grows_with_the_batch(engine_server, client) -> None:
    base = engine_server.base_url
    # One long system prompt, prefilled once and then served from the prefix cache: every
    # sequence still attends its whole context at each decode step.
    system = {"role": "system", "content": _words(1800, 0)}
    body = {"model": MODEL, "max_tokens": 48, "ignore_eos": True}
    first = {**body, "messages": [system, {"role": "user", "content": "a"}]}
    alone = stream_chat(base, first, client)
    assert alone.status == 200 and len(alone.content_times) == 48
    bodies = [
        {**body, "messages": [system, {"role": "user", "content": f"q{i}"}]} for i in range(48)
    ]
    batch = _parallel(base, bodies, client)
    assert all(len(r.content_times) == 48 for r in batch)
    # 48 decodes a step, each reading ~1,850 tokens of KV cache: about 18 ms a step against a
    # lone sequence's ~10.5 ms.
    batched = statistics.median(_tpot(r) for r in batch)
    assert batched > 1.3 * _tpot(alone), (batched, _tpot(alone))


def test_ttft_explodes_past_the_prefill_capacity(engine_server, client) -> None:
    base = engine_server.base_url
    body = {"model": MODEL, "max_tokens": 2, "ignore_eos": True}
    alone = stream_chat(
        base, {**body, "messages": [{"role": "user", "content": _words(600, 100)}]}, client
    )
    # 12 prompts of ~600 tokens at once: ~7,200 tokens to prefill, 2,048 per step (~165 ms):
    # three prompts a step, so the last first token comes ~4 steps after one prompt's ~55 ms.
    bodies = [
        {**body, "messages": [{"role": "user", "content": _words(600, 200 + i)}]} for i in range(12)
    ]
    burst = _parallel(base, bodies, client)
    ttfts = sorted(r.ttft_s for r in burst if r.ttft_s is not None)
    assert len(ttfts) == 12
    assert alone.ttft_s is not None and alone.ttft_s < 0.3
    assert statistics.median(ttfts) > 2.5 * alone.ttft_s
    assert ttfts[-1] > 4 * alone.ttft_s


def test_a_shared_prefix_lowers_ttft_and_counts_hits(engine_server, client) -> None:
    base = engine_server.base_url
    system = {"role": "system", "content": _words(4500, 300)}
    body = {"model": MODEL, "max_tokens": 2, "ignore_eos": True}
    hits_before = client.get(engine_server.url + "/metrics").text
    before = _metric(hits_before, "vllm:prefix_cache_hits_total")
    one = {**body, "messages": [system, {"role": "user", "content": "one"}]}
    two = {**body, "messages": [system, {"role": "user", "content": "two"}]}
    cold = stream_chat(base, one, client)  # ~4,500 tokens: three 2,048-token steps
    warm = stream_chat(base, two, client)  # the cached prefix, then a few tokens: one step
    assert cold.ttft_s is not None and warm.ttft_s is not None
    assert warm.ttft_s < cold.ttft_s / 2, (warm.ttft_s, cold.ttft_s)
    # The event log says how long the server took to take the request in, and when each token
    # was planned (its step's end) against when it went out.
    log = client.get(f"{engine_server.url}/llmsim/requests/{cold.headers['x-request-id']}").json()
    assert 0 <= log["admitted_ms"] < cold.ttft_s * 1000
    assert all(e["sent_ms"] >= e["planned_ms"] - 5 for e in log["events"])
    metrics = client.get(engine_server.url + "/metrics").text
    hits = _metric(metrics, "vllm:prefix_cache_hits_total") - before
    assert hits >= 4000  # the system prompt's full blocks
    assert _metric(metrics, "vllm:prefix_cache_queries_total") >= hits


def test_tiny_kv_cache_preempts_and_every_request_completes_exactly(servers, client) -> None:
    server = servers["tiny_kv"]  # 48 blocks of 16 tokens, the sequence generator
    body = {"model": MODEL, "max_tokens": 60, "ignore_eos": True}
    # Ten prompts of ~140 tokens: five fit the 48 blocks at admission (9 blocks each), then
    # their 60 tokens need 4 more blocks apiece, which are not there: preemption.
    bodies = [
        {**body, "messages": [{"role": "user", "content": _words(100, 400 + i)}]} for i in range(10)
    ]
    results = _parallel(server.base_url, bodies, client)
    expected = "".join(sequence_tokens(60))
    for r in results:
        assert r.status == 200 and r.done
        assert r.text == expected
    metrics = client.get(server.url + "/metrics").text
    assert _metric(metrics, "vllm:num_preemptions_total") > 0
    stats = client.get(server.url + "/llmsim/stats").json()
    (replica,) = stats["engine"]["replicas"]
    assert replica["kv_blocks_free"] == replica["kv_blocks_total"] == 48
    assert replica["preemptions"] > 0 and replica["running"] == 0


def test_engine_mode_keeps_the_apis_faults_and_limits(servers, client) -> None:
    server = servers["replicas"]  # --rpm 1000 --replicas 2
    oai = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    reply = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.usage.completion_tokens == 5
    done = oai.completions.create(model=MODEL, prompt="hello", max_tokens=3)
    assert done.usage.completion_tokens == 3
    models = client.get(server.base_url + "/models").json()["data"]
    assert models[0]["id"] == MODEL and models[0]["max_model_len"] == 8192
    # An injected stream error after some tokens, on the engine's schedule.
    with client.stream(
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
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-llmsim-fault": "500"},
        )
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=9000
        )
    # Gemini's streamGenerateContent without alt=sse is one JSON array, in engine mode too.
    r = client.post(
        f"{server.url}/v1beta/models/{MODEL}:streamGenerateContent",
        json={
            "contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": 4},
        },
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json(), list) and r.json()[-1]["usageMetadata"]["candidatesTokenCount"] == 4
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
    with client.stream("POST", url, json=long_body, timeout=30) as first:
        reading = first.iter_raw()  # kept: a dropped iterator closes the response
        next(reading)  # in replica 0's batch, and ~20 s from done
        with client.stream("POST", url, json=long_body, timeout=30) as second:
            next(second.iter_raw())
            replicas = (first.headers["x-llmsim-replica"], second.headers["x-llmsim-replica"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = client.get(server.url + "/llmsim/stats").json()["engine"]["replicas"]
        free = [row["kv_blocks_free"] == row["kv_blocks_total"] for row in rows]
        if all(row["running"] == 0 for row in rows) and all(free):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(rows)
    assert len(rows) == 2 and replicas == ("0", "1")
    assert all(row["finished"] + row["iterations"] > 0 for row in rows)
    tok = client.post(server.url + "/tokenize", json={"prompt": "hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 8192
    back = client.post(server.url + "/detokenize", json={"tokens": tok["tokens"]}).json()
    assert back == {"prompt": "hello world"}
    bad = client.post(server.url + "/detokenize", json={"tokens": [-1]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    assert re.match(r"\d+\.\d+", client.get(server.url + "/version").json()["version"])


def test_engine_cli_mistakes_get_one_line(tmp_path) -> None:
    import subprocess
    import sys

    mistakes = {
        ("--engine", "vllm", "--num-gpu-blocks-override", "4"): "max_model_len",
        ("--engine", "vllm", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "512"):
            "at least max_model_len",
        ("--preset", "gpt-9-on-a-toaster"): "llama-3-8b-a100",
    }  # fmt: skip
    # Real processes, all at once: each is mostly its ~1 s of imports.
    procs = {
        args: subprocess.Popen(
            [sys.executable, "-m", "llmsim", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in mistakes
    }
    for args, proc in procs.items():
        try:
            _out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 2, (args, err)
        assert mistakes[args] in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_no_max_tokens_fills_the_context_as_vllm_does(servers) -> None:
    server = servers["tiny_kv"]  # --max-model-len 640
    oai = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    # ~607 prompt tokens and no max_tokens: vLLM's default is what the context leaves (33),
    # so the reply stops there ("length") instead of the request being refused.
    messages = [{"role": "user", "content": _words(450, 7)}]
    extra = {"ignore_eos": True}
    reply = oai.chat.completions.create(model=MODEL, messages=messages, extra_body=extra)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 640
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=messages,
            extra_body=extra,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage.prompt_tokens + usage.completion_tokens == 640
    # A prompt that leaves no room at all gets vLLM's prompt-only wording.
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": _words(600, 8)}]
        )
    message = err.value.body["message"]
    assert "tokens in the messages, Please reduce the length of the messages." in message
    assert "in the completion" not in message


def test_a_model_name_that_is_no_header_value_is_still_served(servers, client) -> None:
    server = servers["replicas"]
    url = server.base_url + "/chat/completions"
    body = {"model": "odd\nmodel\u2028name", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3}  # fmt: skip
    r = client.post(url, json=body)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
    assert "\n" not in r.headers["openai-model"] and r.json()["model"] == body["model"]
    with client.stream("POST", url, json={**body, "stream": True}) as s:
        text = s.read().decode()
    assert s.status_code == 200 and "[DONE]" in text
