"""The command line's shared options: the tracker's, pruner's and sampler's settings.

Choices come from the settings' own `Literal` types and ranges match their pydantic fields, so
a bad value is refused when the command line is parsed (one line, exit code 2), before
anything runs.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from halo_client.cli.defaults import SESSION_OPTIONS
from halo_client.config import META_KEY, Config
from halo_client.conversation.chat import SettingChange
from halo_client.conversation.memory import MemorySettings
from halo_client.conversation.pruner import Granularity, PrunerSettings
from halo_client.conversation.tracker import Accumulation, Aggregation, DistanceMode, TrackerSettings
from halo_client.messages import AttentionLayout

P = ParamSpec("P")
R = TypeVar("R")


def choice(literal: Any) -> click.Choice[str]:
    """The values of a `Literal[...]` type as a click choice."""
    return click.Choice(list(typing.get_args(literal)))


def _apply(func: Callable[P, R], options: list[Callable[[Any], Any]]) -> Callable[P, R]:
    for option in reversed(options):
        func = option(func)
    return func


def tracker_options(func: Callable[P, R]) -> Callable[P, R]:
    """The brightness tracker's and pruner's settings (formulas: conversation/tracker.py)."""
    d = TrackerSettings()
    return _apply(func, [
        click.option("--max-context-tokens", type=click.IntRange(0), default=0, show_default=True,
                     help="Prune the dimmest sentences once the chat exceeds this many tokens (>= 0; 0: only "
                          "what the server's context requires)."),
        click.option("--granularity", type=choice(Granularity), default="sentence", show_default=True,
                     help="What the pruner removes at a time."),
        click.option("--protect-exchanges", type=click.IntRange(0), default=PrunerSettings().protect_exchanges,
                     show_default=True,
                     help="The latest exchanges (a user message and the reply to it) the pruner never removes "
                          "(>= 0; 0: the message being answered only)."),
        click.option("--recent-share", type=click.FloatRange(0, 1), default=PrunerSettings().recent_share,
                     show_default=True,
                     help="The share of the budget kept for the newest text, whatever its brightness (0-1; the "
                          "sentences reaching into it are pruned last; 0: brightness alone decides)."),
        click.option("--aggregation", type=choice(Aggregation), default=d.aggregation, show_default=True,
                     help="How a frame's layers and heads become one value per token: their mean, their max, "
                          "the last layer's mean, or a mean weighting later layers more."),
        click.option("--distance-mode", type=choice(DistanceMode), default=d.distance_mode, show_default=True,
                     help="How attention counts by how far back it reaches: none (all the same), threshold "
                          "(0 within --min-distance, 1 beyond), or growing with the distance linearly, "
                          "logarithmically or as a square root."),
        click.option("--min-distance", type=click.IntRange(0), default=d.min_distance, show_default=True,
                     help="Tokens: attention from this close counts nothing (>= 0)."),
        click.option("--distance-scale", type=click.FloatRange(0, min_open=True), default=d.distance_scale,
                     show_default=True, help="Tokens over which the distance weight grows by one unit (> 0)."),
        click.option("--accumulation", type=choice(Accumulation), default=d.accumulation, show_default=True,
                     help="How scores build up: additive (minus --decay per token, floored at 0), none (a plain "
                          "sum) or exponential (multiplied by 1 - --decay per token)."),
        click.option("--decay", type=click.FloatRange(0, 1), default=d.decay, show_default=True,
                     help="Brightness lost per generated token (0 to 1)."),
        click.option("--boost", type=click.FloatRange(0), default=d.boost, show_default=True,
                     help="Multiplies each frame's contribution (>= 0)."),
        click.option("--attention-layout", type=click.Choice(["auto", *typing.get_args(AttentionLayout)]),
                     default="auto", show_default=True,
                     help="The attention frames to ask the server for. auto: the smallest the aggregation "
                          "needs (model_stats, 2 numbers per column, for mean and max; layer_stats for "
                          "last_layer and weighted_layers), computed by the server next to the attention: the "
                          "same brightness at a fraction of the bytes. full: every head of every layer."),
    ])


def sampler_options(max_length: int) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The reply's length and the sampler's temperature."""
    def apply(func: Callable[P, R]) -> Callable[P, R]:
        return _apply(func, [
            click.option("--max-length", type=click.IntRange(1), default=max_length, show_default=True,
                         help="Most tokens per reply (>= 1)."),
            click.option("--temperature", type=click.FloatRange(0), default=0.7, show_default=True,
                         help="Sampling temperature (>= 0; 0 is greedy)."),
        ])
    return apply


def layout_from(kw: dict[str, Any]) -> AttentionLayout | None:
    """Take `--attention-layout` out of a command's keyword arguments (None: auto)."""
    layout = kw.pop("attention_layout")
    return None if layout == "auto" else typing.cast(AttentionLayout, layout)


def memory_option(func: Callable[P, R]) -> Callable[P, R]:
    """--memory/--no-memory: pruned sentences the user's message asks for come back before the reply."""
    return click.option("--memory/--no-memory", default=True, show_default=True,
                        help="Before each reply, bring back the pruned sentences the message asks for, by meaning "
                             "(all-mpnet-base-v2 in int8, fetched once, 404 MB, or the settings file's "
                             "memory.embedder) or by its words (BM25), and keep its best matches still in the "
                             "context through the prune; shown as 'recalled ... by ...' and "
                             "'kept ... by ...' with the reason.")(func)


def memory_from(enabled: bool) -> MemorySettings:
    """Memory's settings: the settings file's, on or off as the flag says."""
    return file_settings().memory.model_copy(update={"enabled": enabled})


def file_settings() -> Config:
    """The settings file as the running command read it (defaults outside a command)."""
    ctx = click.get_current_context(silent=True)
    found = ctx.meta.get(META_KEY) if ctx is not None else None
    return found if isinstance(found, Config) else Config()


def settings_from(kw: dict[str, Any]) -> tuple[TrackerSettings, PrunerSettings]:
    """Take the tracker's and pruner's options out of a command's keyword arguments; the
    settings without a flag (initial_brightness, reduce) come from the settings file."""
    chosen = file_settings()
    tracker = TrackerSettings.model_validate({**chosen.tracker.model_dump(), **{
        name: kw.pop(name) for name in ("aggregation", "distance_mode", "min_distance", "distance_scale",
                                        "accumulation", "decay", "boost")}})
    pruner = PrunerSettings.model_validate({**chosen.pruner.model_dump(), **{
        name: kw.pop(name) for name in ("max_context_tokens", "granularity", "protect_exchanges", "recent_share")}})
    return tracker, pruner


def typed_session_settings(tracker: TrackerSettings, pruner: PrunerSettings,
                           memory: bool) -> dict[str, dict[str, Any]]:
    """The settings a saved session keeps that the user typed as flags on this command line: for
    a resumed chat they win over the saved ones (`Chat.open(override=...)`), and only they do
    (the settings file's defaults do not)."""
    ctx = click.get_current_context()
    values = {"tracker": tracker.model_dump(), "pruner": pruner.model_dump(), "memory": {"enabled": memory}}
    typed: dict[str, dict[str, Any]] = {}
    for option, (section, field) in SESSION_OPTIONS.items():
        if ctx.get_parameter_source(option) is ParameterSource.COMMANDLINE:
            typed.setdefault(section, {})[field] = values[section][field]
    return typed


def override_lines(changes: list[SettingChange], session_path: str) -> list[str]:
    """One line per saved setting a typed flag replaced."""
    option_of = {place: option for option, place in SESSION_OPTIONS.items()}
    lines = []
    for change in changes:
        option = option_of[(change.section, change.name)].replace("_", "-")
        flag = (f"--{'' if change.now else 'no-'}{option}" if isinstance(change.now, bool)
                else f"--{option} {change.now}")
        lines.append(f"  {flag} replaces the {change.name.replace('_', ' ')} {change.saved!r} saved in "
                     f"{session_path}, from now on")
    return lines


def sampler_from(**flags: Any) -> dict[str, Any]:
    """A generation request's sampler fields: the command's flags over the settings file's
    (top_p, top_k, rep_pen, ... have no flag of their own)."""
    return {**file_settings().sampler.request_fields(), **flags}


def writable_file(_ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A file the command will write at the end: refuse now, not after the work, a path whose
    folder does not exist or cannot be written."""
    if value is None:
        return None
    folder = value.parent if str(value.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"{value}: the folder {folder} does not exist", param=param)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"{value}: the folder {folder} cannot be written", param=param)
    if value.is_dir():
        raise click.BadParameter(f"{value} is a folder, not a file", param=param)
    return value
