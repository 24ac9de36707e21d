"""The pruning benchmark's outputs: markdown tables with confidence intervals, the JSON of every
row, and an SVG plot with whiskers.

The plot is written by hand (a few dozen lines of SVG) rather than with a plotting library:
one chart does not earn a dependency the size of matplotlib.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.errors import HaloError
from halo_client.evaluation.sections import cost_section, goal_lines, study_section
from halo_client.evaluation.stats import Estimate, bootstrap, paired_difference
from halo_client.evaluation.stats import interval as cell
from halo_client.evaluation.summary import (
    DEFAULT_POLICY,
    MEMORY,
    WORDINGS,
    best,
    compare,
    per_conversation,
    summarize,
    verdict,
)

PALETTE = ("#e6a100", "#3b82f6", "#10b981", "#ef4444", "#8b5cf6", "#6b7280", "#111827", "#ec4899")
__all__ = ["DEFAULT_POLICY", "ResultFileError", "markdown_table", "report_from_json", "save_rows", "svg_line_plot",
           "svg_panels", "write_report"]
#: the policies the plot shows
PLOTTED = ("default", "default without memory", "brightness + BM25 memory", "recency + memory", "brightness",
           "tova", "streaming", "recency", "random", "gold")


def markdown_table(
    rows: Sequence[Mapping[str, object]], columns: Sequence[tuple[str, str]]
) -> str:
    """`columns`: (key, header) pairs; floats are shown with 3 decimals."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(row.get(k, "")) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body]) + "\n"


Point = tuple[float, float] | tuple[float, float, float, float]


def svg_line_plot(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 400,
) -> str:
    """One line per series, points (x, y) or (x, y, low, high) with the interval drawn as a
    whisker; axes span the data with a small margin."""
    return _svg(width, height, [_panel(series, title=title, x_label=x_label, y_label=y_label, left=0,
                                       width=width, height=height)])


def svg_panels(panels: Sequence[tuple[str, str, str, Mapping[str, Sequence[Point]]]], *, width: int = 560,
               height: int = 420) -> str:
    """Plots side by side: (title, x label, y label, series) each."""
    return _svg(width * len(panels), height, [_panel(series, title=t, x_label=x, y_label=y, left=i * width,
                                                     width=width, height=height)
                                              for i, (t, x, y, series) in enumerate(panels)])


def _svg(width: int, height: int, parts: Sequence[list[str]]) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for part in parts:
        out.extend(part)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _panel(series: Mapping[str, Sequence[Point]], *, title: str, x_label: str, y_label: str, left: int,
           width: int, height: int) -> list[str]:
    points = [p for pts in series.values() for p in pts]
    if not points:
        raise ValueError("nothing to plot")
    xs = [p[0] for p in points]
    ys = [v for p in points for v in (p[1:] if len(p) == 4 else p[1:2])]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(ys), 0.0), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    margin_left, right, top, bottom = 70, 190, 40, 50
    pw, ph = width - margin_left - right, height - top - bottom
    origin = left + margin_left
    # series side by side around each x, so their whiskers do not hide each other
    spread = 0.06 * pw / max(len(set(xs)), 1)

    def sx(x: float, n: int = -1) -> float:
        shift = 0.0 if n < 0 else (n - (len(series) - 1) / 2) * spread / max(len(series) - 1, 1)
        return origin + 0.05 * pw + (x - x0) / (x1 - x0) * 0.9 * pw + shift

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f'<text x="{origin + pw / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<line x1="{origin}" y1="{top + ph}" x2="{origin + pw}" y2="{top + ph}" stroke="black"/>',
        f'<line x1="{origin}" y1="{top}" x2="{origin}" y2="{top + ph}" stroke="black"/>',
        f'<text x="{origin + pw / 2}" y="{height - 10}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="{left + 16}" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {left + 16} {top + ph / 2})">{escape(y_label)}</text>',
    ]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{origin - 6}" y="{sy(yv) + 4}" text-anchor="end">{yv:.2f}</text>')
        out.append(f'<line x1="{origin}" y1="{sy(yv)}" x2="{origin + pw}" y2="{sy(yv)}" stroke="#eee"/>')
    for xv in sorted(set(xs)):
        out.append(f'<text x="{sx(xv)}" y="{top + ph + 18}" text-anchor="middle">{xv:g}</text>')
    for n, (name, pts) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        dash = ' stroke-dasharray="5,3"' if n >= len(PALETTE) else ""
        ordered = sorted(pts)
        path = " ".join(f"{sx(p[0], n):.1f},{sy(p[1]):.1f}" for p in ordered)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for p in ordered:
            cx = sx(p[0], n)
            if len(p) == 4:
                lo, hi = sy(p[2]), sy(p[3])
                out.append(f'<line x1="{cx:.1f}" y1="{lo:.1f}" x2="{cx:.1f}" y2="{hi:.1f}" stroke="{color}"/>')
                out.extend(f'<line x1="{cx - 3:.1f}" y1="{y:.1f}" x2="{cx + 3:.1f}" y2="{y:.1f}" stroke="{color}"/>'
                           for y in (lo, hi))
            out.append(f'<circle cx="{cx:.1f}" cy="{sy(p[1]):.1f}" r="3" fill="{color}"/>')
        ly = top + 14 + 18 * n
        out.append(f'<line x1="{origin + pw + 12}" y1="{ly - 4}" x2="{origin + pw + 32}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{origin + pw + 38}" y="{ly}">{escape(name)}</text>')
    return out


MEASURE_NAMES = {"kl": "KL(full ‖ pruned)", "nll_increase": "NLL increase", "top1": "top-1 agreement",
                 "recall": "recall", "answer_nll_increase": "answer NLL increase"}


def _estimate(value: Estimate | dict[str, float] | None) -> Estimate | None:
    if value is None or isinstance(value, Estimate):
        return value
    return Estimate(value["mean"], value["low"], value["high"], int(value["n"]))


#: the columns of a set's table per budget: (measure, header)
COLUMNS = (("kl", "KL (full ‖ pruned)"), ("top1", "top-1 agreement"), ("recall (literal)", "recall, literal"),
           ("recall (paraphrased)", "recall, paraphrased"), ("answer_nll_increase", "answer NLL increase"))


def policy_table(table: Sequence[Mapping[str, Any]], budget: float, with_memory: set[str]) -> str:
    """A set's table at one budget; recall counts only for the policies that run memory."""
    rows = [t for t in table if t["budget"] == budget]
    columns = [(m, h) for m, h in COLUMNS if any(m in t for t in rows)]
    head = "| Policy | " + " | ".join(h for _m, h in columns) + " | recalled per question | false recalls per probe |"
    lines = [head, "|---|" + "---|" * (len(columns) + 2)]
    for t in rows:
        memory = [_estimate(t.get(m)) for m in MEMORY]
        lines.append("| " + " | ".join([
            str(t["policy"]), *(cell(_estimate(t.get(m))) for m, _h in columns),
            *(f"{e.mean:.2f}" if e is not None and t["policy"] in with_memory else "" for e in memory),
        ]) + " |")
    return "\n".join(lines) + "\n"


def comparison_lines(rows: Sequence[dict[str, Any]], policy: str, budget: float, resamples: int) -> list[str]:
    """How `policy` does against every other policy at `budget`: paired differences whose
    interval excludes 0 are wins or losses, the rest are ties."""
    out = []
    for measure in ("kl", "recall (literal)", "recall (paraphrased)", "answer_nll_increase"):
        wins: list[str] = []
        losses: list[str] = []
        ties: list[str] = []
        diffs = compare(rows, policy, budget, measure, resamples)
        if not any(d.n for d in diffs.values()):
            continue  # a measure nobody has (no fidelity probes: no KL)
        for other, diff in diffs.items():
            if diff.n == 0 or other == "gold":
                continue
            judged = verdict(diff, measure)
            (wins if judged == "better" else losses if judged == "worse" else ties).append(other)
        # only the verdicts some policy got ("worse than none" reads like a loss)
        said = [f"{word} {', '.join(names)}" for word, names in
                (("better than", wins), ("worse than", losses), ("not separable from", ties)) if names]
        out.append(f"- {MEASURE_NAMES.get(measure, measure)} at {budget:.0%}: {'; '.join(said)}.")
    return out


def full_context_line(rows: Sequence[dict[str, Any]], resamples: int) -> str:
    """The model with nothing pruned: the share of questions it answers, overall and per wording."""
    parts = []
    for key, label in (("full_recall", "all"), *((f"full_recall ({w})", w) for w in WORDINGS)):
        per: dict[tuple[str, int], float] = {}
        for r in rows:
            if key in r:  # the same for every policy and budget
                per[(r["conversation"], r["step"])] = float(r[key])
        if not per:
            continue
        by_conversation: dict[str, list[float]] = {}
        for (conv, _step), value in per.items():
            by_conversation.setdefault(conv, []).append(value)
        e = bootstrap([float(np.mean(v)) for v in by_conversation.values()], resamples=resamples)
        parts.append(f"{label} {cell(e)} ({int(sum(per.values()))} of {len(per)})")
    return "Full-context recall (the model with nothing pruned): " + ("; ".join(parts) or "no questions") + "."


def memory_cost_lines(rows: Sequence[dict[str, Any]], budgets: Sequence[float], resamples: int) -> list[str]:
    """What memory costs the replies to messages that ask for nothing: the default's KL on the
    fidelity probes less the same without memory, paired."""
    out = []
    for budget in budgets:
        diff = paired_difference(per_conversation(rows, DEFAULT_POLICY, budget, "kl"),
                                 per_conversation(rows, "default without memory", budget, "kl"), resamples=resamples)
        if diff.n:
            out.append(f"- at {budget:.0%}: KL with memory less without, on the fidelity probes: {cell(diff)}")
    return out


RESULTS_START = "<!-- results: written by `halo-client eval pruning`; edit the text around them -->"
RESULTS_END = "<!-- end of results -->"


def _write_results(path: Path, results: str) -> None:
    """The results, between their markers in the page when it has them (docs/pruning.md keeps its
    own text around them), else the page is the results."""
    block = f"{RESULTS_START}\n{results}\n{RESULTS_END}\n"
    page = path.read_text() if path.exists() else ""
    start, end = page.find(RESULTS_START), page.find(RESULTS_END)
    if 0 <= start < end:
        block = page[:start] + block + page[end + len(RESULTS_END) + 1 :]
    path.write_text(block)


def save_rows(result: Mapping[str, Any], out_dir: Path, name: str = "pruning.json") -> None:
    """pruning.json with the run's rows and facts, before any summary (`write_report` rewrites it
    with the summary table); written whole, then renamed, so a cut-short run leaves a readable file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(dict(result), indent=1))
    partial.replace(path)


def _set_name(name: str, config: Mapping[str, Any]) -> str:
    return {"generated": f"Generated conversations, held out ({config.get('report', 0)})",
            "yours": f"Your conversations ({config.get('report', 0)})",
            "handwritten": f"Written by hand, held out ({config.get('handwritten', 0)})"}.get(name, name)


def _points(table: Sequence[Mapping[str, Any]], measure: str, name: str) -> list[Point]:
    return [(t["budget"], t[measure].mean, t[measure].low, t[measure].high) for t in table
            if t["policy"] == name and measure in t]


def _memory_by_name(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Which policies had memory, for a result saved before it said so: by their names, or by
    what they brought back."""
    named = {r["policy"] for r in rows if ("memory" in r["policy"] and "without" not in r["policy"])
             or r["policy"] == DEFAULT_POLICY}
    return named | {r["policy"] for r in rows if r.get("recalled")}


def write_report(result: Mapping[str, Any], out_dir: Path, resamples: int = 2000) -> list[dict[str, Any]]:
    """pruning.md, pruning.json and pruning.svg from a benchmark result; returns the summary."""
    rows = result["rows"]
    config = result["config"]
    tuned = result["tuned"]
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = list(dict.fromkeys(r.get("set", "generated") for r in rows))
    with_memory = set(result.get("with_memory") or _memory_by_name(rows))
    if config.get("own"):
        shape = "your own (their last user message the fidelity probe, then their questions)"
    else:
        shape = (f"{config['min_tokens']}-{config['max_tokens']} tokens of history; later messages "
                 f"`{config['tail']}`: F a fidelity probe, Q a question in the fact's words, P in other words")
    memory = tuned.get("memory", {})
    lines = [
        f"# Pruning benchmark ({result['model']})",
        "",
        f"Conversations: {config['report']} held out ({shape}); {config.get('handwritten', 0)} written by hand, "
        f"held out; {config['tune']} generated"
        f"{' and ' + str(config['tune_handwritten']) + ' written by hand' if config.get('tune_handwritten') else ''}"
        " for tuning. Each cell: the mean over conversations [bootstrap 95 % interval].",
        "",
        f"Tuned on the tuning split: memory {json.dumps(memory)}; the default's pruning score "
        f"**{tuned.get('score', 'brightness')}** (with the recent window"
        f"{'; given with --score, not tuned in this run' if tuned.get('score_fixed') else ''}); "
        "attention heads (layer, head) "
        f"{json.dumps(tuned.get('heads', {}))}. Run: {result['seconds'] / 60:.1f} minutes, "
        f"{result['tokens_computed']:,} tokens through the model.",
        "",
    ]
    counts = tuned.get("counts") or {}
    if tuned.get("count_fixed"):
        lines += [f"Sentences memory brings back per message: {memory.get('max_recalled')}, given with "
                  "--memory-count, not replayed in this run.", ""]
    if counts:
        low, middle = min(config["budgets"]), min(config["budgets"], key=lambda b: abs(b - 0.5))
        each = "; ".join(f"{k}: {v['answer_nll_increase']:+.3f} and {v['kl']:.4f}" for k, v in counts.items())
        lines += [f"Sentences memory brings back per message, replayed on the tuning split with the default's score "
                  f"(answer NLL increase at {low:.0%}, KL at {middle:.0%}): {each}; chosen: "
                  f"{memory.get('max_recalled')}.", ""]
    table: list[dict[str, Any]] = []
    tables: dict[str, list[dict[str, Any]]] = {}
    for set_name in sets:
        mine = [r for r in rows if r.get("set", "generated") == set_name]
        tables[set_name] = summarize(mine, resamples)
        table += [{**t, "set": set_name} for t in tables[set_name]]
        budgets = sorted({t["budget"] for t in tables[set_name]})
        lines += [f"## {_set_name(set_name, config)}", "", full_context_line(mine, resamples), ""]
        for budget in budgets:
            lines += [f"### Budget {budget:.0%}", "", policy_table(tables[set_name], budget, with_memory)]
        if any(t["policy"] == DEFAULT_POLICY for t in tables[set_name]):  # (--policy may leave it out)
            lines += ["### The default against every other policy (paired by conversation)", ""]
            for budget in budgets:
                lines += comparison_lines(mine, DEFAULT_POLICY, budget, resamples)
                lines.append(f"- lowest KL at {budget:.0%}: {best(tables[set_name], budget, 'kl') or 'none measured'};"
                             f" best recall: {best(tables[set_name], budget, 'recall') or 'none measured'}.")
            cost = memory_cost_lines(mine, budgets, resamples)
            if cost:
                lines += ["", "Memory's cost to the replies of messages that ask for nothing:", *cost]
            lines.append("")
    if result.get("study"):
        lines += study_section(result["study"], resamples)
    if result.get("costs"):
        lines += cost_section(result["costs"])
    if any(t["policy"] == DEFAULT_POLICY for t in table):
        lines += ["## What the default is held to", "", *goal_lines(rows, tables, result, resamples), ""]
    _write_results(out_dir / "pruning.md", "\n".join(lines))

    main = tables.get(sets[0], []) if sets else []
    shown = [p for p in PLOTTED if any(t["policy"] == p for t in main)]
    panels = [(title, "budget (share of the conversation kept)", label, series) for title, label, series in (
        ("Behaviour: KL(full ‖ pruned) per token", "KL (nats)", {n: _points(main, "kl", n) for n in shown}),
        ("Recall, questions in the fact's words", "recall", {n: _points(main, "recall (literal)", n) for n in shown}),
        ("Recall, questions in other words", "recall", {n: _points(main, "recall (paraphrased)", n) for n in shown}))
        if any(series.values())]  # a measure nobody has gets no panel
    if panels:
        (out_dir / "pruning.svg").write_text(svg_panels(panels))
    serial = [{k: (v.__dict__ if isinstance(v, Estimate) else v) for k, v in t.items()} for t in table]
    (out_dir / "pruning.json").write_text(json.dumps({**{k: v for k, v in result.items() if k != "rows"},
                                                     "table": serial, "rows": rows}, indent=1))
    return table


class ResultFileError(HaloError):
    """A pruning.json the report cannot be written from."""


def report_from_json(path: Path, out_dir: Path, resamples: int = 2000) -> list[dict[str, Any]]:
    """The report again from a saved pruning.json (its rows and run facts), without running anything."""
    try:
        data = json.loads(path.read_text())
        needed = {"model", "config", "tuned", "rows", "seconds", "tokens_computed"}
        if not isinstance(data, dict) or not needed <= set(data):
            raise ValueError(f"it lacks {sorted(needed - set(data) if isinstance(data, dict) else needed)}")
    except (OSError, ValueError) as exc:
        raise ResultFileError(f"{path} is not a pruning benchmark result: {exc}.") from exc
    return write_report(data, out_dir, resamples)
