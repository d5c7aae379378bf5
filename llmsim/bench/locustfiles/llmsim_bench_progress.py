"""Loaded into Locust next to the user's locustfile: reports live progress to `llmsim bench`.

The master (or standalone) process writes one JSON line per second to the file descriptor named
by LLMSIM_BENCH_PROGRESS_FD, plus a line for each run start/stop and CPU warning. A pipe rather
than Locust's console table, because the parent renders its own progress line and needs the
events (not text) to know when a web-UI run stopped.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gevent
from locust import events
from locust.runners import MasterRunner, WorkerRunner

# Importing llmsim's Locust side registers its --llm-... arguments and metrics even when the
# user's own locustfile does not import it, so bench can always pass them.
import llmsim.locust  # noqa: F401

INTERVAL_S = 1.0


def _writer() -> Any:
    fd = os.environ.get("LLMSIM_BENCH_PROGRESS_FD")
    if not fd:
        return None
    try:
        return os.fdopen(int(fd), "w", buffering=1, encoding="utf-8")
    except (OSError, ValueError):
        return None


class _Progress:
    def __init__(self, environment: Any) -> None:
        self.env = environment
        self.out = _writer()
        self.started: float | None = None

    def send(self, kind: str, **data: Any) -> None:
        if self.out is None:
            return
        try:
            self.out.write(json.dumps({"event": kind, "time": time.time(), **data}) + "\n")
        except (OSError, ValueError):
            self.out = None  # the parent is gone; Locust goes on without us

    def ttft_entry(self) -> Any:
        rows = [e for (_, method), e in self.env.stats.entries.items() if method == "TTFT"]
        return max(rows, key=lambda e: e.num_requests, default=None)

    def llm_rates(self) -> dict[str, Any]:
        metrics = _llm_metrics(self.env)
        if metrics is None:
            return {}
        out: dict[str, Any] = dict(metrics.current_rates())
        out["in_flight"] = metrics.total_in_flight()
        out["output_tokens"] = metrics.output_tokens
        out["llm_requests"] = metrics.requests
        out["llm_failed"] = metrics.failed
        out["errors"] = dict(metrics.errors)
        out["error_samples"] = dict(metrics.error_samples)
        out["dropped"] = metrics.dropped
        return out

    def sample(self) -> dict[str, Any]:
        runner = self.env.runner
        total = self.env.stats.total
        ttft = self.ttft_entry()
        data: dict[str, Any] = {
            "state": runner.state,
            "users": runner.user_count,
            "requests": total.num_requests,
            "failures": total.num_failures,
            "rps": round(total.current_rps, 3),
            "fail_per_s": round(total.current_fail_per_sec, 3),
            "cpu": round(runner.current_cpu_usage, 1),
        }
        if ttft is not None and ttft.num_requests:
            data["ttft_p50"] = ttft.get_current_response_time_percentile(0.5)
            data["ttft_p95"] = ttft.get_current_response_time_percentile(0.95)
        if isinstance(runner, MasterRunner):
            data["workers"] = len(runner.clients.ready) + len(runner.clients.running)
            data["worker_cpu"] = [round(c.cpu_usage, 1) for c in runner.clients.values()]
        data.update(self.llm_rates())
        return data

    def loop(self) -> None:
        while self.out is not None:
            gevent.sleep(INTERVAL_S)
            try:
                self.send("sample", **self.sample())
            except Exception as exc:  # progress must never take the load test down
                self.send("plugin_error", error=repr(exc))


def _workload(environment: Any) -> dict[str, Any]:
    """The resolved workload of each llmsim user class (model, lengths, streaming), key left out:
    what the run actually asked for, whether it came from bench's flags, the class or the UI."""
    try:
        from llmsim.load.apis import OpenAIEmbeddingsUser
        from llmsim.load.base import LLMUser
        from llmsim.load.options import resolve_config
    except ImportError:
        return {}
    out: dict[str, Any] = {}
    for cls in environment.user_classes or []:
        if not issubclass(cls, LLMUser):
            continue
        try:
            cfg = resolve_config(cls, environment.parsed_options)
        except (ValueError, TypeError):
            continue
        out[cls.__name__] = {
            "model": cfg.model,
            "prompt_tokens": str(cfg.prompt_tokens),
            "max_tokens": str(cfg.max_tokens),
            "stream": cfg.stream,
            "ignore_eos": cfg.ignore_eos,
            "include_usage": cfg.include_usage,
            "dataset": cfg.dataset,
            "turns": cfg.turns,
        }
        if issubclass(cls, OpenAIEmbeddingsUser):
            # An embeddings body has no stream, max_tokens, ignore_eos or stream_options
            # (OpenAIEmbeddingsUser.build_body), whatever the options resolved to.
            out[cls.__name__].update(
                stream=False, max_tokens=None, ignore_eos=None, include_usage=None
            )
    return out


def _llm_metrics(environment: Any) -> Any:
    # Looked up softly: a change on the Locust side costs the live tokens/s figure, not the run.
    try:
        from llmsim.load.runtime import get_metrics
    except ImportError:
        return None
    metrics = get_metrics(environment)
    return metrics if hasattr(metrics, "current_rates") else None


@events.init.add_listener
def _on_init(environment: Any, **_kw: Any) -> None:
    # libev caches the loop's clock: after a blocking init (encodings loaded, datasets read),
    # the --run-time timer Locust sets next would start from a stale "now" and cut the run
    # short by as long as init blocked.
    gevent.get_hub().loop.update_now()
    if isinstance(environment.runner, WorkerRunner):
        return
    progress = _Progress(environment)
    if progress.out is None:
        return
    environment.llmsim_bench_progress = progress
    progress.send("init", web=environment.web_ui is not None)

    @environment.events.test_start.add_listener
    def _on_start(**_: Any) -> None:
        progress.started = time.time()
        progress.send("test_start", workload=_workload(environment))

    @environment.events.test_stop.add_listener
    def _on_stop(**_: Any) -> None:
        progress.send("test_stop", started=progress.started, **progress.sample())

    @environment.events.cpu_warning.add_listener
    def _on_cpu(environment: Any, cpu_usage: float, message: str | None = None, **_: Any) -> None:
        progress.send("cpu_warning", cpu=round(cpu_usage, 1), where=message or "master")

    @environment.events.quit.add_listener
    def _on_quit(exit_code: int, **_: Any) -> None:
        progress.send("quit", exit_code=exit_code)

    gevent.spawn(progress.loop)
