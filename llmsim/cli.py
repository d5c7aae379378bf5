"""The `llmsim` command: a thin shell that parses options into Settings and calls the library."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llmsim import __version__
from llmsim.settings import SERVE_OPTIONS, SettingsError, load_settings

if TYPE_CHECKING:
    from llmsim.settings import Settings


class LlmsimGroup(click.Group):
    """Prints usage mistakes as one line (`llmsim: error: …`) and exits 2, never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Run click without standalone mode and turn its result or error into the exit status.

        A command's int return value becomes the exit status (anything else exits 0). Ctrl-C
        exits 130; usage mistakes and SettingsError print one line and exit 2, other
        ClickExceptions print one line and exit with their own code.
        """
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            sys.exit(130)
        except click.UsageError as exc:
            click.echo(f"llmsim: error: {exc.format_message()}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"llmsim: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except SettingsError as exc:
            click.echo(f"llmsim: error: {exc}", err=True)
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


# Where bench's embedded simulator differs from `llmsim serve`'s defaults.
_EMBEDDED_HELP = {"port": "Port for the embedded simulator [default: a free one]."}


def _shown_default(default: Any) -> str:
    if isinstance(default, list):
        return " [default: built-in catalogue]" if default else ""
    if default is None or isinstance(default, dict):
        return ""
    return f" [default: {default}]"


def simulator_options(
    func: Callable[..., Any] | None = None, *, embedded: bool = False
) -> Callable[..., Any]:
    """One click option per entry of SERVE_OPTIONS; values are parsed and checked by settings.

    `embedded=True` words the help for bench's embedded simulator.
    """
    if func is None:
        return lambda f: simulator_options(f, embedded=embedded)
    for option in reversed(SERVE_OPTIONS):
        names = [option.flag]
        kwargs: dict[str, Any] = {"default": None}
        env = option.env
        if option.is_flag:
            names = [f"{option.flag}/--no-{option.flag[2:]}"]
            text = option.help
        else:
            kwargs["metavar"] = option.metavar
            text = option.help + _shown_default(option.default)
            if option.multiple:
                kwargs["multiple"] = True
                env += ", comma-separated"
        if embedded and option.name in _EMBEDDED_HELP:
            text = _EMBEDDED_HELP[option.name]
        func = click.option(*names, option.name, help=f"{text} [env {env}]", **kwargs)(func)
    func = click.option(
        "--config",
        "config",
        default=None,
        metavar="FILE",
        envvar="LLMSIM_CONFIG",
        help="YAML file of options (keys as the flags, e.g. ttft_ms: 200) [env LLMSIM_CONFIG].",
    )(func)
    return func


def settings_from_cli(config: str | None, flags: dict[str, Any]) -> Settings:
    """Resolve Settings from `--config` and the simulator_options flags; SettingsError if bad.

    Flags not given (None, or () for a repeatable one) are left out, so the environment and the
    YAML file still apply to them.
    """
    # A repeatable flag that was not given arrives as (): that is "not set", not "empty".
    given = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
    return load_settings(
        config=config, overrides={k: v for k, v in given.items() if v not in (None, [])}
    )


@click.group(cls=LlmsimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="llmsim")
def cli() -> None:
    """Load-test applications built on LLM APIs."""


@cli.command()
@simulator_options
def serve(config: str | None, **flags: Any) -> int:
    """Run the OpenAI-compatible simulator."""
    from llmsim.server.runner import ServeError
    from llmsim.server.runner import serve as run_server

    settings = settings_from_cli(config, flags)
    try:
        return run_server(settings)
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command(context_settings={"show_default": True})
@click.option(
    "--users",
    "-u",
    type=int,
    default=None,
    metavar="N",
    help="Concurrent users, each waiting for its reply (closed loop) [default: 10].",
)
@click.option(
    "--rate",
    type=float,
    default=None,
    metavar="R",
    help="Open loop: requests per second, whatever the replies do (instead of --users).",
)
@click.option(
    "--arrival",
    default=None,
    metavar="KIND",
    help="Open loop: poisson, constant or gamma:cv=C [default: poisson].",
)
@click.option(
    "--max-in-flight",
    type=int,
    default=None,
    metavar="C",
    help="Open loop: arrivals beyond C requests in flight are dropped and counted.",
)
@click.option(
    "--trace",
    default=None,
    metavar="FILE",
    help="Replay a Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids) or "
    "CSV trace.",
)
@click.option(
    "--trace-speed", type=float, default=None, metavar="X", help="Replay the trace X times faster."
)
@click.option(
    "--prefix-tokens",
    type=int,
    default=None,
    metavar="N",
    help="Each prompt starts with one of --prefix-groups shared prefixes of N tokens.",
)
@click.option(
    "--prefix-groups", type=int, default=None, metavar="G", help="Distinct shared prefixes [1]."
)
@click.option(
    "--warmup",
    default="0s",
    metavar="TIME",
    help="Run this long first; headline figures cover the steady window after it.",
)
@click.option(
    "--sweep",
    type=int,
    default=None,
    metavar="N",
    help="Find the saturation throughput, then run N rates up to it (--duration each).",
)
@click.option(
    "--goodput",
    default=None,
    metavar="OBJ",
    help="Requests/s that met every objective, e.g. ttft<=500ms,tpot<=50ms,e2e<=5s.",
)
@click.option(
    "--spawn-rate",
    "-r",
    type=float,
    default=None,
    metavar="R",
    help="Users started per second [default: all users within about 10 s].",
)
@click.option(
    "--duration",
    "-t",
    default="60s",
    metavar="TIME",
    help="Measured run time, after --warmup: 30s, 5m, 1h.",
)
@click.option("--model", default=None, help="Model named in each request [default: the user's].")
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="API key for the target [default: the API's own variable, e.g. $OPENAI_API_KEY].",
    show_default=False,
)
@click.option(
    "--prompt-tokens",
    default=None,
    metavar="N|DIST",
    help="Prompt length in tokens, or a distribution such as normal:mean=512,stddev=64.",
)
@click.option(
    "--max-tokens", default=None, metavar="N|DIST", help="max_tokens per request, same syntax."
)
@click.option("--stream/--no-stream", default=None, help="Stream replies [default: stream].")
@click.option(
    "--processes",
    type=int,
    default=None,
    metavar="N",
    help="Locust worker processes on this machine (-1: one per core).",
)
@click.option(
    "--locustfile",
    "-f",
    default=None,
    metavar="PATH",
    help="Your own locustfile instead of llmsim's chat user.",
)
@click.option(
    "--api",
    type=click.Choice(
        ["chat", "responses", "anthropic", "completions", "embeddings", "azure", "gemini"]
    ),
    default="chat",
    help="Which API llmsim's user calls: chat completions, Responses, Anthropic Messages, "
    "legacy completions, embeddings, Azure OpenAI chat or Gemini generateContent.",
)
@click.option("--reports-dir", default="reports", metavar="DIR", help="Where run reports go.")
@click.option("--label", default=None, help="Appended to the report directory's name.")
@click.option(
    "--slo",
    multiple=True,
    metavar="EXPR",
    help="Objective, repeatable: ttft_p95<=800ms, tpot_p50<=50ms, error_rate<=1%, "
    "output_tps>=1000. A miss exits 1.",
)
@click.option("--json", "json_output", is_flag=True, help="Print summary.json on stdout.")
@click.option(
    "--target",
    default=None,
    metavar="URL",
    help="Benchmark this OpenAI-compatible base URL instead of an embedded simulator.",
)
@click.option("--master", is_flag=True, help="Wait for Locust workers (llmsim worker) to join.")
@click.option(
    "--expect-workers", type=int, default=None, metavar="N", help="Workers to wait for [1]."
)
@click.option(
    "--master-bind-host",
    default="127.0.0.1",
    metavar="ADDR",
    help="Address the master listens on for workers (0.0.0.0 for other machines).",
)
@click.option(
    "--master-bind-port", type=int, default=5557, metavar="PORT", help="Port for workers."
)
@click.option("--web", is_flag=True, help="Open Locust's web UI; start and stop runs there.")
@click.option("--web-host", default="127.0.0.1", metavar="ADDR", help="Web UI address.")
@click.option("--web-port", type=int, default=8089, metavar="PORT", help="Web UI port.")
@click.option(
    "--stop-timeout",
    default="5s",
    metavar="TIME",
    help="At the end, how long requests in flight may finish; later ones are cut, uncounted.",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    help="Show the live progress line.",
    show_default=False,
)
@click.option(
    "--record/--no-record",
    default=None,
    help="Write every request's timing to recording.jsonl in the report folder, through a "
    "llmsim record proxy in front of the target (for llmsim calibrate). Default: on with "
    "--target, off for the embedded simulator; not with --master.",
)
@simulator_options(embedded=True)
@click.argument("locust_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- LOCUST ARGS…]")
def bench(config: str | None, locust_args: tuple[str, ...], **options: Any) -> int:
    """Run a load test and write reports: starts an embedded simulator unless --target is given.

    Exit status: 0 done, 1 an SLO was missed (or no request succeeded), 2 usage error or a run
    that could not start. Arguments after `--` go to Locust unchanged (e.g. --llm-dataset).
    """
    from llmsim.bench.cli_support import build_config, run_from_cli
    from llmsim.settings import SERVE_OPTIONS as _serve_options

    sim_names = {o.name for o in _serve_options}
    sim_flags = {k: v for k, v in options.items() if k in sim_names}
    opts = {k: v for k, v in options.items() if k not in sim_names}
    opts["config"] = config
    return run_from_cli(build_config(opts, sim_flags, locust_args))


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN_A RUN_B [RUN…]")
@click.option(
    "--output-dir",
    "-o",
    default=None,
    metavar="DIR",
    help="Where compare.md and compare.html go [default: compare-<time> beside RUN_A].",
)
def compare(runs: tuple[str, ...], output_dir: str | None) -> int:
    """Compare bench runs side by side: deltas against the first, overlaid distributions."""
    from llmsim.bench.cli_support import CannotRun
    from llmsim.bench.compare import run_compare
    from llmsim.bench.errors import BenchError

    try:
        md, out = run_compare(list(runs), output_dir)
    except BenchError as exc:
        raise CannotRun(str(exc)) from None
    click.echo(md.rstrip())
    click.echo(f"report: {out / 'compare.html'}")
    return 0


@cli.command(context_settings={"show_default": True})
@click.option(
    "--master-host", required=True, metavar="HOST", help="Where `llmsim bench --master` runs."
)
@click.option("--master-port", type=int, default=5557, metavar="PORT", help="The master's port.")
@click.option(
    "--locustfile",
    "-f",
    default=None,
    metavar="PATH",
    help="The same locustfile as the master's [default: llmsim's chat user].",
)
@click.option(
    "--processes", type=int, default=None, metavar="N", help="Worker processes (-1: one per core)."
)
@click.argument("locust_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- LOCUST ARGS…]")
def worker(
    master_host: str,
    master_port: int,
    locustfile: str | None,
    processes: int | None,
    locust_args: tuple[str, ...],
) -> None:
    """Run a Locust worker for `llmsim bench --master` (the master sends the workload)."""
    from llmsim.bench.cli_support import exec_worker

    exec_worker(locustfile, master_host, master_port, processes, locust_args)


@cli.command(context_settings={"show_default": True})
@click.option(
    "--target", required=True, metavar="URL", help="The API to record, e.g. http://host:port."
)
@click.option(
    "--port", type=int, default=8090, metavar="PORT", help="Port to listen on (0: a free one)."
)
@click.option("--host", default="127.0.0.1", metavar="ADDR", help="Address to bind.")
@click.option("--out", required=True, metavar="FILE", help="Recording to append JSON lines to.")
@click.option(
    "--with-bodies",
    is_flag=True,
    help="Also store each reply's text (needed by serve --replay; it may hold sensitive data).",
)
@click.option(
    "--timeout", "timeout_s", type=float, default=600.0, metavar="S", help="Upstream read timeout."
)
def record(target: str, port: int, host: str, out: str, with_bodies: bool, timeout_s: float) -> int:
    """Proxy --target and append one JSON line per request: timing, tokens, errors."""
    from llmsim.record.proxy import RecordConfig, RecordError, run

    if not 0 <= port <= 65535:
        raise click.BadParameter(f"{port} is not a port number", param_hint="--port")
    cfg = RecordConfig(target, out, host, port, with_bodies, timeout_s)
    try:
        return run(cfg)
    except RecordError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--out", required=True, metavar="FILE", help="Profile file to write (YAML).")
def calibrate(files: tuple[str, ...], out: str) -> int:
    """Fit a profile per model from recordings (llmsim record, llmsim bench) into a YAML file."""
    from llmsim.record.calibrate import calibrate as fit
    from llmsim.record.calibrate import write_profile

    for path in files:
        if not Path(path).is_file():
            raise click.BadParameter(f"{path}: no such file", param_hint="FILE")
    cal = fit(files)
    click.echo(cal.report())
    try:
        n = write_profile(cal, out)
    except OSError as exc:
        raise click.ClickException(f"--out {out}: cannot write it ({exc.strerror})") from None
    if n == 0:
        raise click.ClickException("no model could be fitted: nothing written")
    click.echo(f"wrote {n} model profile{'s' if n != 1 else ''} to {out}")
    return 0


def main() -> None:
    """Entry point of the `llmsim` console script (and `python -m llmsim`)."""
    cli(prog_name="llmsim")
