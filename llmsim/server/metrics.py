"""/metrics: Prometheus text format with vLLM's metric names, from the shared stats.

A custom collector reads the numbers every worker wrote, so the figures are whole-server
whichever worker answers the scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from llmsim.engine.engine_stats import EngineStats
from llmsim.engine.stats import (
    E2E_BUCKETS,
    FINISH_REASONS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    Stats,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(
    name: str, doc: str, models: list[tuple[str, list[float]]], offset: int, bounds: tuple
) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=["model_name"])
    for model, v in models:
        counts = v[offset : offset + len(bounds) + 1]
        cumulative, buckets = 0.0, []
        for bound, c in zip((*(str(b) for b in bounds), "+Inf"), counts, strict=True):
            cumulative += c
            buckets.append((bound, cumulative))
        fam.add_metric([model], buckets, sum_value=v[offset + len(bounds) + 1])
    return fam


class LlmsimCollector(Collector):
    """Every metric of /metrics; with engine stats, the scheduler's `vllm:` series too."""

    def __init__(
        self, stats: Stats, engine: EngineStats | None = None, engine_model: str | None = None
    ) -> None:
        self.stats = stats
        self.engine = engine
        self.engine_model = engine_model or ""

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape, read from the shared tables at call time.

        Per model (only models with a nonzero value): request and token counters, finish
        reasons and the TTFT/TPOT/E2E histograms in seconds; running/waiting gauges, or with
        engine stats the per-replica scheduler series; then faults, errors, throttling and
        queue overflows.
        """
        s = self.stats
        lay = s.layout
        models = [(name, s.model_values(slot)) for name, slot in s.models()]
        models = [(n, v) for n, v in models if any(v)]
        m = lay.m

        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Requests generating now.", labels=["model_name"]
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Requests waiting for a slot.", labels=["model_name"]
        )
        prompt = CounterMetricFamily(
            "vllm:prompt_tokens", "Prompt tokens processed.", labels=["model_name"]
        )
        generation = CounterMetricFamily(
            "vllm:generation_tokens", "Generation tokens sent.", labels=["model_name"]
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Requests that finished.",
            labels=["model_name", "finished_reason"],
        )
        requests = CounterMetricFamily(
            "llmsim_requests", "Generating requests received.", labels=["model_name"]
        )
        failed = CounterMetricFamily(
            "llmsim_requests_failed", "Requests that ended in an error.", labels=["model_name"]
        )
        for name, v in models:
            if self.engine is None:  # engine mode reports the schedulers' queues instead
                running.add_metric([name], v[m["running"]])
                waiting.add_metric([name], v[m["waiting"]])
            prompt.add_metric([name], v[m["prompt_tokens"]])
            generation.add_metric([name], v[m["completion_tokens"]])
            requests.add_metric([name], v[m["requests"]])
            failed.add_metric([name], v[m["failed"]])
            for i, reason in enumerate(FINISH_REASONS):
                if v[lay.m_finish + i]:
                    success.add_metric([name, reason], v[lay.m_finish + i])
        if self.engine is not None:
            yield from self._engine_metrics()
        else:
            yield from (running, waiting)
        yield from (prompt, generation, success, requests, failed)
        yield _histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            models,
            lay.m_ttft,
            TTFT_BUCKETS,
        )
        yield _histogram(
            "vllm:time_per_output_token_seconds",
            "Time per output token after the first.",
            models,
            lay.m_tpot,
            TPOT_BUCKETS,
        )
        yield _histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency.",
            models,
            lay.m_e2e,
            E2E_BUCKETS,
        )
        errors = s.errors()
        faults = CounterMetricFamily("llmsim_faults", "Injected faults.", labels=["kind"])
        other = CounterMetricFamily("llmsim_errors", "Errors by kind.", labels=["kind"])
        for kind, n in errors.items():
            if kind.startswith("fault_"):
                faults.add_metric([kind[6:].replace("_", "-")], n)
            else:
                other.add_metric([kind], n)
        yield faults
        yield other
        totals = s.totals()
        throttled = CounterMetricFamily(
            "llmsim_throttled", "Requests refused by the rate limiter.", labels=["type"]
        )
        throttled.add_metric(["requests"], totals["throttled_requests"])
        throttled.add_metric(["tokens"], totals["throttled_tokens"])
        yield throttled
        yield CounterMetricFamily(
            "llmsim_queue_overflow", "Requests refused by a full queue.", totals["queue_overflow"]
        )

    def _engine_metrics(self) -> Iterator[Metric]:
        """vLLM's scheduler and cache series, one sample per replica (label `engine`)."""
        assert self.engine is not None
        model = self.engine_model
        labels = ["model_name", "engine"]
        gauges = {
            "running": GaugeMetricFamily(
                "vllm:num_requests_running", "Requests in a replica's batch.", labels=labels
            ),
            "waiting": GaugeMetricFamily(
                "vllm:num_requests_waiting", "Requests waiting to be scheduled.", labels=labels
            ),
            "kv_cache_usage": GaugeMetricFamily(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage (1 means 100 percent).",
                labels=labels,
            ),
        }
        counters = {
            "preemptions": CounterMetricFamily(
                "vllm:num_preemptions", "Preemptions (recompute).", labels=labels
            ),
            "prefix_cache_queries": CounterMetricFamily(
                "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                labels=labels,
            ),
            "prefix_cache_hits": CounterMetricFamily(
                "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                labels=labels,
            ),
        }  # fmt: skip
        for row in self.engine.replica_rows():
            key = [model, row["replica"]]
            for field, fam in gauges.items():
                fam.add_metric(key, row[field])
            for field, fam in counters.items():
                fam.add_metric(key, row[field])
        yield from gauges.values()
        yield from counters.values()
        hists = (
            ("queue_time", "vllm:request_queue_time_seconds", "Time waiting to be scheduled."),
            ("prefill_time", "vllm:request_prefill_time_seconds", "Time in prefill."),
            ("decode_time", "vllm:request_decode_time_seconds", "Time in decode."),
            ("inter_token", "vllm:inter_token_latency_seconds", "Time between tokens."),
            ("iteration_tokens", "vllm:iteration_tokens_total", "Tokens per engine step."),
        )
        for key, name, doc in hists:
            bounds, counts, total, _n = self.engine.histogram(key)
            fam = HistogramMetricFamily(name, doc, labels=["model_name"])
            cumulative, buckets = 0.0, []
            for bound, c in zip((*(str(b) for b in bounds), "+Inf"), counts, strict=True):
                cumulative += c
                buckets.append((bound, cumulative))
            fam.add_metric([model], buckets, sum_value=total)
            yield fam


def render_metrics(
    stats: Stats, engine: EngineStats | None = None, engine_model: str | None = None
) -> bytes:
    """The /metrics body (UTF-8 Prometheus text, served as CONTENT_TYPE), from a fresh registry
    holding only llmsim's collector, so no process or platform metrics are included."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LlmsimCollector(stats, engine, engine_model))
    return generate_latest(registry)
