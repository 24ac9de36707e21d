"""The `halo-client` command group: global options and the one place errors become exit codes."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import click

from halo_client import config
from halo_client.cli.defaults import default_map
from halo_client.cli.errors import EXIT_USAGE, report
from halo_client.client import DEFAULT_URL, KoboldClient
from halo_client.errors import HaloError

P = ParamSpec("P")
R = TypeVar("R")


class HaloGroup(click.Group):
    """Runs a command; a `HaloError` from anywhere in it, or a bad option value, is one line on
    stderr and exit code 2; Ctrl-C is exit code 130 without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HaloError as exc:
            report(exc)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            sys.exit(130)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            # one line, with where to look, instead of click's usage block
            command = exc.ctx.command_path if exc.ctx is not None else "halo-client"
            click.echo(f"halo-client: {exc.format_message()} (see `{command} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"halo-client: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)  # an int only from click's Exit (e.g. --help: 0)


def run_async(func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """A click command from a coroutine function."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(func(*args, **kwargs))

    return wrapper


class Settings:
    """The global options, shared by every command that talks to a server."""

    def __init__(self, url: str, password: str | None, timeout: float) -> None:
        self.url = url
        self.password = password
        self.timeout = timeout

    def client(self) -> KoboldClient:
        return KoboldClient(self.url, password=self.password, timeout=self.timeout)


@click.group(cls=HaloGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="HALO_URL", default=DEFAULT_URL, show_default=True,
              help="Server URL (a patched KoboldCPP, `halo-client serve` or the mock). Env: HALO_URL.")
@click.option("--password", envvar="HALO_PASSWORD", default=None,
              help="The server's --password, if it has one. Env: HALO_PASSWORD.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds to wait for the server (> 0).")
@click.version_option(package_name="halo-weave")
@click.pass_context
def main(ctx: click.Context, url: str, password: str | None, timeout: float) -> None:
    """Halo Weave: see what a local model attends to, and keep long chats in its context.

    Defaults come from the settings file ($HALO_CONFIG, else ~/.config/halo-weave/settings.json),
    which the workbench (`halo-client ui`) writes; flags override it."""
    ctx.obj = Settings(url, password, timeout)
    chosen = config.load()
    ctx.default_map = default_map(chosen)  # read before the subcommand parses its options
    # settings with no flag of their own (top_p, initial_brightness, ...): cli/options.py
    ctx.meta[config.META_KEY] = chosen


pass_settings = click.make_pass_decorator(Settings)
