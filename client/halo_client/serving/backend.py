"""What a model must provide for the contract's server to serve it.

The server owns everything the contract says about requests, sampling, stopping, frames and
faults; a backend only turns token ids into logits and attention. Keeping that line means the
mock and the reference model cannot disagree on the protocol, only on the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from halo_client.messages import AttentionLayout, ModelInfo


@dataclass(frozen=True)
class ForwardResult:
    """The model's output for the newest position of the sequence it holds.

    `logits`: float32 `[vocab_size]`, for the token after the newest one.
    `attention`: float32 `[num_layers, num_attention_heads, ctx]`, post-softmax, the attention
    of the newest position's query over every position so far (ctx = sequence length,
    newest included). `None` when attention was not asked for.

    Both arrays stay valid until the backend's next `prefill` or `decode` call, so a backend
    may write every result into the same buffers; the server is done with a result before it
    asks for the next one.

    `layout`: what `attention` holds; a backend that reduces in the model (`ReducesInGraph`)
    returns the reduced frame (`[layers or 1, 2, ctx]`) and says which.
    """

    logits: npt.NDArray[np.float32]
    attention: npt.NDArray[np.float32] | None
    layout: AttentionLayout = "full"


class ModelBackend(Protocol):
    """A model the server can drive. Called from one worker thread at a time."""

    def model_info(self) -> ModelInfo: ...

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, BOS as the model wants it and
        special-token text (e.g. `<|im_start|>`) parsed into special tokens."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes token `token_id` stands for (may be part of a UTF-8 character)."""
        ...

    def prefill(self, input_ids: Sequence[int], want_attention: bool) -> ForwardResult:
        """Make `input_ids` the whole sequence and run it; reuse any cached common prefix."""
        ...

    def decode(self, token_id: int, want_attention: bool) -> ForwardResult:
        """Append one token to the sequence and run it."""
        ...


@runtime_checkable
class ReducesInGraph(Protocol):
    """A backend that computes the reduced layouts itself, next to the attention (a C++ engine:
    the reduction then happens on the layer's device and only its result is copied out)."""

    def set_attention_layout(self, layout: AttentionLayout) -> None:
        """The layout of the frames of the `prefill` and `decode` calls that follow."""
        ...
