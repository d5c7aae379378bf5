"""Azure OpenAI and Google Gemini, driven by their official SDKs against one real server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "hello there"}]
VERSION = "2024-10-21"
EXACT = ("--ttft-ms", "60", "--ttft-stddev-ms", "0", "--tbt-ms", "5", "--tbt-stddev-ms", "0")


@pytest.fixture(scope="module")
def server():
    from conftest import start_server

    proc = start_server("--azure-deployment", "prod-chat=gpt-4o-mini", *EXACT)
    yield proc
    proc.stop()


def test_azure_sdk_chat_stream_completions_embeddings(server):
    client = openai.AzureOpenAI(
        azure_endpoint=server.url, api_version=VERSION, api_key="az-key", max_retries=0
    )
    reply = client.chat.completions.create(model="prod-chat", messages=MSG, max_tokens=6)
    assert reply.model == "gpt-4o-mini"  # the deployment's model
    assert reply.usage.completion_tokens == 6 and reply.choices[0].message.content
    raw = reply.model_extra
    assert raw["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert reply.choices[0].model_extra["content_filter_results"]["violence"]["severity"] == "safe"

    chunks = list(
        client.chat.completions.create(model="prod-chat", messages=MSG, max_tokens=5, stream=True)
    )
    assert chunks[0].choices == [] and chunks[0].model_extra["prompt_filter_results"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason == "length"
    with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(c.choices[0].model_extra["content_filter_results"] for c in with_text)

    legacy = client.completions.create(model="any-name", prompt="Once", max_tokens=3)
    assert legacy.model == "any-name" and legacy.choices[0].model_extra["content_filter_results"]
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 100
    # The window is per input, as on OpenAI's own path: five inputs of ~4,800 tokens pass.
    long = ["hello world " * 2400] * 5
    emb = client.embeddings.create(model="text-embedding-3-small", input=long)
    assert len(emb.data) == 5 and emb.usage.prompt_tokens > 8192


def test_azure_v1_paths_and_bearer(server):
    client = openai.OpenAI(base_url=server.url + "/openai/v1", api_key="az-key")
    reply = client.chat.completions.create(model="prod-chat", messages=MSG, max_tokens=2)
    assert reply.model == "gpt-4o-mini" and reply.model_extra["prompt_filter_results"]
    assert any(m.id == "gpt-4o" for m in client.models.list())


def test_azure_errors(server):
    url = server.url + "/openai/deployments/prod-chat/chat/completions"
    body = {"messages": MSG, "max_tokens": 2}
    r = httpx.post(url, json=body, headers={"api-key": "k"})  # no api-version: Azure's 404
    assert r.status_code == 404 and r.json() == {
        "error": {"code": "404", "message": "Resource not found"}
    }
    r = httpx.post(url, params={"api-version": "v7"}, json=body)
    assert r.status_code == 400 and r.json()["error"]["message"] == "API version not supported"
    bad = httpx.post(url, params={"api-version": VERSION}, json={"messages": "hi"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    # A 429 in Azure's words, with Azure's retry headers.
    r = httpx.post(
        url, params={"api-version": VERSION}, json=body, headers={"x-llmsim-fault": "429"}
    )
    assert r.status_code == 429 and r.headers["retry-after-ms"]
    err = r.json()["error"]
    assert err["code"] == "429" and "ChatCompletions_Create" in err["message"]
    assert f"API version {VERSION}" in err["message"]
    missing = httpx.post(server.url + "/openai/deployments/x/nothing?api-version=1", json=body)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "404"


def test_azure_empty_deployment_is_azures_404(server):
    """The SDK asked for deployment "" posts to /openai/deployments//chat/completions: that was
    werkzeug's 308 HTML redirect to /openai/deployments/chat/completions."""
    client = openai.AzureOpenAI(
        azure_endpoint=server.url, api_version=VERSION, api_key="az-key", max_retries=0
    )
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="", messages=MSG, max_tokens=2)
    assert exc.value.response.request.url.path == "/openai/deployments//chat/completions"
    assert exc.value.body == {"code": "404", "message": "Resource not found"}


# --- Gemini ----------------------------------------------------------------------------------


def _genai(server):
    from google import genai
    from google.genai import types

    return genai.Client(api_key="g-key", http_options=types.HttpOptions(base_url=server.url))


def test_gemini_sdk_generate_stream_count_list(server):
    from google.genai import types

    client = _genai(server)
    config = types.GenerateContentConfig(max_output_tokens=12, system_instruction="Be brief")
    reply = client.models.generate_content(
        model="gemini-2.5-flash", contents="Tell me a story", config=config
    )
    assert reply.text
    usage = reply.usage_metadata
    assert usage.candidates_token_count == 12 and usage.prompt_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + 12
    cand = reply.candidates[0]
    assert cand.finish_reason == types.FinishReason.MAX_TOKENS
    assert {r.category for r in cand.safety_ratings} >= {
        types.HarmCategory.HARM_CATEGORY_HATE_SPEECH
    }

    chunks = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Tell me a story", config=config
        )
    )
    assert len(chunks) >= 2  # several tokens per event, as Gemini sends them
    assert "".join(c.text or "" for c in chunks)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert chunks[-1].usage_metadata.candidates_token_count == 12

    count = client.models.count_tokens(model="gemini-2.5-flash", contents="Tell me a story")
    plain = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Tell me a story",
        config=types.GenerateContentConfig(max_output_tokens=1),
    )
    assert count.total_tokens == plain.usage_metadata.prompt_token_count < usage.prompt_token_count
    names = [m.name for m in client.models.list()]
    assert "models/gemini-2.5-flash" in names


def test_gemini_stream_json_array_form_and_errors(server):
    url = server.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 9}}
    r = httpx.post(url, json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    items = json.loads(r.text)
    assert isinstance(items, list) and len(items) >= 2
    assert items[-1]["usageMetadata"]["candidatesTokenCount"] == 9
    # A fault mid-stream ends the array with the error as its last element: still valid JSON.
    # It strikes at a uniform step (the first one too, about one time in ten): some of a few
    # tries must have candidates before it.
    lengths = []
    for _ in range(8):
        r = httpx.post(url, json=body, headers={"x-llmsim-fault": "stream-error"})
        items = json.loads(r.text)
        assert all("candidates" in i for i in items[:-1]), items
        assert items[-1]["error"]["status"] == "INTERNAL", items[-1]
        lengths.append(len(items))
    assert max(lengths) >= 2, lengths

    gen = server.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    r = httpx.post(gen, json=body, headers={"x-llmsim-fault": "429"})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["status"] == "RESOURCE_EXHAUSTED" and err["code"] == 429
    retry = [d for d in err["details"] if d["@type"].endswith("RetryInfo")]
    assert retry and retry[0]["retryDelay"].endswith("s")
    bad = httpx.post(gen, json={"contents": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    unknown = httpx.post(server.url + "/v1beta/models/gemini-2.5-flash:explode", json=body)
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"


def test_gemini_get_on_a_method_is_its_404(server):
    """A GET on models/{model}:generateContent was a model named "x:generateContent"."""
    from google.genai import errors

    client = _genai(server)
    with pytest.raises(errors.ClientError) as exc:
        client.models.get(model="gemini-2.5-flash:generateContent")
    assert exc.value.code == 404 and exc.value.status == "NOT_FOUND"
    assert "Method not found" in exc.value.message
    for prefix in ("/v1beta", "/v1"):
        r = httpx.get(f"{server.url}{prefix}/models/x:generateContent", params={"key": "k"})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["status"] == "NOT_FOUND" and r.json()["error"]["code"] == 404
    # The model itself is still there.
    assert client.models.get(model="gemini-2.5-flash").name == "models/gemini-2.5-flash"
    # A colon alone is not Gemini: OpenAI's fine-tuned ids and local names like llama3:8b get
    # the OpenAI model object (they got a Gemini one, then its 404).
    import openai

    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
    for name in ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "llama3:8b"):
        got = oai.models.retrieve(name)
        assert got.id == name and got.object == "model", got


def test_gemini_takes_one_content_and_one_part_for_the_lists(server):
    """Google's JSON parser takes one value for a repeated field, and Gemini's REST examples
    send `"contents": {"role": "user", "parts": {"text": ...}}`: a single part was refused as
    "contents.parts must not be empty"."""
    gen = server.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    config = {"maxOutputTokens": 3}
    for contents in (
        {"role": "user", "parts": {"text": "Turn on the lights."}},
        {"role": "user", "parts": [{"text": "Turn on the lights."}]},
        [{"role": "user", "parts": {"text": "Turn on the lights."}}],
    ):
        r = httpx.post(gen, json={"contents": contents, "generationConfig": config})
        assert r.status_code == 200, (contents, r.text)
        assert r.json()["usageMetadata"]["candidatesTokenCount"] == 3
    empty = httpx.post(gen, json={"contents": {"role": "user", "parts": []}})
    assert empty.status_code == 400 and empty.json()["error"]["status"] == "INVALID_ARGUMENT"


# --- the Locust users ------------------------------------------------------------------------


def test_azure_locust_user_measures_the_planned_timing(server, tmp_path):
    from test_load_apis import WORKLOAD, run_locust

    s, rows, output = run_locust("AzureUser", server.url, tmp_path, *WORKLOAD)
    assert s["requests"] == {"total": 16, "ok": 16, "failed": 0}, output[-2000:]
    assert s["tokens"]["source"] == "usage" and {r["output_tokens"] for r in rows} == {"16"}
    m = s["metrics"]
    # One-sided and generous: a loaded machine can only make us late.
    assert 60 <= m["ttft_ms"]["p50"] <= 110, m["ttft_ms"]
    assert 4 <= m["itl_ms"]["p50"] <= 10 and 4.5 <= m["tpot_ms"]["p50"] <= 9, m


def test_gemini_locust_user_measures_the_planned_timing(llmsim_server, tmp_path):
    # `llmsim bench --api gemini` runs this class (test_load_apis checks the mapping). Exact
    # timing streams one token per event unless --chunk-tokens says otherwise: 8 here.
    from test_load_apis import WORKLOAD, run_locust

    server = llmsim_server(*EXACT, "--chunk-tokens", "8")
    s, rows, output = run_locust("GeminiApiUser", server.base_url, tmp_path, *WORKLOAD)
    assert s["requests"] == {"total": 16, "ok": 16, "failed": 0}, output[-2000:]
    assert s["tokens"]["source"] == "usage" and {r["output_tokens"] for r in rows} == {"16"}
    m = s["metrics"]
    # 16 tokens in two events of 8: the first when its 8th token is due (60 + 7 x 5 ms), one
    # gap of 8 token times; output tokens come from usageMetadata, not from the event count.
    assert 95 <= m["ttft_ms"]["p50"] <= 150, m["ttft_ms"]
    assert m["itl_ms"]["count"] == 16 and 30 <= m["itl_ms"]["p50"] <= 60, m["itl_ms"]


def test_gemini_limits_answer_its_400_in_its_words(llmsim_server, tmp_path):
    cfg = tmp_path / "llmsim.yaml"
    cfg.write_text(
        "per_model:\n"
        "  tiny-gemini: {context_window: 50, max_output_tokens: 40}\n"
        "  wide-gemini: {context_window: 4000000, max_output_tokens: 600000}\n"
    )
    server = llmsim_server("--config", str(cfg), "--profile", "fast")

    def post(model: str, text: str, **gen: int) -> httpx.Response:
        url = f"{server.url}/v1beta/models/{model}:generateContent"
        body = {"contents": [{"parts": [{"text": text}]}], "generationConfig": gen}
        return httpx.post(url, json=body, timeout=30)

    def error(r: httpx.Response) -> str:
        assert r.status_code == 400, r.text[:300]
        err = r.json()["error"]
        assert err["status"] == "INVALID_ARGUMENT" and err["code"] == 400
        return err["message"]

    msg = error(post("tiny-gemini", "hi", maxOutputTokens=41))
    assert "maxOutputTokens value of 41" in msg and "to 41 (exclusive)" in msg
    msg = error(post("tiny-gemini", "hello " * 60, maxOutputTokens=5))
    assert msg.startswith("The input token count (") and "allowed (50)" in msg
    # The window bounds the prompt alone: ~20 prompt tokens plus 40 output pass a 50-token
    # window (OpenAI and Anthropic would count the two together and refuse it).
    ok = post("tiny-gemini", "hello " * 20, maxOutputTokens=40)
    assert ok.status_code == 200, ok.text[:300]
    msg = error(post("wide-gemini", "hi", maxOutputTokens=500_000, candidateCount=8))
    assert "candidateCount x maxOutputTokens is 4000000 output tokens" in msg
    assert post("wide-gemini", "hi", maxOutputTokens=5).status_code == 200
