"""`halo-client chat`: the interactive chat, its slash commands as a table."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import click

from halo_client.cli.app import Settings, main, pass_settings, run_async
from halo_client.cli.commands import print_reply
from halo_client.cli.options import layout_from, settings_from, tracker_options
from halo_client.cli.render import prune_report, render_brightness
from halo_client.conversation.chat import Chat


@dataclass
class Repl:
    """What the slash commands act on."""

    chat: Chat
    session_path: str | None
    interactive: bool

    def say(self, *lines: str) -> None:
        for line in lines:
            click.echo(line, err=True)


Command = Callable[[Repl, str], Awaitable[None] | None]


def _stats(repl: Repl, _arg: str) -> None:
    for key, value in repl.chat.stats().items():
        click.echo(f"  {key:16} {value}")


def _prune(repl: Repl, _arg: str) -> None:
    repl.say(*prune_report(repl.chat.prune()))


def _restore(repl: Repl, arg: str) -> None:
    chat = repl.chat
    pruned = chat.pruner.pruned_units(chat.state)
    if not pruned:
        repl.say("  nothing is pruned")
        return
    index = int(arg) if arg.strip().lstrip("-").isdigit() else -1
    if not -len(pruned) <= index < len(pruned):
        repl.say(f"  /restore takes 0..{len(pruned) - 1}")
        return
    event = chat.pruner.restore(chat.state, pruned[index])
    repl.say(f"  restored: {' '.join(event.text.split())[:70]}")


def _save(repl: Repl, arg: str) -> None:
    target = arg.strip() or repl.session_path
    if not target:
        repl.say("  /save FILE (or start with --session FILE)")
        return
    repl.chat.save(target)
    repl.say(f"  saved to {target}")


#: slash command -> (what it does, its handler); `/quit` and `/exit` end the chat
COMMANDS: dict[str, tuple[str, Command]] = {
    "/prune": ("prune to the budget now", _prune),
    "/restore": ("[N]  put back pruned unit N (default: the last)", _restore),
    "/save": ("[FILE]  save the session", _save),
    "/stats": ("numbers", _stats),
}
QUIT = ("/quit", "/exit")
CHAT_HELP = ("/prune  prune to the budget now   /restore [N]  put back pruned unit N (default: the last)\n"
             "/save [FILE]  save the session   /stats  numbers   /quit  leave")


async def _send(repl: Repl, line: str) -> None:
    chat = repl.chat
    await chat.add_message("user", line)
    click.echo("model> ", nl=False)
    reply = await print_reply(chat)
    repl.say(*prune_report(reply.pruned_before), *prune_report(reply.pruned_after))
    if repl.interactive and chat.info.attention.available:
        click.echo(render_brightness(chat.state))
    if repl.session_path:
        chat.save(repl.session_path)


@main.command()
@click.option("--max-length", default=200, show_default=True, help="Most tokens per reply.")
@click.option("--temperature", default=0.7, show_default=True, help="0 is greedy.")
@click.option("--system", default="You are a helpful assistant.", show_default=True,
              help="The system prompt (ignored when --session loads an existing chat).")
@click.option("--session", "session_path", type=click.Path(dir_okay=False), default=None,
              help="Load the chat from FILE if it exists (with the tracker and pruner settings it was saved "
                   "with), and save it there after every reply.")
@tracker_options
@pass_settings  # type: ignore[arg-type]
@run_async
async def chat(settings: Settings, max_length: int, temperature: float, system: str,
               session_path: str | None, **kw: Any) -> None:
    """Chat with the model. After each reply the conversation is shown colored by brightness,
    and pruned sentences are reported. Without a terminal, reads one user message per line."""
    interactive = sys.stdin.isatty()
    layout = layout_from(kw)
    tracker, pruner = settings_from(kw)
    async with settings.client() as client:
        conversation = await Chat.open(client, system=system, session_path=session_path, tracker=tracker,
                                       pruner=pruner, max_length=max_length, sampler={"temperature": temperature},
                                       attention_layout=layout)
        repl = Repl(conversation, session_path, interactive)
        if interactive:
            repl.say(CHAT_HELP)
        while True:
            try:
                line = await asyncio.to_thread(input, "you> " if interactive else "")
            except EOFError:
                break
            command, _, arg = line.strip().partition(" ")
            if command in QUIT:
                break
            if command in COMMANDS:
                done = COMMANDS[command][1](repl, arg)
                if done is not None:
                    await done
                continue
            if line.strip():
                await _send(repl, line)
