"""MPNet in numpy: what all-mpnet-base-v2 runs, a BERT whose attention is biased by distance.

The layers are BERT's (`bert.BertEncoder`) under other names. What differs: no token types;
positions count from 2, as RoBERTa's do (`padding_idx + 1`: texts are padded on the right, so
every real token's position is its index + 2); and one table of learned biases, per head and per
bucket of relative distance (T5's buckets: exact up to 8 tokens each way, then logarithmic up to
128), added to every layer's attention scores. tests/embedding checks it against transformers'
MPNetModel on the same file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from halo_client.embedding.bert import F32, BertEncoder

#: RoBERTa's convention, which MPNet keeps: position ids start after the padding id (1)
FIRST_POSITION = 2
#: the distance past which every bucket is the last (transformers' MPNet default)
MAX_DISTANCE = 128


def distance_buckets(length: int, buckets: int, max_distance: int = MAX_DISTANCE) -> npt.NDArray[np.int64]:
    """`[q, k]`: the bucket of each key's distance from each query token (`k - q`), as
    transformers' `MPNetEncoder.relative_position_bucket` computes it: half the buckets for keys
    before the query, half for those after; in each, the nearest distances exactly, the rest
    logarithmically up to `max_distance`."""
    positions = np.arange(length)
    n = positions[:, None] - positions[None, :]  # query - key: positive for a key before the query
    half = buckets // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    far = exact + (np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact) * (half - exact)).astype(np.int64)
    found: npt.NDArray[np.int64] = out + np.where(n < exact, n, np.minimum(far, half - 1))
    return found


class MPNetEncoder(BertEncoder):
    """`encode(ids, mask)`: unit-length mean-pooled sentence vectors `[batch, hidden]`."""

    def _load_more(self, get: Callable[[str], F32]) -> None:
        self.by_distance = get("encoder.relative_attention_bias.weight")  # [buckets, heads]

    def _layer(self, get: Callable[[str], F32], p: str) -> tuple[F32, ...]:
        names = [p + f"attention.attn.{n}" for n in "qkv"]
        return self._dense_layer(get, names, p + "attention.attn.o", p + "attention.LayerNorm", p)

    @property
    def max_tokens(self) -> int:
        return int(self.position.shape[0]) - FIRST_POSITION

    def _embedded(self, ids: npt.NDArray[np.int64]) -> F32:
        out: F32 = self.word[ids] + self.position[FIRST_POSITION : FIRST_POSITION + ids.shape[1]]
        return out

    def _position_bias(self, length: int) -> F32:
        bias: F32 = self.by_distance[distance_buckets(length, self.by_distance.shape[0])].transpose(2, 0, 1)
        return np.ascontiguousarray(bias)
