"""Engine mode's half of the request pipeline: a request becomes a sequence in a replica.

The reply's text is planned as in api mode (same tokens, chunking, finish reasons, faults), but
no timing is sampled: the request joins the least-loaded replica's queue, and the stream loop
writes each event when the step that produced its last token ends. TTFT is queueing plus
prefill, gaps are step times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gevent.event
from flask import Response

from llmsim.api.errors import ApiError
from llmsim.engine.ids import hex_id
from llmsim.engine.loop import Stream
from llmsim.engine.replicas import EngineOwner, EnginePool, LoopTokens
from llmsim.engine.request import EngineRequest
from llmsim.engine.scheduler import Replica, Seq
from llmsim.engine.tokens import encoding_for_model
from llmsim.server import accounting

if TYPE_CHECKING:
    from llmsim.server.pipeline import Planned
from llmsim.server.takeover import LoopBody


def context_error(pool: EnginePool, req: EngineRequest, completion: int | None) -> ApiError | None:
    """vLLM's 400 for a prompt plus reply beyond max_model_len, or None if it fits.

    `completion` None (no max_tokens asked): only a prompt that leaves no room for a token is
    refused, in vLLM's words for that case; vLLM then generates up to max_model_len.
    """
    limit = pool.max_model_len
    if completion is None:
        if req.prompt_tokens < limit:
            return None
        return ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{req.prompt_tokens} tokens in the messages, Please reduce the length of the "
            "messages.",
            type="BadRequestError",
            param="messages",
            code="context_length_exceeded",
        )
    total = req.prompt_tokens + completion
    if total <= limit:
        return None
    return ApiError(
        400,
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{total} tokens ({req.prompt_tokens} in the messages, {completion} in the completion). "
        "Please reduce the length of the messages or completion.",
        type="BadRequestError",
        param="max_tokens",
        code="context_length_exceeded",
    )


def prompt_token_ids(pool: EnginePool, req: EngineRequest) -> list[int]:
    """The prompt's token ids for prefix hashing ([] when prefix caching is off)."""
    if not pool.replica_config.prefix_caching or req.prefix_text is None:
        return []
    # Bounded work whatever the body holds: the cache only ever needs max_model_len tokens.
    text = req.prefix_text()[: pool.max_model_len * 16]
    enc = encoding_for_model(req.model)
    return enc.encode(text, disallowed_special=())[: req.prompt_tokens]


def respond(p: Planned) -> Response:
    """Serve a planned reply through a replica (see the module docstring)."""
    from llmsim.server import pipeline  # the shared fault and error helpers

    state, gen, req, reply, opts, start, headers = (
        p.state, p.gen, p.req, p.reply, p.opts, p.start, p.headers
    )  # fmt: skip
    pool = state.engines
    assert pool is not None
    loop = state.stream_loop()
    gen.reply, gen.start = reply, start
    tokens = max((len(c.tokens) for c in reply.choices), default=0)
    err = context_error(pool, req, tokens)
    if err is not None:
        gen.finish("bad_request")
        raise pipeline.CountedError(
            err.status, err.message, err.type, err.param, err.code, err.headers
        )
    request_id = "req_" + hex_id(12)
    seq = Seq(
        request_id,
        req.prompt_tokens,
        max(1, tokens),
        token_ids=prompt_token_ids(pool, req),
        arrival=loop.clock(),
    )
    stats = state.shared.engine_stats
    event_log = loop.events.open(
        request_id,
        {
            "request_id": request_id,
            "model": reply.model,
            "stream": bool(opts.stream),
            "engine": pool.preset.name,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "chunk_tokens": str(reply.chunking._spec),
            # Request line in -> joining the engine (headers, body, parsing, planning,
            # tokenizing): the server's own intake, which the schedule starts after.
            "admitted_ms": round((seq.arrival - start) * 1000, 3),
        },
    )
    cut = p.cut_step()
    headers.update(
        {
            "x-request-id": request_id,
            "x-llmsim-engine": pool.preset.name,
            "openai-model": accounting.header_value(reply.model),
        }
    )

    def submit() -> Replica:
        try:
            return pool.submit(seq, loop)
        except ValueError as exc:  # can never fit this replica's KV cache
            gen.finish("bad_request")
            raise pipeline.CountedError(
                400, str(exc), "BadRequestError", None, None, None
            ) from None

    if opts.stream:
        owner = EngineOwner(gen)
        # The replica is chosen now, so the headers can name it; the stream joins its batch
        # when the response starts.
        listener = LoopTokens(stats, loop.clock)
        seq.listener = listener
        replica = submit()
        owner.replica, owner.seq = replica, seq
        headers["x-llmsim-replica"] = replica.name

        def begin(sink: Any) -> Stream:
            stream = p.stream(sink, owner, event_log, cut)
            listener.stream = stream
            if seq.produced:  # tokens made before the response began (a fast step)
                stream.emit(seq.produced, loop.clock())
            if seq.done:
                if seq.state == "done":
                    stream.finish()
                else:
                    stream.fail("server_error")
            return stream

        def closed() -> None:
            replica.abort(seq)
            gen.finish("client_disconnect", reply, start)

        return p.streamed(LoopBody(p.environ, begin), closed)

    last = max(reply.steps - 1, 0) if cut is None else min(cut, max(reply.steps - 1, 0))
    woken = gevent.event.Event()
    seq.listener = LoopTokens(stats, loop.clock, wake=woken.set, wake_at=reply.step_end(last))
    replica = submit()
    headers["x-llmsim-replica"] = replica.name
    try:
        woken.wait()
    except BaseException:
        replica.abort(seq)
        gen.finish("client_disconnect", reply, start)
        raise
    replica.abort(seq)  # a fault's cut: the rest is never generated
    now = loop.clock()
    gen.first_s = seq.first_token_at if seq.first_token_at is not None else now
    planned = (seq.last_token_at or now) - start
    loop.events.add(event_log, last, reply.completion_tokens, planned, now - start)
    return pipeline.finish_plain(p)
