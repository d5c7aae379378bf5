"""From `llmsim bench` / `llmsim worker` options to a BenchConfig, with one-line usage errors.

The click declarations live in llmsim/cli.py; the checks live here so they are testable
without a subprocess and the CLI stays a thin shell.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from llmsim.bench.config import BenchConfig
from llmsim.bench.durations import parse_duration
from llmsim.bench.errors import BenchError
from llmsim.bench.slo import SLOError, parse_slo
from llmsim.settings import load_settings


def _length(flag: str, value: str | None) -> str | None:
    if value is None:
        return None
    from llmsim.load.workload import parse_distribution

    try:
        parse_distribution(value)
    except ValueError as exc:
        raise click.UsageError(f"{flag} {value!r}: {exc}") from None
    return value.strip()


def _duration(flag: str, value: str, minimum: float) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.UsageError(f"{flag}: {exc}") from None
    if seconds < minimum:
        raise click.UsageError(f"{flag} must be at least {minimum:g}s, got {value!r}")
    return seconds


def build_config(
    opts: Mapping[str, Any], simulator_flags: Mapping[str, Any], locust_args: Sequence[str]
) -> BenchConfig:
    """Check the options together (as a user would expect) and build the run's configuration."""
    host = simulator_flags.get("host")
    if host and "://" in str(host):
        raise click.UsageError(
            f"--host {host}: bench's --host is the embedded simulator's bind address; "
            "to benchmark a server at a URL use --target URL"
        )
    open_loop = opts.get("rate") is not None or opts.get("trace") is not None
    if opts["users"] is not None and open_loop:
        which = "--rate" if opts.get("rate") is not None else "--trace"
        raise click.UsageError(
            f"--users and {which} do not mix: {which} sets the load (open loop), --users a "
            "number of users waiting for replies (closed loop)"
        )
    sweep = opts.get("sweep")
    if sweep is not None:
        if sweep < 1:
            raise click.UsageError(f"--sweep must be at least 1 rate, got {sweep}")
        for flag, key in (("--rate", "rate"), ("--trace", "trace"), ("--web", "web")):
            if opts.get(key):
                raise click.UsageError(f"--sweep and {flag} do not mix: the sweep sets the load")
    from llmsim.bench.sweep import SATURATION_USERS

    default_users = SATURATION_USERS if sweep else 10
    users = default_users if opts["users"] is None else opts["users"]
    if users < 1:
        raise click.UsageError(f"--users must be at least 1, got {users}")
    _open_loop_checks(opts)
    if opts.get("record") and opts.get("master"):
        raise click.UsageError(
            "--record and --master do not mix: remote workers cannot reach a recorder on this "
            "machine's loopback (run llmsim record in front of the target instead)"
        )
    if opts["spawn_rate"] is not None and opts["spawn_rate"] <= 0:
        raise click.UsageError(f"--spawn-rate must be above 0, got {opts['spawn_rate']:g}")
    processes = opts["processes"]
    if processes is not None and (processes == 0 or processes < -1):
        raise click.UsageError(
            f"--processes must be -1 (one per core) or at least 1, got {processes}"
        )
    if processes == -1:
        processes = os.cpu_count() or 1
    if opts["master"] and processes:
        raise click.UsageError("--master and --processes do not mix: workers come from elsewhere")
    for flag, key in (("--web-port", "web_port"), ("--master-bind-port", "master_bind_port")):
        # Checked here: a port out of range made the pre-flight bind raise OverflowError (a
        # traceback), and 0 would have Locust listen where nobody (the browser, the workers)
        # could be told to connect.
        port = opts.get(key)
        if port is not None and not 1 <= port <= 65535:
            raise click.UsageError(f"{flag} must be a port number from 1 to 65535, got {port}")
    if opts["expect_workers"] is not None and not opts["master"]:
        raise click.UsageError("--expect-workers needs --master")
    if opts["expect_workers"] is not None and opts["expect_workers"] < 1:
        raise click.UsageError(f"--expect-workers must be at least 1, got {opts['expect_workers']}")
    sim_given = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in simulator_flags.items()
        if v is not None and v != ()
    }
    api = opts.get("api") or "chat"
    if opts["locustfile"] and api != "chat":
        raise click.UsageError(
            f"--api {api} picks one of llmsim's users; with --locustfile your file has its own"
        )
    if opts["target"] and (sim_given or opts["config"]):
        names = ", ".join("--" + k.replace("_", "-") for k in sim_given) or "--config"
        raise click.UsageError(
            f"{names}: simulator options need the embedded simulator; drop --target to use it"
        )
    slos = []
    for expr in opts["slo"]:
        try:
            slos.append(parse_slo(expr))
        except SLOError as exc:
            raise click.UsageError(str(exc)) from None
    if not opts["target"]:
        # Resolve once now so a bad simulator option is a usage error here, not a dead server.
        load_settings(config=opts["config"], overrides=sim_given)
    goodput = []
    if opts.get("goodput"):
        from llmsim.bench.goodput import parse_goodput

        try:
            goodput = parse_goodput(opts["goodput"])
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    return BenchConfig(
        users=users,
        rate=opts.get("rate"),
        arrival=opts.get("arrival"),
        max_in_flight=opts.get("max_in_flight"),
        trace=opts.get("trace"),
        trace_speed=opts.get("trace_speed"),
        prefix_tokens=opts.get("prefix_tokens"),
        prefix_groups=opts.get("prefix_groups"),
        warmup_s=_duration("--warmup", opts.get("warmup") or "0s", 0),
        goodput=goodput,
        sweep=sweep,
        spawn_rate=opts["spawn_rate"],
        duration_s=_duration("--duration", opts["duration"], 1),
        model=opts["model"],
        api_key=opts["api_key"],
        prompt_tokens=_length("--prompt-tokens", opts["prompt_tokens"]),
        max_tokens=_length("--max-tokens", opts["max_tokens"]),
        stream=opts["stream"],
        processes=processes,
        locustfile=opts["locustfile"],
        api=api,
        reports_dir=opts["reports_dir"],
        label=opts["label"],
        slos=slos,
        json_output=opts["json_output"],
        target=opts["target"],
        master=opts["master"],
        expect_workers=opts["expect_workers"] or (1 if opts["master"] else None),
        master_bind_host=opts["master_bind_host"],
        master_bind_port=opts["master_bind_port"],
        web=opts["web"],
        web_host=opts["web_host"],
        web_port=opts["web_port"],
        stop_timeout_s=_duration("--stop-timeout", opts["stop_timeout"], 0),
        simulator_flags=dict(simulator_flags),
        simulator_config=opts["config"],
        locust_args=list(locust_args),
        progress=opts["progress"],
        record=opts.get("record"),
    )


def _open_loop_checks(opts: Mapping[str, Any]) -> None:
    """Open-loop options: each alone, and with what they need."""
    rate, trace = opts.get("rate"), opts.get("trace")
    if rate is not None and not rate > 0:
        raise click.UsageError(f"--rate must be above 0 requests/s, got {rate:g}")
    if rate is not None and trace:
        raise click.UsageError("--rate and --trace do not mix: the trace has its own times")
    if opts.get("arrival") is not None:
        if rate is None:
            raise click.UsageError("--arrival needs --rate")
        from llmsim.load.arrivals import parse_arrival

        try:
            parse_arrival(opts["arrival"])
        except ValueError as exc:
            raise click.UsageError(f"--arrival: {exc}") from None
    if opts.get("max_in_flight") is not None:
        if rate is None and not trace:
            raise click.UsageError(
                "--max-in-flight needs --rate or --trace (closed loop: --users is the limit; "
                "the simulator's own capacity is --max-concurrency)"
            )
        if opts["max_in_flight"] < 1:
            raise click.UsageError(
                f"--max-in-flight must be at least 1, got {opts['max_in_flight']}"
            )
    if opts.get("trace_speed") is not None:
        if not trace:
            raise click.UsageError("--trace-speed needs --trace")
        if not opts["trace_speed"] > 0:
            raise click.UsageError(f"--trace-speed must be above 0, got {opts['trace_speed']:g}")
    if trace:
        from llmsim.load.trace import load_trace

        try:
            load_trace(trace)
        except ValueError as exc:
            raise click.UsageError(f"--trace {exc}") from None
    if opts.get("prefix_tokens") is not None and opts["prefix_tokens"] < 1:
        raise click.UsageError(f"--prefix-tokens must be at least 1, got {opts['prefix_tokens']}")
    if opts.get("prefix_groups") is not None:
        if opts.get("prefix_tokens") is None:
            raise click.UsageError("--prefix-groups needs --prefix-tokens")
        if opts["prefix_groups"] < 1:
            raise click.UsageError(
                f"--prefix-groups must be at least 1, got {opts['prefix_groups']}"
            )
    if (opts.get("prefix_tokens") is not None) and trace:
        raise click.UsageError(
            "--prefix-tokens and --trace do not mix: the trace's hash_ids set the prefixes"
        )


class CannotRun(click.ClickException):
    """Printed as `llmsim: error: …`; status 2, as for a usage error (1 means an SLO failed)."""

    exit_code = 2


def run_from_cli(cfg: BenchConfig) -> int:
    """Run; a run that cannot start becomes the CLI's one-line error with exit status 2."""
    from llmsim.bench.run import run_bench
    from llmsim.bench.sweep import run_sweep

    try:
        return run_sweep(cfg) if cfg.sweep else run_bench(cfg)
    except BenchError as exc:
        raise CannotRun(str(exc)) from None


def exec_worker(
    locustfile: str | None,
    master_host: str,
    master_port: int,
    processes: int | None,
    locust_args: Sequence[str],
) -> None:
    """Become a Locust worker (exec, so signals and the exit status are Locust's own)."""
    from llmsim.bench.processes import child_env
    from llmsim.bench.swarm import worker_command

    if locustfile and not os.path.isfile(locustfile):
        raise click.UsageError(f"--locustfile {locustfile}: no such file")
    if processes is not None and (processes == 0 or processes < -1):
        raise click.UsageError(
            f"--processes must be -1 (one per core) or at least 1, got {processes}"
        )
    args = worker_command(locustfile, master_host, master_port, processes, list(locust_args))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], child_env())
