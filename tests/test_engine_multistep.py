"""vLLM v0.6's multi-step scheduling and API-server front end in engine mode.

On a fake clock (the replica and the front end are pure bookkeeping), then through real
`llmsim serve --engine vllm` processes read by a real streaming client.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import threading

import httpx
import pytest

from llmsim.engine.frontend import FrontEnd
from llmsim.engine.replicas import ReplicaClock
from llmsim.engine.scheduler import MULTI_STEP_CHUNKED_ERROR, Replica, ReplicaConfig, Seq
from llmsim.settings import SERVE_OPTIONS
from test_engine_scheduler import FLAT, Log, add, run

from streaming_client import Timed, stream_chat

MODEL = "meta-llama/Meta-Llama-3-8B"
MULTI_STEP_FLAGS = (
    "num_scheduler_steps",
    "frontend_ms_per_request",
    "frontend_us_per_prompt_token",
    "frontend_handover_order",
)


def _multi_step(k: int = 4, **kw) -> tuple[Replica, Log]:
    cfg = ReplicaConfig(
        num_gpu_blocks=1000, max_model_len=4096, chunked_prefill=False,
        num_scheduler_steps=k, **kw,
    )  # fmt: skip
    return Replica(cfg, FLAT), Log()


def _deliveries(times: list[float]) -> list[int]:
    """How many tokens arrived at each distinct time, in order."""
    runs: list[int] = []
    last = None
    for t in times:
        if t == last:
            runs[-1] += 1
        else:
            runs.append(1)
            last = t
    return runs


# -- the front end on a fake clock ----------------------------------------------------------


def test_front_end_takes_a_burst_in_serially_and_hands_it_over_together() -> None:
    done: list[tuple[str, float]] = []

    def collect(job: str, t: float) -> None:
        done.append((job, t))

    fe = FrontEnd(per_request_s=0.010)
    for i in range(5):  # a burst, slightly staggered as a real client sends it
        fe.add(f"r{i}", 100, i * 0.001, collect)
    # Each intake is serial (r0's ends at 10 ms, r4's at 50 ms), but every hand-over queues
    # behind the intake of all that had arrived: the engine gets the burst at 50 ms.
    assert fe.next_done() == pytest.approx(0.050)
    fe.advance(0.049, collect)
    assert done == [] and len(fe) == 5
    fe.advance(0.051, collect)
    assert done == [(f"r{i}", pytest.approx(0.050)) for i in range(5)]

    done.clear()
    fe = FrontEnd(per_request_s=0.010, per_token_s=0.0001)
    fe.add("a", 0, 1.0, collect)  # alone: handed over when its own 10 ms are done
    fe.add("b", 100, 1.015, collect)  # after a's intake: 10 ms + 100 tokens x 0.1 ms
    fe.add("c", 0, 1.020, collect)  # arrives during b's intake: queued behind it
    fe.advance(2.0, collect)
    assert done == [("a", pytest.approx(1.010)), ("b", pytest.approx(1.045)),
                    ("c", pytest.approx(1.045))]  # fmt: skip
    assert fe.next_done() is None and len(fe) == 0


def _handover(order: str, arrivals: list[float], seed: int = 1) -> list[tuple[str, float]]:
    """The (job, hand-over time) of requests r0, r1, ... arriving at `arrivals`, 10 ms each."""
    done: list[tuple[str, float]] = []
    fe = FrontEnd(per_request_s=0.010, order=order, rng=random.Random(seed))
    for i, t in enumerate(arrivals):
        fe.add(f"r{i}", 100, t, lambda job, at: done.append((job, at)))
    fe.advance(1e9, lambda job, at: done.append((job, at)))
    assert len(fe) == 0 and fe.next_done() is None
    return done


BURST_50 = [i * 0.0001 for i in range(50)]  # 50 sent within 5 ms: one burst, 500 ms of intake


def test_a_random_hand_over_is_a_seeded_permutation_of_the_burst() -> None:
    fifo = _handover("fifo", BURST_50)
    shuffled = _handover("random", BURST_50, seed=1)
    names = [f"r{i}" for i in range(50)]
    assert [j for j, _ in fifo] == names  # FIFO: as sent
    # Random: every request once, nothing lost or duplicated, all at the burst's end...
    assert sorted(j for j, _ in shuffled) == sorted(names)
    assert all(t == pytest.approx(0.5) for _, t in shuffled + fifo)
    # ...in another order (a 50-request permutation is the identity with odds 1 in 50!), the
    # same under the same seed and not under another.
    order = [j for j, _ in shuffled]
    assert order != names
    assert [j for j, _ in _handover("random", BURST_50, seed=1)] == order
    assert [j for j, _ in _handover("random", BURST_50, seed=2)] != order
    with pytest.raises(ValueError, match="hand-over order"):
        FrontEnd(order="lifo")


def test_a_random_hand_over_leaves_requests_that_arrive_apart_in_order() -> None:
    # A request alone: after its own intake, as with FIFO.
    assert _handover("random", [2.0]) == [("r0", pytest.approx(2.010))]
    # Poisson-like arrivals, each after the previous one's intake ended: one hand-over each,
    # so nothing to reorder, whatever the seed.
    rng = random.Random(7)
    t, spaced = 0.0, []
    for _ in range(40):
        t += 0.011 + rng.expovariate(50.0)
        spaced.append(t)
    for seed in range(5):
        got = _handover("random", spaced, seed)
        assert got == _handover("fifo", spaced), seed
        assert [j for j, _ in got] == [f"r{i}" for i in range(40)]
    # Two bursts apart: each is shuffled within itself, the second stays behind the first.
    two = _handover("random", [0.0, 0.001, 0.002, 1.0, 1.001, 1.002], seed=3)
    assert sorted(j for j, _ in two[:3]) == ["r0", "r1", "r2"]
    assert sorted(j for j, _ in two[3:]) == ["r3", "r4", "r5"]


def test_replica_with_a_random_hand_over_queues_a_permutation_reproducibly() -> None:
    def waiting(order: str, seed: int) -> list[str]:
        cfg = ReplicaConfig(
            num_gpu_blocks=1000, max_model_len=4096, chunked_prefill=False,
            frontend_s_per_request=0.010, frontend_handover_order=order,
        )  # fmt: skip
        r = Replica(cfg, FLAT, rng=random.Random(seed))
        for i in range(30):
            r.add(Seq(f"r{i}", 8, 2), i * 0.0001)
        r.frontend.advance(1.0, r._join)  # the burst reaches the waiting queue
        assert all(s.engine_at == pytest.approx(0.300) for s in r.waiting)
        return [s.request_id for s in r.waiting]

    names = [f"r{i}" for i in range(30)]
    assert waiting("fifo", 1) == waiting("fifo", 2) == names
    got = waiting("random", 1)
    assert sorted(got) == sorted(names) and got != names
    assert waiting("random", 1) == got and waiting("random", 2) != got


def test_requests_reach_the_waiting_queue_after_the_front_end() -> None:
    r, log = _multi_step(k=1, frontend_s_per_request=0.010)
    seqs = [add(r, log, f"r{i}", 8, 2) for i in range(4)]
    assert r.step(0.0) is None and not r.waiting  # nothing has reached the engine yet
    assert r.next_intake() == pytest.approx(0.040)
    dt = r.step(0.040)
    assert dt is not None and all(s.state == "running" for s in seqs)
    # The engine's own queue time starts at the hand-over, as vLLM stamps arrival_time there.
    assert all(s.engine_at == pytest.approx(0.040) for s in seqs)


# -- multi-step rounds on a fake clock ------------------------------------------------------


def test_a_round_streams_its_tokens_at_its_end_and_prefills_wait_for_it() -> None:
    r, log = _multi_step(k=4)
    add(r, log, "a", 16, 9)
    now = 0.0
    prefill = r.step(now)  # a prefill step stays one step
    now += prefill
    r.finish_step(now)
    round_s = r.step(now)  # then a round of 4 decode steps
    assert round_s == pytest.approx(4 * FLAT.step_s(1, 1, 17), rel=0.05)
    add(r, log, "b", 16, 2, now=now + round_s / 2)  # arrives mid-round
    now += round_s
    r.finish_step(now)
    # b is admitted only now, in a prefill step of its own (V0: no decodes beside it).
    b_prefill = r.step(now)
    now += b_prefill
    r.finish_step(now)
    # Its first token is held until the next step (the first of the next round) ends.
    assert "b" not in log.tokens
    round_2 = r.step(now)
    assert r.release_at == pytest.approx(now + FLAT.step_s(2, 2, 17 + 4 + 17))
    now += round_2
    r.finish_step(now)
    assert log.tokens["b"][0] == pytest.approx(now - round_2 + FLAT.step_s(2, 2, 38))
    while (dt := r.step(now)) is not None:
        now += dt
        r.finish_step(now)
    assert _deliveries(log.tokens["a"]) == [1, 4, 4]
    assert _deliveries(log.tokens["b"]) == [1, 1]  # b's last token came with its round
    # a's prefill, a round, b's prefill, a round of both (b done after its first step of it).
    assert r.counters.iterations == 1 + 4 + 1 + 4


def test_a_prefill_steps_first_tokens_come_when_the_next_step_ends() -> None:
    # Two prompts that do not fit one prefill step (budget 4096): two prefill steps, then a
    # round. vLLM V0 streams a step's outputs while the next step runs (async output
    # processing): the first step's first token comes when the second step ends, the second
    # step's when the round's first step ends.
    r, log = _multi_step(k=4, max_num_batched_tokens=4096)
    add(r, log, "a", 3000, 6)
    add(r, log, "b", 3000, 6)
    now = 0.0
    first = r.step(now)
    now += first
    r.finish_step(now)
    assert not log.tokens and r.release_at is None  # held; when is not known yet
    second = r.step(now)
    assert r.release_at == pytest.approx(now + second)
    now += second
    r.finish_step(now)
    assert log.tokens["a"] == [pytest.approx(first + second)]
    assert "b" not in log.tokens
    round_s = r.step(now)
    step_1 = FLAT.step_s(2, 2, 3001 + 3001)  # a and b, each attending its prompt and token
    assert r.release_at == pytest.approx(now + step_1)
    now += round_s
    r.finish_step(now)
    assert log.tokens["b"][0] == pytest.approx(first + second + step_1)
    run(r)
    assert len(log.tokens["a"]) == len(log.tokens["b"]) == 6
    assert set(log.finished) == {"a", "b"}


def test_held_first_tokens_go_out_at_once_when_nothing_follows() -> None:
    r, log = _multi_step(k=4)
    a = add(r, log, "a", 100, 1)  # one token: done in its prefill step
    now = r.step(0.0)
    r.finish_step(now)
    assert "a" not in log.tokens and a.state == "done" and not r.running
    assert r.step(now) is None  # the engine idles: the token and the finish go out now
    assert log.tokens["a"] == [pytest.approx(now)] and log.finished["a"] == pytest.approx(now)
    assert a.first_token_at == pytest.approx(now)


def test_single_step_scheduling_sends_first_tokens_at_the_prefill_steps_end() -> None:
    r, log = _multi_step(k=1)
    add(r, log, "a", 100, 3)
    now = r.step(0.0)
    r.finish_step(now)
    assert log.tokens["a"] == [pytest.approx(now)] and r.release_at is None


class _Loop:
    """The stream loop's `add`, recorded: the deadlines an entry asked to fire at."""

    def __init__(self) -> None:
        self.added: list[float] = []

    def add(self, entry: object, deadline: float) -> None:
        self.added.append(deadline)


def test_the_server_driver_wakes_mid_round_to_release_held_first_tokens() -> None:
    r, log = _multi_step(k=4)
    clock = ReplicaClock(r, _Loop())
    clock.submit(Seq("a", 16, 9, listener=log), 0.0)  # a prefill step starts at once
    prefill_end = clock.due
    assert prefill_end == pytest.approx(FLAT.step_s(16, 0, 0, [(16, 0)]))
    # At its end the round starts; the entry is due first when the round's first step ends.
    nxt = clock.fire(prefill_end, prefill_end)
    step_1 = FLAT.step_s(1, 1, 17)
    assert nxt == pytest.approx(prefill_end + step_1) and "a" not in log.tokens
    after = clock.fire(nxt, nxt)  # the first token now, the round's end next
    assert log.tokens["a"] == [pytest.approx(prefill_end + step_1)]
    assert after == pytest.approx(prefill_end + 4 * step_1, rel=0.05)
    clock.fire(after, after)
    assert _deliveries(log.tokens["a"]) == [1, 4]


def test_multi_step_refuses_chunked_prefill() -> None:
    with pytest.raises(ValueError, match="Chunked prefill is not supported with multi-step"):
        Replica(ReplicaConfig(num_scheduler_steps=2, chunked_prefill=True), FLAT)


# -- settings and the CLI -------------------------------------------------------------------


def test_the_hand_over_order_is_a_setting_that_reaches_the_replicas() -> None:
    from llmsim.server.config import vllm_config
    from llmsim.settings import load_settings

    s = load_settings(env={"LLMSIM_FRONTEND_HANDOVER_ORDER": "random"})
    assert s.frontend_handover_order == "random"
    assert vllm_config(s).replica_config().frontend_handover_order == "random"
    assert load_settings(env={}).frontend_handover_order == "fifo"
    with pytest.raises(ValueError, match="fifo, random"):
        load_settings(env={}, overrides={"frontend_handover_order": "lifo"})


def test_flags_are_one_block_of_the_settings_table_and_in_the_help() -> None:
    names = [o.name for o in SERVE_OPTIONS]
    i = names.index(MULTI_STEP_FLAGS[0])
    assert tuple(names[i : i + len(MULTI_STEP_FLAGS)]) == MULTI_STEP_FLAGS
    run = [sys.executable, "-m", "llmsim", "serve", "--port", "0"]
    procs = {
        "help": subprocess.Popen([*run, "--help"], stdout=subprocess.PIPE, text=True),
        "both": subprocess.Popen(
            [*run, "--engine", "vllm", "--num-scheduler-steps", "8"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    }
    out = {k: p.communicate(timeout=60) for k, p in procs.items()}
    for flag in ("--num-scheduler-steps", "--frontend-ms-per-request",
                 "--frontend-us-per-prompt-token", "--frontend-handover-order fifo|random",
                 "LLMSIM_NUM_SCHEDULER_STEPS"):  # fmt: skip
        assert flag in out["help"][0].replace("\n", " ").replace("  ", ""), flag
    err = out["both"][1]
    assert procs["both"].returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert MULTI_STEP_CHUNKED_ERROR in err and "--no-enable-chunked-prefill" in err, err


# -- a real server -------------------------------------------------------------------------

# 40 ms of front end a request: a burst of 6 reaches the engine after ~240 ms, far above what
# the engine itself takes for tiny prompts (~12 ms a step) and above a loaded machine's noise.
FRONTEND_MS = 40.0
BURST = 6


@pytest.fixture(scope="module")
def multi_step_server():
    from conftest import start_server

    server = start_server(
        "--engine", "vllm", "--seed", "1", "--no-enable-chunked-prefill",
        "--num-scheduler-steps", "4", "--frontend-ms-per-request", str(FRONTEND_MS),
        "--frontend-handover-order", "random",
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()
        if server.proc.stdout:
            server.proc.stdout.close()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=20)) as c:
        yield c


def _queue_time(client: httpx.Client, url: str) -> tuple[float, float]:
    total = count = 0.0
    for line in client.get(url + "/metrics").text.splitlines():
        if line.startswith("vllm:request_queue_time_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:request_queue_time_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def test_server_streams_a_round_of_tokens_at_once(multi_step_server, client) -> None:
    base = multi_step_server.base_url
    body = {"model": MODEL, "max_tokens": 13, "ignore_eos": True,
            "messages": [{"role": "user", "content": "count"}]}  # fmt: skip
    r = stream_chat(base, body, client)
    assert r.status == 200 and r.done
    log = client.get(f"{multi_step_server.url}/llmsim/requests/{r.headers['x-request-id']}")
    events = [e for e in log.json()["events"] if e["tokens"] > 0]
    per_step: dict[float, int] = {}
    for e in events:  # every event of a round is planned at the round's end
        per_step[e["planned_ms"]] = per_step.get(e["planned_ms"], 0) + e["tokens"]
    assert list(per_step.values()) == [1, 4, 4, 4], per_step
    engine = client.get(multi_step_server.url + "/llmsim/stats").json()["engine"]
    assert engine["num_scheduler_steps"] == 4 and engine["frontend_ms_per_request"] == FRONTEND_MS
    assert engine["replicas"][0]["in_frontend"] == 0 and not engine["chunked_prefill"]
    assert engine["frontend_handover_order"] == "random"
    gaps = [b - a for a, b in zip(list(per_step), list(per_step)[1:], strict=False)]
    # A round is 4 steps of ~11 ms (llama-3-8b-a100, one sequence).
    assert all(30 < g < 80 for g in gaps[1:]), gaps


def test_server_front_end_holds_a_burst_for_about_its_length(multi_step_server, client) -> None:
    base = multi_step_server.base_url
    url = multi_step_server.url

    def body(i: int) -> dict:
        return {"model": MODEL, "max_tokens": 2, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"burst {i}"}]}  # fmt: skip

    alone = stream_chat(base, body(-1), client)
    assert alone.ttft_s is not None and alone.ttft_s > FRONTEND_MS / 1000
    before = _queue_time(client, url)
    out: list[Timed | None] = [None] * BURST

    def run(i: int) -> None:
        out[i] = stream_chat(base, body(i), client)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    ttfts = sorted(r.ttft_s for r in out if r is not None and r.ttft_s is not None)
    assert len(ttfts) == BURST
    burst_s = BURST * FRONTEND_MS / 1000
    # The front end serves the burst's handlers together: the last one reaches the engine
    # after the whole burst's work, and most of them only near its end.
    assert ttfts[-1] > 0.85 * burst_s, ttfts
    assert statistics.median(ttfts) > 0.5 * burst_s, ttfts
    assert ttfts[-1] < burst_s + 5.0, ttfts
    # vLLM's queue time starts at the engine: the front end's wait is not in it.
    total, count = (a - b for a, b in zip(_queue_time(client, url), before, strict=True))
    assert count == BURST
    assert total / count < 0.5 * burst_s, total / count
