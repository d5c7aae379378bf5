"""The stream loop as clients see it: per-token timing, chunking, limits, hang-ups, faults.

Real servers, real clients; timing bounds are one-sided or generous (a loaded 2-core machine
only makes us late). The tight figures are in benchmarks/loop_speed.py.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat
import statistics
import time

import anthropic
import httpx
import openai
import psutil
import pytest

from llmsim.engine.tokens import count_tokens

MESSAGES = [{"role": "user", "content": "Tell me about the loop."}]
EXACT = ("--ttft-stddev-ms", "0", "--tbt-stddev-ms", "0")


def events_of(server, request_id: str) -> dict:
    r = httpx.get(f"{server.url}/llmsim/requests/{request_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def stream(server, body: dict, headers: dict | None = None) -> tuple[httpx.Headers, list[dict]]:
    chunks = []
    with (
        httpx.Client(timeout=30) as c,
        c.stream(
            "POST",
            server.base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES, **body, "stream": True},
            headers=headers,
        ) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
        return r.headers, chunks


def planned_gaps(log: dict) -> list[float]:
    ev = [e for e in log["events"] if e["tokens"] > 0]
    return [b["planned_ms"] - a["planned_ms"] for a, b in itertools.pairwise(ev)]


def test_event_log_shows_per_token_jitter_by_default(llmsim_server):
    # gpt-4o's profile has a TBT stddev, so its jitter and stalls are on by default.
    server = llmsim_server("--ttft-ms", "20", "--tbt-ms", "5", "--seed", "1")
    headers, _chunks = stream(server, {"max_tokens": 60, "ignore_eos": True})
    log = events_of(server, headers["x-request-id"])
    assert log["planned_ttft_ms"] == pytest.approx(float(headers["x-llmsim-ttft-ms"]), abs=0.01)
    gaps = planned_gaps(log)
    assert len(gaps) == 59
    mean = statistics.mean(gaps)
    assert statistics.pstdev(gaps) / mean > 0.2  # per-token jitter (cv 0.5 by default)
    for e in log["events"]:  # never sent before its plan (beyond the loop's 50 us)
        assert e["sent_ms"] >= e["planned_ms"] - 0.06


def test_zeroed_jitter_gives_exact_gaps(llmsim_server):
    server = llmsim_server("--ttft-ms", "30", "--tbt-ms", "4", "--itl-jitter-cv", "0", *EXACT)
    headers, _chunks = stream(server, {"max_tokens": 30, "ignore_eos": True})
    log = events_of(server, headers["x-request-id"])
    assert log["events"][0]["planned_ms"] == 30.0
    assert set(planned_gaps(log)) == {4.0}
    assert [e["step"] for e in log["events"]] == list(range(30))
    late = [e["sent_ms"] - e["planned_ms"] for e in log["events"]]
    assert statistics.median(late) < 20  # generous: the tight figure is a benchmark's


def test_stalls_lengthen_some_gaps(llmsim_server):
    server = llmsim_server(
        "--ttft-ms", "5", "--tbt-ms", "1", "--itl-jitter-cv", "0", "--stall-probability", "0.2",
        "--stall-ms", "20", *EXACT,
    )  # fmt: skip
    headers, _ = stream(server, {"max_tokens": 80, "ignore_eos": True})
    gaps = planned_gaps(events_of(server, headers["x-request-id"]))
    stalls = [g for g in gaps if g > 1.001]
    assert 3 <= len(stalls) <= 40 and all(g == pytest.approx(1.0) for g in gaps if g <= 1.001)


def test_chunking_keeps_usage_and_retokenization_exact(llmsim_server):
    server = llmsim_server("--profile", "fast", "--chunk-tokens", "normal:mean=4,stddev=1")
    headers, chunks = stream(
        server,
        {"max_tokens": 101, "ignore_eos": True, "stream_options": {"include_usage": True}},
    )
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    texts = [t for t in texts if t]
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 101 == count_tokens("".join(texts), "gpt-4o")
    assert len(texts) < 60  # several tokens per event
    log = events_of(server, headers["x-request-id"])
    assert sum(e["tokens"] for e in log["events"]) == 101
    assert log["chunk_tokens"] == "normal:mean=4,stddev=1"


def test_anthropic_sends_several_tokens_per_delta_by_default(llmsim_server):
    server = llmsim_server("--ttft-ms", "5", "--tbt-ms", "1")  # claude's profile: not exact
    client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
    with client.messages.stream(
        model="claude-sonnet-4", max_tokens=120, messages=MESSAGES,
        extra_body={"ignore_eos": True},
    ) as s:  # fmt: skip
        texts = [e.delta.text for e in s if e.type == "content_block_delta"]
        final = s.get_final_message()
    assert final.usage.output_tokens == 120 == count_tokens("".join(texts), "claude-sonnet-4")
    assert 20 < len(texts) < 100


def rss(server) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


def test_limits_answer_the_providers_400_and_memory_stays_flat(llmsim_server):
    server = llmsim_server("--profile", "fast")
    oa = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    an = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
    before = rss(server)
    for _ in range(3):
        with pytest.raises(openai.BadRequestError) as e:
            oa.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=1_000_000_000,
                extra_body={"ignore_eos": True}, stream=True,
            )  # fmt: skip
        err = e.value.body
        assert err["code"] == "invalid_value" and err["param"] == "max_tokens"
        assert "max_tokens is too large: 1000000000" in err["message"]
        assert "at most 16384 completion tokens" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=20_000)
    assert e.value.body["param"] == "max_completion_tokens"
    long_prompt = [{"role": "user", "content": "hello " * 130_000}]
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="gpt-4o", messages=long_prompt, max_tokens=10)
    assert e.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 128000 tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.responses.create(model="gpt-4o", input="hi", max_output_tokens=50_000)
    assert "max_output_tokens is too large" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="gpt-5", messages=MESSAGES, max_tokens=100_000, n=64)
    assert e.value.body["param"] == "n"
    r = httpx.post(
        server.url + "/v1/messages",
        json={"model": "claude-sonnet-4", "max_tokens": 100_000, "messages": MESSAGES},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith("max_tokens: 100000 > 64000")
    with pytest.raises(anthropic.BadRequestError) as e:
        an.messages.create(
            model="claude-sonnet-4", max_tokens=10,
            messages=[{"role": "user", "content": "hello " * 210_000}],
        )  # fmt: skip
    assert e.value.body["error"]["message"].startswith("prompt is too long: ")
    # Still serving, and nothing was built for the refused requests.
    c = oa.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert c.usage.completion_tokens <= 5
    assert rss(server) - before < 60 * 2**20
    stats = httpx.get(server.url + "/llmsim/stats").json()
    assert json.dumps(stats).count("bad_request") >= 1


def test_a_huge_allowed_reply_streams_at_once_with_flat_memory(llmsim_server):
    # A model whose limits allow a billion tokens: the reply is made as it streams.
    server = llmsim_server(
        "--profile", "fast", "--max-output-tokens", "2000000000",
        "--context-window", "2100000000", "--tbt-ms", "0.05", "--ttft-ms", "1", *EXACT,
    )  # fmt: skip
    body = {
        "model": "my-model",
        "messages": MESSAGES,
        "max_tokens": 1_000_000_000,
        "ignore_eos": True,
        "stream": True,
    }
    before = rss(server)
    start = time.monotonic()
    got = 0
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", server.base_url + "/chat/completions", json=body) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                got += chunk.count(b'"content":')
                if time.monotonic() - start > 1.5:
                    break
        assert got > 1000
        assert c.get(server.url + "/health", timeout=2).status_code == 200
    assert rss(server) - before < 40 * 2**20


def test_a_client_that_hangs_up_frees_its_slot_within_one_event_time(llmsim_server):
    server = llmsim_server(
        "--max-concurrency", "1", "--ttft-ms", "50", "--tbt-ms", "400", "--itl-jitter-cv", "0",
        *EXACT,
    )  # fmt: skip
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 50, "ignore_eos": True,
         "stream": True}
    ).encode()  # fmt: skip
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert b'"content"' in s.recv(65536) or b'"content"' in s.recv(65536)
    hung_up = time.monotonic()
    s.close()  # mid-stream: the next token is 400 ms away
    headers, _chunks = stream(server, {"max_tokens": 2, "ignore_eos": True})
    # The second request queued for less than one event time (it would wait 20 s otherwise).
    waited_ms = float(headers["x-llmsim-ttft-ms"]) - 50
    assert waited_ms < 400
    assert time.monotonic() - hung_up < 5
    stats = httpx.get(server.url + "/llmsim/stats").json()
    assert "client_disconnect" in json.dumps(stats)


@pytest.mark.parametrize("fault", ["stream-error", "drop"])
def test_mid_stream_faults_strike_at_the_planned_event(llmsim_server, fault):
    server = llmsim_server("--profile", "fast", "--seed", "7")
    oa = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    got = []
    rid = None
    with pytest.raises(Exception):  # noqa: B017, SIM117  (an error event, or a cut connection)
        with oa.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=40, stream=True,
            extra_body={"ignore_eos": True}, extra_headers={"x-llmsim-fault": fault},
        ) as r:  # fmt: skip
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                    got.append(line)
                if line.startswith('data: {"error"'):
                    raise openai.APIError("stream error", request=None, body=None)
    log = events_of(server, rid)
    sent = [e for e in log["events"] if e["tokens"] > 0]
    # Every token event the server logged reached the client, and the stream stopped short.
    assert len(sent) == sum(1 for g in got if '"content":""' not in g.replace(" ", ""))
    assert len(sent) < 40


def test_a_client_that_hangs_up_gets_its_unused_token_reservation_back(llmsim_server):
    server = llmsim_server(
        "--tpm", "1000", "--ttft-ms", "20", "--tbt-ms", "300", "--itl-jitter-cv", "0", *EXACT
    )
    host, port = server.url.removeprefix("http://").split(":")
    big = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 900, "ignore_eos": True}
    body = json.dumps({**big, "stream": True}).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert b"200 OK" in s.recv(65536)
    s.close()  # 899 of its 900 reserved tokens will never be sent
    deadline = time.monotonic() + 5
    while True:  # the hang-up is noticed at once; allow a loaded machine a moment
        again = {**big, "max_tokens": 800, "stream": True}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=again) as r:
            status = r.status_code  # the headers are enough: a 429 would come at once
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200


def test_a_client_that_reads_slowly_gets_every_event(llmsim_server):
    # 16,000 events due within 0.2 s to a client that reads nothing for a second: the socket
    # fills, the stream waits for it (backpressure) and nothing is lost or reordered.
    server = llmsim_server("--generator", "sequence", "--ttft-ms", "0", "--tbt-ms", "0.01", *EXACT)
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 16_000, "ignore_eos": True,
         "stream": True}
    ).encode()  # fmt: skip
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    time.sleep(1.0)
    data = bytearray()
    s.settimeout(30)
    while not data.endswith(b"0\r\n\r\n"):
        chunk = s.recv(1 << 20)
        assert chunk, "connection closed early"
        data += chunk
    s.close()
    assert data.count(b'"delta":{"content":"') == 16_000
    assert data.count(b"data: [DONE]") == 1
    assert httpx.get(server.url + "/health").status_code == 200


def test_any_worker_answers_for_a_request_another_worker_served(llmsim_server):
    """With two workers a lookup lands on either: both must find every request."""
    server = llmsim_server("--workers", "2", "--ttft-ms", "5", "--tbt-ms", "1", *EXACT)
    ids, answered_by = [], set()
    for _ in range(8):  # a new connection each: the kernel spreads them over the workers
        with httpx.Client(timeout=30) as c:
            r = c.post(server.base_url + "/chat/completions",
                       json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 3})  # fmt: skip
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
    for rid in ids:
        for _ in range(4):
            with httpx.Client(timeout=30) as c:  # one connection: the same worker answers both
                r = c.get(f"{server.url}/llmsim/requests/{rid}")
                assert r.status_code == 200, r.text
                assert r.json()["request_id"] == rid and r.json()["events"]
                answered_by.add(c.get(f"{server.url}/llmsim/stats").json()["worker"])
    assert answered_by == {0, 1}  # both workers answered lookups (32 of them)
    r = httpx.get(f"{server.url}/llmsim/requests/req_000000000000000000000000", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{server.url}/llmsim/requests/a%20b", timeout=10).status_code == 404
    # The workers' sockets live in one private directory, removed when the server exits.
    children = psutil.Process(server.proc.pid).children()
    paths = {
        c.laddr for p in children for c in p.net_connections("unix") if "llmsim-logs-" in c.laddr
    }
    assert len(paths) == 2, paths
    directory = os.path.dirname(next(iter(paths)))
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    server.stop()
    assert not os.path.exists(directory)
