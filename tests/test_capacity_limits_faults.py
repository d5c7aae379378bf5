"""Capacity, rate limits, faults and stats on a real server, seen by real clients."""

from __future__ import annotations

import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmsim.engine.tokens import count_chat_prompt_tokens

from streaming_client import stream_chat

MESSAGES = [{"role": "user", "content": "hello there"}]
BODY = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5, "ignore_eos": True}
EXACT = ("--ttft-stddev-ms", "0", "--tbt-stddev-ms", "0")


def post(server, body=None, headers=None, client=None):
    c = client or httpx
    return c.post(server.base_url + "/chat/completions", json=body or BODY, headers=headers)


def sdk(server, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", **kw)


# --- rate limits -------------------------------------------------------------------------------


def test_rate_limit_headers_burst_and_429_body(llmsim_server):
    server = llmsim_server("--profile", "instant", "--rpm", "3", "--tpm", "100000")
    with httpx.Client() as c:
        for i in range(3):
            r = post(server, client=c)
            assert r.status_code == 200
            h = r.headers
            assert h["x-ratelimit-limit-requests"] == "3"
            assert h["x-ratelimit-remaining-requests"] == str(2 - i)
            assert h["x-ratelimit-limit-tokens"] == "100000"
            assert int(h["x-ratelimit-remaining-tokens"]) < 100000
            assert h["x-ratelimit-reset-requests"].endswith("s")
        r = post(server, client=c)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert 15_000 <= int(r.headers["retry-after-ms"]) <= 20_000  # 1 of 3 per minute back
        err = r.json()["error"]
        assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
        assert "RPM" in err["message"]
        # Another key has its own bucket.
        assert post(server, headers={"Authorization": "Bearer other"}, client=c).status_code == 200
    stats = httpx.get(server.url + "/llmsim/stats").json()
    assert stats["throttled"]["requests"] == 1
    assert stats["errors"]["rate_limited"] == 1


def test_the_openai_sdk_retries_our_429_and_succeeds(llmsim_server):
    server = llmsim_server("--profile", "instant", "--rpm", "60")
    client = sdk(server, max_retries=0)
    for _ in range(60):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    # The bucket refills at 1 request/s from the moment the first 60 were made, so the wait
    # left depends on how fast they went: the server says it, and the SDK must honour it.
    wait_s = float(refused.value.response.headers["retry-after-ms"]) / 1000
    assert 0 < wait_s <= 1.0
    start = time.monotonic()
    ok = sdk(server, max_retries=3).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=1
    )
    assert ok.usage.completion_tokens == 1
    assert 0.8 * wait_s - 0.05 < time.monotonic() - start < 10  # waited for the bucket


def test_token_limit_refuses_with_type_tokens(llmsim_server):
    server = llmsim_server("--profile", "instant", "--tpm", "300")
    assert post(server, {**BODY, "max_tokens": 200}).status_code == 200
    r = post(server, {**BODY, "max_tokens": 200})
    assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "exc", "status"),
    [
        ("429", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("502", openai.InternalServerError, 502),
        ("503", openai.InternalServerError, 503),
        ("529", openai.InternalServerError, 529),
        ("timeout", openai.InternalServerError, 504),
    ],
)
def test_forced_http_faults_reach_the_sdk(fault_server, kind, exc, status):
    client = sdk(fault_server)
    with pytest.raises(exc) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-llmsim-fault": kind}
        )
    assert info.value.status_code == status


@pytest.fixture(scope="module")
def fault_server():
    from conftest import start_server

    server = start_server("--profile", "fast", "--timeout-after-ms", "200")
    yield server
    server.stop()


def test_drop_mid_stream_is_seen_as_a_broken_connection(fault_server):
    client = sdk(fault_server)
    got = []
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for chunk in client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            max_tokens=50,
            stream=True,
            extra_body={"ignore_eos": True},
            extra_headers={"x-llmsim-fault": "drop"},
        ):
            got.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert len(got) < 50  # cut before its end (ignore_eos: the full reply has 50 tokens)
    stats = httpx.get(fault_server.url + "/llmsim/stats").json()
    assert stats["errors"].get("fault_drop", 0) >= 1  # and counted as the drop it was


def test_stream_error_event_raises_in_the_sdk(fault_server):
    client = sdk(fault_server)
    with pytest.raises(openai.APIError, match="server had an error"):
        for _ in client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            max_tokens=50,
            stream=True,
            extra_headers={"x-llmsim-fault": "stream-error"},
        ):
            pass


def test_timeout_can_close_instead(llmsim_server):
    server = llmsim_server("--profile", "instant", "--timeout-after-ms", "100",
                           "--timeout-action", "close")  # fmt: skip
    start = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        post(server, headers={"x-llmsim-fault": "timeout"})
    assert time.monotonic() - start >= 0.1
    assert post(server).status_code == 200


def test_unknown_forced_fault_is_a_400(fault_server):
    r = post(fault_server, headers={"x-llmsim-fault": "meteor"})
    assert r.status_code == 400 and "x-llmsim-fault" in r.json()["error"]["message"]


def test_fault_rate_is_within_binomial_bounds(llmsim_server):
    server = llmsim_server("--profile", "instant", "--fault", "500=0.1", "--seed", "5")
    with httpx.Client() as c:
        codes = [post(server, client=c).status_code for _ in range(1000)]
    # mean 100, sd 9.5: [60, 140] is more than 4 sd either side.
    assert 60 <= codes.count(500) <= 140
    assert codes.count(200) == 1000 - codes.count(500)
    assert httpx.get(server.url + "/llmsim/stats").json()["errors"]["fault_500"] == codes.count(500)


def test_fault_script_fails_three_times_then_the_sdk_succeeds(llmsim_server, tmp_path):
    script = tmp_path / "faults.yaml"
    script.write_text("- sequence: [503, 503, 503, ok]\n")
    server = llmsim_server("--profile", "instant", "--fault-script", str(script))
    c = sdk(server, max_retries=3)
    start = time.monotonic()
    r = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert r.usage.completion_tokens == 2
    assert time.monotonic() - start >= 2.5  # three retries honoured retry-after: 1
    stats = httpx.get(server.url + "/llmsim/stats").json()
    assert stats["errors"]["fault_503"] == 3 and stats["requests"]["succeeded"] == 1


# --- capacity ----------------------------------------------------------------------------------


def test_queue_wait_adds_to_ttft(llmsim_server):
    server = llmsim_server("--max-concurrency", "2", "--ttft-ms", "150", "--tbt-ms", "1", *EXACT)
    body = {**BODY, "max_tokens": 1}
    with httpx.Client() as client, ThreadPoolExecutor(6) as pool:
        post(server, body, client=client)  # connect and warm up first

        def one(_):
            start = time.monotonic()
            r = post(server, body, client=client)
            return time.monotonic() - start, float(r.headers["x-llmsim-ttft-ms"]), start

        results = sorted(pool.map(one, range(6)))
    elapsed = [e for e, _, _ in results]
    planned = sorted(p for _, p, _ in results)
    starts = [s for _, _, s in results]
    spread_ms = (max(starts) - min(starts)) * 1000  # the pool's threads do not start at once
    # Two at a time, 150 ms each: done at about 150, 150, 300, 300, 450, 450 ms after the
    # first arrived, so the last waited two rounds less how much later than the first it came.
    assert elapsed[-1] >= 0.45 - spread_ms / 1000 - 0.01, (elapsed, spread_ms)
    assert elapsed[1] < elapsed[-1] - 0.2
    assert planned[0] == pytest.approx(150, abs=5)
    assert planned[-1] >= 450 - spread_ms - 10, (planned, spread_ms)


def test_full_queue_is_refused_with_the_configured_status(llmsim_server):
    flags = ("--max-concurrency", "1", "--queue-limit", "1", "--queue-overflow-status", "503")
    server = llmsim_server(*flags, "--ttft-ms", "300", *EXACT)
    with httpx.Client() as client, ThreadPoolExecutor(3) as pool:
        post(server, {**BODY, "max_tokens": 1}, client=client)
        codes = sorted(pool.map(lambda _: post(server, {**BODY, "max_tokens": 1},
                                               client=client).status_code, range(3)))  # fmt: skip
    assert codes == [200, 200, 503]
    stats = httpx.get(server.url + "/llmsim/stats").json()
    assert stats["queue"]["overflowed"] == 1


def test_load_factor_slows_streams_as_others_join(llmsim_server):
    server = llmsim_server("--max-concurrency", "4", "--load-factor", "1", "--ttft-ms", "10",
                           "--tbt-ms", "20", *EXACT)  # fmt: skip
    body = {**BODY, "max_tokens": 15}
    alone = stream_chat(server.base_url, body)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: stream_chat(server.base_url, body), range(4)))
    gap_alone = statistics.median(alone.gaps_s)
    gap_together = statistics.median(g for r in together for g in r.gaps_s)
    # 20 × (1 + 1/4) = 25 ms alone; 20 × (1 + 4/4) = 40 ms with four running.
    assert 0.022 < gap_alone < 0.033
    assert 0.034 < gap_together < 0.05


def test_prefill_grows_ttft_with_prompt_length(llmsim_server):
    server = llmsim_server("--prefill-ms-per-1k", "100", "--ttft-ms", "50", *EXACT)
    long_prompt = [{"role": "user", "content": "hello " * 3000}]  # ~3,000 tokens
    r = post(server, {**BODY, "messages": long_prompt, "max_tokens": 1})
    prompt_tokens = r.json()["usage"]["prompt_tokens"]
    assert float(r.headers["x-llmsim-ttft-ms"]) == pytest.approx(50 + 0.1 * prompt_tokens, abs=1)
    timed = stream_chat(server.base_url, {**BODY, "messages": long_prompt, "max_tokens": 2})
    assert timed.ttft_s >= (50 + 0.1 * prompt_tokens) / 1000 - 0.001


def test_per_model_settings_override_global_ones(llmsim_server, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ttft_ms: 20\nttft_stddev_ms: 0\nper_model:\n  gpt-5:\n    ttft_ms: 120\n"
                   "    rpm: 1\n")  # fmt: skip
    server = llmsim_server("--config", str(cfg))
    assert float(post(server).headers["x-llmsim-ttft-ms"]) == pytest.approx(20)
    r = post(server, {**BODY, "model": "gpt-5"})
    assert float(r.headers["x-llmsim-ttft-ms"]) == pytest.approx(120)
    assert post(server, {**BODY, "model": "gpt-5"}).status_code == 429
    assert post(server).status_code == 200


# --- stats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_stats_and_prometheus_metrics_count_every_request(llmsim_server, workers):
    server = llmsim_server("--profile", "fast", "--workers", workers)
    prompt = completion = 0
    with httpx.Client() as c:
        for i in range(30):
            body = {**BODY, "max_tokens": 3 + i % 4, "model": "gpt-4o" if i % 3 else "gpt-5"}
            u = post(server, body, client=c).json()["usage"]
            prompt += u["prompt_tokens"]
            completion += u["completion_tokens"]
        for _ in range(5):
            r = stream_chat(server.base_url, {**BODY, "stream_options": {"include_usage": True}})
            completion += 5
            prompt += count_chat_prompt_tokens(MESSAGES, "gpt-4o")
            assert r.done
        assert post(server, {"model": "x"}, client=c).status_code == 400
        post(server, headers={"x-llmsim-fault": "500"}, client=c)
    stats = httpx.get(server.url + "/llmsim/stats").json()
    assert stats["workers"] == int(workers)
    assert stats["requests"]["total"] == 36 and stats["requests"]["succeeded"] == 35
    assert stats["requests"]["streaming"] == 5 and stats["requests"]["active"] == 0
    # Refused requests never reach the model: their prompts are not counted.
    assert stats["tokens"] == {"prompt": prompt, "completion": completion}
    assert stats["errors"] == {"bad_request": 1, "fault_500": 1}
    assert set(stats["models"]) == {"gpt-4o", "gpt-5"}
    assert stats["ttft_ms"]["count"] == 35 and stats["ttft_ms"]["p50"] > 0
    assert stats["last_minute"]["requests_per_s"] > 0  # 36 requests in the last seconds

    text = httpx.get(server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def total(name, sample_suffix="", **labels):
        return sum(
            s.value
            for s in families[name].samples
            if s.name == name + sample_suffix
            and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert total("vllm:request_success", "_total") == 35
    assert total("vllm:prompt_tokens", "_total") == prompt
    assert total("vllm:generation_tokens", "_total") == completion
    assert total("vllm:e2e_request_latency_seconds", "_count") == 35
    assert total("vllm:time_to_first_token_seconds", "_count", model_name="gpt-5") == 10
    assert total("vllm:num_requests_running") == 0
    assert total("llmsim_faults", "_total", kind="500") == 1


def test_running_gauge_counts_streams_in_flight_without_a_concurrency_limit(llmsim_server):
    server = llmsim_server("--ttft-ms", "10", "--tbt-ms", "20", *EXACT)
    long = {**BODY, "max_tokens": 10_000, "stream": True}

    def running() -> float:
        text = httpx.get(server.url + "/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return sum(s.value for s in families["vllm:num_requests_running"].samples)

    with httpx.Client(timeout=10) as c, contextlib.ExitStack() as hang_up:
        bodies = []
        for _ in range(3):
            r = hang_up.enter_context(
                c.stream("POST", server.base_url + "/chat/completions", json=long)
            )
            assert r.status_code == 200
            bodies.append(r.iter_raw())  # kept: a dropped iterator closes its response
            next(bodies[-1])  # the first event: this one is generating
        assert running() == 3
    deadline = time.monotonic() + 5  # the server notices at its next token write
    while running() != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running() == 0


def test_a_client_that_hangs_up_gives_its_slot_back(llmsim_server):
    server = llmsim_server("--max-concurrency", "2", "--ttft-ms", "10", "--tbt-ms", "20", *EXACT)
    long = {**BODY, "max_tokens": 10_000, "stream": True}
    for _ in range(4):  # twice the slots: leaked slots would block the request below
        with (
            httpx.Client(timeout=10) as c,
            c.stream("POST", server.base_url + "/chat/completions", json=long) as r,
        ):
            next(r.iter_raw())  # first token, then hang up
    time.sleep(0.3)  # the server notices at its next token write
    start = time.monotonic()
    assert post(server, {**BODY, "max_tokens": 1}).status_code == 200
    assert time.monotonic() - start < 2
    stats = httpx.get(server.url + "/llmsim/stats").json()
    assert stats["requests"]["active"] == 0 and stats["requests"]["running"] == 0
    assert stats["errors"]["client_disconnect"] == 4
