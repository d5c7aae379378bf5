"""Locust users that stream OpenAI-compatible chat completions and record LLM metrics.

Each request is one Locust row whose response time is E2E (start to the last byte). TTFT and TPOT
go into rows of their own (request types "TTFT" and "TPOT") written straight into the stats
entries, so they do not count as requests in the Aggregated row or the RPS/response-time charts.
ITL and the rest live in `LLMMetrics` histograms (see metrics.py).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from geventhttpclient.client import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed
from locust import task
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopTest, StopUser

from llmsim.engine.tokens import count_tokens
from llmsim.load import errors as E
from llmsim.load.metrics import LLMMetrics, RequestRecord
from llmsim.load.options import LLMConfig, resolve_config
from llmsim.load.runtime import get_metrics
from llmsim.load.sse import SSEParser, iter_body_chunks
from llmsim.load.workload import PlannedRequest, Workload, load_dataset, prompt_tokens_of

logger = logging.getLogger(__name__)

PLANNED_TTFT_HEADER = "x-llmsim-ttft-ms"

try:  # optional: about 3x faster per SSE event than the standard library (2.2 us saved)
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _decode = json.JSONDecoder().decode

    def _loads(data: bytes) -> Any:
        # from str: json.loads(bytes) sniffs the encoding of every event first
        return _decode(data.decode())


_client_errors_logged: set[str] = set()


@dataclass
class ChatResult:
    """What one chat request returned and measured (times in ms)."""

    ok: bool
    text: str
    error: E.LLMError | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float
    itl_ms: list[float]
    input_tokens: int | None
    output_tokens: int | None
    token_source: str | None
    finish_reason: str | None


def split_host(host: str) -> tuple[str, str]:
    """(origin, API base path): a bare host gets /v1, a host with a path keeps it."""
    u = urlsplit(host)
    if not u.scheme or not u.netloc:
        raise ValueError(f"host must be a URL like http://127.0.0.1:8000/v1, got {host!r}")
    path = u.path.rstrip("/") or "/v1"
    return f"{u.scheme}://{u.netloc}", path


class OpenAIChatUser(FastHttpUser):
    """Streams chat completions from `host` and records TTFT, ITL, TPOT, E2E and tokens.

    Subclass it in a locustfile; every attribute below can also be set with the matching
    `--llm-...` option or LOCUST_LLM_... environment variable (see llmsim/load/options.py).
    """

    abstract = True

    model: str = "gpt-4o-mini"
    system_prompt: str | None = None
    prompt_tokens: Any = 128  # int, spec string ("normal:mean=512,stddev=64") or Distribution
    max_tokens: Any = 128
    ignore_eos: bool = False
    stream: bool = True
    include_usage: bool = True
    temperature: float | None = None
    extra_headers: ClassVar[dict[str, Any]] = {}
    extra_body: ClassVar[dict[str, Any]] = {}
    dataset: str | None = None
    turns: int = 1
    requests_per_user: int = 0
    seed: int | None = None
    timeout: float = 60.0
    api_key: str | None = None

    request_name: str | None = None  # Locust row name; default: the request path
    max_tokens_param: str = "max_tokens"  # "max_completion_tokens" for OpenAI reasoning models
    chat_path: str = "/chat/completions"

    _user_seq: ClassVar[int] = 0

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.llm: LLMConfig = resolve_config(type(self), environment.parsed_options)
        self.metrics: LLMMetrics = get_metrics(environment)
        origin, base = split_host(self.host)
        self._path = base + self.chat_path
        self._url = origin + self._path
        self._name = self.request_name or self._path
        self._http = HTTPClient.from_url(
            origin,
            concurrency=1,
            connection_timeout=self.llm.timeout,
            network_timeout=self.llm.timeout,
            insecure=self.insecure,
        )
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if self.llm.stream else "application/json",
            "Accept-Encoding": "identity",  # compressed SSE would arrive in delayed blocks
        }
        if self.llm.api_key:
            headers["Authorization"] = f"Bearer {self.llm.api_key}"
        headers.update({k: str(v) for k, v in self.llm.extra_headers.items()})
        self._headers = headers
        OpenAIChatUser._user_seq += 1
        seed = None
        if self.llm.seed is not None:
            # distinct per user and per worker process, reproducible run to run
            worker = getattr(environment.runner, "worker_index", 0) or 0
            seed = (self.llm.seed * 1_000_003 + worker) * 1_000_003 + self._user_seq
        self.workload = Workload(
            model=self.llm.model,
            prompt_tokens=self.llm.prompt_tokens,
            max_tokens=self.llm.max_tokens,
            system_prompt=self.llm.system_prompt,
            dataset=load_dataset(self.llm.dataset) if self.llm.dataset else None,
            turns=self.llm.turns,
            rng=random.Random(seed),
        )
        self._sent = 0

    def on_stop(self) -> None:
        self._http.close()

    @task
    def chat_task(self) -> None:
        """One request of the configured workload (one turn of a conversation)."""
        planned = self.workload.next_request()
        result = self.chat(planned.messages, max_tokens=planned.max_tokens, planned=planned)
        if result.ok:
            self.workload.on_reply(result.text, result.output_tokens)
        else:
            self.workload.on_failure()
        self._sent += 1
        if self.llm.requests_per_user and self._sent >= self.llm.requests_per_user:
            raise StopUser()

    # ------------------------------------------------------------------ the request

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        cfg = self.llm
        body: dict[str, Any] = {"model": cfg.model, "messages": messages}
        if max_tokens is not None:
            body[self.max_tokens_param] = max_tokens
        return self.common_fields(body, stream_options=True)

    def common_fields(self, body: dict[str, Any], stream_options: bool) -> dict[str, Any]:
        """Add what every API's body shares: streaming, ignore_eos, temperature, extra fields.

        `stream_options`: whether the API takes OpenAI's stream_options.include_usage.
        """
        cfg = self.llm
        if cfg.stream:
            body["stream"] = True
            if stream_options and cfg.include_usage:
                body["stream_options"] = {"include_usage": True}
        if cfg.ignore_eos:
            body["ignore_eos"] = True  # only when asked: OpenAI rejects unknown fields
        if cfg.temperature is not None:
            body["temperature"] = cfg.temperature
        body.update(cfg.extra_body)
        return body

    def chat(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        name: str | None = None,
        planned: PlannedRequest | None = None,
        **body_fields: Any,
    ) -> ChatResult:
        """Send one chat completion, record every metric, and return what happened.

        Never raises for a failed request (the failure is recorded and returned); only
        Locust's own control exceptions (stopping the user or the test) pass through.
        """
        body = self.build_body(messages, max_tokens)
        body.update(body_fields)
        stream = bool(body.get("stream"))
        payload = json.dumps(body).encode()
        name = name or self._name
        metrics = self.metrics
        metrics.in_flight += 1
        start_wall = time.time()
        t0 = time.perf_counter()
        end = t0
        resp = None
        st = _StreamState()
        error: E.LLMError | None = None
        try:
            resp = self._post(payload)
            st.planned_ttft = _header_float(resp, PLANNED_TTFT_HEADER)
            status = resp.status_code
            if not 200 <= status < 300:
                raise E.http_error(status, _read_body(resp))
            if stream:
                ctype = str(resp.get("content-type") or "")
                if "text/event-stream" not in ctype.lower():
                    raw = _read_body(resp)
                    raise E.LLMError(E.NOT_SSE, f"{ctype or 'no content-type'}: {raw[:60]!r}")
                end = self.read_stream(resp, st)
            else:
                end = self.read_whole(resp, st)
        except E.LLMError as e:
            error, end = e, time.perf_counter()
        except (StopUser, StopTest):
            raise
        except Exception as e:  # transport errors; a bug of ours is reported, not fatal
            error, end = E.classify_exception(e), time.perf_counter()
            if error.kind == E.CLIENT_ERROR and error.detail not in _client_errors_logged:
                _client_errors_logged.add(error.detail)
                logger.exception("llmsim: unexpected error in a chat request")
        finally:
            metrics.in_flight -= 1
            if resp is not None and not resp.message_complete:
                resp.release()  # closes the socket: the rest of the body is unread
        return self._record(name, messages, planned, start_wall, t0, end, st, error)

    def read_stream(self, resp: Any, st: _StreamState) -> float:
        """Consume a streamed reply into `st`; the perf_counter of its last byte. Users of other
        APIs (llmsim/load/apis.py) read their own event shapes here."""
        return _read_stream(resp, st)

    def read_whole(self, resp: Any, st: _StreamState) -> float:
        """Read a non-streamed reply into `st`; the perf_counter of its end."""
        return _read_whole(resp, st)

    def _post(self, payload: bytes) -> Any:
        try:
            return self._http.request("POST", self._path, body=payload, headers=self._headers)
        except HTTPConnectionClosed:
            # A kept-alive connection the server had closed while idle: the request never got
            # a byte back, so sending it once more is safe and is what browsers do.
            return self._http.request("POST", self._path, body=payload, headers=self._headers)

    def _record(
        self,
        name: str,
        messages: list[dict[str, Any]],
        planned: PlannedRequest | None,
        start_wall: float,
        t0: float,
        end: float,
        st: _StreamState,
        error: E.LLMError | None,
    ) -> ChatResult:
        e2e = (end - t0) * 1000.0
        ttft = tpot = None
        out_tokens = in_tokens = source = tps = None
        if error is None:
            if st.first is not None:
                ttft = (st.first - t0) * 1000.0
            usage = st.usage if isinstance(st.usage, dict) else None
            if usage and isinstance(usage.get("completion_tokens"), int):
                out_tokens, source = usage["completion_tokens"], "usage"
                in_tokens = usage.get("prompt_tokens")
            else:
                out_tokens, source = st.counted_tokens(self.llm.model), "counted"
            if not isinstance(in_tokens, int):
                if planned is not None and planned.prompt_tokens is not None:
                    in_tokens = planned.prompt_tokens
                else:
                    in_tokens = prompt_tokens_of(messages, self.llm.model)
            if ttft is not None and out_tokens > 1:
                tpot = (e2e - ttft) / (out_tokens - 1)
            if e2e > 0:
                tps = out_tokens / (e2e / 1000.0)
        rec = RequestRecord(
            start_time=start_wall,
            end_time=start_wall + e2e / 1000.0,
            status="ok" if error is None else "error",
            error_kind=None if error is None else error.kind,
            ttft_ms=ttft,
            tpot_ms=tpot,
            e2e_ms=e2e,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            token_source=source,
            output_tokens_per_s=tps,
            planned_ttft_ms=st.planned_ttft,
            name=name,
        )
        self.metrics.record(rec, st.itl if error is None else None)
        env = self.environment
        env.events.request.fire(
            request_type="POST",
            name=name,
            response_time=e2e,
            response_length=st.nbytes,
            response=None,
            context={},
            # A string, not an exception object: Locust's failures table and CSV show it as is.
            exception=None if error is None else str(error),
            start_time=start_wall,
            url=self._url,
        )
        if error is None:
            # Straight into the entries: logging through events.request would also count
            # these as requests in the Aggregated row and the charts.
            if ttft is not None:
                env.stats.get(name, "TTFT").log(ttft, 0)
            if tpot is not None:
                env.stats.get(name, "TPOT").log(tpot, 0)
        return ChatResult(
            ok=error is None,
            text="".join(st.text),
            error=error,
            ttft_ms=ttft,
            tpot_ms=tpot,
            e2e_ms=e2e,
            itl_ms=st.itl,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            token_source=source,
            finish_reason=st.finish_reason,
        )


class _StreamState:
    __slots__ = (
        "chunks",
        "finish_reason",
        "first",
        "itl",
        "nbytes",
        "planned_ttft",
        "streamed",
        "text",
        "usage",
    )

    def __init__(self) -> None:
        self.first: float | None = None
        self.itl: list[float] = []
        self.chunks = 0  # chunks that carried output (content, reasoning, tool calls)
        self.text: list[str] = []
        self.usage: Any = None
        self.nbytes = 0
        self.planned_ttft: float | None = None
        self.finish_reason: str | None = None
        self.streamed = True

    def counted_tokens(self, model: str) -> int:
        # Streaming servers send one token per chunk (OpenAI, vLLM, llmsim); a whole reply has
        # no chunks, so its text is tokenized instead.
        if self.streamed:
            return self.chunks
        return count_tokens("".join(self.text), model) if self.text else 0


def _read_stream(resp: Any, st: _StreamState) -> float:
    """Consume an SSE body; returns the perf_counter of its last byte."""
    feed = SSEParser().feed
    loads = _loads
    itl = st.itl
    text = st.text
    last = None
    end = time.perf_counter()
    done = False
    for now, chunk in iter_body_chunks(resp):
        end = now
        st.nbytes += len(chunk)
        if done:
            continue  # anything after [DONE] (usually nothing) is drained, not parsed
        for event, data in feed(chunk):
            if data == b"[DONE]":
                done = True
                break
            if event == b"error":
                raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(data))
            try:
                obj = loads(data)
            except ValueError:  # JSON and Unicode errors alike
                raise E.LLMError(E.MALFORMED_CHUNK, f"invalid JSON: {data[:60]!r}") from None
            try:
                choices = obj.get("choices")
                if choices is None:
                    if "error" in obj:
                        raise E.LLMError(E.STREAM_ERROR_EVENT, E.error_message(data))
                    raise E.LLMError(E.MALFORMED_CHUNK, f"no choices: {data[:60]!r}")
                for choice in choices:
                    delta = choice.get("delta")
                    if not delta:
                        if choice.get("finish_reason"):
                            st.finish_reason = choice["finish_reason"]
                        continue
                    content = delta.get("content")
                    if content or _other_output(delta):
                        if last is None:
                            st.first = now
                        else:
                            itl.append((now - last) * 1000.0)
                        last = now
                        st.chunks += 1
                        if content:
                            text.append(content)
                    if choice.get("finish_reason"):
                        st.finish_reason = choice["finish_reason"]
                usage = obj.get("usage")
                if usage:
                    st.usage = usage
            except (AttributeError, TypeError):
                raise E.LLMError(E.MALFORMED_CHUNK, f"unexpected shape: {data[:60]!r}") from None
    if not done:
        raise E.LLMError(E.INCOMPLETE_STREAM, "stream ended without data: [DONE]")
    return end


def _other_output(delta: dict[str, Any]) -> bool:
    return bool(
        delta.get("reasoning_content")
        or delta.get("reasoning")
        or delta.get("tool_calls")
        or delta.get("refusal")
    )


def _read_whole(resp: Any, st: _StreamState) -> float:
    raw = resp.read()  # a timeout or a drop here is a real failure: let it be classified
    end = time.perf_counter()
    st.nbytes = len(raw)
    st.streamed = False
    try:
        obj = json.loads(raw)
        message = obj["choices"][0]["message"]
        content = message.get("content") or ""
        st.finish_reason = obj["choices"][0].get("finish_reason")
        st.usage = obj.get("usage")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise E.LLMError(E.BAD_RESPONSE, f"not a chat completion: {raw[:60]!r}") from None
    if content:
        st.text.append(content)
    return end


def _read_body(resp: Any) -> bytes:
    try:
        return resp.read()
    except Exception:  # the status is what matters; a broken error body is not a new failure
        return b""


def _header_float(resp: Any, header: str) -> float | None:
    value = resp.get(header)
    if not value:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
