"""`halo-client eval pruning`: the whole benchmark, from conversations to the table and plot."""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.conversation.tracker import TrackerSettings
from halo_client.evaluation.conversations import make_conversations
from halo_client.evaluation.report import markdown_table, svg_line_plot
from halo_client.evaluation.runner import Dialog, ModelSession, brightness_scorer, evaluate, play, policies
from halo_client.serving.backend import ModelBackend

#: the tuning split's search space: the original defaults (decay 0.003, min_distance 20,
#: logarithmic) are one point of it
GRID = [
    *(TrackerSettings(decay=decay, min_distance=m) for decay, m in itertools.product((0.0, 0.003, 0.02), (0, 20))),
    TrackerSettings(min_distance=20, decay=0.003, distance_mode="none"),
    TrackerSettings(min_distance=5, decay=0.003, distance_mode="linear"),
]


@dataclass
class BenchmarkConfig:
    conversations: int = 6
    seed: int = 0
    min_tokens: int = 1000
    max_tokens: int = 4000
    reply_tokens: int = 40
    budgets: tuple[float, ...] = (0.25, 0.5, 0.75)
    cache_dir: Path | None = None
    grid: tuple[TrackerSettings, ...] = tuple(GRID)


def tune(dialogs: Sequence[Dialog], session: ModelSession, progress: Callable[[str], None],
         grid: Sequence[TrackerSettings] = GRID, budgets: Sequence[float] = (0.25, 0.5, 0.75)) -> TrackerSettings:
    """The grid point with the lowest mean NLL gap on the tuning dialogs."""
    if not dialogs:
        return TrackerSettings()
    best, best_gap = TrackerSettings(), float("inf")
    for i, settings in enumerate(grid):
        rows = [r for d in dialogs for r in evaluate(d, session, {"b": brightness_scorer(settings)}, budgets)]
        gap = float(np.mean([r["nll_gap"] for r in rows]))
        progress(f"tuning {i + 1}/{len(grid)}: decay {settings.decay}, min_distance {settings.min_distance}, "
                 f"{settings.distance_mode}: NLL gap {gap:.3f}")
        if gap < best_gap:
            best, best_gap = settings, gap
    return best


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean gaps per (budget, policy) over the report split; random seeds averaged into one."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        name = "random" if r["policy"].startswith("random#") else r["policy"]
        groups[(r["budget"], name)].append(r)
    table: list[dict[str, Any]] = []
    for (budget, name), rs in sorted(groups.items()):
        table.append({"budget": budget, "policy": name, "nll_gap": float(np.mean([r["nll_gap"] for r in rs])),
                      "recall": float(np.mean([r["recall"] for r in rs])),
                      "recall_gap": float(np.mean([r["recall_gap"] for r in rs])),
                      "kl": float(np.mean([r["kl"] for r in rs])), "n": len(rs)})
    for budget in sorted({t["budget"] for t in table}):
        ranked = sorted((t for t in table if t["budget"] == budget and t["policy"] != "gold"),
                        key=lambda t: t["nll_gap"])
        for rank, t in enumerate(ranked, 1):
            t["rank"] = rank
    return table


def run(backend: ModelBackend, config: BenchmarkConfig, out_dir: Path,
        progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    session = ModelSession(backend)
    started = time.perf_counter()
    convs = make_conversations(config.conversations, seed=config.seed,
                               count_tokens=lambda t: len(backend.tokenize(t, False)),
                               min_tokens=config.min_tokens, max_tokens=config.max_tokens,
                               reply_tokens=config.reply_tokens)
    dialogs = []
    for i, conv in enumerate(convs):
        dialogs.append(play(conv, session, reply_tokens=config.reply_tokens, cache_dir=config.cache_dir))
        progress(f"conversation {i + 1}/{len(convs)} ({conv.split}): {dialogs[-1].tokens} tokens, "
                 f"{len(dialogs[-1].units)} sentences [{time.perf_counter() - started:.0f} s]")
    tuned = tune([d for d in dialogs if d.conversation.split == "tune"], session, progress, config.grid,
                 config.budgets)
    rows: list[dict[str, Any]] = []
    report = [d for d in dialogs if d.conversation.split == "report"]
    for i, dialog in enumerate(report):
        rows.extend(evaluate(dialog, session, policies(tuned), config.budgets))
        progress(f"measured {i + 1}/{len(report)} held-out conversations [{time.perf_counter() - started:.0f} s]")
    table = summarize(rows)
    write_report(table, rows, tuned, out_dir, backend.model_info().model_name)
    return table


def write_report(table: list[dict[str, Any]], rows: list[dict[str, Any]], tuned: TrackerSettings,
                 out_dir: Path, model: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [("budget", "Budget"), ("policy", "Policy"), ("nll_gap", "NLL gap"), ("recall", "Recall"),
               ("recall_gap", "Recall gap"), ("kl", "KL"), ("rank", "Rank (NLL)"), ("n", "Runs")]
    tuned_text = ", ".join(f"{k}={v}" for k, v in tuned.model_dump().items()
                           if v != getattr(TrackerSettings(), k))
    text = (f"# Pruning benchmark ({model})\n\nHeld-out conversations only. Gaps are pruned minus full "
            f"context (lower NLL gap and KL are better). Tuned brightness: {tuned_text or 'the defaults'}.\n\n"
            + markdown_table(table, columns))
    (out_dir / "pruning.md").write_text(text)
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in table:
        series[t["policy"]].append((t["budget"], t["nll_gap"]))
    (out_dir / "pruning.svg").write_text(svg_line_plot(series, title=f"NLL gap of the gold answer vs budget ({model})",
                                                       x_label="budget (share of the conversation kept)",
                                                       y_label="NLL gap (nats/token)"))
    (out_dir / "pruning.json").write_text(json.dumps({"table": table, "rows": rows,
                                                      "tuned": tuned.model_dump()}, indent=1))
