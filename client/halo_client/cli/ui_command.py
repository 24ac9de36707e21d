"""`halo-client ui`: the workbench, a local web page over the model server at `--url`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import webbrowser
from pathlib import Path

import click

from halo_client import config
from halo_client.cli.app import Settings, main, pass_settings
from halo_client.cli.servers import ALLOWED_HOST_HELP
from halo_client.errors import HaloError
from halo_client.serving.listen import claim_port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@main.command("ui")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the workbench page (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets other machines drive the model.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--sessions", "sessions_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where sessions are saved and autosaved (default: $XDG_DATA_HOME/halo-weave/sessions, "
                   "~/.local/share/halo-weave/sessions).")
@click.option("--allowed-host", multiple=True, help=ALLOWED_HOST_HELP)
@click.option("--allowed-origin", multiple=True, help="A browser Origin allowed to drive the workbench besides "
                                                      "its own page.")
@pass_settings
def ui(settings: Settings, port: int, host: str, open_browser: bool, sessions_dir: Path | None,
       allowed_host: tuple[str, ...], allowed_origin: tuple[str, ...]) -> None:
    """The workbench: chat in the browser and watch attention light up the conversation.

    Every token is drawn as bright as the attention the model keeps giving it, updated as each
    token is generated; hover a token for its details, click a generated one to inspect its
    attention by layer and head, and watch (and undo) what the pruner removes. Settings are
    saved to the settings file the command line also reads."""
    try:
        from halo_client.serving.access import AccessPolicy
        from halo_client.ui.server import create_app, serve
        from halo_client.ui.sessions import SessionStore
        from halo_client.ui.workbench import Workbench
    except ImportError as exc:
        raise HaloError(f"the workbench needs its extra: pip install 'halo-weave[ui]' ({exc})") from exc

    sock = claim_port(host, port)  # a taken port is one line and exit 2, before anything starts
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}/"
    store = SessionStore(sessions_dir)
    workbench = Workbench(settings.client(), sessions=store, settings=config.load(), settings_path=config.config_path())
    app = create_app(workbench, AccessPolicy(allowed_hosts=allowed_host, allowed_origins=allowed_origin,
                                             bind_host=host))
    if not _loopback(host):
        click.echo(f"halo-client: warning: listening on {host}: anyone who can reach it can chat with the model "
                   "and read the conversation", err=True)
    click.echo(f"workbench on {url} (model server {settings.url}; sessions in {store.directory}; settings "
               f"{config.config_path()}); Ctrl-C stops it", err=True)
    if open_browser:
        webbrowser.open(url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(app, sock))
