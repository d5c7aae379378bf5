"""Anthropic Messages against a real `llmsim serve`, through the official anthropic SDK."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from llmsim.engine.tokens import count_tokens

from conftest import start_server

MODEL = "claude-sonnet-4"
USER = [{"role": "user", "content": "alpha beta gamma STOP delta epsilon"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
    },
}


@pytest.fixture(scope="module")
def server():
    # echo: the reply is the last user message, so stop sequences have something to hit.
    s = start_server(
        "--ttft-ms",
        "5",
        "--ttft-stddev-ms",
        "0",
        "--tbt-ms",
        "1",
        "--tbt-stddev-ms",
        "0",
        "--generator",
        "echo",
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0) as c:
        yield c


def sse(server, body, headers=None) -> list[tuple[str, dict]]:
    """(event name, data) of a raw streamed /v1/messages."""
    hdrs = {"anthropic-version": "2023-06-01", "x-api-key": "k", **(headers or {})}
    with httpx.stream(
        "POST", server.url + "/v1/messages", json={**body, "stream": True}, headers=hdrs
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    out = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_message(client):
    m = client.messages.create(model=MODEL, max_tokens=100, messages=USER, system="Be brief.")
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text.startswith("alpha beta")
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens > 0 and m.usage.output_tokens == len(
        m.content[0].text.split()
    )  # echo of one-token words


def test_max_tokens_and_stop_sequences(client):
    m = client.messages.create(model=MODEL, max_tokens=2, messages=USER)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 2
    m = client.messages.create(
        model=MODEL, max_tokens=100, messages=USER, stop_sequences=["nope", " STOP"]
    )
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == " STOP"
    assert m.content[0].text == "alpha beta gamma"


def test_stream_events_in_order(server, client):
    events = sse(server, {"model": MODEL, "max_tokens": 100, "messages": USER})
    names = [e for e, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [d for e, d in events if e == "content_block_delta"]
    assert names[3:-3] == ["content_block_delta"] * len(deltas)
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for d in deltas)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn"
    # Several tokens per delta (Anthropic's shape), whole tokens each: usage stays exact.
    text = "".join(d["delta"]["text"] for d in deltas)
    assert final["usage"]["output_tokens"] == count_tokens(text, MODEL) >= len(deltas)
    # The SDK's own accumulation agrees.
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        msg = stream.get_final_message()
    assert text == msg.content[0].text == "".join(d["delta"]["text"] for d in deltas)


def test_tool_use(client):
    m = client.messages.create(
        model=MODEL, max_tokens=200, messages=USER, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert m.stop_reason == "tool_use"
    for block in m.content:
        assert block.type == "tool_use" and block.name == "get_weather"
        assert block.id.startswith("toolu_")
        jsonschema.validate(block.input, WEATHER["input_schema"])
    # The reply to a tool result is text, so an agent loop ends.
    follow = [
        *USER,
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": b.id, "content": "sunny"} for b in m.content
            ],
        },
    ]
    m2 = client.messages.create(model=MODEL, max_tokens=50, messages=follow, tools=[WEATHER])
    assert m2.stop_reason in ("end_turn", "max_tokens") and m2.content[0].type == "text"


def test_tool_use_streamed(server, client):
    body = {
        "model": MODEL,
        "max_tokens": 200,
        "messages": USER,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }
    events = sse(server, body)
    names = [e for e, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert events[1][1]["content_block"]["type"] == "tool_use"
    partial = "".join(d["delta"]["partial_json"] for e, d in events if e == "content_block_delta")
    jsonschema.validate(json.loads(partial), WEATHER["input_schema"])
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    with client.messages.stream(**body) as stream:
        msg = stream.get_final_message()
    assert len(msg.content) == 1 and msg.content[0].type == "tool_use"
    jsonschema.validate(msg.content[0].input, WEATHER["input_schema"])


def test_structured_output(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "score": {"type": "number"}},
        "required": ["answer", "score"],
        "additionalProperties": False,
    }
    m = client.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=USER,
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    jsonschema.validate(json.loads(m.content[0].text), schema)


def test_error_shapes(server, client):
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model=MODEL, max_tokens=0, messages=USER)
    assert exc.value.body["type"] == "error"
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        server.url + "/v1/messages",
        json={"model": MODEL, "messages": USER},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    cases = [
        ("529", anthropic.OverloadedError, "overloaded_error"),
        ("429", anthropic.RateLimitError, "rate_limit_error"),
        ("500", anthropic.InternalServerError, "api_error"),
    ]
    for fault, error, kind in cases:
        with pytest.raises(error) as exc:
            client.messages.create(
                model=MODEL, max_tokens=5, messages=USER, extra_headers={"x-llmsim-fault": fault}
            )
        assert exc.value.body["error"]["type"] == kind
    # A fault in the middle of a stream is an `error` event, which the SDK raises.
    stream_error = {"x-llmsim-fault": "stream-error"}
    with (
        pytest.raises(anthropic.APIStatusError) as exc,
        client.messages.stream(
            model=MODEL, max_tokens=100, messages=USER, extra_headers=stream_error
        ) as stream,
    ):
        for _ in stream:
            pass
    assert exc.value.body["error"]["type"] == "api_error"
    # Unknown paths under /anthropic answer in Anthropic's shape too.
    r = httpx.get(server.url + "/anthropic/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


BAD_THINKING_AND_METADATA = [
    ({"thinking": "x"}, "thinking: Input should be a valid dictionary"),
    ({"thinking": {"budget_tokens": 2048}},
     "thinking: Unable to extract tag using discriminator 'type'"),
    ({"thinking": {"type": "on"}}, "thinking: Input tag 'on' found using 'type' does not match "
     "any of the expected tags: 'enabled', 'disabled', 'adaptive'"),
    ({"thinking": {"type": "enabled"}}, "thinking.enabled.budget_tokens: Field required"),
    ({"thinking": {"type": "enabled", "budget_tokens": 512}},
     "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"),
    ({"thinking": {"type": "enabled", "budget_tokens": "2048"}},
     "thinking.enabled.budget_tokens: Input should be a valid integer"),
    ({"metadata": "u"}, "metadata: Input should be a valid dictionary"),
    ({"metadata": {"user_id": 5}}, "metadata.user_id: Input should be a valid string"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), BAD_THINKING_AND_METADATA)
def test_bad_thinking_and_metadata_are_anthropics_400(client, extra, message):
    """They were accepted (and ignored) whatever their value."""
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model=MODEL, max_tokens=4096, messages=USER, **extra)
    assert exc.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }


def test_valid_thinking_and_metadata_are_accepted(client):
    for thinking in (
        {"type": "enabled", "budget_tokens": 1024},
        {"type": "disabled"},
        {"type": "adaptive"},
    ):
        m = client.messages.create(
            model=MODEL,
            max_tokens=2048,
            messages=USER,
            thinking=thinking,
            metadata={"user_id": "user-1"},
        )
        assert m.content[0].type == "text", thinking
    assert client.messages.create(
        model=MODEL, max_tokens=3, messages=USER, metadata={"user_id": None}
    ).content
    with pytest.raises(anthropic.BadRequestError, match="valid dictionary"):
        client.messages.count_tokens(model=MODEL, messages=USER, thinking="x")


def test_anthropic_base_url_models_and_count_tokens(server):
    with anthropic.Anthropic(base_url=server.url + "/anthropic", api_key="k", max_retries=0) as c:
        m = c.messages.create(model=MODEL, max_tokens=3, messages=USER)
        assert m.usage.output_tokens == 3
        models = list(c.models.list(limit=5))  # the SDK pages through has_more / last_id
        assert MODEL in [x.id for x in models] and len(models) > 5
        assert c.models.retrieve(MODEL).display_name == "Claude Sonnet 4"
        counted = c.messages.count_tokens(model=MODEL, messages=USER)
        assert counted.input_tokens == m.usage.input_tokens
        with_tools = c.messages.count_tokens(model=MODEL, messages=USER, tools=[WEATHER])
        assert with_tools.input_tokens > counted.input_tokens + 300  # the tool system prompt
        # count_tokens answers what the Messages request bills, for every tool mix and choice.
        search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
        for tools in ([WEATHER], [search], [WEATHER, search]):
            for choice in ({"type": "auto"}, {"type": "any"}, {"type": "none"}):
                kw = {"model": MODEL, "messages": USER, "tools": tools, "tool_choice": choice}
                billed = c.messages.create(max_tokens=3, **kw).usage.input_tokens
                assert c.messages.count_tokens(**kw).input_tokens == billed, (tools, choice)
    # Without anthropic-version, /v1/models is OpenAI's list.
    assert httpx.get(server.url + "/v1/models").json()["object"] == "list"
