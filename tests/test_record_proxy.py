"""llmsim record: a real proxy in front of a real `llmsim serve`, driven by the official SDKs."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from llmsim.engine.tokens import count_tokens
from llmsim.record.bench_hook import RECORDING, RecorderProcess, start_recorder
from llmsim.record.hub_relay import Dechunker, ProtocolError, _forwarded_head, parse_head

SECRET = "sk-test-secret-key-0123456789"


@pytest.fixture
def recorder(tmp_path: Path, fast_server):
    started: list[RecorderProcess] = []

    def factory(target: str | None = None, with_bodies: bool = True) -> RecorderProcess:
        rec = start_recorder(target or fast_server.base_url, tmp_path, with_bodies=with_bodies)
        started.append(rec)
        return rec

    yield factory
    for rec in started:
        rec.stop()


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_proxy_passes_every_api_through_and_records_one_line_each(recorder, tmp_path):
    rec = recorder()
    client = openai.OpenAI(base_url=rec.base_url, api_key=SECRET, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        max_tokens=12,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    chat_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 12
    plain = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    list(client.responses.create(model="gpt-4o", input="x", stream=True, max_output_tokens=17))
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="p", max_tokens=4)
    client.embeddings.create(model="text-embedding-3-small", input="e")
    assert client.models.list().data
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=5)
    claude = anthropic.Anthropic(base_url=rec.url + "/anthropic", api_key=SECRET, max_retries=0)
    with claude.messages.stream(
        model="claude-sonnet-4", max_tokens=9, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        claude_text = s.get_final_text()

    rec.proc.send_signal(signal.SIGTERM)
    assert rec.proc.wait(15) == 0
    raw = (tmp_path / RECORDING).read_text()
    assert SECRET not in raw and "Bearer" not in raw  # keys are forwarded, never written
    lines = _lines(tmp_path / RECORDING)
    assert [x["api"] for x in lines] == [
        "chat", "chat", "responses", "completions", "embeddings", "models", "chat", "anthropic"
    ]  # fmt: skip
    chat, plain_line, resp, _, emb, _, bad, msg = lines
    assert chat["stream"] and chat["status"] == 200 and chat["model"] == "gpt-4o"
    assert chat["output_tokens"] == 12 and chat["usage"] == "reported"
    assert sum(chat["event_tokens"]) == 12 and len(chat["gaps_ms"]) == 11
    assert "".join(chat["texts"]) == chat_text
    assert chat["ttft_ms"] >= 5 and chat["e2e_ms"] >= chat["ttft_ms"] + sum(chat["gaps_ms"]) - 1
    assert chat["finish_reason"] == "length" and chat["max_tokens"] == 12
    assert not plain_line["stream"] and plain_line["output_tokens"] == 5
    assert plain_line["texts"] == [plain.choices[0].message.content]
    assert plain_line["key"] != chat["key"]  # other messages, other key
    assert resp["output_tokens"] == 17 and sum(resp["event_tokens"]) == 17
    assert emb["prompt_tokens"] == 1
    assert bad["status"] == 400 and bad["error_kind"] == "400"
    assert bad["error"]["error"]["code"] == "empty_array"
    assert msg["stream"] and msg["output_tokens"] == 9 and "".join(msg["texts"]) == claude_text


PROFILE = {
    "version": 1,
    "models": {
        "rec-model": {
            "ttft": {"mean_ms": 80, "stddev_ms": 0, "prefill_ms_per_1k": 1000},
            "itl": {"mean_ms": 5, "stddev_ms": 0},
            "output_tokens": {"mean": 12, "stddev": 0},
        },
        "fail-model": {
            "ttft": {"distribution": "empirical", "quantiles_ms": [10, 20]},
            "itl": {"mean_ms": 1},
            "errors": {"503": 1.0},
        },
    },
}


def _chat(url: str, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def _content_events(url: str, content: str) -> tuple[list[str], list[float], httpx.Headers]:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "max_tokens": 4,
    }
    texts, times = [], []
    t0 = time.monotonic()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    texts.append(choices[0]["delta"]["content"])
                    times.append(time.monotonic() - t0)
        return texts, times, r.headers


def test_events_pass_unbuffered_and_replay_plays_them_back(recorder, llmsim_server, tmp_path):
    slow = llmsim_server(
        "--ttft-ms", "100", "--ttft-stddev-ms", "0", "--tbt-ms", "150", "--tbt-stddev-ms", "0"
    )
    rec = recorder(slow.base_url)
    recorded, seen, _ = _content_events(rec.url, "the recorded question")
    # 4 tokens 150 ms apart: buffered, they would arrive together at the end.
    assert len(seen) == 4 and seen[-1] - seen[0] > 0.3
    rec.stop()
    (line,) = _lines(tmp_path / RECORDING)
    assert all(g > 100 for g in line["gaps_ms"])

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    replay = llmsim_server(
        "--replay",
        str(tmp_path / RECORDING),
        "--profile-file",
        str(profile),
        "--profile",
        "instant",
    )
    texts, times, headers = _content_events(replay.url, "the recorded question")
    assert texts == recorded and headers["x-llmsim-replay"] == "hit"
    assert float(headers["x-llmsim-ttft-ms"]) == round(line["ttft_ms"], 3)
    # The recorded gaps (~150 ms each), not the instant profile's zero.
    assert times[-1] - times[0] > 0.5 * sum(line["gaps_ms"]) / 1000
    other, _, headers = _content_events(replay.url, "a question never recorded")
    assert other and "x-llmsim-replay" not in headers

    # The same server's --profile-file: its models follow it, others keep the built-in ones.
    r = _chat(replay.url, "rec-model")
    assert r.status_code == 200
    prompt = r.json()["usage"]["prompt_tokens"]
    # 80 ms plus the profile's own 1 ms per prompt token; 5 ms per token; 12 tokens.
    assert float(r.headers["x-llmsim-ttft-ms"]) == 80 + prompt
    assert float(r.headers["x-llmsim-tbt-ms"]) == 5
    assert r.json()["usage"]["completion_tokens"] == 12
    failing = _chat(replay.url, "fail-model")
    assert failing.status_code == 503 and failing.json()["error"]["code"] == "overloaded"
    other = _chat(replay.url, "gpt-4o", max_tokens=3)
    assert other.status_code == 200 and float(other.headers["x-llmsim-tbt-ms"]) == 0


def test_multi_token_events_are_recorded_as_the_client_saw_them(recorder, llmsim_server, tmp_path):
    """A stream of 3 tokens per event, 40 ms per token: the line has each event's text and
    tokens as the client got them, and its gaps span what the client saw (loose bounds)."""
    up = llmsim_server(
        "--ttft-ms", "100", "--ttft-stddev-ms", "0", "--tbt-ms", "40", "--tbt-stddev-ms", "0",
        "--chunk-tokens", "3",
    )  # fmt: skip
    rec = recorder(up.base_url)
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "three at a time"}],
        "stream": True,
        "max_tokens": 10,
        "stream_options": {"include_usage": True},
    }
    texts, times = [], []
    with httpx.stream("POST", rec.url + "/v1/chat/completions", json=body, timeout=30) as r:
        for raw in r.iter_lines():
            if raw.startswith("data: {"):
                choices = json.loads(raw[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    texts.append(choices[0]["delta"]["content"])
                    times.append(time.monotonic())
    rec.stop()
    (line,) = _lines(tmp_path / RECORDING)
    assert len(texts) == 4 and line["texts"] == texts  # 3 + 3 + 3 + 1 tokens
    assert line["event_tokens"] == [count_tokens(t, "gpt-4o") for t in texts]
    assert line["output_tokens"] == 10 and line["usage"] == "reported"
    assert len(line["gaps_ms"]) == 3 and all(g > 0 for g in line["gaps_ms"])
    assert line["ttft_ms"] >= 100 and sum(line["gaps_ms"]) > 150  # 9 tokens of 40 ms follow
    assert abs(sum(line["gaps_ms"]) / 1000 - (times[-1] - times[0])) < 0.15


def test_unreachable_upstream_gets_502_and_a_line_and_health_is_its_own(recorder, tmp_path):
    from llmsim.bench.preflight import free_port

    rec = recorder(f"http://127.0.0.1:{free_port()}/v1")
    health = httpx.get(rec.url + "/health", timeout=10).json()
    assert health["recording"] == str(tmp_path / RECORDING) and health["recorded"] == 0
    r = httpx.post(
        rec.url + "/v1/chat/completions", json={"model": "m", "messages": []}, timeout=30
    )
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    (line,) = _wait_lines(tmp_path / RECORDING, 1)
    assert line["error_kind"] == "upstream_unreachable" and line["model"] == "m"


def _wait_lines(path: Path, n: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            break
        time.sleep(0.05)
    return _lines(path)


def _raw_request(port: int, body: dict, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    s.sendall(
        b"POST /v1/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (body.pop("_path", "chat/completions").encode(),
                                          len(payload), payload)
    )  # fmt: skip
    return s


def test_hub_relay_edges(recorder, llmsim_server, tmp_path):
    """What the hub relay must get right besides the happy path: pooled connections the
    upstream closed, an upstream that drops mid-reply, a client that hangs up while the
    upstream thinks, a client slower than the upstream, an upstream that has gone."""
    up = llmsim_server(
        "--ttft-ms", "300", "--ttft-stddev-ms", "0", "--tbt-ms", "5", "--tbt-stddev-ms", "0",
        "--keepalive-timeout-s", "0.2",
    )  # fmt: skip
    rec = recorder(up.base_url, with_bodies=False)
    out = tmp_path / RECORDING
    with httpx.Client(timeout=30) as c:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
        url = rec.url + "/v1/chat/completions"
        assert c.post(url, json={**body, "max_tokens": 3}).status_code == 200
        time.sleep(0.4)  # the upstream closes the idle pooled connection meanwhile
        second = c.post(url, json={**body, "max_tokens": 4})
        assert second.status_code == 200
        assert second.json()["usage"]["completion_tokens"] == 4
        drop = {
            "json": {**body, "stream": True, "max_tokens": 50},
            "headers": {"x-llmsim-fault": "drop"},
        }
        # The upstream breaks off mid-reply: so does the proxy.
        with pytest.raises(httpx.HTTPError), c.stream("POST", url, **drop) as r:
            for _ in r.iter_lines():
                pass
    port = int(rec.url.rsplit(":", 1)[1])
    gone = _raw_request(port, {**body, "stream": True, "max_tokens": 5})
    time.sleep(0.1)
    gone.close()  # long before the first token (300 ms)
    # 2 MB of embeddings to a client reading through a 4 KB window, a while after asking.
    slow = _raw_request(port, {"_path": "embeddings", "model": "text-embedding-3-small",
                               "input": ["a b c"] * 60}, rcvbuf=4096)  # fmt: skip
    time.sleep(0.3)
    data = b""
    while b"\r\n\r\n" not in data:
        data += slow.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(rest) < length:
        rest += slow.recv(65536)
    slow.close()
    assert len(json.loads(rest)["data"]) == 60 and length > 1_000_000
    lines = _wait_lines(out, 5)
    assert [x["error_kind"] for x in lines] == [None, None, "drop", "client_disconnect", None]
    assert lines[2]["stream"] and 0 < lines[2]["output_tokens"] < 50
    assert lines[3]["e2e_ms"] < 290  # abandoned when the client left, not when the reply came
    health = httpx.get(rec.url + "/health").json()
    assert health["in_flight"] == 0 and health["recorded"] == 5

    # The upstream goes away: its pooled connection is found closed, a new one is refused.
    up.stop()
    r = _chat(rec.url, "gpt-4o")
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    line = _wait_lines(out, 6)[-1]
    assert line["error_kind"] == "upstream_unreachable" and line["status"] == 502


def test_dechunker_follows_any_split_and_rejects_what_is_not_chunked():
    body = b"4;ext=1\r\nWiki\r\n7\r\npedia i\r\nB\r\nn \r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n"
    for cut in range(1, len(body)):  # every place a read can end
        d = Dechunker()
        got = d.feed(body[:cut])
        assert not d.done
        got += d.feed(body[cut:])
        assert got == b"Wikipedia in \r\nchunks." and d.done
    d = Dechunker()
    assert b"".join(d.feed(bytes([c])) for c in body) == b"Wikipedia in \r\nchunks." and d.done
    for bad in (b"zz\r\n", b"0\r\n\r\nextra", b"f" * 5000):
        with pytest.raises(ProtocolError):
            Dechunker().feed(bad)
    status, reason, headers = parse_head(b"HTTP/1.1 429 Too Many\r\nRetry-After: 2\r\nX-A: a\r\n b")
    assert (status, reason, headers) == (429, "Too Many", [("Retry-After", "2"), ("X-A", "a b")])
    with pytest.raises(ProtocolError):
        parse_head(b"SSH-2.0-OpenSSH")
    head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n"
    head += b"Transfer-Encoding: chunked"
    assert _forwarded_head(head, close=False) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )  # the hop's own headers stay behind, the framing goes on as the upstream framed it
    assert _forwarded_head(head, close=True).endswith(b"chunked\r\nConnection: close\r\n\r\n")
