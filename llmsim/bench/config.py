"""Everything a bench run needs, as one value the CLI builds and the library runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from llmsim.bench.slo import SLO


@dataclass
class BenchConfig:
    """One bench run's options as cli_support.build_config checked them; times in seconds."""

    users: int = 10
    # Open loop (rate or trace): requests follow a schedule; `users` is then one per process.
    rate: float | None = None
    arrival: str | None = None
    max_in_flight: int | None = None
    trace: str | None = None
    trace_speed: float | None = None
    prefix_tokens: int | None = None
    prefix_groups: int | None = None
    warmup_s: float = 0.0  # run this long first; headline figures cover the window after it
    goodput: list[Any] = field(default_factory=list)  # llmsim.bench.goodput.Objective
    sweep: int | None = None  # --sweep N: saturation, then N rates (llmsim/bench/sweep.py)
    oversaturation_limit: float | None = None  # a sweep level stops early past this in flight
    spawn_rate: float | None = None  # None: reach all users in about 10 s
    duration_s: float = 60.0
    model: str | None = None  # None: the user class's own default
    api_key: str | None = None
    prompt_tokens: str | None = None  # N or a distribution, e.g. normal:mean=512,stddev=64
    max_tokens: str | None = None  # the same
    stream: bool | None = None
    processes: int | None = None  # Locust worker processes on this machine (-1: one per core)
    locustfile: str | None = None  # None: llmsim's user for `api`
    api: str = "chat"  # chat, responses, anthropic, completions, embeddings, azure or gemini
    reports_dir: str = "reports"
    label: str | None = None
    slos: list[SLO] = field(default_factory=list)
    json_output: bool = False
    target: str | None = None  # None: start an embedded simulator
    master: bool = False
    expect_workers: int | None = None
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = 5557
    web: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = 8089
    # Requests in flight at the end get this long to finish. Longer is less biased against slow
    # requests but adds to the wall time: with ~6 s streams, 5 s keeps a run within its
    # duration plus 15 s while most of them still complete.
    stop_timeout_s: float = 5.0
    # Simulator options exactly as given on the command line (None = not given), and --config.
    simulator_flags: dict[str, Any] = field(default_factory=dict)
    simulator_config: str | None = None
    locust_args: list[str] = field(default_factory=list)  # passed through after `--`
    progress: bool = True
    # Write recording.jsonl through llmsim record (llmsim.record.bench_hook); None: with a
    # --target yes, for the embedded simulator no (see `records`).
    record: bool | None = None

    def records(self, embedded: bool) -> bool:
        """Whether this run writes recording.jsonl.

        By default a run against a --target does: that is the endpoint worth calibrating, and
        the recording costs nothing extra to ask for later. The embedded simulator's run does
        not unless asked (calibrating the simulator from itself is a test, not a use), and
        its figures then carry no proxy hop. Never with --master: remote workers could not
        reach a proxy on this machine's loopback."""
        if self.master:
            return False
        return not embedded if self.record is None else self.record

    @property
    def open_loop(self) -> bool:
        """Requests follow a schedule (--rate or --trace), not the replies."""
        return self.rate is not None or self.trace is not None

    @property
    def locust_users(self) -> int:
        """Users Locust runs: one per process in open loop (each takes its share of the rate)."""
        if self.open_loop:
            return max(1, self.processes or 1)
        return self.users

    @property
    def effective_spawn_rate(self) -> float:
        """Users started per second: all at once in open loop, else --spawn-rate, else a tenth
        of the users (at least 1), so that all have started within about 10 s."""
        if self.open_loop:
            return float(self.locust_users)  # all at once: the schedule paces the load
        if self.spawn_rate is not None:
            return self.spawn_rate
        return max(1.0, self.users / 10.0)

    @property
    def effective_api_key(self) -> str | None:
        """--api-key, else $OPENAI_API_KEY; None when neither is set."""
        return self.api_key if self.api_key is not None else os.environ.get("OPENAI_API_KEY")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as recorded in summary.json; the API key is never written."""
        return {
            "users": None if self.open_loop else self.users,
            "spawn_rate": None if self.open_loop else self.effective_spawn_rate,
            "rate": self.rate,
            "arrival": (self.arrival or "poisson") if self.rate is not None else None,
            "max_in_flight": self.max_in_flight,
            "trace": self.trace,
            "trace_speed": self.trace_speed,
            "prefix_tokens": self.prefix_tokens,
            "prefix_groups": self.prefix_groups,
            "warmup_s": self.warmup_s,
            "goodput": [str(o) for o in self.goodput],
            "sweep": self.sweep,
            "duration_s": self.duration_s,
            "model": self.model,
            "api_key": "set" if self.effective_api_key else None,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
            "processes": self.processes,
            "locustfile": self.locustfile,
            "api": self.api,
            "reports_dir": self.reports_dir,
            "label": self.label,
            "slo": [s.expr for s in self.slos],
            "target": self.target,
            "master": self.master,
            "expect_workers": self.expect_workers,
            "web": self.web,
            "web_port": self.web_port if self.web else None,
            "stop_timeout_s": self.stop_timeout_s,
            "simulator_flags": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.simulator_flags.items()
                if v is not None and v != ()
            },
            "simulator_config": self.simulator_config,
            "locust_args": list(self.locust_args),
        }
