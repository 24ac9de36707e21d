"""`halo-client ui`: the workbench, a local web page over the model server at `--url`; and
`halo-client workbench`: the same over SmolLM2 served in this process (`make workbench`)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

import click

from halo_client import config
from halo_client.cli.app import Settings, main, pass_settings
from halo_client.cli.servers import ALLOWED_HOST_HELP, PORT, claim_port_or_any, load_reference, local_model_options
from halo_client.client import KoboldClient
from halo_client.errors import HaloError

if TYPE_CHECKING:
    from starlette.applications import Starlette

SESSIONS_HELP = ("Where sessions are saved and autosaved (default: $XDG_DATA_HOME/halo-weave/sessions, "
                 "~/.local/share/halo-weave/sessions).")
UI_PORT_HELP = "Port of the workbench page (0: any free port); when it is taken, any free one is used instead."


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _require_ui() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise HaloError(f"the workbench needs its extra: pip install 'halo-weave[ui]' ({exc})") from exc


def _workbench_app(client: KoboldClient, sock: socket.socket, host: str, sessions_dir: Path | None,
                   allowed_host: tuple[str, ...], allowed_origin: tuple[str, ...], model_url: str) -> Starlette:
    """The workbench's web app over `client`, said on stderr with its URL."""
    from halo_client.serving.access import AccessPolicy
    from halo_client.ui.server import create_app
    from halo_client.ui.sessions import SessionStore
    from halo_client.ui.workbench import Workbench

    store = SessionStore(sessions_dir)
    workbench = Workbench(client, sessions=store, settings=config.load(), settings_path=config.config_path())
    app = create_app(workbench, AccessPolicy(allowed_hosts=allowed_host, allowed_origins=allowed_origin,
                                             bind_host=host))
    if not _loopback(host):
        click.echo(f"halo-client: warning: listening on {host}: anyone who can reach it can chat with the model "
                   "and read the conversation", err=True)
    click.echo(f"workbench on {_page_url(host, sock)} (model server {model_url}; sessions in {store.directory}; "
               f"settings {config.config_path()}); Ctrl-C stops it", err=True)
    return app


def _page_url(host: str, sock: socket.socket) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}/"


@main.command("ui")
@click.option("--port", default=8765, show_default=True, type=PORT, help=UI_PORT_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets other machines drive the model.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--sessions", "sessions_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=SESSIONS_HELP)
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
    _require_ui()
    config.load()  # a bad settings file is one line and exit 2 before anything listens
    from halo_client.ui.server import serve

    sock = claim_port_or_any(host, port, "the workbench")
    app = _workbench_app(settings.client(), sock, host, sessions_dir, allowed_host, allowed_origin, settings.url)
    if open_browser:
        webbrowser.open(_page_url(host, sock))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(app, sock))


@main.command("workbench")
@local_model_options
@click.option("--ui-port", default=8765, show_default=True, type=PORT, help=UI_PORT_HELP)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--sessions", "sessions_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=SESSIONS_HELP)
def workbench(model_path: str | None, port: int, context: int, ui_port: int, open_browser: bool,
              sessions_dir: Path | None) -> None:
    """Serve SmolLM2-135M (or --model) with exact attention on this machine and open the
    workbench over it: `halo-client ui` with its own model server, no GPU and no KoboldCPP
    needed. Both listen on 127.0.0.1."""
    from halo_client.reference import require_extra

    require_extra()
    _require_ui()
    config.load()
    from halo_client.serving.server import ContractServer
    from halo_client.ui.server import serve

    model_sock = claim_port_or_any("127.0.0.1", port, "the model server")
    ui_sock = claim_port_or_any("127.0.0.1", ui_port, "the workbench")
    try:
        backend = load_reference(model_path, context)
    except BaseException:
        model_sock.close()
        ui_sock.close()
        raise

    async def run() -> None:
        server = ContractServer(backend, host="127.0.0.1", port=port)
        await server.start(model_sock)
        try:
            app = _workbench_app(KoboldClient(server.url, timeout=300), ui_sock, "127.0.0.1", sessions_dir, (), (),
                                 f"{server.url}, serving {backend.model_info().model_name}")
            if open_browser:
                webbrowser.open(_page_url("127.0.0.1", ui_sock))
            await serve(app, ui_sock)
        finally:
            await server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
