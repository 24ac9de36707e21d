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
from halo_client.cli.options import (
    layout_from,
    sampler_from,
    sampler_options,
    settings_from,
    tracker_options,
    writable_file,
)
from halo_client.cli.render import info_lines, render_conversation
from halo_client.conversation.chat import Chat, Reply, ReplyStep
from halo_client.errors import HaloError, ServerUnreachable


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The server's model/info JSON, as the contract defines it.")
@pass_settings
@run_async
async def info(settings: Settings, as_json: bool) -> None:
    """Show the model the server runs and whether it exports attention."""
    async with settings.client() as client:
        mi = await client.model_info()
    if as_json:
        click.echo(mi.model_dump_json(indent=2))
        return
    for line in info_lines(mi):
        click.echo(line)


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


async def print_reply(chat: Chat, message: str | None = None, stop: asyncio.Event | None = None, *,
                      label: str = "", eager: bool = True) -> Reply:
    """Send `message` (`Chat.send`; None: answer the conversation as it is) and stream the reply
    to stdout as it is generated (`stop` ends it early), after `label`: at once with `eager`,
    else with the first token, so a message refused before any reply prints nothing here."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    hidden = chat.info.end_token_ids
    started = False

    def begin() -> None:
        nonlocal started
        if not started:
            click.echo(label, nl=False)
            started = True

    def show(step: ReplyStep) -> None:
        begin()
        if step.token_id not in hidden:  # the stopping token's text is template, not reply
            click.echo(decoder.decode(step.piece), nl=False)

    if eager:
        begin()
    try:
        reply = await (chat.send(message, show, stop) if message is not None else chat.reply(show, stop))
    finally:
        if started:
            click.echo(decoder.decode(b"", final=True))
    if not started:  # a reply of no tokens: its label still shows it was answered
        click.echo(label)
    return reply


@main.command()
@click.argument("prompt")
@sampler_options(max_length=100)
@click.option("--seed", type=click.IntRange(-1, 2**32 - 1), default=-1, show_default=True,
              help="Sampler seed (-1 is random).")
@click.option("--system", default=None, help="A system prompt before PROMPT.")
@click.option("--attention-out", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=writable_file,
              help="Save the request's token ids, pieces and brightness, and every generated token's full "
                   "attention frame, to this .npz file (readable without pickle).")
@click.option("--show/--no-show", default=None,
              help="Show the prompt's heat view after the reply (default: when stdout is a terminal).")
@tracker_options
@pass_settings  # type: ignore[arg-type]
@run_async
async def generate(settings: Settings, prompt: str, max_length: int, temperature: float, seed: int,
                   system: str | None, attention_out: Path | None, show: bool | None, **kw: Any) -> None:
    """Generate a reply to PROMPT (as a user message of the model's chat template), print it as
    it streams, then show the conversation coloured by the brightness the reply gave it."""
    layout = layout_from(kw)
    if attention_out is not None:
        layout = "full"  # the saved frames are the whole attention
    tracker, pruner = settings_from(kw)
    async with settings.client() as client:
        chat = await Chat.open(client, system=system, tracker=tracker, pruner=pruner, max_length=max_length,
                               sampler=sampler_from(temperature=temperature, sampler_seed=seed),
                               attention_layout=layout)
        reply = await print_reply(chat, prompt)
    done = reply.done
    click.echo(f"[{done.finish_reason}: {done.token_count} tokens, "
               f"{done.timings.tokens_per_second:.1f} tokens/s]", err=True)
    if chat.info.attention.available and (sys.stdout.isatty() if show is None else show):
        for line in render_conversation(chat.state):
            click.echo(line, color=show)
    if attention_out is not None:
        save_attention(attention_out, chat, reply)
        click.echo(f"[attention of {len(reply.tokens)} tokens saved to {attention_out}]", err=True)


def save_attention(path: Path, chat: Chat, reply: Reply) -> None:
    """One .npz, readable with `numpy.load` (no pickle):

    - `input_ids` [n], `token_ids` [m] (generated);
    - `piece_bytes` (uint8) and `piece_offsets` [n + m + 1]: the exact bytes of every token,
      request then generated; token k is `piece_bytes[piece_offsets[k]:piece_offsets[k + 1]]`;
    - `brightness` [n + m] (float32): each token's brightness after the reply;
    - `frame_00000`, `frame_00001`, ...: each generated token's frame, `[layers, heads, n + i]`.

    Written to a temporary file and renamed, so an interrupted save leaves no half file.
    """
    positions = np.asarray(reply.context_positions + reply.positions, np.int64)
    pieces = [chat.state.pieces[int(p)] for p in positions]
    arrays: dict[str, npt.NDArray[Any]] = {
        "input_ids": np.asarray(reply.input_ids, dtype=np.int64),
        "token_ids": np.asarray([e.token_id for e in reply.tokens], dtype=np.int64),
        "piece_bytes": np.frombuffer(b"".join(pieces), dtype=np.uint8),
        "piece_offsets": np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64),
        "brightness": chat.state.brightness[positions].astype(np.float32),
    }
    for e in reply.tokens:
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
