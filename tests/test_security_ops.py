"""API keys, HTTPS, live configuration (/llmsim/config) and the shipped Grafana dashboard."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from importlib import resources

import anthropic
import httpx
import openai
import pytest

from llmsim.api.errors import ApiError
from llmsim.server import live_config
from llmsim.settings import SERVE_OPTIONS, load_settings

from conftest import REPO, self_signed_cert, start_server

MSG = [{"role": "user", "content": "hello"}]
FAST = ("--ttft-ms", "5", "--tbt-ms", "1")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """One server with API keys and an admin key, shared by the tests that need both."""
    keyfile = tmp_path_factory.mktemp("keys") / "keys.txt"
    keyfile.write_text("# team keys\nsk-from-file\n\n")
    proc = start_server(
        "--api-keys", "sk-one,sk-two", "--api-key-file", str(keyfile), "--admin-key", "s3cret",
        *FAST,
    )  # fmt: skip
    yield proc
    proc.stop()


def test_api_keys_answered_as_each_provider_does(keyed):
    server = keyed

    # Accepted: a flag key and a file key, each as the SDKs send them.
    for key in ("sk-two", "sk-from-file"):
        client = openai.OpenAI(base_url=server.base_url, api_key=key)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=3)
        assert reply.usage.completion_tokens == 3
    claude = anthropic.Anthropic(base_url=server.url, api_key="sk-one")
    assert claude.messages.create(model="claude-haiku-4", max_tokens=2, messages=MSG).content

    # OpenAI: 401 invalid_api_key, the key masked in the message.
    bad = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    err = exc.value.body
    assert err["code"] == "invalid_api_key"
    assert err["message"].startswith("Incorrect API key provided: sk-")
    assert "sk-wrong-key-123456" not in err["message"]
    missing = httpx.post(server.base_url + "/chat/completions", json={"model": "x"})
    assert missing.status_code == 401
    assert "didn't provide an API key" in missing.json()["error"]["message"]

    # Anthropic: 401 authentication_error.
    wrong = anthropic.Anthropic(base_url=server.url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as aexc:
        wrong.messages.create(model="claude-haiku-4", max_tokens=2, messages=MSG)
    assert aexc.value.body["error"]["type"] == "authentication_error"

    # Gemini: 400 API_KEY_INVALID for a wrong key, 403 without one.
    url = server.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    r = httpx.post(url, params={"key": "nope"}, json=body)
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert httpx.post(url, json=body).json()["error"]["status"] == "PERMISSION_DENIED"
    assert httpx.post(url, headers={"x-goog-api-key": "sk-one"}, json=body).status_code == 200
    v1 = server.url + "/v1/models/gemini-2.5-flash:generateContent"  # the SDK's other path
    assert httpx.post(v1, json=body).json()["error"]["status"] == "PERMISSION_DENIED"

    # Probes and scrapers need no key.
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_https_with_the_sdk_trusting_the_certificate(llmsim_server, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    server = llmsim_server("--ssl-certfile", str(cert), "--ssl-keyfile", str(key), *FAST)
    trusted = ssl.create_default_context(cafile=str(cert))
    assert server.url.startswith("https://127.0.0.1:")
    client = openai.OpenAI(
        base_url=server.base_url, api_key="x", http_client=httpx.Client(verify=trusted)
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, max_tokens=5, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    # Not trusted: the handshake fails, the server lives on.
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", verify=True)
    assert httpx.get(server.url + "/health", verify=trusted).status_code == 200


def test_bad_tls_and_key_options_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    cases = [
        (["--ssl-certfile", str(junk)], "go together"),
        (["--ssl-certfile", str(junk), "--ssl-keyfile", str(junk)], "cannot use --ssl-certfile"),
        (["--api-key-file", str(tmp_path / "none.txt")], "no readable file"),
    ]
    for args, words in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "llmsim", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], proc.stderr


def test_live_config_reaches_every_worker(llmsim_server):
    server = llmsim_server(
        "--workers", "2", "--ttft-ms", "40", "--ttft-stddev-ms", "0", "--tbt-ms", "1"
    )
    cfg = server.url + "/llmsim/config"
    before = httpx.get(cfg).json()
    assert before["config"]["ttft_ms"] == 40 and before["changed"] == {}

    r = httpx.patch(cfg, json={"ttft-ms": 7, "tbt_ms": 1, "tbt_stddev_ms": 0})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["ttft_ms"] == 7

    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 2}
    seen = set()
    for _ in range(12):  # a new connection each time: both workers answer some of them
        with httpx.Client() as c:
            resp = c.post(server.base_url + "/chat/completions", json=body)
            seen.add(resp.headers["x-llmsim-ttft-ms"])
    assert seen == {"7.000"}

    # Faults and rate limits, changed and reset, without a restart.
    httpx.patch(cfg, json={"fault": ["503=100%"]})
    assert httpx.post(server.base_url + "/chat/completions", json=body).status_code == 503
    httpx.patch(cfg, json={"fault": None, "rpm": 1})
    codes = [httpx.post(server.base_url + "/chat/completions", json=body).status_code
             for _ in range(3)]  # fmt: skip
    assert 429 in codes
    back = httpx.patch(cfg, json={"rpm": None, "ttft_ms": None}).json()
    assert back["config"]["rpm"] is None and back["config"]["ttft_ms"] == 40

    # Validated like the flags: a 400 naming the bad value, nothing applied.
    for bad, name in (({"rpm": 0}, "rpm"), ({"port": 1}, "port"), ({"ttft": 1}, "ttft")):
        r = httpx.patch(cfg, json=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == name, r.text
    # Values no sampler survives (every later request was a 500) are refused the same way.
    r = httpx.patch(cfg, json={"output_tokens_stddev": 1e308})
    assert r.status_code == 400 and "at most" in r.json()["error"]["message"], r.text
    assert httpx.post(server.base_url + "/chat/completions", json=body).status_code == 200
    assert httpx.patch(cfg, content=b"[1").status_code == 400
    assert httpx.get(cfg).json()["changed"] == {"tbt_ms": 1.0, "tbt_stddev_ms": 0.0}


def test_admin_key_guards_the_config(keyed):
    server = keyed
    cfg = server.url + "/llmsim/config"
    assert httpx.get(cfg).status_code == 401
    assert httpx.patch(cfg, json={"rpm": 5}, headers={"authorization": "Bearer no"}).status_code
    ok = httpx.patch(cfg, json={"rpm": 5}, headers={"x-llmsim-admin-key": "s3cret"})
    assert ok.status_code == 200 and ok.json()["config"]["rpm"] == 5
    assert "s3cret" not in ok.text


def test_config_refused_beyond_loopback_without_an_admin_key():
    settings = load_settings(env={}, overrides={"host": "0.0.0.0"})
    with pytest.raises(ApiError) as exc:
        live_config.check_admin(settings, {})
    assert exc.value.status == 403 and "--admin-key" in exc.value.message
    live_config.check_admin(load_settings(env={}), {})  # loopback: allowed
    for name in live_config.MUTABLE:  # every changeable key is a real option
        assert name in {o.name for o in SERVE_OPTIONS}


def test_secrets_are_masked_in_reports():
    s = load_settings(env={}, overrides={"api_keys": "a,b", "admin_key": "k"})
    assert s.to_dict()["api_keys"] == ["***", "***"] and s.to_dict()["admin_key"] == "***"


# --- the Grafana dashboard -------------------------------------------------------------------

_PROMQL_WORDS = {
    "sum", "by", "rate", "max", "min", "avg", "histogram_quantile", "le", "without", "on",
    "irate", "increase", "count", "ignoring", "group_left", "group_right", "bool",
}  # fmt: skip
ENGINE_ROW = "Engine"


def _dashboard_metrics() -> dict[str, set[str]]:
    """Metric names per row title of the shipped dashboard."""
    text = resources.files("llmsim.data").joinpath("grafana-dashboard.json").read_text("utf-8")
    rows: dict[str, set[str]] = {}
    row = ""
    for panel in json.loads(text)["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            # Drop label matchers, ranges, strings and `by (labels)`: what is left are names.
            expr = re.sub(
                r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"|\b(by|without) \([^)]*\)', "", target["expr"]
            )
            names = set(re.findall(r"[a-zA-Z_:][\w:]*", expr)) - _PROMQL_WORDS
            rows.setdefault(row, set()).update(names)
    return rows


def _exposed(metrics_text: str) -> set[str]:
    names = set(re.findall(r"^([a-zA-Z_:][\w:]*)", metrics_text, re.M))
    for family, kind in re.findall(r"^# TYPE (\S+) (\w+)", metrics_text, re.M):
        names.add(family)
        if kind == "counter":
            names.add(family + "_total")
        if kind == "histogram":
            names.update(family + s for s in ("_bucket", "_sum", "_count"))
    return names


def _scrape(server, key: str = "") -> set[str]:
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 2}
    auth = {"authorization": f"Bearer {key}"} if key else {}
    assert httpx.post(server.base_url + "/chat/completions", json=body, headers=auth).is_success
    return _exposed(httpx.get(server.url + "/metrics").text)


def test_dashboard_queries_name_metrics_that_exist(keyed):
    rows = _dashboard_metrics()
    assert any(ENGINE_ROW in r for r in rows) and len(rows) >= 4
    exposed = _scrape(keyed, "sk-one")
    for row, names in rows.items():
        if not row.startswith(ENGINE_ROW):
            assert names <= exposed, f"{row}: {sorted(names - exposed)} not in /metrics"


def test_dashboard_engine_queries_exist_with_the_vllm_engine(llmsim_server):
    # The engine row's series come with `--engine vllm`; checked as soon as that option exists.
    if "engine" not in {o.name for o in SERVE_OPTIONS}:
        pytest.skip("no --engine option yet: the engine row is checked once it exists")
    names = set().union(*(n for r, n in _dashboard_metrics().items() if r.startswith(ENGINE_ROW)))
    exposed = _scrape(llmsim_server("--engine", "vllm", *FAST))
    assert names <= exposed, f"not in /metrics: {sorted(names - exposed)}"


def test_sigterm_lets_a_long_stream_finish():
    # gevent's own stop() used to kill requests one second into the drain: a stream needing two
    # more seconds was cut. This is what `docker stop` does to the container.
    server = start_server("--ttft-ms", "20", "--tbt-ms", "25", "--ttft-stddev-ms", "0",
                          "--tbt-stddev-ms", "0")  # fmt: skip
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2)
        stream = client.chat.completions.create(  # on the same kept-alive connection
            model="gpt-4o-mini", messages=MSG, max_tokens=80, stream=True
        )
        chunks = iter(stream)
        next(chunks)
        server.proc.terminate()
        rest = [c for c in chunks if c.choices]
        assert rest[-1].choices[0].finish_reason == "length" and len(rest) >= 80
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
