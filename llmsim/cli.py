"""The `llmsim` command: a thin shell that parses options into Settings and calls the library."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from llmsim import __version__
from llmsim.settings import SERVE_OPTIONS, SettingsError, load_settings


class LlmsimGroup(click.Group):
    """Prints usage mistakes as one line (`llmsim: error: …`) and exits 2, never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
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


def simulator_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One click option per entry of SERVE_OPTIONS; values are parsed and checked by settings."""
    for option in reversed(SERVE_OPTIONS):
        if option.is_flag:
            names = [f"{option.flag}/--no-{option.flag[2:]}"]
            func = click.option(
                *names, option.name, default=None, help=f"{option.help} [env {option.env}]"
            )(func)
        else:
            default = option.default
            shown = f" [default: {default}]" if default not in (None, []) else ""
            if isinstance(default, list):
                shown = " [default: built-in catalogue]"
            func = click.option(
                option.flag,
                option.name,
                default=None,
                metavar=option.metavar,
                help=f"{option.help}{shown} [env {option.env}]",
            )(func)
    func = click.option(
        "--config",
        "config",
        default=None,
        metavar="FILE",
        envvar="LLMSIM_CONFIG",
        help="YAML file of options (keys as the flags, e.g. ttft_ms: 200) [env LLMSIM_CONFIG].",
    )(func)
    return func


def settings_from_cli(config: str | None, flags: dict[str, Any]):
    return load_settings(config=config, overrides={k: v for k, v in flags.items() if v is not None})


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


def main() -> None:
    cli(prog_name="llmsim")
