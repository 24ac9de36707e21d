"""Question-conditioned scores: what the newest message attends to, in the heads that retrieve.

Brightness averages every layer and head over the replies so far. A few heads do long-range
retrieval (retrieval heads, DuoAttention), and they are question-conditioned when read from the
newest message's own pass: the attention of the last prompt row (the reply's header: the
position that predicts the reply's first token) over the context, in those heads, is what that
message needs. Each head's row over the content is divided by its own maximum, so every head
votes alike, and the votes are summed (`head_vote`).

The heads are a model's own: `RETRIEVAL_HEADS` holds those the pruning benchmark chose on its
tuning split (docs/pruning.md), by model; a model without them is pruned by brightness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from halo_client.messages import ModelInfo

Head = tuple[int, int]

#: (model name as its GGUF file is named, layers, heads) -> the (layer, head) pairs whose last-row
#: attention the pruning benchmark's tuning split chose: the five whose own top sentence most
#: often held the fact a later question asked for
RETRIEVAL_HEADS: dict[tuple[str, int, int], tuple[Head, ...]] = {
    ("smollm2-135m-instruct", 30, 9): ((22, 4), (23, 2), (15, 6), (21, 8), (22, 7)),
}


def heads_for(info: ModelInfo) -> tuple[Head, ...] | None:
    """The model's retrieval heads, if the benchmark has chosen them (its name, layers and heads match)."""
    name = info.model_name.lower()
    for (model, layers, heads), chosen in RETRIEVAL_HEADS.items():
        if model in name and info.num_layers == layers and info.num_attention_heads == heads:
            return chosen
    return None


def head_vote(values: npt.NDArray[np.floating], heads: Sequence[Head],
              content: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.float64]:
    """`values`: `[layers, heads, n]` attention over n columns (or sentences); the chosen heads'
    rows over `content` (default: all), each divided by its own maximum, summed: `[n]`."""
    picked = np.stack([values[layer, head] for layer, head in heads]).astype(np.float64)
    if content is not None:
        picked *= content
    out: npt.NDArray[np.float64] = (picked / np.maximum(picked.max(axis=1, keepdims=True), 1e-12)).sum(axis=0)
    return out
