"""Legacy completions and embeddings against a real `llmsim serve`, via the openai SDK."""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import openai
import pytest

from conftest import start_server
from openapi_check import validate


@pytest.fixture(scope="module")
def server():
    # A 100 ms TTFT: embeddings answer after it, and nothing sooner.
    s = start_server(
        "--ttft-ms", "100", "--ttft-stddev-ms", "0", "--tbt-ms", "1", "--tbt-stddev-ms", "0"
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


# --------------------------------------------------------------------------- completions


def test_completion(client):
    raw = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time"
    )
    validate("CreateCompletionResponse", json.loads(raw.text))
    c = raw.parse()
    assert c.object == "text_completion" and c.id.startswith("cmpl-")
    # OpenAI's default max_tokens for completions is 16.
    assert c.usage.completion_tokens == 16 and c.choices[0].finish_reason == "length"
    assert c.usage.prompt_tokens == 4


def test_prompt_lists_n_and_echo(client):
    c = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["one", "two three"], n=2, max_tokens=3
    )
    assert [ch.index for ch in c.choices] == [0, 1, 2, 3]
    assert c.usage.completion_tokens == 12 and c.usage.prompt_tokens == 3
    ids = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=[[9906, 1917]], max_tokens=2, echo=True
    )
    assert ids.usage.prompt_tokens == 2 and ids.choices[0].text.startswith("Hello world")


def test_streamed_completion(server):
    body = {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "hi",
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    with httpx.stream("POST", server.base_url + "/completions", json=body) as r:
        events = [e[6:] for e in r.read().decode().strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for ch in chunks:
        # OpenAI streams finish_reason null until the end; the spec's one shape says string.
        patched = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in ch["choices"]]
        validate("CreateCompletionResponse", {**ch, "choices": patched})
    texts = [ch["choices"][0]["text"] for ch in chunks[:8]]
    assert all(texts) and chunks[8]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_streamed_completion_with_continuous_usage_stats(server):
    """vLLM's stream_options.continuous_usage_stats: every chunk says the tokens so far."""
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 6,
            "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    with httpx.stream("POST", server.base_url + "/completions", json=body) as r:
        events = [e[6:] for e in r.read().decode().strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    *chunks, final = [json.loads(e) for e in events[:-1]]
    prompt = final["usage"]["prompt_tokens"]
    assert [ch["usage"]["completion_tokens"] for ch in chunks] == [1, 2, 3, 4, 5, 6, 6]
    assert all(ch["usage"]["total_tokens"] == prompt + ch["usage"]["completion_tokens"]
               for ch in chunks)  # fmt: skip
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 6


def test_completion_errors(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt=None)
    assert exc.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="x", prompt="a", n=2, best_of=1)


# --------------------------------------------------------------------------- embeddings


def test_embeddings_are_deterministic_unit_vectors(client):
    # The SDK asks for base64 and decodes it: the float32 little-endian bytes.
    r = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "other"])
    assert [d.index for d in r.data] == [0, 1]
    a, b = (np.array(d.embedding) for d in r.data)
    assert len(a) == 1536 and abs(np.linalg.norm(a) - 1) < 1e-5
    assert abs(float(a @ b)) < 0.2  # unrelated inputs, nearly orthogonal vectors
    again = client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert np.array_equal(np.array(again.data[0].embedding), a)
    assert r.usage.prompt_tokens == 3 and r.usage.total_tokens == 3
    large = client.embeddings.create(model="text-embedding-3-large", input="x")
    assert len(large.data[0].embedding) == 3072
    assert (
        len(client.embeddings.create(model="text-embedding-ada-002", input="x").data[0].embedding)
        == 1536
    )


def test_dimensions_shorten_and_renormalise(client):
    full = np.array(
        client.embeddings.create(model="text-embedding-3-large", input="q").data[0].embedding
    )
    short = np.array(
        client.embeddings.create(model="text-embedding-3-large", input="q", dimensions=256)
        .data[0]
        .embedding
    )
    assert len(short) == 256 and abs(np.linalg.norm(short) - 1) < 1e-5
    prefix = full[:256] / np.linalg.norm(full[:256])
    assert np.allclose(short, prefix, atol=1e-6)


def test_float_and_base64_formats_agree(server):
    url = server.base_url + "/embeddings"
    as_float = httpx.post(
        url, json={"model": "text-embedding-3-small", "input": "same", "encoding_format": "float"}
    ).json()
    validate("CreateEmbeddingResponse", as_float)
    as_b64 = httpx.post(
        url, json={"model": "text-embedding-3-small", "input": "same", "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == as_float["data"][0]["embedding"]


def test_embedding_latency_is_the_ttft(server):
    with httpx.Client() as http:
        http.get(server.url + "/health")
        start = time.monotonic()
        r = http.post(
            server.base_url + "/embeddings", json={"model": "text-embedding-3-small", "input": "t"}
        )
        elapsed = time.monotonic() - start
    assert r.status_code == 200 and float(r.headers["x-llmsim-ttft-ms"]) == 100
    assert 0.099 <= elapsed < 1.0


def test_embedding_errors(client):
    cases = [
        ({"model": "text-embedding-ada-002", "input": "x", "dimensions": 8}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 4096}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": ""}, "input"),
        ({"model": "text-embedding-3-small", "input": ["a", ""]}, "input[1]"),
        (
            {"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"},
            "encoding_format",
        ),
        ({"model": "text-embedding-3-small", "input": "word " * 9000}, "input"),
    ]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.embeddings.create(**body)
        assert exc.value.body["param"] == param, body
