"""The tracker's and pruner's settings as command-line options, their choices taken from the
settings' own `Literal` types so the two never disagree."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from halo_client.conversation.pruner import Granularity, PrunerSettings
from halo_client.conversation.tracker import Accumulation, Aggregation, DistanceMode, TrackerSettings
from halo_client.messages import AttentionLayout

P = ParamSpec("P")
R = TypeVar("R")


def choice(literal: Any) -> click.Choice[str]:
    """The values of a `Literal[...]` type as a click choice."""
    return click.Choice(list(typing.get_args(literal)))


def tracker_options(func: Callable[P, R]) -> Callable[P, R]:
    """The brightness tracker's and pruner's settings as flags (formulas: conversation/tracker.py)."""
    defaults = TrackerSettings()
    options = [
        click.option("--max-context-tokens", default=0, show_default=True,
                     help="Prune the dimmest sentences once the chat exceeds this many tokens (0: only "
                          "to fit the server's context)."),
        click.option("--granularity", type=choice(Granularity), default="sentence",
                     show_default=True, help="What the pruner removes."),
        click.option("--aggregation", type=choice(Aggregation), default=defaults.aggregation, show_default=True),
        click.option("--distance-mode", type=choice(DistanceMode), default=defaults.distance_mode,
                     show_default=True),
        click.option("--min-distance", default=defaults.min_distance, show_default=True),
        click.option("--distance-scale", default=defaults.distance_scale, show_default=True),
        click.option("--accumulation", type=choice(Accumulation), default=defaults.accumulation, show_default=True),
        click.option("--decay", default=defaults.decay, show_default=True),
        click.option("--boost", default=defaults.boost, show_default=True),
        click.option("--attention-layout", type=click.Choice(["auto", *typing.get_args(AttentionLayout)]),
                     default="auto", show_default=True,
                     help="The attention frames to ask the server for. auto: the smallest the aggregation "
                          "needs (model_stats, 2 numbers per column, for mean and max; layer_stats for "
                          "last_layer and weighted_layers), computed by the server next to the attention: the "
                          "same brightness at a fraction of the bytes. full: every head of every layer."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def layout_from(kw: dict[str, Any]) -> AttentionLayout | None:
    """Take `--attention-layout` out of a command's keyword arguments (None: auto)."""
    layout = kw.pop("attention_layout")
    return None if layout == "auto" else typing.cast(AttentionLayout, layout)


def settings_from(kw: dict[str, Any]) -> tuple[TrackerSettings, PrunerSettings]:
    """Take the tracker's and pruner's options out of a command's keyword arguments."""
    tracker = TrackerSettings(
        aggregation=kw.pop("aggregation"), distance_mode=kw.pop("distance_mode"),
        min_distance=kw.pop("min_distance"), distance_scale=kw.pop("distance_scale"),
        accumulation=kw.pop("accumulation"), decay=kw.pop("decay"), boost=kw.pop("boost"))
    pruner = PrunerSettings(max_context_tokens=kw.pop("max_context_tokens"),
                            granularity=kw.pop("granularity"))
    return tracker, pruner
