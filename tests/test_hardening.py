"""Issue 11's table: every input that took the simulator down, thrown at a real server.

Each row asserts the status and error shape, and that meanwhile a paced stream on the same
worker kept its pace, /health answered within 0.5 s and the server's RSS stayed bounded. Slow
rows are tiny versions of the real ones (benchmarks/hardening_attacks.py runs them full size).
The gap bound (0.75 s) is looser than the issue's 100 ms so the test holds on a loaded 2-core
machine; it still catches the multi-second stalls of the table, and the benchmark prints the
real figure.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from llmsim.engine.tokens import get_encoding

from conftest import start_server
from hardening_support import Watch, raw_request, status_of

HEALTH_S = 0.5
GAP_S = 0.75
RSS_GROWTH = 300 * 1024 * 1024  # the 9 MB bodies and their JSON are the largest things held

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {
    "model": "claude-sonnet-4",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture(scope="module")
def target():
    server = start_server(
        "--ttft-ms", "5", "--ttft-stddev-ms", "0", "--tbt-ms", "20", "--tbt-stddev-ms", "0",
        "--header-timeout-s", "1", "--keepalive-timeout-s", "1", "--body-timeout-s", "2",
    )  # fmt: skip
    with Watch(server.url, server.proc.pid) as watch:
        yield server, watch
    server.stop()


def _schema_rows(schema, name):
    """The same schema in response_format, chat tools and Anthropic tools."""
    return [
        (f"{name}-response_format", "/v1/chat/completions",
         {**CHAT, "response_format": {"type": "json_schema",
                                      "json_schema": {"name": "x", "schema": schema}}},
         400, "response_format.json_schema.schema"),
        (f"{name}-chat-tools", "/v1/chat/completions",
         {**CHAT, "tools": [{"type": "function",
                             "function": {"name": "t", "parameters": schema}}]},
         400, "tools[0].function.parameters"),
        (f"{name}-anthropic-tools", "/v1/messages",
         {**CLAUDE, "tools": [{"name": "t", "input_schema": schema}]},
         400, "tools.0.custom.input_schema"),
    ]  # fmt: skip


MALFORMED = {
    "self-ref": {"$ref": "#"},
    "allOf-self": {"allOf": [{"$ref": "#"}]},
    "type-OBJECT": {"type": "OBJECT"},
    "enum-empty": {"enum": []},
    "minItems-x": {"type": "array", "minItems": "x"},
    "properties-list": {"type": "object", "properties": ["a"]},
    "dangling-ref": {"$ref": "#/$defs/nope"},
    "required-string": {"type": "object", "required": "a"},
    "items-number": {"type": "array", "items": 5},
    "anyOf-empty": {"anyOf": []},
    "min-above-max": {"type": "string", "minLength": 5, "maxLength": 2},
    "minItems-negative": {"type": "array", "minItems": -1},
    "pattern-invalid": {"type": "string", "pattern": "("},
    "type-number": {"type": 5},
    "requires-itself": {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
    "property-not-schema": {"type": "object", "properties": {"a": 5}},
    "multipleOf-zero": {"type": "number", "multipleOf": 0},
    "too-deep": json.loads('{"type": "array", "items": ' * 70 + "{}" + "}" * 70),
}

TOOL_CALLS = [5, [5], ["x"], [{"function": 5}], [{"function": {"name": 5}}]]

ROWS = [
    # Output bounds (issue 9's model catalogue replaces the 128k guard with per-model limits).
    ("max_tokens-10M-stream", "/v1/chat/completions",
     {**CHAT, "max_tokens": 10_000_000, "ignore_eos": True, "stream": True}, 400, "max_tokens"),
    ("n128-max_tokens-1M", "/v1/chat/completions",
     {**CHAT, "n": 128, "max_tokens": 1_000_000}, 400, "max_tokens"),
    ("n128-x-16k", "/v1/chat/completions", {**CHAT, "n": 128, "max_tokens": 16_000}, 400, "n"),
    ("responses-stream-5M", "/v1/responses",
     {"model": "gpt-4o", "input": "hi", "stream": True, "max_output_tokens": 5_000_000},
     400, "max_output_tokens"),
    # Schemas asking for more than the reply can hold.
    ("minLength-1M-cap-100", "/v1/chat/completions",
     {**CHAT, "max_tokens": 100, "response_format": {"type": "json_schema", "json_schema": {
         "name": "x", "schema": {"type": "string", "minLength": 1_000_000}}}}, 400, "max_tokens"),
    ("minItems-150-cubed", "/v1/chat/completions",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
         "type": "array", "minItems": 150, "items": {"type": "array", "minItems": 150, "items": {
             "type": "array", "minItems": 150}}}}}}, 400, "max_tokens"),
    ("pattern-10M-digits", "/v1/chat/completions",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
         "type": "string", "pattern": "\\d{10000000}"}}}}, 400, "max_tokens"),
    ("anthropic-100k-stops", "/v1/messages",
     {**CLAUDE, "stop_sequences": [f"s{i}" for i in range(100_000)]}, 400, "stop_sequences"),
    ("tools-129", "/v1/chat/completions",
     {**CHAT, "tools": [{"type": "function", "function": {"name": f"t{i}"}}
                        for i in range(129)]}, 400, "tools"),
    ("max_tokens-10^4000", "/v1/chat/completions", {**CHAT, "max_tokens": 10**4000}, 400,
     "max_tokens"),
    *[(f"tool_calls-{i}", "/v1/chat/completions",
       {**CHAT, "messages": [CHAT["messages"][0],
                             {"role": "assistant", "content": None, "tool_calls": tc}]},
       400, "messages[1].tool_calls") for i, tc in enumerate(TOOL_CALLS)],
    *[row for name, schema in MALFORMED.items() for row in _schema_rows(schema, name)],
]  # fmt: skip


def _check_error(r: httpx.Response, status: int, param: str) -> None:
    assert r.status_code == status, r.text[:300]
    body = r.json()
    if r.request.url.path.endswith("/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith(param.split("[")[0]), body
    else:
        err = body["error"]
        assert err["type"] == "invalid_request_error"
        assert (err["param"] or "").startswith(param), err
        assert "Traceback" not in err["message"]


def _assert_unharmed(server, watch, w) -> None:
    assert server.proc.poll() is None, "the server died"
    assert w.health_polls > 0 and w.health_max_s < HEALTH_S, w
    assert w.gap_max_s < GAP_S, w
    assert w.rss_max - watch.rss_start < RSS_GROWTH, w
    assert not w.errors, w.errors


@pytest.mark.parametrize(("row", "path", "body", "status", "param"), ROWS, ids=[r[0] for r in ROWS])
def test_row_is_refused_with_the_providers_400(target, row, path, body, status, param):
    server, watch = target
    with watch.window() as w, httpx.Client(timeout=30) as c:
        if path == "/v1/messages":
            r = c.post(server.url + path, json=body, headers={"anthropic-version": "2023-06-01"})
        else:
            r = c.post(server.url + path, json=body)
        _check_error(r, status, param)
    _assert_unharmed(server, watch, w)


def _post_raw(server, text: str) -> httpx.Response:
    with httpx.Client(timeout=30) as c:
        return c.post(
            server.url + "/v1/chat/completions",
            content=text.encode(),
            headers={"content-type": "application/json"},
        )


@pytest.mark.parametrize(
    "text",
    [
        '{"model": "gpt-4o", "messages": ' + "[" * 2000 + "]" * 2000 + "}",
        '{"model": "gpt-4o", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}',
        '{"model": "gpt-4o", "top_p": 1e999, "messages": [{"role": "user", "content": "x"}]}',
    ],
    ids=["nested-2000", "temperature-NaN", "top_p-1e999"],
)
def test_bad_json_is_a_400(target, text):
    server, watch = target
    with watch.window() as w:
        r = _post_raw(server, text)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    _assert_unharmed(server, watch, w)


@pytest.mark.parametrize(
    "junk",
    [[[]] * 600_000, {f"k{i}": 1 for i in range(300_000)}, [1] * 600_000],
    ids=["600k-lists", "300k-keys", "600k-ints"],
)
def test_body_of_too_many_values_is_a_400(target, junk):
    """Parsing holds the GIL for as long as it builds objects: past the bound, none are built."""
    server, watch = target
    with watch.window() as w:
        r = _post_raw(server, json.dumps({**CHAT, "metadata": {"x": junk}}))
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "request_too_complex", err
    assert "500,000" in err["message"]
    _assert_unharmed(server, watch, w)


def test_commas_inside_strings_are_text_not_values(target):
    """A prompt with 600,000 commas holds only a few JSON values: it is served."""
    server, watch = target
    body = {**CHAT, "model": "gpt-4.1", "max_tokens": 1,
            "messages": [{"role": "user", "content": "a, [b], {c}, " * 100_000}]}  # fmt: skip
    with watch.window() as w:
        r = _post_raw(server, json.dumps(body))
    assert r.status_code == 200, r.text[:300]
    enc = get_encoding("o200k_base")
    want = len(enc.encode("a, [b], {c}, " * 100_000)) + 1 + 3 + 3
    assert r.json()["usage"]["prompt_tokens"] == want
    _assert_unharmed(server, watch, w)


def test_integer_beyond_64_bits_names_the_param(target):
    """orjson reads such a literal as a float; it is still refused as the integer it is."""
    server, _ = target
    text = json.dumps(CHAT)[:-1] + ', "n": 123456789012345678901234567890}'
    r = _post_raw(server, text)
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "integer_above_max_value" and err["param"] == "n", err


def test_schema_bigger_than_the_estimate_is_cut_with_length(target):
    """minLength 1000 needs >= 63 tokens by the bound; with max_tokens 70 the reply is cut."""
    server, watch = target
    body = {**CHAT, "max_tokens": 70, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "minLength": 1000}}}}  # fmt: skip
    with watch.window() as w, httpx.Client(timeout=60) as c:
        r = c.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 70
    _assert_unharmed(server, watch, w)


def test_big_inputs_do_not_stall_other_streams(target):
    """Tiny versions of the 8M-character prompt and the 2,048-input embeddings batch."""
    server, watch = target
    with watch.window() as w, httpx.Client(timeout=60) as c:
        r = c.post(
            server.url + "/v1/chat/completions",
            json={
                **CHAT,
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "a" * 200_000}],
            },
        )
        assert r.status_code == 200, r.text[:300]
        # Exact, as tiktoken counts it: content, role, 3 per message and 3 for the reply.
        enc = get_encoding("o200k_base")
        assert r.json()["usage"]["prompt_tokens"] == len(enc.encode("a" * 200_000)) + 1 + 3 + 3
        inputs = [f"text {i}" for i in range(128)]
        r = c.post(
            server.url + "/v1/embeddings",
            json={"model": "text-embedding-3-large", "input": inputs},
        )
        assert r.status_code == 200
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(128))
        assert all(abs(sum(x * x for x in d["embedding"]) - 1) < 1e-4 for d in data)
        enc = get_encoding("cl100k_base")
        assert r.json()["usage"]["prompt_tokens"] == sum(len(enc.encode(t)) for t in inputs)
    _assert_unharmed(server, watch, w)


def test_counting_a_huge_prompt_does_not_stall_other_streams(target):
    """/tokenize, Anthropic's count_tokens and Gemini's countTokens count on a worker thread: on
    the loop, a 7 MB prompt held every stream for about half a second (each time)."""
    server, watch = target
    rng = random.Random(5)
    words = " ".join(f"w{rng.randint(0, 99999)}" for _ in range(900_000))  # ~6 MB, ~1.8M tokens
    want = len(get_encoding("o200k_base").encode(words))
    bodies = [
        ("/tokenize", {"model": "gpt-4o", "prompt": words}, lambda j: j["count"]),
        (
            "/v1/messages/count_tokens",
            {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": words}]},
            lambda j: j["input_tokens"] - 4,  # 3 per message, 1 more
        ),
        (
            "/v1beta/models/gemini-2.5-flash:countTokens",
            {"contents": [{"parts": [{"text": words}]}]},
            lambda j: j["totalTokens"],
        ),
    ]
    encoded = [(path, json.dumps(body).encode(), read) for path, body, read in bodies]
    with watch.window() as w, httpx.Client(timeout=60) as c:
        for path, data, read in encoded:
            r = c.post(
                server.url + path, content=data, headers={"content-type": "application/json"}
            )
            assert r.status_code == 200, r.text[:300]
            assert read(r.json()) == want, path
    _assert_unharmed(server, watch, w)
    # The stream's 20 ms gaps plus the list building (~50 ms here), not the counts' ~450 ms
    # each on the loop; the margin is for a loaded machine.
    assert w.gap_max_s < 0.3, w


def test_non_latin1_model_name_is_echoed_safely(target):
    server, watch = target
    with watch.window() as w, httpx.Client(timeout=30) as c:
        before = c.get(server.url + "/llmsim/stats").json()
        r = c.post(
            server.url + "/v1/chat/completions",
            json={**CHAT, "model": "gpt-4o☃\r\nx: y", "max_tokens": 3},
        )
        after = c.get(server.url + "/llmsim/stats").json()
    assert r.status_code == 200
    assert r.headers["openai-model"] == "gpt-4o%E2%98%83%0D%0Ax: y"
    assert "x" not in r.headers  # no header injected
    assert r.json()["model"] == "gpt-4o☃\r\nx: y"
    # Counted as what it was, a success (the watcher's streams succeed alongside it).
    assert after["requests"]["failed"] == before["requests"]["failed"]
    assert after["requests"]["succeeded"] > before["requests"]["succeeded"]
    _assert_unharmed(server, watch, w)


HTTP_ROWS = [
    ("cl-and-te", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n{}", 400, b"Content-Length and Transfer-Encoding"),
    ("two-cl", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Content-Length: 3\r\n\r\n{}", 400, b"Several Content-Length"),
    ("cl-not-digits", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n"
     b"\r\n{}", 400, b"Content-Length must be"),
    ("te-gzip", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
     b"\r\n", 400, b"chunked"),
    ("header-40k", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 40_000 + b"\r\n\r\n",
     431, b"too large"),
    ("headers-150", b"GET /health HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431, b"Too many"),
    # gevent's own refusals of the request line: they had an empty body.
    ("request-line-10k", b"GET /" + b"a" * 10_240 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
     b"Request line too long"),
    ("http-9.9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, b"Malformed request line"),
    ("version-not-utf8", b"GET /health HTTP/1.\xff\r\nHost: x\r\n\r\n", 400,
     b"Malformed request line"),
    ("line-not-utf8", b"\xff\xfe\xfd\r\n\r\n", 400, b"Malformed request line"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("row", "data", "status", "text"), HTTP_ROWS, ids=[r[0] for r in HTTP_ROWS]
)
def test_http_framing_and_size(target, row, data, status, text):
    server, watch = target
    with watch.window() as w:
        out = raw_request(server.url, data)
    assert status_of(out) == status, out[:300]
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert text in body and json.loads(body)["error"]["type"] == "invalid_request_error"
    _assert_unharmed(server, watch, w)


SLASH_ROWS = [
    # An empty Azure deployment and a "//" inside a path were werkzeug's 308 HTML redirect to the
    # path without the empty segment; a leading "//" was served as if it had one "/".
    ("POST", "/openai/deployments//chat/completions?api-version=2024-10-21", '"code": "404"'),
    ("POST", "/v1//chat/completions", "Invalid URL (POST /v1//chat/completions)"),
    ("POST", "//v1/chat/completions", "Invalid URL (POST //v1/chat/completions)"),
    ("GET", "//v1/models", "Invalid URL (GET //v1/models)"),
    ("POST", "/v1beta/models//gemini-2.5-flash:generateContent", '"status": "NOT_FOUND"'),
]


@pytest.mark.parametrize(("method", "path", "text"), SLASH_ROWS, ids=[r[1] for r in SLASH_ROWS])
def test_empty_path_segments_are_the_apis_404_never_a_redirect(target, method, path, text):
    server, _ = target
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        r = c.request(method, server.url + path, json=CHAT)
    assert r.status_code == 404, r.text
    assert "location" not in r.headers
    assert r.headers["content-type"] == "application/json"
    assert text in r.text, r.text


BAD_CHUNKS = [
    ("not-hex", b"ZZ\r\n{}\r\n0\r\n\r\n"),
    ("no-crlf-after-data", b"2\r\n{}XX0\r\n\r\n"),
    ("size-too-large", b"f" * 24 + b"\r\n{}\r\n0\r\n\r\n"),
]
BAD_CHUNK_PATHS = [
    ("/v1/chat/completions", b'"type": "invalid_request_error"'),
    ("/v1/messages", b'{"type": "error", "error": {"type": "invalid_request_error"'),
    ("/v1/messages/count_tokens", b'{"type": "error", "error": {"type": "invalid_request_error"'),
    ("/v1beta/models/gemini-2.5-flash:generateContent", b'"status": "INVALID_ARGUMENT"'),
]


@pytest.mark.parametrize(("path", "shape"), BAD_CHUNK_PATHS, ids=[p for p, _ in BAD_CHUNK_PATHS])
@pytest.mark.parametrize(("name", "chunks"), BAD_CHUNKS, ids=[n for n, _ in BAD_CHUNKS])
def test_malformed_chunked_body_is_one_400_in_the_apis_shape(target, name, chunks, path, shape):
    """A chunked body gevent cannot parse was the server's 500 (generating routes) or
    werkzeug's generic 400, followed on the same connection by a second, bare 400 from gevent.
    Now: one 400 in the API's shape, and the connection closed (its framing is lost)."""
    server, watch = target
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path.encode()
    with watch.window() as w:
        out = raw_request(server.url, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert status_of(out) == 400, out[:300]
    assert out.count(b"HTTP/1.1 ") == 1, out
    head_part, _, body = out.partition(b"\r\n\r\n")
    assert b"connection: close" in head_part.lower()
    assert shape in body and b"could not read the body" in body, body
    _assert_unharmed(server, watch, w)


def test_chunked_body_over_the_limit_is_413(target):
    server, watch = target
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + b"a" * (9 << 20) + b'"}]}'
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536])
        for i in range(0, len(body), 65536)
    )
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with watch.window() as w:
        out = raw_request(server.url, head + chunks + b"0\r\n\r\n", wait=20)
    assert status_of(out) == 413, out[:300]
    _assert_unharmed(server, watch, w)


def test_slow_and_unfinished_heads_are_timed_out_and_released(target):
    """Tiny versions of 2,000 one-byte-a-second clients and 250 x 6.3 MB unfinished heads."""
    import socket
    import time
    from urllib.parse import urlsplit

    server, watch = target
    u = urlsplit(server.url)
    with watch.window() as w:
        socks = []
        for i in range(40):
            s = socket.create_connection((u.hostname, u.port))
            if i % 2:
                s.sendall(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 30_000)  # under the cap
            else:
                s.sendall(b"G")
            socks.append(s)
        start = time.monotonic()
        for _ in range(4):  # keep dribbling: the timeout counts from the first byte
            time.sleep(0.3)
            for s in socks[::2]:
                try:
                    s.send(b"E")
                except OSError:
                    pass
        answers = []
        for s in socks:
            s.settimeout(5)
            try:
                answers.append(s.recv(4096))
            except OSError:
                answers.append(b"")
            s.close()
        elapsed = time.monotonic() - start
    assert all(status_of(a) == 408 for a in answers), {a[:40] for a in answers}
    assert elapsed < 4  # header timeout 1 s
    _assert_unharmed(server, watch, w)


SLOW_BODY_PATHS = [
    ("/v1/chat/completions", b'"type": "invalid_request_error"'),
    ("/v1/messages", b'{"type": "error", "error": {"type": "invalid_request_error"'),
    ("/v1/messages/count_tokens", b'{"type": "error", "error": {"type": "invalid_request_error"'),
    ("/v1beta/models/gemini-2.5-flash:generateContent", b'"status": "'),
    ("/tokenize", b'"code": "timeout"'),
]


def test_slow_and_unfinished_bodies_are_timed_out_and_released(target):
    """A client that sends its head and then dribbles (or never finishes) its body held its
    connection and greenlet for ever: the head's deadline ends where the body starts. Now each
    gets the API's 408 once the body timeout (2 s here) has passed, and the connection closes."""
    import socket
    import time
    from urllib.parse import urlsplit

    server, watch = target
    u = urlsplit(server.url)
    with watch.window() as w:
        socks = []
        for i in range(20):
            path = SLOW_BODY_PATHS[i % len(SLOW_BODY_PATHS)][0]
            s = socket.create_connection((u.hostname, u.port))
            if i % 2:  # a length it never fills
                head = b"Content-Length: 1000\r\n\r\n"
            else:  # chunks that never end
                head = b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      % path.encode() + head + (b'{"model"' if i % 2 else b""))  # fmt: skip
            socks.append((path, s, b" " if i % 2 else b"1\r\n \r\n"))
        start = time.monotonic()
        for _ in range(5):  # keep dribbling: the body's time counts from its head
            time.sleep(0.3)
            for _, s, more in socks:
                try:
                    s.send(more)
                except OSError:
                    pass
        answers = []
        for path, s, _ in socks:
            s.settimeout(8)
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except OSError:
                pass
            s.close()
            answers.append((path, out))
        elapsed = time.monotonic() - start
    shapes = dict(SLOW_BODY_PATHS)
    for path, out in answers:
        assert status_of(out) == 408, (path, out[:200])
        assert out.count(b"HTTP/1.1 ") == 1, out  # one answer, then the connection closed
        assert shapes[path] in out and b"did not arrive within 2 s" in out, (path, out)
    assert elapsed < 8  # body timeout 2 s (each connection's own, all at once)
    _assert_unharmed(server, watch, w)


def test_idle_keepalive_connection_is_closed(target):
    server, _ = target
    u = httpx.URL(server.url)
    import socket
    import time

    with socket.create_connection((u.host, u.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        first = s.recv(4096)
        assert status_of(first) == 200
        start = time.monotonic()
        rest = s.recv(4096)  # nothing more until the server closes the idle connection
        assert rest == b"" and 0.5 < time.monotonic() - start < 4


def test_timers_restart_for_every_request_on_one_connection(target):
    """Each connection keeps one idle and one head timer and restarts them per request: pauses
    shorter than the idle timeout between requests never add up, and a slow head on a later
    request is still timed out."""
    import socket
    import time

    server, _ = target
    u = httpx.URL(server.url)
    with socket.create_connection((u.host, u.port)) as s:
        s.settimeout(5)
        for _ in range(4):  # 4 x 0.4 s idle: more than the 1 s idle timeout in all
            time.sleep(0.4)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(s.recv(4096)) == 200
        s.sendall(b"GET /health HTTP/1.1\r\n")  # a head that never ends
        start = time.monotonic()
        answer = s.recv(4096)
        assert status_of(answer) == 408, answer[:80]
        assert time.monotonic() - start < 4  # header timeout 1 s


def test_every_response_has_one_current_date_header(target):
    """The Date header is formatted once a second (fastio.http_date), never stale or doubled."""
    import email.utils
    import time

    server, _ = target
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "stream": True}  # fmt: skip
    with httpx.Client(timeout=30) as c:
        chat = server.url + "/v1/chat/completions"
        for _ in range(3):
            # a plain answer, a stream (the loop writes its head) and an error (Flask's path)
            for r in (c.get(server.url + "/health"), c.post(chat, json=body),
                      c.post(chat, json={"model": "gpt-4o"})):  # fmt: skip
                dates = r.headers.get_list("date")
                assert len(dates) == 1, r.headers
                when = email.utils.parsedate_to_datetime(dates[0]).timestamp()
                assert abs(when - time.time()) < 3, dates[0]
            time.sleep(0.6)  # cross at least one second boundary
