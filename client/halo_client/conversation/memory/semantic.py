"""Matching by meaning: cosine similarity of sentence embeddings, each archived text embedded once.

The embedder is anything with `embed(texts) -> [n, d]` unit vectors (`halo_client.embedding`'s
all-MiniLM-L6-v2 in the product, a small stand-in in tests). `MeaningIndex` keeps the vector of
every text it has seen, so a query embeds only itself and what was archived since the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> F32: ...


class MeaningIndex:
    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.vectors: dict[str, F32] = {}

    def _vectors(self, texts: Sequence[str]) -> F32:
        new = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if new:
            for text, vector in zip(new, self.embedder.embed(new), strict=True):
                self.vectors[text] = vector
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    def forget_except(self, texts: Sequence[str]) -> None:
        """Drop the vectors of texts no longer archived (a restored sentence is embedded again
        only if it is pruned again)."""
        keep = set(texts)
        for text in [t for t in self.vectors if t not in keep]:
            del self.vectors[text]

    def similarities(self, texts: Sequence[str], query: str) -> npt.NDArray[np.float64]:
        """Cosine similarity of each of `texts` to `query` (-1 to 1)."""
        if not texts or not query.strip():
            return np.zeros(len(texts), np.float64)
        archive = self._vectors(texts)
        asked = self.embedder.embed([query])[0]
        out: npt.NDArray[np.float64] = (archive @ asked).astype(np.float64)
        return out
