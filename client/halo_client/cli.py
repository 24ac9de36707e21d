"""`halo-client`: talk to a Halo Weave server from the terminal."""

from __future__ import annotations

import asyncio
import codecs
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import numpy as np
import numpy.typing as npt

from halo_client.client import DEFAULT_URL, DoneEvent, KoboldClient, TokenEvent
from halo_client.errors import HaloError

P = ParamSpec("P")
R = TypeVar("R")


def _fail_cleanly(func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """Run an async command; a HaloError becomes one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return asyncio.run(func(*args, **kwargs))
        except HaloError as exc:
            click.echo(f"halo-client: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


class Settings:
    def __init__(self, url: str, password: str | None, timeout: float) -> None:
        self.url = url
        self.password = password
        self.timeout = timeout

    def client(self) -> KoboldClient:
        return KoboldClient(self.url, password=self.password, timeout=self.timeout)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


# ---------------------------------------------------------------------- info, tokenize


@main.command()
@pass_settings
@_fail_cleanly
async def info(settings: Settings) -> None:
    """Show the model the server runs and whether it exports attention."""
    async with settings.client() as client:
        mi = await client.model_info()
    for key, value in mi.model_dump(exclude={"chat_template"}).items():
        click.echo(f"{key:22} {value}")
    click.echo(f"{'chat_template':22} {'yes' if mi.chat_template else 'none (ChatML is assumed)'}")


@main.command()
@click.argument("text")
@click.option("--no-special", is_flag=True, help="Tokenize special-token text literally, add no BOS.")
@pass_settings
@_fail_cleanly
async def tokenize(settings: Settings, text: str, no_special: bool) -> None:
    """Show the tokens of TEXT with their exact bytes."""
    async with settings.client() as client:
        result = await client.tokenize(text, add_special_tokens=not no_special)
    for t in result.tokens:
        click.echo(f"{t.token_id:>8}  {t.piece!r}")
    click.echo(f"{result.token_count} tokens")


# ------------------------------------------------------------------------ generation


def _heat(value: float) -> tuple[int, int, int]:
    """Dim slate to bright amber: how much attention a token got, relative to the brightest."""
    v = float(min(max(value, 0.0), 1.0)) ** 0.5  # sqrt: attention is heavy-tailed
    low, high = (40, 44, 52), (255, 196, 0)
    return (int(low[0] + (high[0] - low[0]) * v), int(low[1] + (high[1] - low[1]) * v),
            int(low[2] + (high[2] - low[2]) * v))


def render_heat(pieces: list[bytes], scores: npt.NDArray[np.floating]) -> str:
    """Text of `pieces`, each token's background colored by its score (0..max)."""
    top = float(scores.max()) if scores.size else 0.0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for piece, score in zip(pieces, scores, strict=True):
        text = decoder.decode(piece)
        if text:
            fg = "black" if top and score / top > 0.5 else "white"
            out.append(click.style(text, bg=_heat(score / top if top else 0.0), fg=fg))
    return "".join(out)


async def _stream_reply(client: KoboldClient, input_ids: list[int], *, attention: bool,
                        on_token: Callable[[TokenEvent], Awaitable[None] | None] | None = None,
                        **params: Any) -> tuple[list[TokenEvent], DoneEvent]:
    events: list[TokenEvent] = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    info = await client.model_info()
    hidden = {info.eos_token_id, info.eot_token_id}  # the stopping token's text is template, not reply
    async with client.generate_stream(input_ids, return_attention=attention, **params) as stream:
        async for event in stream:
            if isinstance(event, DoneEvent):
                click.echo(decoder.decode(b"", final=True))
                return events, event
            events.append(event)
            if event.token_id not in hidden:
                click.echo(decoder.decode(event.piece), nl=False)
            if on_token is not None:
                result = on_token(event)
                if result is not None:
                    await result
    raise HaloError("the stream ended without `done`")


def _chatml(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


@main.command()
@click.argument("prompt")
@click.option("--max-length", default=100, show_default=True, help="Most tokens to generate.")
@click.option("--temperature", default=0.7, show_default=True, help="0 is greedy.")
@click.option("--seed", default=-1, show_default=True, help="Sampler seed; -1 is random.")
@click.option("--raw", is_flag=True, help="Send PROMPT as is, without the chat template.")
@click.option("--attention-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save every token's attention frame to this .npz file.")
@pass_settings
@_fail_cleanly
async def generate(settings: Settings, prompt: str, max_length: int, temperature: float, seed: int,
                   raw: bool, attention_out: Path | None) -> None:
    """Generate a reply to PROMPT and print it as it streams."""
    async with settings.client() as client:
        text = prompt if raw else _chatml("user", prompt) + "<|im_start|>assistant\n"
        input_ids = (await client.tokenize(text)).token_ids
        events, done = await _stream_reply(
            client, input_ids, attention=attention_out is not None, max_length=max_length,
            temperature=temperature, sampler_seed=seed)
    click.echo(f"[{done.finish_reason}: {done.token_count} tokens, "
               f"{done.timings.tokens_per_second:.1f} tokens/s]", err=True)
    if attention_out is not None:
        save_attention(attention_out, input_ids, events)
        click.echo(f"[attention of {len(events)} tokens saved to {attention_out}]", err=True)


def save_attention(path: Path, input_ids: list[int], events: list[TokenEvent]) -> None:
    """One .npz: `input_ids`, `token_ids`, `pieces` and `frame_00000`... (`[layers, heads, ctx]`).

    Written to a temporary file and renamed, so an interrupted save leaves no half file.
    """
    arrays: dict[str, npt.NDArray[Any]] = {
        "input_ids": np.asarray(input_ids, dtype=np.int64),
        "token_ids": np.asarray([e.token_id for e in events], dtype=np.int64),
        "pieces": np.asarray([e.piece for e in events], dtype=object),
    }
    for e in events:
        assert e.attention is not None
        arrays[f"frame_{e.index:05d}"] = e.attention.values
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@main.command()
@click.option("--max-length", default=200, show_default=True, help="Most tokens per reply.")
@click.option("--temperature", default=0.7, show_default=True, help="0 is greedy.")
@click.option("--system", default="You are a helpful assistant.", show_default=True,
              help="The system prompt.")
@pass_settings
@_fail_cleanly
async def chat(settings: Settings, max_length: int, temperature: float, system: str) -> None:
    """Chat line by line; after each reply the context is shown colored by the attention the
    reply's last token gave it. Without a terminal, reads one user message per line."""
    interactive = sys.stdin.isatty()
    async with settings.client() as client:
        info = await client.model_info()
        attention = info.attention.available
        ids: list[int] = []
        pieces: list[bytes] = []

        async def add(text: str) -> None:
            result = await client.tokenize(text)
            ids.extend(result.token_ids)
            pieces.extend(t.piece for t in result.tokens)

        await add(_chatml("system", system))
        while True:
            try:
                line = await asyncio.to_thread(input, "you> " if interactive else "")
            except EOFError:
                break
            if line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            await add(_chatml("user", line) + "<|im_start|>assistant\n")
            if len(ids) + max_length > info.max_context_length:
                raise HaloError(f"the chat outgrew the server's context ({info.max_context_length} tokens)")
            click.echo("model> ", nl=False)
            events, _done = await _stream_reply(client, ids, attention=attention,
                                                max_length=max_length, temperature=temperature)
            if attention and events and events[-1].attention is not None:
                last = events[-1].attention.values
                scores = last.mean(axis=(0, 1), dtype=np.float32)
                context = pieces + [e.piece for e in events[:-1]]
                click.echo(render_heat(context, scores))
            ids.extend(e.token_id for e in events)
            pieces.extend(e.piece for e in events)
            if events and events[-1].token_id in (info.eos_token_id, info.eot_token_id):
                await add("\n")
            else:
                await add("<|im_end|>\n")


# ------------------------------------------------------------------------- servers


@main.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
@click.option("--password", "server_password", default=None, help="Require this Bearer password.")
@click.option("--allowed-origin", multiple=True, help="A browser Origin allowed to open streams.")
@click.option("--layers", default=4, show_default=True)
@click.option("--heads", default=4, show_default=True)
@click.option("--context", default=4096, show_default=True, help="max_context_length")
@click.option("--strict-template", is_flag=True, help="Reject input_ids that are not valid ChatML.")
def mock_server(host: str, port: int, server_password: str | None, allowed_origin: tuple[str, ...],
                layers: int, heads: int, context: int, strict_template: bool) -> None:
    """Run the mock server (a test double with synthetic attention, not a model)."""
    from halo_client.testing import MockBackend, MockKoboldServer

    async def run() -> None:
        backend = MockBackend(num_layers=layers, num_heads=heads, num_kv_heads=heads,
                              max_context_length=context, strict_template=strict_template)
        server = MockKoboldServer(host=host, port=port, password=server_password,
                                  allowed_origins=allowed_origin, backend=backend)
        try:
            await server.start()
        except OSError as exc:
            raise HaloError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        click.echo(f"mock server on {server.url} (synthetic attention; Ctrl-C stops it)", err=True)
        await server.serve_forever()

    try:
        asyncio.run(run())
    except HaloError as exc:
        click.echo(f"halo-client: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
