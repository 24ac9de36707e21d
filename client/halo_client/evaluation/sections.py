"""The report's sections beyond the policy tables: the recall study, memory's cost per message,
and the goals the default is held to, each checked with its numbers."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from halo_client.evaluation.stats import Estimate, bootstrap, interval, paired_difference, ratio_of_means
from halo_client.evaluation.summary import DEFAULT_POLICY, WORDINGS, best, per_conversation, verdict

#: the sets of the recall study, in the order shown
STUDY_SETS = (("tuning", "tuning"), ("tuning by hand", "tuning, by hand"), ("generated", "generated, held out"),
              ("yours", "yours"), ("handwritten", "written by hand"))
#: what the default is compared with for "attention earns its place"
RECENCY_MEMORY = "recency + memory"


def _by_conversation(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    values: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if key in r:
            values[r["conversation"]].append(float(r[key]))
    return [float(np.mean(v)) for v in values.values()]


def _estimate(rows: Sequence[Mapping[str, Any]], key: str, resamples: int) -> Estimate | None:
    values = _by_conversation(rows, key)
    return bootstrap(values, resamples=resamples) if values else None


def study_section(study: Sequence[Mapping[str, Any]], resamples: int) -> list[str]:
    """Retrievers side by side (top-1 per wording and set), and what memory would bring back."""
    sets = [(key, label) for key, label in STUDY_SETS if any(r["set"] == key for r in study)]
    retrievers = list(dict.fromkeys(r["retriever"] for r in study if "retriever" in r))
    columns = [(key, label, w) for key, label in sets for w in WORDINGS
               if any(r["set"] == key and r.get("wording") == w for r in study if "retriever" in r)]
    out = ["## Recall candidates on the same archive", "",
           "The archive: every sentence of a conversation's history (the most memory could hold); the query: each "
           "later message. Top-1: the retriever's best sentence holds the question's fact. Attention heads were "
           "chosen on the tuning split.", "",
           "| retriever | " + " | ".join(f"{label}, {w}" for _k, label, w in columns) + " |",
           "|---|" + "---|" * len(columns)]
    for name in retrievers:
        cells = []
        for key, _label, wording in columns:
            mine = [r for r in study if r.get("retriever") == name and r["set"] == key and r.get("wording") == wording]
            cells.append(interval(_estimate(mine, "top1", resamples), 2))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "What memory brings back from that archive (per later message: sentences holding the fact, other "
                "sentences; for a fidelity probe every sentence is a false recall), and the time it took:", "",
            "| memory | set | fact found, literal | fact found, paraphrased | wrong sentences per question "
            "| false recalls per probe | ms per message (median) |", "|---|---|---|---|---|---|---|"]
    for memory in dict.fromkeys(r["memory"] for r in study if "memory" in r):
        for key, label in sets:
            mine = [r for r in study if r.get("memory") == memory and r["set"] == key]
            found = {w: _estimate([{**r, "found": float(r["hits"] > 0)} for r in mine
                                   if r["kind"] == "question" and r["wording"] == w], "found", resamples)
                     for w in WORDINGS}
            wrong = _estimate([r for r in mine if r["kind"] == "question"], "false", resamples)
            false = _estimate([r for r in mine if r["kind"] == "fidelity"], "false", resamples)
            ms = statistics.median(r["ms"] for r in mine) if mine else float("nan")
            out.append(f"| {memory} | {label} | {interval(found['literal'], 2)} | {interval(found['paraphrased'], 2)} "
                       f"| {interval(wrong, 2)} | {interval(false, 2)} | {ms:.1f} |")
    tokens = [r["attention_tokens"] for r in study if "attention_tokens" in r]
    if tokens:
        out += ["", f"The attention retrievers' recall pass runs the archive and the message through the model: "
                    f"{statistics.median(tokens):.0f} tokens per message (median; {min(tokens)} to {max(tokens)}); "
                    "the archive's part is shared by the messages while it does not change."]
    return [*out, ""]


def cost_section(costs: Mapping[str, Any]) -> list[str]:
    ms, p90 = costs["ms_per_message"], costs["ms_p90"]
    keeping = costs.get("ms_keeping_up")  # absent from runs before memory kept up after each reply
    in_context = costs.get("ms_in_context")  # absent from runs that timed the archive's search alone
    when = "by the prune after each reply" if keeping else "before each"
    after = (". The recall step runs between a message and its reply; keeping up (indexing and embedding what "
             "that prune archived) runs once the reply is in" if keeping else "")
    context = (f" and a context of {costs['context_tokens']:,} tokens (the recall step searches the archive and "
               "matches the sentences still in the context)" if in_context else "")
    columns = (" of it, the context's match |" if in_context else "") + (" keeping up after the reply, ms (median) |"
                                                                          if keeping else "")
    return ["## Memory's cost per message", "",
            f"Recall over an archive of {costs['archived']:,} sentences{context}, {costs['messages']} messages, two "
            f"more sentences archived {when} (load average {costs['load_average']} on this machine during the "
            f"measurement; the scorers take turns){after}:", "",
            f"| scorer | recall step, ms per message (median) | 90th percentile |{columns}",
            "|---|---|---|" + ("---|" if in_context else "") + ("---|" if keeping else ""),
            *(f"| {s} | {ms[s]:.1f} | {p90[s]:.1f} |" + (f" {in_context[s]:.1f} |" if in_context else "")
              + (f" {keeping[s]:.1f} |" if keeping else "") for s in ms), ""]


def _judge(diff: Estimate, measure: str) -> str:
    return verdict(diff, measure) if diff.n else "not measured"


def goal_lines(rows: Sequence[dict[str, Any]], tables: Mapping[str, Sequence[dict[str, Any]]],
               result: Mapping[str, Any], resamples: int) -> list[str]:
    """The issue's goals, each with its numbers and whether it is met (held-out sets only)."""
    out = []
    budgets = sorted({r["budget"] for r in rows})
    low, middle = min(budgets), min(budgets, key=lambda b: abs(b - 0.5))
    main = next((s for s in ("generated", "yours") if s in tables), None)

    def subset(set_name: str) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("set", "generated") == set_name]

    for set_name in (s for s in ("generated", "yours", "handwritten") if s in tables):
        mine = subset(set_name)
        ratio = ratio_of_means(per_conversation(mine, DEFAULT_POLICY, low, "recall (paraphrased)"),
                               per_conversation(mine, DEFAULT_POLICY, low, "full_recall (paraphrased)"),
                               resamples=resamples)
        if ratio.n:
            # a share of a recall the full context rarely has is an interval too wide to say anything
            verdict = ("met" if ratio.low >= 0.8 else "not met" if ratio.high < 0.8 else
                       "not shown: the interval spans 0.8")
            out.append(f"- Questions in other words ({set_name}), recall at {low:.0%} as a share of the full-context "
                       f"recall: {interval(ratio)} (goal: at least 0.8): {verdict}.")
    if "handwritten" in tables:
        nll = bootstrap(list(per_conversation(subset("handwritten"), DEFAULT_POLICY, low,
                                              "answer_nll_increase").values()), resamples=resamples)
        if nll.n:
            out.append(f"- Answer NLL increase at {low:.0%} on the conversations written by hand: {interval(nll)} nats "
                       f"(goal: at most +0.25): {'met' if nll.mean <= 0.25 else 'not met'}.")
    if main is not None:
        mine = subset(main)
        literal = bootstrap(list(per_conversation(mine, DEFAULT_POLICY, low, "recall (literal)").values()),
                            resamples=resamples)
        if literal.n:
            out.append(f"- Questions in the fact's words ({main}), recall at {low:.0%}: {interval(literal)} (goal: not "
                       f"below 0.944, the default's before this change): "
                       f"{'met' if literal.mean >= 0.944 else 'not met'}.")
        lowest = best(tables[main], middle, "kl")
        if lowest is not None:
            diff = paired_difference(per_conversation(mine, DEFAULT_POLICY, middle, "kl"),
                                     per_conversation(mine, lowest, middle, "kl"), resamples=resamples)
            verdict = ("met: it is the lowest" if lowest == DEFAULT_POLICY else
                       "met: not significantly worse" if diff.low <= 0 else "not met: significantly worse")
            out.append(f"- KL at {middle:.0%} ({main}): the lowest is {lowest}; the default less it {interval(diff)}: "
                       f"{verdict}.")
    for set_name in (s for s in ("generated", "yours", "handwritten") if s in tables):
        mine = subset(set_name)
        verdicts = []
        for budget in budgets:
            for measure in ("recall (literal)", "recall (paraphrased)", "answer_nll_increase", "kl"):
                diff = paired_difference(per_conversation(mine, DEFAULT_POLICY, budget, measure),
                                         per_conversation(mine, RECENCY_MEMORY, budget, measure), resamples=resamples)
                if diff.n:
                    verdicts.append((budget, measure, diff, _judge(diff, measure)))
        if not verdicts:
            continue
        wins = [v for v in verdicts if v[3] == "better"]
        losses = [v for v in verdicts if v[3] == "worse"]
        # the goal: better on recall or KL, and worse on nothing; the answer NLL is reported beside them
        verdict = ("met" if any(v[1] != "answer_nll_increase" for v in wins) and not losses else
                   "not met: better on the answer NLL only, and the goal asks for recall or KL" if wins and not losses
                   else "not met: not separable on any measure" if not wins and not losses else "not met")
        detail = "; ".join(f"{m} at {b:.0%} {interval(d)} ({j})" for b, m, d, j in verdicts)
        out.append(f"- The default against {RECENCY_MEMORY} ({set_name}; default less it, paired): {detail}: "
                   f"{verdict}.")
    costs = result.get("costs") or {}
    if costs:
        tuned = result.get("tuned", {}).get("memory", {}).get("scorer", "hybrid")
        ms = costs["ms_per_message"].get(tuned)
        if ms is not None:
            keeping = costs.get("ms_keeping_up", {}).get(tuned)
            after = (f"; keeping up with what the prune after each reply archived takes {keeping:.1f} ms more, "
                     "once the reply is in" if keeping is not None else "")
            context = f" and a {costs['context_tokens']:,}-token context" if "context_tokens" in costs else ""
            out.append(f"- Memory's recall step ({tuned}) over {costs['archived']:,} archived sentences{context}: "
                       f"{ms:.1f} ms per message, median (goal: at most 50, at load average "
                       f"{costs['load_average']}){after}: {'met' if ms <= 50 else 'not met'}.")
    out.append(f"- This run: {result['seconds'] / 60:.1f} minutes (goal for `make bench-quality`: at most 60).")
    return out
