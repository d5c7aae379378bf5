"""Open-loop load: each request starts in its own greenlet at its scheduled time.

Closed-loop users wait for a reply before the next request, so a slow server slows its own load
(coordinated omission). Here a user's task is the whole schedule: an arrival process at
`--llm-rate` (its share of it: rate / users in the swarm) or a trace, one greenlet per request.
Latencies count from the scheduled time; the schedule lag (start − scheduled) is recorded as a
metric of its own, so a client that falls behind says so. With `--llm-max-in-flight`, an arrival
that would exceed it is dropped and counted, never queued.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Group
from locust.user.users import LOCUST_STATE_STOPPING

from llmsim.load.arrivals import schedule
from llmsim.load.options import SWARM_PROCESSES, SWARM_USERS
from llmsim.load.trace import load_trace, trace_request
from llmsim.load.workload import PlannedRequest, framing_tokens

if TYPE_CHECKING:
    from llmsim.load.base import LLMUser

# Local counter of open-loop users in this process: the user's index within the swarm.
_local_seq = 0


def swarm_share(user: Any) -> tuple[int, int]:
    """(this user's index, users in the swarm): the master says how many users and processes
    there are; a user's index is its process's index plus its rank in the process."""
    global _local_seq
    env = user.environment
    opts = env.parsed_options
    users = max(1, int(getattr(opts, SWARM_USERS, None) or 1))
    procs = max(1, int(getattr(opts, SWARM_PROCESSES, None) or 1))
    worker = int(getattr(env.runner, "worker_index", 0) or 0)
    rank = _local_seq
    _local_seq += 1
    return (worker + rank * procs) % users, users


def arrivals(user: LLMUser, index: int, users: int) -> Iterator[tuple[float, PlannedRequest]]:
    """(offset in s, request) for this user's share of the schedule."""
    cfg = user.llm
    if cfg.trace:
        framing = framing_tokens(cfg.model, None)
        rng = user.workload.rng
        for i, entry in enumerate(load_trace(cfg.trace)):
            if i % users == index:
                yield (
                    entry.offset_s / cfg.trace_speed,
                    trace_request(entry, cfg.model, rng, framing),
                )
        return
    assert cfg.rate is not None
    rng = random.Random(None if cfg.seed is None else cfg.seed * 7919 + index)
    for offset in schedule(cfg.arrival, cfg.rate / users, rng, phase=index / users):
        yield offset, user.workload.next_request()


def run_open_loop(user: LLMUser) -> None:
    """Run the user's schedule until it ends (a trace) or the test stops the user."""
    cfg = user.llm
    index, users = swarm_share(user)
    limit = None
    if cfg.max_in_flight is not None:
        # This user's share of the swarm-wide limit (the first ones take the remainder).
        limit = cfg.max_in_flight // users + (1 if index < cfg.max_in_flight % users else 0)
        limit = max(1, limit)
    ignore_eos = bool(cfg.trace)  # a trace's output lengths are exact
    group = Group()
    user._open_loop_group = group
    metrics = user.metrics
    perf = time.perf_counter
    start = perf()
    try:
        for offset, planned in arrivals(user, index, users):
            due = start + offset
            delay = due - perf()
            if delay > 0:
                gevent.sleep(delay)
            if user._state == LOCUST_STATE_STOPPING or user.runtime.ending:
                break  # the test is stopping: no new requests; those in flight may finish
            if limit is not None and len(group) >= limit:
                metrics.dropped += 1
                continue
            group.spawn(_one, user, planned, due, ignore_eos)
        group.join()  # the trace ended or the test stops: requests in flight finish (Locust
        # kills the user when its --stop-timeout runs out)
    finally:
        if len(group):
            group.kill(block=False)


def _one(user: LLMUser, planned: PlannedRequest, due: float, ignore_eos: bool) -> None:
    if ignore_eos:
        user.chat(
            planned.messages,
            max_tokens=planned.max_tokens,
            planned=planned,
            scheduled=due,
            ignore_eos=True,
        )
    else:
        user.send_next(scheduled=due, planned=planned)
