"""The HTML snapshot: the heat view of a conversation as one file that opens anywhere, offline.

Everything is inline: the palette (palette.py) and the transcript's stylesheet (the page's own
`static/transcript.css`), the tokens drawn in the page's DOM shape with the same classes and
`data-*` attributes, every token's tooltip data as JSON, and the page's own tooltip code
(`static/tooltip.js`). Nothing is fetched, so it shows the same colours and tooltips from
`file://` with the network off as the workbench did when it was exported.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import numpy as np

from halo_client.conversation.state import ConversationState
from halo_client.ui import palette
from halo_client.ui.protocol import display_texts


def static_text(name: str) -> str:
    return resources.files("halo_client.ui").joinpath("static").joinpath(name).read_text("utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside <script>: no `</` can end the element early."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_html(state: ConversationState, *, levels_of: Mapping[int, int], legend: str, model: str,
                details: Callable[[int], dict[str, Any]], show_pruned: bool = False) -> str:
    """The snapshot of `state`: `levels_of` maps each active position to its colour bucket
    (computed by the caller with `conversation_levels`, as for the live page); `details` gives
    a position's tooltip data."""
    template = state.column("template")
    deleted = state.column("deleted")
    pinned = state.column("pinned")
    brightness = state.brightness
    turns = []
    for turn in state.turns:
        texts = display_texts(state.pieces[turn.start : turn.end])
        spans = []
        for offset, text in enumerate(texts):
            p = turn.start + offset
            classes = ["tok"]  # in the order the page writes them (transcript.js)
            if template[p]:
                classes.append("tpl")
            if p in levels_of:
                classes.append(f"h{levels_of[p]}")
            attributes = f' data-pos="{p}" data-brightness="{float(brightness[p]):.4g}"'
            if deleted[p]:
                attributes += ' data-pruned="pruned"'
            if pinned[p]:
                attributes += " data-pinned"
            spans.append(f'<span class="{" ".join(classes)}"{attributes}>{html.escape(text)}</span>')
        own = slice(turn.start, turn.end)
        # a turn whose text is all pruned is hidden as a whole, as on the page (transcript.js)
        emptied = bool(deleted[own].any()) and not bool((~deleted[own] & ~template[own]).any())
        turn_classes = f"turn role-{turn.role}{' all-pruned' if emptied else ''}"
        turns.append(f'<div class="{turn_classes}" data-turn="{turn.turn_id}"><div class="who">{turn.role}'
                     f'</div><div class="tokens">{"".join(spans)}</div></div>')
    tokens = {str(p): details(p) for p in np.arange(len(state)).tolist()}
    title = html.escape(f"Halo Weave: {model}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{palette.css()}
{static_text("transcript.css")}
body {{ margin: 0; padding: 16px 24px; background: #101217; color: #e8e8ea; font-family: system-ui, sans-serif; }}
header {{ margin-bottom: 12px; color: #aab; font-size: 13px; }}
.legend-bar {{ height: 10px; width: 320px; border-radius: 3px; background: {palette.gradient()}; margin: 6px 0; }}
</style></head>
<body>
<header><strong>{title}</strong> &middot; exported snapshot<div class="legend-bar"></div>{html.escape(legend)}</header>
<div id="transcript" class="transcript{" show-pruned" if show_pruned else ""}">{"".join(turns)}</div>
<div id="tooltip" class="tooltip" role="tooltip" hidden></div>
<script type="application/json" id="token-data">{_script_json(tokens)}</script>
<script type="module">
{static_text("tooltip.js")}
const data = JSON.parse(document.getElementById("token-data").textContent);
attachTooltip(document.getElementById("transcript"), document.getElementById("tooltip"),
              (position) => Promise.resolve(data[String(position)]));
</script>
</body></html>
"""
