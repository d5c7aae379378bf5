"""The OpenAI chat completions API against a real server, driven by the official SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from llmsim.engine.tokens import count_chat_prompt_tokens, encoding_for_model

from openapi_check import validate

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about load testing."},
]


@pytest.fixture(scope="module")
def client(fast_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=fast_server.base_url, api_key="sk-test", max_retries=0)


def raw_stream(base_url: str, body: dict) -> list[dict]:
    """The decoded `data:` events of a streamed response, [DONE] as the string."""
    events = []
    with httpx.stream("POST", base_url + "/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert line == "", f"unexpected SSE line {line!r}"
    return events


def test_plain_completion_matches_spec(client, fast_server):
    r = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=12
    )
    body = json.loads(r.text)
    validate("CreateChatCompletionResponse", body)
    c = r.parse()
    assert c.object == "chat.completion"
    assert c.id.startswith("chatcmpl-")
    assert c.system_fingerprint and c.created > 1_700_000_000
    choice = c.choices[0]
    assert choice.message.role == "assistant" and choice.logprobs is None
    assert body["choices"][0]["logprobs"] is None
    assert c.usage.completion_tokens <= 12
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert c.usage.prompt_tokens == count_chat_prompt_tokens(MESSAGES, "gpt-4o")
    enc = encoding_for_model("gpt-4o")
    assert len(enc.encode(choice.message.content)) == c.usage.completion_tokens
    assert float(r.headers["x-llmsim-ttft-ms"]) == pytest.approx(5)
    assert float(r.headers["x-llmsim-tbt-ms"]) == pytest.approx(1)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "gpt-5-mini", "claude-sonnet-4"])
def test_ignore_eos_gives_exactly_max_tokens_and_text_retokenizes(client, model):
    c = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=77, extra_body={"ignore_eos": True}
    )
    # max_tokens caps the visible text; reasoning models bill their thinking on top of it.
    reasoning = c.usage.completion_tokens_details.reasoning_tokens
    assert c.usage.completion_tokens - reasoning == 77
    assert c.choices[0].finish_reason == "length"
    assert len(encoding_for_model(model).encode(c.choices[0].message.content)) == 77


def test_max_completion_tokens_caps_and_finish_reason(client):
    capped = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_completion_tokens=3
    )
    assert capped.usage.completion_tokens == 3
    assert capped.choices[0].finish_reason == "length"
    # The default reply (mean 256 tokens) ends by itself well below a large cap.
    free = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4000)
    assert free.choices[0].finish_reason == "stop"
    assert 1 <= free.usage.completion_tokens < 4000


def test_stream_shape_with_usage(fast_server):
    body = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "max_tokens": 20,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = raw_stream(fast_server.base_url, body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for ch in chunks:
        validate("CreateChatCompletionStreamResponse", ch)
        assert ch["object"] == "chat.completion.chunk"
        assert "usage" in ch
    ids = {ch["id"] for ch in chunks}
    assert len(ids) == 1
    first, *content, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all(ch["usage"] is None for ch in chunks[:-1])
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(content) == 20
    enc = encoding_for_model("gpt-4o")
    for ch in content:
        piece = ch["choices"][0]["delta"]["content"]
        assert len(enc.encode(piece)) == 1, f"chunk {piece!r} is not one token"
    text = "".join(ch["choices"][0]["delta"]["content"] for ch in content)
    assert len(enc.encode(text)) == 20


def test_continuous_usage_stats_counts_the_tokens_in_every_chunk(fast_server):
    """vLLM's stream_options.continuous_usage_stats (guidellm sends it): usage so far in each
    chunk, the final usage chunk unchanged; without include_usage it does nothing."""
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 12, "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    events = raw_stream(fast_server.base_url, body)
    assert events[-1] == "[DONE]"
    first, *content, finish, final = events[:-1]
    for ch in (first, *content, finish):
        validate("CreateChatCompletionStreamResponse", ch)
    prompt = final["usage"]["prompt_tokens"]
    assert first["usage"] == {"prompt_tokens": prompt, "completion_tokens": 0,
                              "total_tokens": prompt}  # fmt: skip
    assert [ch["usage"]["completion_tokens"] for ch in content] == list(range(1, 13))
    assert all(ch["usage"]["total_tokens"] == prompt + ch["usage"]["completion_tokens"]
               for ch in content)  # fmt: skip
    assert finish["usage"]["completion_tokens"] == 12 == final["usage"]["completion_tokens"]
    assert final["choices"] == [] and "completion_tokens_details" in final["usage"]
    text = "".join(ch["choices"][0]["delta"]["content"] for ch in content)
    assert len(encoding_for_model("gpt-4o").encode(text)) == 12
    body["stream_options"] = {"continuous_usage_stats": True}  # needs include_usage, as in vLLM
    assert all("usage" not in ch for ch in raw_stream(fast_server.base_url, body)[:-1])


def test_stream_without_usage_has_no_usage_field(fast_server):
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    events = raw_stream(fast_server.base_url, body)
    assert events[-1] == "[DONE]"
    assert all("usage" not in ch for ch in events[:-1])
    assert all(ch["choices"] for ch in events[:-1])


def test_sdk_streaming_with_n_interleaves_choices(client):
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=6,
        n=3,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    texts = {0: "", 1: "", 2: ""}
    finishes = {}
    order = []
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            order.append(ch.index)
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert usage.completion_tokens == 18
    assert len(set(texts.values())) == 3, "each choice has its own text"
    # Interleaved: index 1 appears before index 0 has finished.
    assert order.index(1) < max(i for i, x in enumerate(order) if x == 0)


def test_n_non_streaming(client):
    c = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5, n=2)
    assert [ch.index for ch in c.choices] == [0, 1]
    assert c.usage.completion_tokens == sum(
        len(encoding_for_model("gpt-4o").encode(ch.message.content)) for ch in c.choices
    )


def test_stop_sequence_cuts_the_reply(fast_server):
    s = openai.OpenAI(base_url=fast_server.base_url, api_key="k", max_retries=0)
    full = s.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=60, seed=7, extra_body={"ignore_eos": True}
    )
    text = full.choices[0].message.content
    words = text.split()
    stop = " " + words[len(words) // 2]
    cut = s.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=60,
        seed=7,
        stop=[stop, "\u2603never"],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].finish_reason == "stop"
    assert text.startswith(cut.choices[0].message.content)
    assert stop not in cut.choices[0].message.content
    assert cut.usage.completion_tokens < 60


def test_seed_gives_the_same_text(client):
    a = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=30, seed=42)
    b = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=30, seed=42)
    c = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=30, seed=43)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != c.choices[0].message.content


def test_models_list_and_retrieve(client):
    models = client.models.with_raw_response.list()
    validate("ListModelsResponse", json.loads(models.text))
    ids = [m.id for m in models.parse().data]
    assert "gpt-5" in ids and "gpt-4o" in ids
    m = client.models.retrieve("gpt-4o")
    assert m.id == "gpt-4o" and m.object == "model"


def test_health(fast_server):
    r = httpx.get(fast_server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_sdk_raises_its_own_exception_types(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=5)
    assert exc.value.code == "empty_array"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=3)
    assert exc.value.param == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.with_options(base_url=client.base_url.join("nope/")).models.list()


def test_strict_mode_rejects_unknown_models(llmsim_server):
    server = llmsim_server("--profile", "instant", "--strict-models", "--models", "gpt-4o,my-model")
    c = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        c.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-9")
    assert c.chat.completions.create(model="my-model", messages=MESSAGES, max_tokens=2)
    assert [m.id for m in c.models.list().data] == ["gpt-4o", "my-model"]


U = [{"role": "user", "content": "x"}]
CHAT = "/v1/chat/completions"
BAD_INPUTS = [
    ("POST", CHAT, b"{not json", 400, None),
    ("POST", CHAT, [1, 2], 400, "invalid_type"),
    ("POST", CHAT, {"messages": U}, 400, "missing_required_parameter"),
    ("POST", CHAT, {"model": "gpt-4o"}, 400, "missing_required_parameter"),
    ("POST", CHAT, {"model": "gpt-4o", "messages": []}, 400, "empty_array"),
    ("POST", CHAT, {"model": "gpt-4o", "messages": "hi"}, 400, "invalid_type"),
    ("POST", CHAT, {"model": 5, "messages": U}, 400, "invalid_type"),
    (
        "POST",
        CHAT,
        {"model": "m", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "invalid_value",
    ),
    (
        "POST",
        CHAT,
        {"model": "m", "messages": [{"role": "user"}]},
        400,
        "missing_required_parameter",
    ),
    ("POST", CHAT, {"model": "m", "messages": U, "max_tokens": 0}, 400, "integer_below_min_value"),
    ("POST", CHAT, {"model": "m", "messages": U, "max_tokens": "9"}, 400, "invalid_type"),
    ("POST", CHAT, {"model": "m", "messages": U, "n": 0}, 400, "integer_below_min_value"),
    ("POST", CHAT, {"model": "m", "messages": U, "n": 500}, 400, "integer_above_max_value"),
    ("POST", CHAT, {"model": "m", "messages": U, "top_p": 1.5}, 400, "decimal_above_max_value"),
    (
        "POST",
        CHAT,
        {"model": "m", "messages": U, "temperature": -1},
        400,
        "decimal_below_min_value",
    ),
    (
        "POST",
        CHAT,
        {"model": "m", "messages": U, "stop": list("abcde")},
        400,
        "array_above_max_length",
    ),
    ("POST", CHAT, {"model": "m", "messages": U, "stop": 5}, 400, "invalid_type"),
    ("POST", CHAT, {"model": "m", "messages": U, "stream": "yes"}, 400, "invalid_type"),
    (
        "POST",
        CHAT,
        {"model": "m", "messages": U, "stream_options": {"include_usage": True}},
        400,
        "invalid_value",
    ),
    ("POST", "/v1/nothing-here", {}, 404, "unknown_url"),
    ("GET", CHAT, b"", 405, "method_not_allowed"),
    ("DELETE", "/v1/models", b"", 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_INPUTS)
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(
    fast_server, method, path, body, status, code
):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    r = httpx.request(method, fast_server.url + path, content=content, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    validate("ErrorResponse", payload)
    assert payload["error"]["code"] == code
    assert payload["error"]["message"]
    ok = httpx.post(
        fast_server.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 2},
    )
    assert ok.status_code == 200


def test_oversized_body_is_413(llmsim_server):
    server = llmsim_server("--profile", "instant", "--max-body-bytes", "2048")
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(server.base_url + "/chat/completions", json=big)
    assert r.status_code == 413
    validate("ErrorResponse", r.json())
    small = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    assert httpx.post(server.base_url + "/chat/completions", json=small).status_code == 200
