"""llmsim record: a real proxy in front of a real `llmsim serve`, driven by the official SDKs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from llmsim.record.bench_hook import RECORDING, RecorderProcess, start_recorder

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
    assert httpx.get(rec.url + "/health").json()["status"] == "ok"

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


def test_proxy_forwards_each_event_as_it_arrives(recorder, llmsim_server, tmp_path):
    slow = llmsim_server("--ttft-ms", "50", "--ttft-stddev-ms", "0", "--tbt-ms", "150")
    rec = recorder(slow.base_url, with_bodies=False)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    seen = []
    t0 = time.monotonic()
    with httpx.stream(
        "POST", rec.base_url + "/chat/completions", json={**body, "max_tokens": 4}, timeout=10
    ) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                seen.append(time.monotonic() - t0)
    # 4 tokens 150 ms apart: buffered, they would arrive together at the end.
    assert len(seen) == 4
    assert seen[-1] - seen[0] > 0.3
    rec.stop()
    (line,) = _lines(tmp_path / RECORDING)
    assert "texts" not in line  # only with --with-bodies
    assert all(g > 100 for g in line["gaps_ms"])


def test_unreachable_upstream_gets_502_and_a_line(recorder, tmp_path):
    from conftest import free_port

    rec = recorder(f"http://127.0.0.1:{free_port()}/v1")
    r = httpx.post(rec.base_url + "/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    rec.stop()
    (line,) = _lines(tmp_path / RECORDING)
    assert line["error_kind"] == "upstream_unreachable" and line["status"] == 502
