"""Matching by meaning: cosine similarity of sentence embeddings, each archived text embedded once.

The embedder is anything with `embed(texts) -> [n, d]` unit vectors (`halo_client.embedding`'s
all-mpnet-base-v2 in int8 in the product, a small stand-in in tests). `MeaningIndex` keeps the vector of
every text it has seen (a restored sentence keeps its row: it may be pruned again), so a query
embeds only itself and what was archived since the last one.

A name in a message says whom it is about, not which sentence holds the answer: "What did Gina
design for her store?" is nearest, in all-MiniLM-L6-v2, to "Wow, Gina!" and "Thanks Gina!", which
hold nothing. So a message's names (`query_names`) may be discounted: a sentence's similarity
less `name_discount` times its similarity to the names alone, what it shares with the message
beyond them (docs/pruning.md, "Names in a question"). The same two people are named message after
message, so the names' vector is kept too: a message whose names were seen embeds only itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from halo_client.conversation.memory.lexical import query_names

F32 = npt.NDArray[np.float32]

#: the names' vectors kept (a chat names a handful of people; a long one cannot grow it unbounded)
NAMES_KEPT = 256


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> F32: ...


class MeaningIndex:
    """Every text's vector, kept once: rows of one matrix, so a query is one product over it."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.rows: dict[str, int] = {}
        self.matrix: F32 = np.zeros((0, 0), np.float32)
        #: the vector of each message's names, joined by spaces, as `similarities` embedded them
        self.names: dict[str, F32] = {}
        #: the last message and its vector: one message is matched more than once (archive, pairs, context)
        self.query: tuple[str, F32] | None = None

    def add(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """Embed the texts not seen before; every text's row."""
        new = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if new:
            vectors = self.embedder.embed(new)
            if not self.rows:
                self.matrix = np.zeros((max(64, len(new)), vectors.shape[1]), np.float32)
            need = len(self.rows) + len(new)
            if need > self.matrix.shape[0]:  # room to grow, doubling: archiving stays amortized O(1)
                grown = np.zeros((max(need, 2 * self.matrix.shape[0]), self.matrix.shape[1]), np.float32)
                grown[: len(self.rows)] = self.matrix[: len(self.rows)]
                self.matrix = grown
            for text, vector in zip(new, vectors, strict=True):
                self.matrix[len(self.rows)] = vector
                self.rows[text] = len(self.rows)
        return np.fromiter((self.rows[t] for t in texts), np.int64, len(texts))

    def similarities(self, texts: Sequence[str], query: str, name_discount: float = 0.0) -> npt.NDArray[np.float64]:
        """Cosine similarity of each of `texts` to `query` (-1 to 1), less `name_discount` times
        its similarity to the query's names alone (`query_names`; none: nothing less)."""
        if not texts or not query.strip():
            return np.zeros(len(texts), np.float64)
        rows = self.add(texts)
        names = " ".join(query_names(query)) if name_discount else ""
        kept = self.names.get(names) if names else None
        if self.query is not None and self.query[0] == query and (kept is not None or not names):
            asked = self.query[1][None]  # the same message again (its pairs, its matches in the context)
        else:
            asked = self.embedder.embed([query, names] if names and kept is None else [query])
            self.query = (query, asked[0].copy())
        if names:
            if kept is None:
                if len(self.names) >= NAMES_KEPT:
                    self.names.pop(next(iter(self.names)))
                kept = self.names[names] = asked[1].copy()
            asked = np.stack([asked[0], kept])
        both = (self.matrix[: len(self.rows)] @ asked.T)[rows].astype(np.float64)
        out: npt.NDArray[np.float64] = both[:, 0] - name_discount * both[:, 1] if names else both[:, 0]
        return out
