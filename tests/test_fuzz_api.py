"""Fuzz the three generating endpoints with bodies drawn from OpenAI's spec (hypothesis).

Bounded to a few seconds per endpoint here; `benchmarks/fuzz_api.py` runs the same for longer.
Every answer must be a 2xx or a 4xx in OpenAI's error shape: never a 500, a traceback, a
hang or a dead server.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import start_server
from fuzz_support import OPERATIONS, bodies

ALLOWED = {200, 400, 404, 413, 422}


@pytest.fixture(scope="module")
def server():
    s = start_server("--profile", "instant")
    yield s
    s.stop()


def check_answer(client: httpx.Client, url: str, body: dict) -> None:
    """POST body and assert the answer is a success or the API's own error."""
    with client.stream("POST", url, json=body) as r:
        data = r.read()  # a stream is read to its end
    assert r.status_code in ALLOWED, (r.status_code, body, data[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and isinstance(err["message"], str)
        assert "Traceback" not in err["message"]


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_fuzzed_bodies_get_a_success_or_the_apis_400(server, operation):
    path, _ = OPERATIONS[operation]
    url = server.url + path
    with httpx.Client(timeout=30) as client:

        @settings(
            max_examples=80,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(body=bodies(operation))
        def run(body):
            check_answer(client, url, body)

        run()
        assert client.get(server.url + "/health").status_code == 200


# Bodies that reached the server's own error (a 500) before: found by hand-shaped hostile
# bodies for every API family (lone surrogates, wrong types below the top level).
CLAUDE = {
    "model": "claude-sonnet-4",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "hi"}],
}
SURROGATE_ROWS = [
    ("chat-model", "/v1/chat/completions",
     {"model": "gpt-4o\ud800", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    ("chat-model-stream", "/v1/chat/completions",
     {"model": "gpt-4o\ud800", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
      "stream": True}),
    ("responses-model", "/v1/responses",
     {"model": "gpt-4o\ud800", "input": "hi", "max_output_tokens": 16}),
    ("completions-model", "/v1/completions",
     {"model": "gpt-3.5-turbo-instruct\ud800", "prompt": "hi", "max_tokens": 3}),
    ("embeddings-input", "/v1/embeddings",
     {"model": "text-embedding-3-small", "input": ["a\udfffb", "c"]}),
    ("embeddings-model", "/v1/embeddings", {"model": "text-embedding-3-small\ud800", "input": "a"}),
    ("anthropic-model", "/v1/messages", {**CLAUDE, "model": "claude-sonnet-4\ud800"}),
    ("anthropic-model-stream", "/v1/messages",
     {**CLAUDE, "model": "claude-sonnet-4\ud800", "stream": True}),
]  # fmt: skip


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "utf8-bytes"])
@pytest.mark.parametrize(
    ("row", "path", "body"), SURROGATE_ROWS, ids=[r[0] for r in SURROGATE_ROWS]
)
def test_lone_surrogates_are_read_as_replacement_characters(server, row, path, body, raw):
    """A lone surrogate is valid in a JSON string (an escape) but no UTF-8; the stats table,
    the model-name stats table and the embeddings hash met it and answered 500. Now it is U+FFFD, as
    tiktoken counts it."""
    content = json.dumps(body)  # escapes it: "\ud800"
    if raw:  # the same as the bytes a lax encoder sends (json reads them with surrogatepass)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    else:
        data = content.encode()
    with (
        httpx.Client(timeout=30) as c,
        c.stream(
            "POST", server.url + path, content=data, headers={"content-type": "application/json"}
        ) as r,
    ):
        text = r.read().decode()
    assert r.status_code == 200, text[:300]
    assert "server_error" not in text and "api_error" not in text, text[:300]
    if not body.get("stream") and "embeddings" not in path:
        assert json.loads(text)["model"] == body["model"].replace("\ud800", "\ufffd")


WRONG_TYPE_ROWS = [
    ("responses-content", "/v1/responses",
     {"model": "gpt-4o", "input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ("responses-content-stream", "/v1/responses",
     {"model": "gpt-4o", "input": [{"role": "user", "content": True}], "stream": True},
     "input[0].content"),
    ("anthropic-tool-result", "/v1/messages",
     {**CLAUDE, "messages": [{"role": "user", "content": [
         {"type": "tool_result", "tool_use_id": "t", "content": 1.5}]}]},
     "messages.0.content.0.tool_result.content"),
    ("anthropic-count-tokens", "/v1/messages/count_tokens",
     {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": [
         {"type": "tool_result", "tool_use_id": "t", "content": 7}]}]},
     "messages.0.content.0.tool_result.content"),
    ("tokenize-content", "/tokenize",
     {"model": "gpt-4o", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ("completions-prompts", "/v1/completions",
     {"model": "gpt-3.5-turbo-instruct", "prompt": ["a"] * 200, "max_tokens": 3}, "'prompt'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("row", "path", "body", "named"), WRONG_TYPE_ROWS, ids=[r[0] for r in WRONG_TYPE_ROWS]
)
def test_wrong_types_below_the_top_level_are_the_apis_400(server, row, path, body, named):
    """A content of the wrong type inside an item (a number where text goes) was a 500 from
    the prompt counter; now each API's 400 names where it is."""
    with httpx.Client(timeout=30) as c:
        r = c.post(server.url + path, json=body)
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    if "/messages" in path:
        assert r.json()["type"] == "error" and err["type"] == "invalid_request_error"
    assert named in err["message"]


def test_sdk_sees_a_bad_request_for_a_wrong_content_type(server):
    """What a client sees: the SDKs raise their BadRequestError, not an InternalServerError
    (which they would also retry)."""
    import anthropic
    import openai

    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="gpt-4o", input=[{"role": "user", "content": 5}])  # type: ignore[list-item]
    claude = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model="claude-sonnet-4",
            max_tokens=5,
            messages=[{"role": "user", "content": [  # type: ignore[list-item]
                {"type": "tool_result", "tool_use_id": "t", "content": 5}]}],
        )  # fmt: skip
