"""`halo-client chat`: the interactive chat, its slash commands as a table.

Ctrl-C while a reply streams stops the reply (what was written stays in the conversation);
Ctrl-C at the prompt asks once, and a second one leaves. With `--session`, the chat is saved
after every reply and when it ends, atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click

from halo_client.cli.app import Settings, main, pass_settings, run_async
from halo_client.cli.commands import print_reply
from halo_client.cli.errors import describe
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
from halo_client.cli.render import (
    prune_line,
    prune_report,
    pruned_list,
    recall_report,
    render_conversation,
    render_plain,
    stats_lines,
)
from halo_client.config import DEFAULT_SYSTEM_PROMPT
from halo_client.conversation.chat import Chat, MessageTooLong
from halo_client.display.scale import SCALE_MODES, ScaleMode
from halo_client.errors import HaloError


def prepare_memory(repl: Repl, chat: Chat) -> None:
    """Memory's embedder loaded before the first message (fetched the first time, with progress),
    not mid-reply; if it cannot be, one line says memory matches words only."""
    notice = chat.memory.prepare(progress=lambda line: repl.say(f"  memory: {line}"))
    if notice is not None:
        repl.say(click.style(f"  {notice}", fg="yellow"))


@dataclass
class Repl:
    """What the slash commands act on."""

    chat: Chat
    session_path: str | None
    interactive: bool
    scale: ScaleMode = "percentile"
    done: bool = False
    #: set by Ctrl-C while a reply streams
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: whether stdout shows colours (a terminal); elsewhere /show draws its plain view
    colour: bool = field(default_factory=lambda: sys.stdout.isatty())

    def say(self, *lines: str) -> None:
        """Status and reports (stderr)."""
        for line in lines:
            click.echo(line, err=True)

    def answer(self, *lines: str) -> None:
        """What a command was asked to print (stdout)."""
        for line in lines:
            click.echo(line)

    def show(self, show_template: bool = False) -> None:
        if not self.colour:
            self.answer(*render_plain(self.chat.state, mode=self.scale, show_template=show_template))
            return
        self.answer(*render_conversation(self.chat.state, mode=self.scale, show_template=show_template))

    def autosave(self) -> None:
        if self.session_path:
            try:
                self.chat.save(self.session_path)
            except (OSError, HaloError) as exc:
                self.say(f"  could not save the session to {self.session_path}: {exc}")


Handler = Callable[[Repl, str], Awaitable[None] | None]


def _help(repl: Repl, _arg: str) -> None:
    width = max(len(f"{name} {usage}") for name, (usage, _text, _h) in COMMANDS.items())
    repl.answer(*(f"  {f'{name} {usage}':{width}}  {text}" for name, (usage, text, _h) in COMMANDS.items()),
                "  anything else is sent to the model; Ctrl-C stops a reply, twice at the prompt leaves")


def _quit(repl: Repl, _arg: str) -> None:
    repl.done = True


def _stats(repl: Repl, _arg: str) -> None:
    repl.answer(*stats_lines(repl.chat.stats()))


def _prune(repl: Repl, _arg: str) -> None:
    result = repl.chat.prune()
    repl.say(*(prune_report(result) or ["  nothing to prune: the chat is within its budget"]))
    if result.events and repl.interactive:
        repl.show()


def _pruned(repl: Repl, _arg: str) -> None:
    repl.answer(*pruned_list(repl.chat.pruner.pruned_units(repl.chat.state), repl.chat.state))


def _restore(repl: Repl, arg: str) -> None:
    chat = repl.chat
    pruned = chat.pruner.pruned_units(chat.state)
    if not pruned:
        repl.say("  nothing is pruned")
        return
    if not arg.strip():
        deleted_turn = chat.state.column("deleted_turn")
        event = max(pruned, key=lambda e: (int(deleted_turn[e.positions[0]]), e.unit))  # the newest
    else:
        wanted = arg.strip().lstrip("#")
        event = next((e for e in pruned if str(e.unit) == wanted), None)  # type: ignore[assignment]
        if event is None:
            repl.say(f"  no pruned {pruned[0].kind} {arg.strip()}: /pruned lists what /restore takes")
            return
    chat.pruner.restore(chat.state, event)
    repl.say(f"  restored {prune_line(event)}")


def _show(repl: Repl, arg: str) -> None:
    words = arg.split()
    if any(w not in ("all", *SCALE_MODES) for w in words):
        repl.say("  /show takes `all` (template tokens too) and `percentile` or `log` (the colour scale)")
        return
    repl.scale = next((w for w in words if w in SCALE_MODES), repl.scale)
    repl.show(show_template="all" in words)


def _save(repl: Repl, arg: str) -> None:
    target = arg.strip() or repl.session_path
    if not target:
        repl.say("  /save FILE (or start with --session FILE)")
        return
    try:
        repl.chat.save(target)
    except (OSError, HaloError) as exc:
        repl.say(f"  not saved: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc} ({target})")
        return
    repl.say(f"  saved to {target}")


#: slash command -> (its arguments, what it does, its handler)
COMMANDS: dict[str, tuple[str, str, Handler]] = {
    "/help": ("", "this list", _help),
    "/show": ("[all] [percentile|log]", "the conversation coloured by brightness (all: template tokens too)", _show),
    "/pruned": ("", "what is pruned, newest first, with the numbers /restore takes", _pruned),
    "/restore": ("[N]", "put back pruned unit N (default: the newest)", _restore),
    "/prune": ("", "prune to the budget now", _prune),
    "/stats": ("", "tokens, budget, brightness", _stats),
    "/save": ("[FILE]", "save the session (default: --session's file)", _save),
    "/quit": ("", "leave (also /exit, Ctrl-D, or Ctrl-C twice)", _quit),
    "/exit": ("", "leave", _quit),
}


async def _send(repl: Repl, line: str) -> None:
    chat = repl.chat
    repl.stop.clear()
    try:
        reply = await print_reply(chat, line, repl.stop, label="model> ", eager=repl.interactive)
    except MessageTooLong as exc:
        repl.say(f"  {describe(exc)}")
        return
    except HaloError as exc:
        # `Chat.send` undid the whole exchange: the conversation is as before the message
        repl.say(f"  halo-client: {describe(exc)} Your message was not added to the chat: send it again.")
        return
    if reply.interrupted is not None:
        repl.say(f"  [interrupted: {reply.interrupted}; what was written stays in the conversation]")
    elif reply.done.finish_reason == "aborted":
        repl.say("  [stopped: what was written stays in the conversation]")
    repl.say(*recall_report(reply.recalled))
    pruned = prune_report(reply.pruned_before, reply.pruned_after)
    repl.say(*pruned)
    if pruned and repl.interactive and repl.colour and chat.info.attention.available:
        repl.show()
    repl.autosave()


class LineReader:
    """Lines from stdin, read by a daemon thread (a blocked read must never keep the process
    alive at exit), delivered to the event loop."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.loop = asyncio.get_running_loop()
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.wanted = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="halo-stdin").start()

    def _run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            try:
                line: str | None = input(self.prompt)
            except (EOFError, OSError):
                line = None
            except KeyboardInterrupt:  # only in the main thread; kept for safety
                continue
            self.loop.call_soon_threadsafe(self.lines.put_nowait, line)
            if line is None:
                return

    async def read(self) -> str | None:
        self.wanted.set()
        return await self.lines.get()


async def run_repl(repl: Repl) -> None:
    """Read and act until /quit, end of input or a second Ctrl-C at the prompt."""
    loop = asyncio.get_running_loop()
    reader = LineReader("you> " if repl.interactive else "")
    interrupts = 0
    reading: asyncio.Future[str | None] | None = None
    at_prompt = asyncio.Event()

    def on_interrupt() -> None:
        nonlocal interrupts
        if not at_prompt.is_set():
            repl.stop.set()  # a reply is streaming: stop it, keep the chat
            return
        interrupts += 1
        if interrupts >= 2:
            repl.done = True
            if reading is not None:
                reading.cancel()
        else:
            click.echo("\n  (Ctrl-C again, /quit or Ctrl-D to leave)", err=True)
            click.echo("you> " if repl.interactive else "", nl=False)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        while not repl.done:
            at_prompt.set()
            reading = asyncio.ensure_future(reader.read())
            try:
                line = await reading
            except asyncio.CancelledError:
                break
            at_prompt.clear()
            interrupts = 0
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            if not repl.interactive:
                click.echo(f"you> {text}")  # a piped chat's output reads as the transcript it was
            if text.startswith("/"):
                command, _, arg = text.partition(" ")
                entry = COMMANDS.get(command)
                if entry is None:
                    repl.say(f"  unknown command {command}: /help lists them (nothing was sent)")
                    continue
                outcome = entry[2](repl, arg)
                if outcome is not None:
                    await outcome
                continue
            await _send(repl, text)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        repl.autosave()


@main.command()
@sampler_options(max_length=200)
@click.option("--system", default=DEFAULT_SYSTEM_PROMPT, show_default=True,
              help="The system prompt (ignored when --session loads an existing chat).")
@click.option("--session", "session_path", type=click.Path(dir_okay=False), default=None,
              help="Load the chat from FILE if it exists, and save it there after every reply and at the end. A "
                   "loaded chat keeps the tracker, pruner and memory settings it was saved with, except those you "
                   "type as flags now: they win (one line says which saved value each replaced).")
@click.option("--force-model", is_flag=True,
              help="Load a --session saved against another model (token ids are model-specific: its text "
                   "will not mean the same to this one).")
@click.option("--scale", type=click.Choice(SCALE_MODES), default="percentile", show_default=True,
              help="The colour scale of /show: percentile (each colour used equally often) or log.")
@memory_option
@tracker_options
@pass_settings  # type: ignore[arg-type]
@run_async
async def chat(settings: Settings, max_length: int, temperature: float, system: str, session_path: str | None,
               force_model: bool, scale: ScaleMode, memory: bool, **kw: Any) -> None:
    """Chat with the model, pruning the dimmest sentences when it outgrows --max-context-tokens.
    /show colours the conversation by brightness; /help lists the commands. Without a
    terminal, reads one user message per line."""
    layout = layout_from(kw)
    tracker, pruner = settings_from(kw)
    async with settings.client() as client:
        conversation = await Chat.open(client, system=system, session_path=session_path, tracker=tracker,
                                       pruner=pruner, max_length=max_length,
                                       sampler=sampler_from(temperature=temperature),
                                       attention_layout=layout, force_model=force_model,
                                       memory=memory_from(memory),
                                       override=typed_session_settings(tracker, pruner, memory))
        repl = Repl(conversation, session_path, sys.stdin.isatty(), scale)
        if session_path is not None:
            repl.say(*override_lines(conversation.overridden, session_path))
        prepare_memory(repl, conversation)
        if repl.interactive:
            repl.say(f"  chatting with {conversation.info.model_name}; /help lists the commands")
        await run_repl(repl)
