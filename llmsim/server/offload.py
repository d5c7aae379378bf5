"""Run a request's heavy steps on a thread, so the worker's event loop keeps every stream on time.

Parsing a multi-megabyte body, tokenizing a pathological prompt (tiktoken releases the GIL),
planning a long reply or rendering a big embeddings batch takes from tens of milliseconds to
seconds. On the loop that is a gap in every other stream of the worker; on a thread of gevent's
threadpool the loop gets the interpreter back at least every switch interval (5 ms). Small
requests stay on the loop: the hand-off costs about 50-100 µs, more than they take.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from llmsim.engine.request import EngineRequest, Reply

T = TypeVar("T")

HEAVY_BODY_BYTES = 64 * 1024  # parse on a thread beyond this
HEAVY_PLAN_TOKENS = 8192  # plan on a thread when a reply may have more tokens than this
HEAVY_EMBEDDING_TOKENS = 256  # a few inputs' vectors take milliseconds to write as JSON
THREADS = 4  # more would only share the same two cores; the loop must keep one turn in five


def _pool():
    import gevent

    hub = gevent.get_hub()
    pool = hub.threadpool
    if pool.maxsize < THREADS:
        pool.maxsize = THREADS
    return pool


def call(heavy: bool, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), on a worker thread when `heavy` (exceptions re-raised here), else inline."""
    if not heavy:
        return fn(*args)
    # Keep the loop's turns short while a thread holds the GIL for pure-Python work.
    if sys.getswitchinterval() > 0.002:
        sys.setswitchinterval(0.002)
    ok, value = _pool().apply(_captured, (fn, args))
    if not ok:
        raise value
    return value


def _captured(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    # An exception raised on the thread would be printed by gevent's threadpool as a
    # traceback (a 400 is not news); carry it back to be raised where it is handled.
    try:
        return True, fn(*args)
    except Exception as exc:
        return False, exc


def heavy_plan(req: EngineRequest, schema_chars: float = 0.0) -> bool:
    """Whether planning `req` may stall other streams: the engine writes a schema-shaped reply
    whole when it plans it (plain text is made lazily, as it becomes due)."""
    return schema_chars > HEAVY_PLAN_TOKENS


def heavy_render(reply: Reply) -> bool:
    """Whether rendering `reply` whole as JSON may stall other streams."""
    if not reply.choices:  # embeddings: writing thousands of floats per input is the work
        return reply.prompt_tokens > HEAVY_EMBEDDING_TOKENS
    return reply.completion_tokens > HEAVY_PLAN_TOKENS
