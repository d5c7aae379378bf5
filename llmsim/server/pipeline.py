"""The one request pipeline under every generating API.

parse → strict model check → model limits → rate limit → fault → capacity (queue) → plan →
respond on the stream loop (llmsim.engine.loop); stats at every exit. A wire format
(llmsim.api.wire.WireFormat) only parses and renders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import orjson
from flask import Response, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from llmsim.api import bounds, errors
from llmsim.api.errors import ApiError
from llmsim.api.wire import RenderContext, WireFormat, api_chunk_tokens
from llmsim.engine.capacity import QueueFull, Slot
from llmsim.engine.faults import HTTP_FAULTS
from llmsim.engine.ids import hex_id
from llmsim.engine.limits import LimitDecision
from llmsim.engine.loop import Stream, TimedStream, Wake
from llmsim.engine.request import EngineRequest, Reply
from llmsim.engine.timing import TokenClock, TokenSchedule
from llmsim.record.apis import request_key
from llmsim.record.replay import RecordedSchedule
from llmsim.server import accounting, offload
from llmsim.server.auth import presented_key
from llmsim.server.state import ServerState
from llmsim.server.takeover import LoopBody

log = logging.getLogger("llmsim.server")

START_KEY = "llmsim.start"  # environ: when the request was read (monotonic seconds)
SOCKET_KEY = "llmsim.socket"  # environ: the client socket, for the `drop` fault

_STATUS_KIND = {400: "bad_request", 404: "not_found", 405: "not_found", 413: "too_large"}


class CountedError(ApiError):
    """An ApiError already recorded in the stats."""


def error_kind(status: int) -> str:
    """The stats failure kind of an error status: 404/405 not_found, 413 too_large, 500 and up
    server_error, anything else bad_request."""
    return _STATUS_KIND.get(status, "bad_request" if status < 500 else "server_error")


def _mark_input_lost(environ: dict[str, Any]) -> None:
    inp = environ.get("wsgi.input")
    # gevent's own mark for an input in an unknown state. Without it, after the response its
    # handler reads the broken body again, fails again and appends a second, bare 400 to the
    # connection.
    if hasattr(inp, "_chunked_input_error"):
        inp._chunked_input_error = True


def unreadable_body(environ: dict[str, Any]) -> ApiError:
    """The 400 for a body that cannot be read to its end (a malformed chunked encoding, or the
    client gone before its Content-Length arrived), closing the connection."""
    _mark_input_lost(environ)
    return ApiError(
        400,
        "We could not read the body of your request: its framing (chunked encoding or "
        "Content-Length) does not match what was sent.",
        code="invalid_body",
        headers={"Connection": "close"},
    )


class _BodyLate(Exception):
    """The body did not arrive within its time (raised by read_body's timer)."""


def late_body(environ: dict[str, Any], timeout_s: float) -> ApiError:
    """The 408 for a body that did not arrive within `timeout_s`, closing the connection (the
    rest of the body may still come: the connection's framing is lost)."""
    _mark_input_lost(environ)
    return ApiError(
        408,
        f"The request body did not arrive within {timeout_s:g} s.",
        code="timeout",
        headers={"Connection": "close"},
    )


def read_body(
    environ: dict[str, Any], max_bytes: int | None, timeout_s: float | None = None
) -> bytes:
    """The request body, at most max_bytes (else 413), as Flask's request.get_data() reads it.

    A plain Content-Length body is read straight from the server's input: werkzeug's stream
    wrappers cost more than parsing the JSON. Anything else goes through werkzeug. A body that
    cannot be read is a 400 (unreadable_body), not the server's error; one that takes longer
    than `timeout_s` is a 408 (a client dribbling its body held its connection and greenlet
    for ever: the head's deadline ends where the body starts).
    """
    timer = None
    if timeout_s is not None:
        timer = gevent.Timeout(timeout_s, _BodyLate)
        timer.start()
    try:
        return _read_body(environ, max_bytes)
    except _BodyLate:
        raise late_body(environ, timeout_s or 0.0) from None
    except (OSError, ValueError, ClientDisconnected):
        raise unreadable_body(environ) from None
    finally:
        if timer is not None:
            timer.close()


def _read_body(environ: dict[str, Any], max_bytes: int | None) -> bytes:
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit() and "HTTP_TRANSFER_ENCODING" not in environ:
        n = int(length)
        if max_bytes is not None and n > max_bytes:
            raise RequestEntityTooLarge()
        return environ["wsgi.input"].read(n)
    if "HTTP_TRANSFER_ENCODING" in environ and max_bytes is not None:
        # Chunked: no length to check up front, so read one byte past the limit (werkzeug's
        # stream would stop at the limit and hand over a truncated body).
        data = environ["wsgi.input"].read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RequestEntityTooLarge()
        return data
    return get_input_stream(environ, max_content_length=max_bytes).read()


def api_key(environ: dict[str, Any] | None = None) -> str:
    """The key rate limits count against, sent in any provider's way ("anonymous": none)."""
    env = request.environ if environ is None else environ
    return presented_key(env) or "anonymous"


def _counted(err: ApiError) -> CountedError:
    return CountedError(err.status, err.message, err.type, err.param, err.code, err.headers)


def rate_limit_error(model: str, d: LimitDecision) -> ApiError:
    """OpenAI's 429 for a refused request: the RPM/TPM limit reached, with the retry delay in
    seconds, or a request too large for the TPM limit at all; with the decision's headers."""
    unit = "requests" if d.kind == "requests" else "tokens"
    short = "RPM" if d.kind == "requests" else "TPM"
    if d.too_large:
        msg = (
            f"Request too large for {model} on tokens per min (TPM): Limit {d.limit}, "
            f"Requested {d.requested}. The input or output tokens must be reduced."
        )
    else:
        msg = (
            f"Rate limit reached for {model} on {unit} per min ({short}): Limit {d.limit}, "
            f"Used {d.used}, Requested {d.requested}. "
            f"Please try again in {max(d.retry_after_s, 0.001):.3g}s."
        )
    return ApiError(429, msg, type=unit, code="rate_limit_exceeded", headers=dict(d.headers))


_SORRY = "The server had an error while processing your request. Sorry about that!"
_FAULT_ERRORS = {
    "429": (429, "Rate limit reached (injected by llmsim).", "requests", "rate_limit_exceeded"),
    "500": (500, _SORRY, "server_error", None),
    "502": (502, "Bad gateway.", "server_error", "bad_gateway"),
    "503": (503, "The engine is currently overloaded, please try again later.", "server_error",
            "overloaded"),
    "529": (529, "Overloaded.", "overloaded_error", "overloaded"),
    "timeout": (504, "Gateway timeout: the model did not answer in time.", "server_error",
                "timeout"),
    "stream-error": (500, _SORRY, "server_error", None),
}  # fmt: skip


def fault_error(kind: str, headers: dict[str, str]) -> ApiError:
    """The error an injected fault answers with (kind: 429, 500, 502, 503, 529, timeout or
    stream-error), carrying `headers`; 429, 503 and 529 add a 1 s retry-after."""
    status, msg, typ, code = _FAULT_ERRORS[kind]
    extra = {"retry-after": "1", "retry-after-ms": "1000"} if status in (429, 503, 529) else {}
    return ApiError(status, msg, type=typ, code=code, headers={**headers, **extra})


def _drop_connection(environ: dict[str, Any]) -> None:
    sock = environ.get(SOCKET_KEY)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Generation:
    """One admitted request: its stats slot, capacity slot and how far it got.

    It is the stream loop's Owner: told when the first event leaves and, once, how it ended.
    """

    def __init__(self, state: ServerState, stats_slot: int, cap: Slot | None) -> None:
        self.state = state
        self.stats_slot = stats_slot
        self.cap = cap
        self.prompt_tokens = 0
        self.sent_tokens = 0
        self.first_s: float | None = None
        self.outcome: str | None = None  # None until it ends: "ok" or an error kind
        self.reply: Reply | None = None
        self.start = 0.0
        # (key, model, output tokens reserved, tpm) for a rate-limit refund, when --tpm is set.
        self.reservation: tuple[str, str, int, int] | None = None
        self._running = False

    def start_running(self) -> None:
        """Count the request in its model's `running` gauge (vllm:num_requests_running) once it
        is generating: past the --max-concurrency queue if there is one, at once if not;
        finish takes it out again."""
        self.state.stats.gauge(self.stats_slot, "running", 1)
        self._running = True

    def started(self, now: float) -> None:
        """Stream-loop callback: the first event left at `now` (monotonic s); later calls are
        ignored."""
        if self.first_s is None:
            self.first_s = now

    def ended(self, kind: str, tokens_sent: int) -> None:
        """Stream-loop callback: the stream is over ("ok" or a failure kind) after
        `tokens_sent` tokens; recorded through finish."""
        self.sent_tokens = tokens_sent
        self.finish(kind, self.reply, self.start)

    def finish(self, kind: str, reply: Reply | None = None, start: float = 0.0) -> None:
        """Record how it ended (once) and give its capacity back."""
        if self.outcome is not None:
            return
        self.outcome = kind
        stats = self.state.stats
        if self._running:
            stats.gauge(self.stats_slot, "running", -1)
        if self.cap is not None:
            self.cap.release()
        if kind == "ok" and reply is not None:
            now = time.monotonic()
            first = self.first_s if self.first_s is not None else now
            finish = reply.choices[0].finish_reason if reply.choices else "stop"
            stats.request_succeeded(
                self.stats_slot,
                reply.prompt_tokens,
                reply.completion_tokens + reply.reasoning_tokens,  # as usage bills them
                first - start,
                now - start,
                finish,
            )
        else:
            stats.request_failed(self.stats_slot, kind, self.prompt_tokens, self.sent_tokens)
            if self.reservation is not None and kind == "client_disconnect":
                # The client is gone: the tokens it will never receive go back to its bucket.
                key, model, reserved, tpm = self.reservation
                self.state.limiter.refund(key, model, reserved - self.sent_tokens, tpm)


def handle(fmt: WireFormat, state: ServerState, environ: dict[str, Any] | None = None) -> Response:
    """Serve one generating request of the given wire format.

    Needs no Flask request context: everything comes from the WSGI environ (Flask's request's
    when none is given), so the server can call it without Flask's per-request cost.
    """
    if environ is None:
        environ = request.environ
    start = environ.get(START_KEY) or time.monotonic()
    state.refresh()  # a PATCH /llmsim/config in any worker applies from the next request
    settings, stats = state.settings, state.stats
    # Between the steps of a request, events that fell due go out first (see catch_up).
    catch_up = state.stream_loop().catch_up
    catch_up()
    try:
        data = read_body(environ, settings.max_body_bytes, settings.body_timeout_s)
        heavy = len(data) > offload.HEAVY_BODY_BYTES
        req, opts, schema_chars, body = offload.call(heavy, bounds.parse, fmt, data)
        catch_up()
        if settings.replay:
            req.replay_key = request_key(req.model, body)
        if settings.strict_models and req.model not in state.known_models:
            raise errors.model_not_found(req.model)
        if getattr(fmt, "checks_limits", True):
            violation = state.engine.check_limits(req, getattr(fmt, "window_counts_output", True))
            if violation is not None:
                raise fmt.limit_error(violation)
        if state.engines is not None:
            from llmsim.server.engine_respond import context_error

            too_long = context_error(state.engines, req, req.max_tokens)
            if too_long is not None:
                raise too_long
    except ApiError as err:
        stats.request_failed(None, error_kind(err.status))
        raise _counted(err) from None

    model_settings = settings.for_model(req.model)
    stats_slot = stats.request_started(req.model, opts.stream)
    key = api_key(environ)
    headers: dict[str, str] = {}

    decision = state.limiter.check(
        key,
        req.model,
        req.prompt_tokens + (req.max_tokens or model_settings.output_tokens) * req.n,
        model_settings.rpm,
        model_settings.tpm,
    )
    headers.update(decision.headers)
    if not decision.allowed:
        stats.throttled(decision.kind or "requests")
        stats.request_failed(stats_slot, "rate_limited")
        raise _counted(rate_limit_error(req.model, decision))

    fault = None
    fault_header = environ.get("HTTP_X_LLMSIM_FAULT") if settings.allow_fault_header else None
    if state.faults.active or fault_header is not None:
        try:
            fault = state.faults.decide(req.model, key, fault_header)
        except ValueError as exc:
            stats.request_failed(stats_slot, "bad_request")
            bad = ApiError(400, f"x-llmsim-fault: {exc}", param="x-llmsim-fault")
            raise _counted(bad) from None
    if fault in HTTP_FAULTS:
        stats.request_failed(stats_slot, f"fault_{fault}")
        raise _counted(fault_error(fault, headers))
    if fault == "timeout":
        gevent.sleep(settings.timeout_after_ms / 1000.0)
        stats.request_failed(stats_slot, "fault_timeout")
        if settings.timeout_action == "close":
            _drop_connection(environ)
            return Response(b"", status=504)
        raise _counted(fault_error("timeout", headers))

    pool = state.capacity.pool_for(req.model)
    cap = None
    if pool is not None:
        try:
            cap = pool.reserve()
        except QueueFull:
            stats.request_failed(stats_slot, "queue_full")
            status = settings.queue_overflow_status
            raise _counted(
                ApiError(
                    status,
                    f"The server is overloaded: all {pool.limit} slots are busy and the queue "
                    "is full. Please retry later.",
                    type="server_error",
                    code="queue_full",
                    headers={**headers, "retry-after": "1"},
                )
            ) from None
    gen = Generation(state, stats_slot, cap)
    gen.prompt_tokens = req.prompt_tokens
    if model_settings.tpm is not None:  # what to give back if the stream ends early
        gen.reservation = (key, req.model, (req.max_tokens or 0) * req.n, model_settings.tpm)
    try:
        if cap is not None and not cap.running:
            stats.gauge(stats_slot, "waiting", 1)
            try:
                cap.wait()
            finally:
                stats.gauge(stats_slot, "waiting", -1)
        gen.start_running()
        catch_up()
        if state.engines is not None and req.max_tokens is None:
            # vLLM's default max_tokens: whatever the context leaves after the prompt.
            req.max_tokens = state.engines.max_model_len - req.prompt_tokens
        reply = offload.call(
            offload.heavy_plan(req, schema_chars),
            state.engine.plan,
            req,
            api_chunk_tokens(fmt.name),
        )
        catch_up()
    except BaseException as exc:
        gen.finish(accounting.failure_kind(exc))
        accounting.mark_counted(exc)
        raise
    planned = Planned(fmt, state, gen, req, reply, opts, fault, start, headers, environ)
    if state.engines is not None:
        from llmsim.server import engine_respond

        return engine_respond.respond(planned)
    return _respond(planned)


@dataclass
class Planned:
    """A request whose reply is planned: what either way of sending it needs (api mode's
    token schedule here, engine mode's replica in engine_respond)."""

    fmt: WireFormat
    state: ServerState
    gen: Generation
    req: EngineRequest
    reply: Reply
    opts: Any
    fault: str | None
    start: float
    headers: dict[str, str]
    environ: dict[str, Any]

    def __post_init__(self) -> None:
        self.ctx = RenderContext(self.state.engine.system_fingerprint)

    def cut_step(self) -> int | None:
        """The step a mid-stream fault strikes instead of sending (None: no such fault)."""
        if self.fault in ("drop", "stream-error"):
            return self.state.faults.cut_point(self.reply.steps)
        return None

    def stream(self, sink: Any, owner: Any, event_log: Any, cut: int | None) -> Stream:
        """The reply's events on the worker's stream loop, written to `sink`."""
        fmt = self.fmt
        return Stream(
            self.state.stream_loop(),
            iter(fmt.stream_events(self.reply, self.opts, self.ctx)),
            self.reply.chunking.end,  # what Reply.step_end calls: one call fewer per event
            sink,
            owner,
            self.start,
            event_log,
            cut,
            self.fault,
            lambda sent: fmt.stream_error(fault_error("stream-error", {}), sent),
        )

    def streamed(self, body: LoopBody, closed: Callable[[], None]) -> Response:
        """The streaming response around `body`; `closed` runs when the server is done with
        it (also when the client vanished before it began)."""
        self.headers["Cache-Control"] = "no-cache"
        self.headers["X-Accel-Buffering"] = "no"
        # SSE, unless the API streams another way (Gemini's JSON array without alt=sse).
        media = getattr(self.opts, "media_type", "text/event-stream")
        response = Response(body, headers=self.headers, mimetype=media)
        response.call_on_close(closed)
        if self.fault == "drop":
            response.call_on_close(lambda: _drop_connection(self.environ))
        return response


def _respond(p: Planned) -> Response:
    """api mode: each token is sent at the time the latency model plans for it."""
    state, gen, req, reply, opts, start, headers = (
        p.state, p.gen, p.req, p.reply, p.opts, p.start, p.headers
    )  # fmt: skip
    engine = state.engine
    loop = state.stream_loop()
    # Queue wait and prefill push the first token back; the planned TTFT says so.
    first_s = (gen.cap.waited_s if gen.cap is not None else 0.0) + reply.first_s
    # The plan counts from the request's arrival (arrival.py), so a wait before its handler
    # ran is inside its TTFT. A request read so late that even its first token is overdue
    # starts its plan from now instead: its stream keeps its shape rather than sending its
    # overdue tokens back to back, and its client waits, as it would for a busy server.
    overdue = time.monotonic() - (start + first_s)
    if overdue > 0:
        start += overdue
        p.start = start
    gen.reply, gen.start = reply, start
    pool = gen.cap.pool if gen.cap is not None else None
    clock = TokenClock(engine.timing_for(req.model), reply.tbt_s, engine.rng)
    schedule = TokenSchedule(first_s, clock, pool)
    if reply.offsets_s is not None:  # a replayed reply keeps its recorded times
        schedule = RecordedSchedule(first_s, reply.offsets_s)
        headers["x-llmsim-replay"] = "hit"
    request_id = "req_" + hex_id(12)
    headers.update(
        {
            "x-request-id": request_id,
            "x-llmsim-ttft-ms": f"{first_s * 1000:.3f}",
            "x-llmsim-tbt-ms": f"{reply.tbt_s * 1000:.3f}",
            "openai-model": accounting.header_value(reply.model),
        }
    )
    event_log = loop.events.open(
        request_id,
        {
            "request_id": request_id,
            "model": reply.model,
            "stream": bool(opts.stream),
            "planned_ttft_ms": round(first_s * 1000, 3),
            "tbt_ms": round(reply.tbt_s * 1000, 3),
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "chunk_tokens": str(reply.chunking._spec),
        },
    )
    cut = p.cut_step()

    if opts.stream:

        def begin(sink: Any) -> Stream:
            stream = p.stream(sink, gen, event_log, cut)
            pacer = TimedStream(stream, schedule.due, reply.chunking.total)
            loop.add(pacer, pacer.first_deadline())
            return stream

        # A hang-up watcher costs two syscalls: not worth it for a reply due within ~5 ms.
        body = LoopBody(p.environ, begin, watch=reply.duration_s > 0.005)
        return p.streamed(body, lambda: gen.finish("client_disconnect", reply, start))

    last = max(reply.steps - 1, 0) if cut is None else min(cut, max(reply.steps - 1, 0))
    last_token = max(reply.step_end(last) - 1, 0)
    try:
        if first_s > 0 or reply.tbt_s > 0:  # else: due at once (the instant profile)
            woken = gevent.event.Event()
            loop.add(*_wake_entry(start, last_token, schedule.due, woken.set))
            woken.wait()
        gen.first_s = start + first_s
    except BaseException as exc:
        gen.finish(accounting.failure_kind(exc), reply, start)
        accounting.mark_counted(exc)
        raise
    now = time.monotonic()
    loop.events.add(event_log, last, reply.completion_tokens, schedule.due(last_token), now - start)
    return finish_plain(p)


def finish_plain(p: Planned) -> Response:
    """The end of a non-streaming reply once its last token is due: a fault, or the JSON."""
    fmt, state, gen, reply, opts, fault, start, headers = (
        p.fmt, p.state, p.gen, p.reply, p.opts, p.fault, p.start, p.headers
    )  # fmt: skip
    if fault == "drop":
        gen.finish("fault_drop", reply, start)
        _drop_connection(p.environ)
        return Response(b"", status=500)
    if fault == "stream-error":
        gen.finish("fault_stream_error", reply, start)
        raise _counted(fault_error("stream-error", headers))
    try:
        body = _render_json(fmt, state, reply, opts, p.ctx)
    except BaseException as exc:
        gen.finish(accounting.failure_kind(exc), reply, start)
        accounting.mark_counted(exc)
        raise
    gen.finish("ok", reply, start)
    return Response(body, headers=headers, mimetype="application/json")


def _wake_entry(start: float, last_token: int, due: Any, callback: Any) -> tuple[Wake, float]:
    entry = Wake(start, last_token, due, callback)
    return entry, entry.first_deadline()


def _render_json(
    fmt: WireFormat, state: ServerState, reply: Reply, opts: Any, ctx: RenderContext
) -> bytes | list[bytes]:
    """The JSON body; a format may write a big one its own way, as pieces sent one by one.

    Pieces are Python work, made on the loop between its sweeps (offload.gather); a whole
    reply's text joins strings in C, on a thread when it is long."""
    custom = getattr(fmt, "render_json", None)
    if custom is not None:
        return offload.gather(custom(reply, opts, ctx), state.stream_loop().catch_up)
    return offload.call(offload.heavy_render(reply), _dumps, fmt, reply, opts, ctx)


def _dumps(fmt: WireFormat, reply: Reply, opts: Any, ctx: RenderContext) -> bytes:
    # orjson: about a tenth of json.dumps's time for a reply (0.7 against 8.2 µs for a small
    # chat completion here), and UTF-8 text as the providers send it rather than \u escapes.
    obj = fmt.render(reply, opts, ctx)
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # what only json takes (an integer past 64 bits)
        return json.dumps(obj).encode()
