"""`info`, `tokenize`, `generate`, `wait`: one request each to a running server."""

from __future__ import annotations

import asyncio
import codecs
import os
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import numpy.typing as npt

from halo_client.cli.app import Settings, main, pass_settings, run_async
from halo_client.cli.options import layout_from, settings_from, tracker_options
from halo_client.cli.render import render_brightness
from halo_client.client import TokenEvent
from halo_client.conversation.chat import Chat, Reply
from halo_client.errors import HaloError, ServerUnreachable


@main.command()
@pass_settings
@run_async
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
@run_async
async def tokenize(settings: Settings, text: str, no_special: bool) -> None:
    """Show the tokens of TEXT with their exact bytes."""
    async with settings.client() as client:
        result = await client.tokenize(text, add_special_tokens=not no_special)
    for t in result.tokens:
        click.echo(f"{t.token_id:>8}  {t.piece!r}")
    click.echo(f"{result.token_count} tokens")


async def print_reply(chat: Chat) -> Reply:
    """Stream the chat's next reply to stdout as it is generated."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    hidden = chat.info.end_token_ids

    def show(event: TokenEvent) -> None:
        if event.token_id not in hidden:  # the stopping token's text is template, not reply
            click.echo(decoder.decode(event.piece), nl=False)

    reply = await chat.reply(show)
    click.echo(decoder.decode(b"", final=True))
    return reply


@main.command()
@click.argument("prompt")
@click.option("--max-length", default=100, show_default=True, help="Most tokens to generate.")
@click.option("--temperature", default=0.7, show_default=True, help="0 is greedy.")
@click.option("--seed", default=-1, show_default=True, help="Sampler seed; -1 is random.")
@click.option("--system", default=None, help="A system prompt before PROMPT.")
@click.option("--attention-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save every token's attention frame to this .npz file.")
@tracker_options
@pass_settings  # type: ignore[arg-type]
@run_async
async def generate(settings: Settings, prompt: str, max_length: int, temperature: float, seed: int,
                   system: str | None, attention_out: Path | None, **kw: Any) -> None:
    """Generate a reply to PROMPT (as a user message of the model's chat template), print it as
    it streams, then show the prompt colored by the brightness the reply gave it."""
    layout = layout_from(kw)
    if attention_out is not None:
        layout = "full"  # the saved frames are the whole attention
    tracker, pruner = settings_from(kw)
    async with settings.client() as client:
        chat = await Chat.open(client, system=system, tracker=tracker, pruner=pruner, max_length=max_length,
                               sampler={"temperature": temperature, "sampler_seed": seed}, attention_layout=layout)
        await chat.add_message("user", prompt)
        reply = await print_reply(chat)
    done = reply.done
    click.echo(f"[{done.finish_reason}: {done.token_count} tokens, "
               f"{done.timings.tokens_per_second:.1f} tokens/s]", err=True)
    if chat.info.attention.available and sys.stdout.isatty():
        click.echo(render_brightness(chat.state))
    if attention_out is not None:
        save_attention(attention_out, reply.input_ids, reply.tokens)
        click.echo(f"[attention of {len(reply.tokens)} tokens saved to {attention_out}]", err=True)


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
        if e.attention is None:
            raise HaloError("the server sent no attention (its model/info says why); nothing was saved")
        arrays[f"frame_{e.index:05d}"] = e.attention.values
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@main.command()
@pass_settings
@run_async
async def wait(settings: Settings) -> None:
    """Wait until the server answers (up to --timeout seconds): for scripts that start one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.timeout
    async with settings.client() as client:
        while True:
            try:
                await client.model_info()
                return
            except ServerUnreachable:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.25)
