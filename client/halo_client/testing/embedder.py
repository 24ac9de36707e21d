"""A stand-in sentence embedder for tests that must not load a real model: texts sharing words
are near, texts sharing none are orthogonal-ish. Deterministic, instant."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"\w+")


class WordHashEmbedder:
    """Each lower-cased word hashed to one of `dimension` axes; the vector is their unit-length sum.
    `synonyms` maps a word onto another's axis, so a test can say what "means the same"."""

    def __init__(self, dimension: int = 256, synonyms: dict[str, str] | None = None) -> None:
        self.dimension = dimension
        self.synonyms = synonyms or {}
        self.calls: list[int] = []  # how many texts each call embedded

    def _axis(self, word: str) -> int:
        word = self.synonyms.get(word, word)
        return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % self.dimension

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dimension), np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                out[i, self._axis(word)] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
