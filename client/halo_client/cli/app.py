"""The `halo-client` command group: global options and the one place errors become exit codes."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import click

from halo_client.cli.errors import EXIT_USAGE, report
from halo_client.client import DEFAULT_URL, KoboldClient
from halo_client.errors import HaloError

P = ParamSpec("P")
R = TypeVar("R")


class HaloGroup(click.Group):
    """Runs a command; a `HaloError` from anywhere in it is one line on stderr and exit code 2,
    Ctrl-C is exit code 130 without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HaloError as exc:
            report(exc)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            sys.exit(130)


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
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the server.")
@click.version_option(package_name="halo-weave")
@click.pass_context
def main(ctx: click.Context, url: str, password: str | None, timeout: float) -> None:
    """Halo Weave: see what a local model attends to, and keep long chats in its context."""
    ctx.obj = Settings(url, password, timeout)


pass_settings = click.make_pass_decorator(Settings)
