"""KoboldCPP-compatible token sampling over a logits vector.

Order as in KoboldCPP's `SampleLogits`: banned tokens, repetition penalty (over the last
`rep_pen_range` tokens, dividing positive logits and multiplying negative ones, as llama.cpp
does), then top-k, top-p and temperature; temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from halo_client.messages import GenerateRequest


class Sampler:
    def __init__(self, request: GenerateRequest) -> None:
        self.request = request
        seed = None if request.sampler_seed < 0 else request.sampler_seed
        self._rng = np.random.default_rng(seed)
        self._banned = np.asarray(sorted(set(request.banned_token_ids)), dtype=np.int64)

    def sample(self, logits: npt.NDArray[np.float32], history: Sequence[int]) -> int:
        r = self.request
        x = np.array(logits, dtype=np.float64)  # a private copy: the backend may reuse its buffer
        if self._banned.size:
            x[self._banned[self._banned < x.size]] = -np.inf
        if r.rep_pen != 1.0 and r.rep_pen_range > 0 and history:
            # a set, not np.unique: this runs per token and the window is a few hundred ids
            recent = np.fromiter({t for t in history[-r.rep_pen_range:] if t < x.size}, np.int64)
            vals = x[recent]
            x[recent] = np.where(vals > 0, vals / r.rep_pen, vals * r.rep_pen)
        if r.temperature == 0.0 or r.top_k == 1:
            return int(np.argmax(x))
        order = np.argsort(-x, kind="stable")
        if r.top_k > 0:
            order = order[: r.top_k]
        order = order[np.isfinite(x[order])] if np.isfinite(x[order[0]]) else order[:1]
        kept = x[order]
        if r.top_p < 1.0:
            # top-p on the untempered distribution, then temperature: KoboldCPP's default order
            # keeps the smallest prefix whose mass reaches top_p (at least one token)
            mass = np.exp(kept - kept[0])
            cutoff = int(np.searchsorted(np.cumsum(mass / mass.sum()), r.top_p)) + 1
            order, kept = order[:cutoff], kept[:cutoff]
        probs = np.exp((kept - kept[0]) / r.temperature)
        probs /= probs.sum()
        return int(order[self._rng.choice(order.size, p=probs)])
