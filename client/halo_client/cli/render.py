"""What the command line draws: the heat view of a conversation, prune reports, numbers.

Pure functions of the conversation that return text (styled with ANSI where asked), so they are
tested without a terminal or a process. Colours come from `display.scale`, the one heat scale
every display uses.
"""

from __future__ import annotations

import codecs
import itertools
import math
from collections.abc import Sequence
from typing import Any

import click
import numpy as np
import numpy.typing as npt

from halo_client.conversation.memory import Recall
from halo_client.conversation.pruner import LISTED_ONE_BY_ONE, RANKING_LABELS, PruneEvent, PruneResult, summary
from halo_client.conversation.state import ROLES, ConversationState
from halo_client.display.scale import HeatScale, ScaleMode, conversation_levels, heat_scale
from halo_client.messages import ModelInfo

#: dim slate -> ember -> amber: dark enough at the bottom for white text, bright at the top
_STOPS = ((0.0, (38, 42, 52)), (0.55, (150, 70, 20)), (1.0, (255, 200, 40)))
_ROLE_LABELS = {"system": "system", "user": "you", "assistant": "model"}
_LEGEND_STEPS = 8


def heat_colour(level: float) -> tuple[int, int, int]:
    """The background colour of a level in [0, 1]."""
    level = min(max(float(level), 0.0), 1.0)
    for (a, (r0, g0, b0)), (b, (r1, g1, b1)) in itertools.pairwise(_STOPS):
        if level <= b:
            t = (level - a) / (b - a)
            return round(r0 + (r1 - r0) * t), round(g0 + (g1 - g0) * t), round(b0 + (b1 - b0) * t)
    return _STOPS[-1][1]


def _styled(text: str, level: float, *, template: bool = False) -> str:
    fg = (0, 0, 0) if level > 0.6 else (235, 235, 235)
    if template:
        return click.style(text, bg=heat_colour(level), fg=fg, dim=True, italic=True)
    return click.style(text, bg=heat_colour(level), fg=fg)


def render_heat(pieces: Sequence[bytes], levels: npt.NDArray[np.floating],
                template: npt.NDArray[np.bool_] | None = None) -> str:
    """Text of `pieces`, each token on a background of its level; template tokens italic."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for i, piece in enumerate(pieces):
        text = decoder.decode(piece)
        if text:
            out.append(_styled(text, float(levels[i]), template=bool(template is not None and template[i])))
    tail = decoder.decode(b"", final=True)
    return "".join(out) + tail


def legend(scale: HeatScale) -> str:
    """One line: the colour ramp and what it means."""
    ramp = "".join(click.style("  ", bg=heat_colour(i / (_LEGEND_STEPS - 1))) for i in range(_LEGEND_STEPS))
    if scale.mode == "percentile":
        what = f"percentile among {scale.count} content tokens"
    else:
        what = f"log brightness over {scale.count} content tokens, {scale.low:.3g} to {scale.high:.3g}"
    return (f"  dim {ramp} bright  ({what}; template and system text are drawn but do not set the scale)")


def render_conversation(state: ConversationState, *, mode: ScaleMode = "percentile",
                        show_template: bool = False) -> list[str]:
    """The heat view: each active message on its own lines under a role label, then the legend.
    Template tokens set nothing and are hidden unless `show_template`."""
    active = state.active_positions()
    if not active.size:
        return ["  (the conversation is empty)"]
    levels, scale = conversation_levels(state, active, mode)
    level_at = dict(zip(active.tolist(), levels.tolist(), strict=True))
    template = state.column("template")
    lines: list[str] = []
    for turn in state.turns:
        positions = [p for p in range(turn.start, turn.end) if p in level_at and (show_template or not template[p])]
        if not positions:
            continue
        body = render_heat([state.pieces[p] for p in positions], np.asarray([level_at[p] for p in positions]),
                           template[positions])
        label = click.style(f"{_ROLE_LABELS[turn.role]}:", bold=True)
        lines.append(f"{label} {body.strip()}" if not show_template else body)
    lines.append(legend(scale))
    return lines


#: a level in [0, 1] as one character, for a view without colours (a pipe, a log)
_BARS = "▁▂▃▄▅▆▇█"


def render_plain(state: ConversationState, *, mode: ScaleMode = "percentile",
                 show_template: bool = False) -> list[str]:
    """The heat view without colours, for a pipe or a file: each message under its role label,
    one sentence a line, led by its brightness (its brightest token's: what the pruner ranks by
    where the newest message's attention cannot) and a bar
    for that score on the scale `mode` fitted to the sentences (system text drawn, not setting
    it), then the legend. With `show_template`, the template's runs too, marked `tpl`."""
    active = state.active_positions()
    if not active.size:
        return ["  (the conversation is empty)"]
    template = state.column("template")[active]
    positions = active if show_template else active[~template]
    template = state.column("template")[positions]
    sentence, turn = state.column("sentence")[positions], state.column("turn")[positions]
    starts = np.flatnonzero(np.r_[True, (sentence[1:] != sentence[:-1]) | (turn[1:] != turn[:-1])])
    ends = np.r_[starts[1:], positions.size]
    scores = np.asarray([state.brightness[positions[a:b]].max() for a, b in zip(starts, ends, strict=True)])
    text_units = ~template[starts]
    system = state.column("role")[positions[starts]] == ROLES.index("system")
    scale = heat_scale(scores[text_units], ~system[text_units], mode)
    levels = scale.levels(scores)
    lines: list[str] = []
    shown_turn = -1
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        raw = state.text(positions[a:b])
        text = raw.encode("unicode_escape").decode("ascii") if template[a] else " ".join(raw.split())
        if not text:
            continue
        t = int(turn[a])
        if t != shown_turn:
            lines.append(f"{_ROLE_LABELS[state.turns[t].role]}:")
            shown_turn = t
        if template[a]:
            lines.append(f"  {'tpl':>8}  {text}")
            continue
        bar = _BARS[min(int(levels[i] * len(_BARS)), len(_BARS) - 1)]
        lines.append(f"  {bar} {scores[i]:6.2f}  {text}")
    how = (f"percentile among {scale.count} sentences" if mode == "percentile"
           else f"log scale over {scale.count} sentences, {scale.low:.3g} to {scale.high:.3g}")
    lines.append(f"  (each sentence's brightness is its brightest token's; {_BARS[0]} dim "
                 f"to {_BARS[-1]} bright: {how}; system text does not set the scale)")
    return lines


def level_histogram(state: ConversationState, mode: ScaleMode = "percentile", bins: int = 5) -> list[int]:
    """How many content tokens fall in each fifth (by default) of the scale: how spread the view is."""
    active = state.active_positions()
    levels, _ = conversation_levels(state, active, mode)
    content = ~state.column("template")[active] & (state.column("role")[active] != ROLES.index("system"))
    return [int(n) for n in np.histogram(levels[content], bins=bins, range=(0.0, 1.0))[0]]


# ---------------------------------------------------------------------------------- prunes


def _one_line(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def tokens(n: int) -> str:
    return f"{n:,} token{'' if n == 1 else 's'}"


def prune_line(event: PruneEvent) -> str:
    """`sentence 12 (brightness 0.42, 9 tokens): text` — the number `/restore` takes."""
    score = "" if math.isnan(event.score) else f"{RANKING_LABELS[event.ranked_by]} {event.score:.2f}, "
    return f"{event.kind} {event.unit} ({score}{tokens(event.size)}): {_one_line(event.text) or '(no text)'}"


def recall_report(recalls: Sequence[Recall]) -> list[str]:
    """One styled line per sentence memory brought back for the message, or kept in the context."""
    return [click.style(f"  {r.action} {r.event.kind} {r.event.unit} ({tokens(r.event.size)}) by {r.why}: "
                        f"{_one_line(r.event.text)}", fg="cyan")
            for r in recalls]


def prune_report(*results: PruneResult) -> list[str]:
    """What the pruner did in `results` (one exchange's prunes): a line per pruned unit, or, for
    more than `LISTED_ONE_BY_ONE`, one summary line (`/pruned` lists them); then the warning when
    only protected content is left. A message's template going with its last sentence is part of
    that prune, not a line of its own."""
    events = [e for r in results for e in r.events if not math.isnan(e.score)]
    if len(events) > LISTED_ONE_BY_ONE:
        lines = [click.style(f"  pruned {summary(events)}: /pruned lists them", dim=True)]
    else:
        lines = [click.style(f"  pruned {prune_line(e)}", dim=True) for e in events]
    warned = next((r for r in reversed(results) if r.over_budget), None)
    if warned is not None:
        lines.append(click.style(f"  {warned.message}", fg="yellow"))
    return lines


def pruned_list(events: Sequence[PruneEvent], state: ConversationState) -> list[str]:
    """`/pruned`: what is pruned now, newest first, with the numbers `/restore` takes."""
    if not events:
        return ["  nothing is pruned"]
    deleted_turn = state.column("deleted_turn")
    newest_first = sorted(events, key=lambda e: (-int(deleted_turn[e.positions[0]]), -e.unit))
    return [f"  {prune_line(e)}" for e in newest_first]


# ---------------------------------------------------------------------------------- numbers


def _n(value: int) -> str:
    return f"{value:,}"


def stats_lines(stats: dict[str, Any]) -> list[str]:
    """`/stats` for people."""
    return [
        f"  turns {stats['turns']} · tokens {_n(stats['tokens'])} (active {_n(stats['active'])}, "
        f"pruned {_n(stats['pruned'])}) · budget {_n(stats['budget'])}",
        f"  brightness mean {stats['brightness_mean']:.2f} · frames tracked {_n(stats['frames_tracked'])}",
    ]


def info_lines(info: ModelInfo) -> list[str]:
    """`info` for people (`info --json` is the contract's JSON)."""
    attention = info.attention
    if attention.available:
        export = f"available: {', '.join(attention.dtypes)}; layouts {', '.join(attention.layouts)}"
    else:
        export = f"unavailable: {attention.reason or 'no reason given'}"
    special = ", ".join(f"{name} {value}" for name, value in (("bos", info.bos_token_id), ("eos", info.eos_token_id),
                                                             ("eot", info.eot_token_id)) if value is not None)
    rows = [
        ("model", f"{info.model_name} ({info.architecture})"),
        ("shape", f"{info.num_layers} layers x {info.num_attention_heads} heads ({info.num_key_value_heads} KV), "
                  f"hidden {_n(info.hidden_size)}, vocabulary {_n(info.vocab_size)}"),
        ("context", f"{_n(info.max_context_length)} tokens (trained on {_n(info.max_trained_context)})"),
        ("special tokens", special or "none"),
        ("RoPE", f"base {info.rope_freq_base:g}, scale {info.rope_freq_scale:g}"),
        ("chat template", "the model's own" if info.chat_template else "none (ChatML is assumed)"),
        ("attention", export),
    ]
    return [f"{key:15} {value}" for key, value in rows]
