"""Per-environment state: the metrics, the master's per-second samples, and the results files."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import gevent

from llmsim.load.metrics import HISTOGRAMS, LLMMetrics
from llmsim.load.results import ResultsWriter
from llmsim.load.timeline import STEP_S, Timeline

logger = logging.getLogger(__name__)

SCHEMA = "llmsim.locust.metrics/1"

DEFINITIONS = {
    "ttft_ms": "request start to the first chunk with output (content, reasoning or tool call)",
    "itl_ms": "each gap between consecutive output chunks (a distribution over all gaps)",
    "tpot_ms": "(e2e - ttft) / (output_tokens - 1), per request",
    "e2e_ms": "request start to the last byte of the response",
    "fidelity_ttft_ms": "measured TTFT minus the server's x-llmsim-ttft-ms plan",
    "output_tokens_per_s": "per request: output_tokens / e2e",
    "schedule_lag_ms": "open loop: actual start minus scheduled start (latencies count from the "
    "scheduled start)",
    "tokens": "from the server's usage when sent, else counted (chunks); see tokens.source",
}


class LLMRuntime:
    """One Locust environment's llmsim state: metrics, results files, per-second samples of users
    and in-flight requests, the web UI's timeline, and each user class's resolved settings.
    """

    def __init__(self, environment: Any) -> None:
        self.environment = environment
        self.metrics = LLMMetrics()
        self.results_dir: str | None = None
        self.writer: ResultsWriter | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.samples: dict[int, tuple[int, int]] = {}  # second -> (users, in-flight)
        self.timeline = Timeline()  # the web UI's charts
        self._sampler: gevent.Greenlet | None = None
        # Set when a headless run's time is up (plugin._end_softly): each LLMUser finishes the
        # request it is in and stops, rather than all being stopped by Locust at one instant.
        self.ending = False
        self._configs: dict[type, Any] = {}  # user class -> its resolved LLMConfig, per run
        self.hooked = False  # plugin._on_init has registered this environment's listeners

    @property
    def is_worker(self) -> bool:
        """True in a distributed run's worker: it ships metrics to the master, writes no files."""
        from locust.runners import WorkerRunner

        return isinstance(self.environment.runner, WorkerRunner)

    def config_for(self, user_class: type) -> Any:
        """The user class's settings, resolved once per run (a user gets its own copy).

        Resolving reads ~25 options and parses distributions: half of what constructing a
        user costs, and Locust constructs each second's batch of users back to back.
        """
        from llmsim.load.options import resolve_config

        cfg = self._configs.get(user_class)
        if cfg is None:
            cfg = self._configs[user_class] = resolve_config(
                user_class, self.environment.parsed_options
            )
        return copy.copy(cfg)

    # ------------------------------------------------------------------ run lifecycle

    def on_test_start(self, results_dir: str | None) -> None:
        """Start a new run: metrics, samples and timeline cleared, settings resolved afresh.

        Outside workers, requests.csv also starts over (when `results_dir` is set) and the
        once-a-second sampler starts.
        """
        self.results_dir = results_dir
        self.metrics.reset()
        self.metrics.remote_in_flight.clear()
        self.metrics.keep_rows = bool(results_dir)
        self.samples = {}
        self.timeline.reset()
        self.start_time = time.time()
        self.end_time = None
        self.ending = False
        self._configs.clear()  # the web UI may have changed the options
        if self.is_worker:
            return
        if results_dir:
            if self.writer is None or str(self.writer.dir) != results_dir:
                self.writer = ResultsWriter(results_dir)
            self.writer.start()
        self._stop_sampler()
        self._sampler = gevent.spawn(self._sample_loop)

    def on_test_stop(self) -> None:
        """Stamp the run's end (the first stop only); outside workers, take a last sample, stop the
        sampler and write the results.
        """
        if self.end_time is None:
            self.end_time = time.time()
        if self.is_worker:
            return
        self._sample()
        self._stop_sampler()
        self.write_results()

    def write_results(self, final: bool = False) -> None:
        """Flush rows and rewrite llm_metrics.json (cheap: called at every end point)."""
        if self.is_worker or self.writer is None or self.start_time is None:
            return
        try:
            self._drain_rows()
            self.writer.write_summary(self.summary())
            if final:
                self.writer.close()
        except OSError as e:
            logger.error("llmsim: could not write results to %s: %s", self.results_dir, e)

    def _drain_rows(self) -> None:
        rows = self.metrics.rows
        if rows and self.writer is not None:
            self.metrics.rows = []
            self.writer.write_rows(rows)

    def _sample(self, second: int | None = None) -> None:
        """Users and requests in flight now, as the figure of wall-clock `second` (default:
        the one in progress). A second already sampled keeps its larger figures, so the last
        sample at test stop (everyone stopped) does not erase the users of its second."""
        runner = self.environment.runner
        users = runner.user_count if runner is not None else 0
        sec = int(time.time()) if second is None else second
        self.forget_gone_workers()
        in_flight = self.metrics.total_in_flight()
        old_users, old_in_flight = self.samples.get(sec, (0, 0))
        self.samples[sec] = (max(users, old_users), max(in_flight, old_in_flight))

    def forget_gone_workers(self) -> None:
        """Master: zero the in-flight gauge of every worker that quit or went missing.

        A worker reports its gauge with its stats; one killed mid-run (or quitting while the
        others go on) reports no more, and its last figure would count as in flight forever.
        A missing worker that comes back reports its gauge again.
        """
        from locust.runners import STATE_MISSING

        clients = getattr(self.environment.runner, "clients", None)
        if clients is None:
            return
        remote = self.metrics.remote_in_flight
        for client_id in remote:
            node = clients.get(client_id)
            if node is None or node.state == STATE_MISSING:
                remote[client_id] = 0

    def _sample_loop(self) -> None:
        # Aligned to wall-clock seconds so the series lines up with per-second request counts.
        last_point = 0.0
        while True:
            gevent.sleep(1.0 - (time.time() % 1.0))
            # Woken at the turn of a second, the sample is the state at the end of the second
            # that just closed: the series' requests and tokens are those completed in it, and
            # bench's in-flight column is its end too (keyed by the new second, users lagged
            # both by one). round(), as the wake-up may come a hair early or late.
            self._sample(round(time.time()) - 1)
            now = time.time()
            if now - last_point >= STEP_S - 0.05:
                last_point = now
                runner = self.environment.runner
                self.timeline.sample(self.metrics, runner.user_count if runner else 0, now)
            self._drain_rows()
            if self.writer is not None:
                self.writer.flush()

    def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None

    # ------------------------------------------------------------------ reading

    def summary(self) -> dict[str, Any]:
        """The llm_metrics.json document: run times and duration (s), request, error and token
        counts, throughput, peak users, each histogram's summary, ITL bucket counts, the
        per-second series and the metrics' definitions.
        """
        m = self.metrics
        end = self.end_time or time.time()
        start = self.start_time or end
        env = self.environment
        user_classes = sorted({cls.__name__ for cls in (env.user_classes or [])})
        return {
            "schema": SCHEMA,
            "start_time": round(start, 3),
            "end_time": round(end, 3),
            "duration_s": round(end - start, 3),
            "host": env.host,
            "user_classes": user_classes,
            "requests": {"total": m.requests, "ok": m.requests - m.failed, "failed": m.failed},
            "errors": dict(sorted(m.errors.items())),
            "error_samples": dict(sorted(m.error_samples.items())),
            "dropped": m.dropped,
            "tokens": {
                "input": m.input_tokens,
                "output": m.output_tokens,
                "source": m.token_source(),
                "requests_by_source": dict(m.token_sources),
            },
            "throughput": m.run_rates(start, end),
            "users": {"max": max((u for u, _ in self.samples.values()), default=0)},
            "metrics": {name: m.hist[name].summary() for name in HISTOGRAMS},
            # ITL has no per-request column in requests.csv: its bucket counts travel here so
            # reports can draw the whole distribution.
            "histograms": {"itl_ms": sorted(m.hist["itl_ms"].counts.items())},
            "series": self.series(start, end),
            "definitions": DEFINITIONS,
        }

    def series(self, start: float, end: float) -> dict[str, list[Any]]:
        """Per wall-clock second: users and in-flight (sampled here at the end of that second),
        and requests, failures and tokens completed in that second (from every process)."""
        out: dict[str, list[Any]] = {
            k: []
            for k in (
                "t",
                "users",
                "in_flight",
                "requests",
                "failures",
                "input_tokens",
                "output_tokens",
            )
        }
        per_second = self.metrics.per_second
        last_users = (0, 0)
        for sec in range(int(start), int(end) + 1):
            users, in_flight = self.samples.get(sec, last_users)
            last_users = (users, in_flight)
            slot = per_second.get(sec, (0, 0, 0, 0))
            out["t"].append(sec)
            out["users"].append(users)
            out["in_flight"].append(in_flight)
            out["requests"].append(slot[0])
            out["failures"].append(slot[1])
            out["input_tokens"].append(slot[2])
            out["output_tokens"].append(slot[3])
        return out


def get_runtime(environment: Any) -> LLMRuntime:
    """The environment's LLMRuntime, created on first use and kept on the environment."""
    rt = getattr(environment, "_llmsim_runtime", None)
    if rt is None:
        rt = LLMRuntime(environment)
        environment._llmsim_runtime = rt
    return rt


def get_metrics(environment: Any) -> LLMMetrics:
    """The environment's LLMMetrics (what the bench's progress locustfile reads)."""
    return get_runtime(environment).metrics
