"""What the command line draws: the heat view of a conversation, prune reports, numbers.

Pure functions of the conversation that return text (styled with ANSI where asked), so they are
tested without a terminal or a process.
"""

from __future__ import annotations

import codecs

import click
import numpy as np
import numpy.typing as npt

from halo_client.conversation.pruner import PruneResult
from halo_client.conversation.state import ConversationState


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


def render_brightness(state: ConversationState) -> str:
    """The active conversation, each token on a background as bright as its brightness."""
    active = state.active_positions()
    return render_heat([state.pieces[int(p)] for p in active], state.brightness[active])


def prune_report(result: PruneResult) -> list[str]:
    """One styled line per pruned unit, and the warning when only protected content is left."""
    lines = []
    for event in result.events:
        text = " ".join(event.text.split())
        lines.append(click.style(f"  pruned {event.kind} {event.unit} (brightness {event.score:.3f}, "
                                 f"{event.tokens_freed} tokens): {text[:70]}", dim=True))
    if result.over_budget:
        lines.append(click.style(f"  {result.message}", fg="yellow"))
    return lines
