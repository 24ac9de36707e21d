"""Reciprocal-rank fusion: one order from several scorers' orders (Cormack et al., 2009).

Each scorer ranks the candidates it finds at all; a candidate's fused score is the sum over
scorers of 1 / (k + its rank there). Scores on different scales (BM25's unbounded relevance, a
cosine similarity) are never added, only their orders, and a candidate near the top of either
order comes out near the top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: the constant of the original paper: large enough that the first few ranks of one scorer do not
#: outweigh agreement between scorers
K = 60


def reciprocal_rank_fusion(scores: Sequence[npt.NDArray[np.float64]], found: Sequence[npt.NDArray[np.bool_]],
                           k: int = K) -> npt.NDArray[np.float64]:
    """`scores[s][i]`: scorer s's score of candidate i (higher is better), counted only where
    `found[s][i]`; the fused score of every candidate (0 where no scorer found it)."""
    n = len(scores[0]) if scores else 0
    fused = np.zeros(n, np.float64)
    for values, mask in zip(scores, found, strict=True):
        order = np.argsort(-np.where(mask, values, -np.inf), kind="stable")
        ranks = np.empty(n, np.int64)
        ranks[order] = np.arange(1, n + 1)
        fused += np.where(mask, 1.0 / (k + ranks), 0.0)
    return fused
