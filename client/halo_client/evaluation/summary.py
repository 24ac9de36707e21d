"""The benchmark's rows summarized: per policy and budget, each measure over conversations with
its confidence interval, and paired comparisons between policies."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from halo_client.evaluation.stats import Estimate, bootstrap, paired_difference

#: the product's default as the benchmark names it
DEFAULT_POLICY = "default"
FIDELITY = ("kl", "nll_increase", "top1")
WORDINGS = ("literal", "paraphrased")
RECALL = ("recall", "answer_nll_increase", *(f"{m} ({w})" for m in ("recall", "answer_nll_increase")
                                             for w in WORDINGS))
#: what memory brought back: per question, and per fidelity probe (which asks for nothing)
MEMORY = ("recalled", "false_recalls")
#: which way is better, per measure
HIGHER_IS_BETTER = {"kl": False, "nll_increase": False, "top1": True, **{
    m: not m.startswith("answer_nll_increase") for m in RECALL}}
#: a paired difference within this of 0 is float noise, not a win: two policies that kept the same
#: tokens differ in the last bits of their logits
NOISE = 1e-6


def verdict(diff: Estimate, measure: str) -> str:
    """`better`, `worse` or `not separable`: a paired difference (one policy less another) of
    `measure` whose 95 % interval lies clear of 0 (and of float noise) one way or the other."""
    below, above = diff.high < -NOISE, diff.low > NOISE
    if HIGHER_IS_BETTER[measure]:
        below, above = above, below
    return "better" if below else "worse" if above else "not separable"


def per_conversation(rows: Sequence[dict[str, Any]], policy: str, budget: float, measure: str) -> dict[str, float]:
    """A measure's mean per conversation for one policy at one budget."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["policy"] == policy and r["budget"] == budget and measure in r:
            values[r["conversation"]].append(float(r[measure]))
    return {k: float(np.mean(v)) for k, v in values.items()}


def summarize(rows: Sequence[dict[str, Any]], resamples: int = 2000) -> list[dict[str, Any]]:
    """Per (budget, policy): every measure's estimate over conversations."""
    table = []
    for budget in sorted({r["budget"] for r in rows}):
        for policy in dict.fromkeys(r["policy"] for r in rows):
            entry: dict[str, Any] = {"budget": budget, "policy": policy}
            for measure in (*FIDELITY, *RECALL, *MEMORY, "full_recall", *(f"full_recall ({w})" for w in WORDINGS),
                            "kept"):
                values = per_conversation(rows, policy, budget, measure)
                if values:
                    entry[measure] = bootstrap(list(values.values()), resamples=resamples)
            entry["questions"] = sum(1 for r in rows if r["policy"] == policy and r["budget"] == budget
                                     and r["kind"] == "question")
            entry["conversations"] = len({r["conversation"] for r in rows
                                          if r["policy"] == policy and r["budget"] == budget})
            table.append(entry)
    return table


def compare(rows: Sequence[dict[str, Any]], policy: str, budget: float, measure: str,
            resamples: int = 2000) -> dict[str, Estimate]:
    """`policy` minus every other policy on `measure` at `budget`, paired by conversation."""
    mine = per_conversation(rows, policy, budget, measure)
    others = dict.fromkeys(r["policy"] for r in rows if r["policy"] != policy)
    return {other: paired_difference(mine, per_conversation(rows, other, budget, measure), resamples=resamples)
            for other in others}


def best(table: Sequence[dict[str, Any]], budget: float, measure: str, *,
         exclude: Sequence[str] = ("gold",)) -> str | None:
    """The policy with the best mean `measure` at `budget` (gold, the upper bound, left out); None
    when no policy has it (conversations with questions only have no KL)."""
    sign = -1.0 if HIGHER_IS_BETTER[measure] else 1.0
    candidates = [t for t in table if t["budget"] == budget and measure in t and t["policy"] not in exclude]
    if not candidates:
        return None
    return str(min(candidates, key=lambda t: sign * t[measure].mean)["policy"])
