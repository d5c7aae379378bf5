"""`LLMUser`: the Locust base user every API's user is a small subclass of.

It owns what does not depend on the API: settings (`--llm-...` options over class attributes),
the workload (prompts, lengths, turns, datasets), the HTTP client (FastHttpUser's own, so
`proxy_host`, `client_pool`, `ssl_context_factory`, `default_headers`, `connection_timeout` and
`insecure` apply), the one read loop and clock (llmsim/load/stream.py), error kinds, and the
metrics: one Locust row per request whose response time is E2E, rows of their own for TTFT and
TPOT (written straight into the stats entries, so they do not count as requests in the
Aggregated row or the charts), and the LLM histograms (llmsim/load/metrics.py).

An API's user sets or overrides:

- `api_path` (under the base URL), or `request_path(stream)` when the path depends on more;
- `build_body(messages, max_tokens)`;
- `is_streaming(body)` when the body does not say (default: its "stream", else --llm-no-stream);
- `auth_headers()` (default: `Authorization: Bearer <key>`);
- `reader`: an `EventReader` for its SSE events and whole replies (llmsim/load/readers.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import gevent
from geventhttpclient.response import HTTPConnectionClosed
from geventhttpclient.url import URL
from locust import task
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopTest, StopUser

from llmsim.load import errors as E
from llmsim.load import resolve
from llmsim.load.metrics import LLMMetrics, RequestRecord
from llmsim.load.options import LLMConfig
from llmsim.load.reactor import read_body
from llmsim.load.runtime import get_runtime
from llmsim.load.stream import EventReader, SSEConsumer, StreamState, read_whole
from llmsim.load.workload import PlannedRequest, Workload, load_dataset, prompt_tokens_of

logger = logging.getLogger(__name__)

PLANNED_TTFT_HEADER = "x-llmsim-ttft-ms"

_client_errors_logged: set[str] = set()


@dataclass
class ChatResult:
    """What one request returned and measured (times in ms)."""

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
    schedule_lag_ms: float | None = None


def split_host(host: str) -> tuple[str, str]:
    """(origin, API base path): a bare host gets /v1, a host with a path keeps it."""
    u = urlsplit(host)
    if not u.scheme or not u.netloc:
        raise ValueError(f"host must be a URL like http://127.0.0.1:8000/v1, got {host!r}")
    path = u.path.rstrip("/") or "/v1"
    return f"{u.scheme}://{u.netloc}", path


class _SpawnBatch:
    """Users constructed within BATCH_GAP_S of each other belong to one spawn batch."""

    BATCH_GAP_S = 0.005

    def __init__(self) -> None:
        self.last = -1.0
        self.count = 0

    def add(self, now: float) -> None:
        self.count = self.count + 1 if now - self.last <= self.BATCH_GAP_S else 1
        self.last = now

    def size(self) -> int:
        """The size of the latest batch (asked by its users once the whole batch is out)."""
        return self.count


_spawn_batch = _SpawnBatch()


class LLMUser(FastHttpUser):
    """Sends the configured workload to one LLM API and records TTFT, ITL, TPOT, E2E, tokens.

    Subclass one of the API users (OpenAIChatUser, AnthropicMessagesUser, ...) in a
    locustfile; every workload attribute below can also be set with the matching `--llm-...`
    option or LOCUST_LLM_... environment variable (see llmsim/load/options.py).
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
    timeout: float = 60.0  # seconds without a byte (FastHttpUser's network_timeout)
    # Open loop (llmsim/load/openloop.py): a rate or a trace makes requests follow a schedule.
    rate: float | None = None
    arrival: str = "poisson"
    max_in_flight: int | None = None
    trace: str | None = None
    trace_speed: float = 1.0
    prefix_tokens: int = 0
    prefix_groups: int = 1
    api_key: str | None = None

    request_name: str | None = None  # Locust row name; default: the request path
    api_path: str = "/chat/completions"
    reader: ClassVar[EventReader]

    _user_seq: ClassVar[int] = 0
    # Locust spawns each second's batch of users back to back, so their first requests would
    # all leave in the same millisecond: a CPU burst in this process and in the server that
    # delays the first tokens of streams already running. A user spawned in a batch starts
    # its first request at a random point of this window instead (closed loop only).
    batch_start_spread_s: float = 1.0

    def __init__(self, environment: Any) -> None:
        self.runtime = get_runtime(environment)
        self.llm: LLMConfig = self.runtime.config_for(type(self))
        # FastHttpUser reads its client settings from the instance: --llm-timeout is the wait
        # for the next bytes of a reply, and for a connection unless the class sets its own
        # connection_timeout (the rest stay the class's own).
        self.network_timeout = self.llm.timeout
        if type(self).connection_timeout == FastHttpUser.connection_timeout:
            self.connection_timeout = self.llm.timeout
        if self.llm.open_loop and self.client_pool is None:
            # One open-loop user has many requests in flight: a pool of FastHttpUser's default
            # 10 connections would queue the rest inside the client, after the schedule-lag
            # stamp, and charge that wait to the server. Connections are opened lazily; the
            # bound stays moderate because geventhttpclient retries a send up to pool size times.
            self.concurrency = max(self.concurrency, self.llm.max_in_flight or 2048)
        super().__init__(environment)
        self.metrics: LLMMetrics = self.runtime.metrics
        self.origin, self.base_path = split_host(self.host)
        agent = self.client.client  # FastHttpUser's LocustUserAgent, with the class's settings
        self._http = agent.clientpool.get_client(URL(self.origin))
        resolve.install(self._http)  # not once per new connection (see resolve.py)
        headers = dict(agent.default_headers)
        if self.client.auth_header:  # user:password@ in --host
            headers["Authorization"] = self.client.auth_header
        headers["Content-Type"] = "application/json"
        headers["Accept-Encoding"] = "identity"  # compressed SSE would arrive in delayed blocks
        headers.update(self.auth_headers())
        headers.update({k: str(v) for k, v in self.llm.extra_headers.items()})
        self._headers = headers
        LLMUser._user_seq += 1
        _spawn_batch.add(time.perf_counter())
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
            prefix_tokens=self.llm.prefix_tokens,
            prefix_groups=self.llm.prefix_groups,
        )
        self._sent = 0

    # ------------------------------------------------------------------ hooks

    def request_path(self, stream: bool) -> str:
        """The path (and query) to POST to; `stream` says whether the reply will stream."""
        return self.base_path + self.api_path

    def build_body(self, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
        """The request body for these messages."""
        raise NotImplementedError

    def is_streaming(self, body: dict[str, Any]) -> bool:
        """Whether this request's reply streams."""
        return bool(body.get("stream", self.llm.stream))

    def auth_headers(self) -> dict[str, str]:
        """`Authorization: Bearer` with --llm-api-key, else $OPENAI_API_KEY; none without."""
        key = self.llm.api_key or os.environ.get("OPENAI_API_KEY")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def common_fields(self, body: dict[str, Any], stream_options: bool) -> dict[str, Any]:
        """Add what OpenAI-style bodies share: streaming, ignore_eos, temperature, extra fields.

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

    # ------------------------------------------------------------------ the task

    def on_start(self) -> None:
        """Spread the first requests of users spawned together (see batch_start_spread_s)."""
        if self.llm.open_loop or self.batch_start_spread_s <= 0:
            return
        if _spawn_batch.size() > 1:  # not the workload's rng: --seed keeps the same prompts
            gevent.sleep(random.random() * self.batch_start_spread_s)

    def on_stop(self) -> None:
        """Close this user's connections to the host once Locust stops the user."""
        self._http.close()

    @task
    def chat_task(self) -> None:
        """One request of the configured workload (one turn of a conversation); in open loop,
        the whole schedule (each request in its own greenlet)."""
        if self.runtime.ending:  # the run's time is up: end after the last request
            raise StopUser()
        if self.llm.open_loop:
            from llmsim.load.openloop import run_open_loop

            run_open_loop(self)
            raise StopUser()
        self.send_next()
        self._sent += 1
        if self.llm.requests_per_user and self._sent >= self.llm.requests_per_user:
            raise StopUser()

    def send_next(
        self,
        scheduled: float | None = None,
        name: str | None = None,
        planned: PlannedRequest | None = None,
    ) -> ChatResult:
        """The workload's next request, or `planned`; `scheduled`: the perf_counter it was due
        at (open loop)."""
        planned = planned or self.workload.next_request()
        result = self.chat(
            planned.messages,
            max_tokens=planned.max_tokens,
            planned=planned,
            scheduled=scheduled,
            name=name,
        )
        if result.ok:
            self.workload.on_reply(result.text, result.output_tokens)
        else:
            self.workload.on_failure()
        return result

    # ------------------------------------------------------------------ the request

    def chat(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        name: str | None = None,
        planned: PlannedRequest | None = None,
        scheduled: float | None = None,
        **body_fields: Any,
    ) -> ChatResult:
        """Send one request, record every metric, and return what happened.

        `scheduled` (a perf_counter value) is when an open-loop schedule wanted the request to
        start: latencies then count from it, and the lag to the real start is recorded.
        Never raises for a failed request (the failure is recorded and returned); only
        Locust's own control exceptions (stopping the user or the test) pass through.
        """
        body = self.build_body(messages, max_tokens)
        body.update(body_fields)
        stream = self.is_streaming(body)
        payload = json.dumps(body).encode()
        path = self.request_path(stream)
        name = name or self.request_name or path.partition("?")[0]
        metrics = self.metrics
        metrics.in_flight += 1
        start_wall = time.time()
        t0 = time.perf_counter()
        end = t0
        resp = None
        st = StreamState()
        error: E.LLMError | None = None
        try:
            headers = self._headers
            headers["Accept"] = "text/event-stream" if stream else "application/json"
            resp = self._post(path, payload, headers)
            st.planned_ttft = _header_float(resp, PLANNED_TTFT_HEADER)
            status = resp.status_code
            if not 200 <= status < 300:
                raise E.http_error(status, _read_body(resp))
            if stream:
                ctype = str(resp.get("content-type") or "")
                if "text/event-stream" not in ctype.lower():
                    raw = _read_body(resp)
                    raise E.LLMError(E.NOT_SSE, f"{ctype or 'no content-type'}: {raw[:60]!r}")
                consumer = SSEConsumer(self.reader, st)
                end = read_body(resp, consumer, self.llm.timeout)
                consumer.finish()
            else:
                end = read_whole(resp, self.reader, st)
        except E.LLMError as e:
            error, end = e, time.perf_counter()
        except (StopUser, StopTest):
            raise
        except Exception as e:  # transport errors; a bug of ours is reported, not fatal
            error, end = E.classify_exception(e), time.perf_counter()
            if error.kind == E.CLIENT_ERROR and error.detail not in _client_errors_logged:
                _client_errors_logged.add(error.detail)
                logger.exception("llmsim: unexpected error in a request")
        finally:
            metrics.in_flight -= 1
            if resp is not None and not resp.message_complete:
                resp.release()  # closes the socket: the rest of the body is unread
        lag = None if scheduled is None else max(0.0, (t0 - scheduled) * 1000.0)
        return self._record(name, path, messages, planned, start_wall, t0, end, st, error, lag)

    def _post(self, path: str, payload: bytes, headers: dict[str, str]) -> Any:
        try:
            return self._http.request("POST", path, body=payload, headers=headers)
        except HTTPConnectionClosed:
            # A kept-alive connection the server had closed while idle: the request never got
            # a byte back, so sending it once more is safe and is what browsers do.
            return self._http.request("POST", path, body=payload, headers=headers)

    def _record(
        self,
        name: str,
        path: str,
        messages: list[dict[str, Any]],
        planned: PlannedRequest | None,
        start_wall: float,
        t0: float,
        end: float,
        st: StreamState,
        error: E.LLMError | None,
        lag: float | None,
    ) -> ChatResult:
        # Open loop: latencies count from the scheduled start, so a late start is charged to
        # the request (no coordinated omission); the lag is also recorded on its own.
        late = lag or 0.0
        e2e = (end - t0) * 1000.0 + late
        ttft = tpot = None
        out_tokens = in_tokens = source = tps = None
        if error is None:
            if st.first is not None:
                ttft = (st.first - t0) * 1000.0 + late
            usage = st.usage if isinstance(st.usage, dict) else None
            if usage and isinstance(usage.get("completion_tokens"), int):
                out_tokens, source = usage["completion_tokens"], "usage"
                in_tokens = usage.get("prompt_tokens")
            else:
                out_tokens, source = st.counted_tokens(self.llm.model), "counted"
            if not isinstance(in_tokens, int):
                if planned is not None and planned.prompt_tokens is not None:
                    in_tokens = planned.prompt_tokens
                elif messages:
                    in_tokens = prompt_tokens_of(messages, self.llm.model)
            if ttft is not None and out_tokens > 1:
                tpot = (e2e - ttft) / (out_tokens - 1)
            if e2e > 0 and self.reader.generates_output:
                tps = out_tokens / (e2e / 1000.0)
        rec = RequestRecord(
            start_time=start_wall,
            end_time=start_wall + (end - t0),
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
            scheduled_time=None if lag is None else start_wall - late / 1000.0,
            schedule_lag_ms=lag,
            error_message=None if error is None else str(error),
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
            start_time=start_wall - late / 1000.0,
            url=self.origin + path,
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
            schedule_lag_ms=lag,
        )


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
