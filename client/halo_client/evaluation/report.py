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

from halo_client.errors import HaloError
from halo_client.evaluation.stats import Estimate, bootstrap, paired_difference, ratio_of_means
from halo_client.evaluation.summary import HIGHER_IS_BETTER, best, compare, per_conversation, summarize

PALETTE = ("#e6a100", "#3b82f6", "#10b981", "#ef4444", "#8b5cf6", "#6b7280", "#111827", "#ec4899")
#: the product's default as the benchmark names it, and the policies the plot shows
DEFAULT_POLICY = "default"
PLOTTED = ("default", "default without memory", "brightness", "hybrid", "h2o", "tova", "streaming", "recency",
           "recency + memory", "random", "self-information", "question-attention", "gold")


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


def cell(estimate: Estimate | None, digits: int = 3) -> str:
    if estimate is None:
        return ""
    return f"{estimate.mean:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"


def _estimate(value: Estimate | dict[str, float] | None) -> Estimate | None:
    if value is None or isinstance(value, Estimate):
        return value
    return Estimate(value["mean"], value["low"], value["high"], int(value["n"]))


def policy_table(table: Sequence[Mapping[str, Any]], budget: float) -> str:
    rows = [t for t in table if t["budget"] == budget]
    head = ("| Policy | KL (full ‖ pruned) | NLL increase | top-1 agreement | recall | answer NLL increase "
            "| recalled per message |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for t in rows:
        recalled = _estimate(t.get("recalled"))
        lines.append("| " + " | ".join([
            str(t["policy"]), *(cell(_estimate(t.get(m))) for m in ("kl", "nll_increase", "top1", "recall",
                                                                     "answer_nll_increase")),
            f"{recalled.mean:.2f}" if recalled is not None and recalled.mean else "",
        ]) + " |")
    return "\n".join(lines) + "\n"


def comparison_lines(rows: Sequence[dict[str, Any]], policy: str, budget: float, resamples: int) -> list[str]:
    """How `policy` does against every other policy at `budget`: paired differences whose
    interval excludes 0 are wins or losses, the rest are ties."""
    out = []
    for measure in ("kl", "top1", "recall"):
        wins: list[str] = []
        losses: list[str] = []
        ties: list[str] = []
        diffs = compare(rows, policy, budget, measure, resamples)
        if not any(d.n for d in diffs.values()):
            continue  # a measure nobody has (no fidelity probes: no KL)
        for other, diff in diffs.items():
            if diff.n == 0 or other == "gold":
                continue
            better = diff.high < 0 if not HIGHER_IS_BETTER[measure] else diff.low > 0
            worse = diff.low > 0 if not HIGHER_IS_BETTER[measure] else diff.high < 0
            (wins if better else losses if worse else ties).append(other)
        out.append(f"- {MEASURE_NAMES[measure]} at {budget:.0%}: better than {', '.join(wins) or 'none'}; "
                   f"worse than {', '.join(losses) or 'none'}; not separable from {', '.join(ties) or 'none'}.")
    return out


#: not baselines for the goal "the default beats every baseline": the default without one of its
#: parts, and the upper bound
NOT_BASELINES = ("default without memory", "gold")


def goal_lines(rows: Sequence[dict[str, Any]], table: Sequence[dict[str, Any]], budgets: Sequence[float],
               resamples: int) -> list[str]:
    """The goals the default is held to, checked: the default rule (best KL at 50 %, or not significantly worse),
    non-overlapping intervals against every baseline, and memory's recall at the lowest budget."""
    out = []
    middle = min(budgets, key=lambda b: abs(b - 0.5))
    lowest = best(table, middle, "kl")
    if lowest is None:
        out.append(f"- Default rule (lowest KL at {middle:.0%}): no KL measured (no fidelity probes).")
    else:
        diff = paired_difference(per_conversation(rows, DEFAULT_POLICY, middle, "kl"),
                                 per_conversation(rows, lowest, middle, "kl"), resamples=resamples)
        verdict = ("it is the best" if lowest == DEFAULT_POLICY else
                   "not significantly worse" if diff.low <= 0 else "significantly worse: the rule is not met")
        out.append(f"- Default rule (lowest KL at {middle:.0%}, or not significantly worse): the lowest is "
                   f"{lowest}; default minus it {cell(diff)}: {verdict}.")
    for budget in budgets:
        mine = {t["policy"]: t for t in table if t["budget"] == budget}
        for measure in ("kl", "recall"):
            own = mine[DEFAULT_POLICY].get(measure)
            if own is None:
                out.append(f"- {MEASURE_NAMES[measure]} at {budget:.0%}: not measured.")
                continue
            sign = 1 if HIGHER_IS_BETTER[measure] else -1
            clear = [p for p, t in mine.items() if p != DEFAULT_POLICY and p not in NOT_BASELINES and measure in t
                     and not own.overlaps(t[measure]) and sign * (own.mean - t[measure].mean) > 0]
            rest = [p for p in mine if p not in (DEFAULT_POLICY, *NOT_BASELINES, *clear)]
            out.append(f"- {MEASURE_NAMES[measure]} at {budget:.0%}: the default's interval is clear of, and better "
                       f"than, {len(clear)} of {len(clear) + len(rest)} baselines; not of {', '.join(rest) or 'none'}.")
    low = min(budgets)
    ratio = ratio_of_means(per_conversation(rows, DEFAULT_POLICY, low, "recall"),
                           per_conversation(rows, DEFAULT_POLICY, low, "full_recall"), resamples=resamples)
    out.append(f"- Memory: the default's recall at {low:.0%} over the later questions is {cell(ratio)} of the "
               f"full-context recall (goal: at least 0.8).")
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


def save_rows(result: Mapping[str, Any], out_dir: Path) -> None:
    """pruning.json with the run's rows and facts, before any summary (`write_report` rewrites it
    with the summary table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pruning.json").write_text(json.dumps(dict(result), indent=1))


def write_report(result: Mapping[str, Any], out_dir: Path, resamples: int = 2000) -> list[dict[str, Any]]:
    """pruning.md, pruning.json and pruning.svg from a benchmark result; returns the summary."""
    rows = result["rows"]
    table = summarize(rows, resamples)
    budgets = sorted({t["budget"] for t in table})
    out_dir.mkdir(parents=True, exist_ok=True)
    config = result["config"]
    questions = [r for r in rows if r["kind"] == "question"]
    full = {}
    for r in questions:  # the full-context recall is the same for every policy and budget
        full[(r["conversation"], r["step"])] = r["full_recall"]
    full_by_conversation: dict[str, list[float]] = {}
    for (conv, _step), value in full.items():
        full_by_conversation.setdefault(conv, []).append(value)
    full_recall = bootstrap([float(sum(v) / len(v)) for v in full_by_conversation.values()], resamples=resamples)
    if config.get("own"):
        shape = "your own (their last user message the fidelity probe, then their questions)"
    else:
        shape = (f"{config['min_tokens']}-{config['max_tokens']} tokens of history; later messages "
                 f"`{config['tail']}`: F a fidelity probe, Q a question")
    lines = [
        f"# Pruning benchmark ({result['model']})",
        "",
        f"Held-out conversations: {config['report']} ({shape}), {len(full)} questions per budget; "
        f"{config['tune']} tuning conversations. Each cell: the mean over conversations [bootstrap 95 % interval].",
        "",
        f"Full-context recall (the model with nothing pruned): {cell(full_recall)} "
        f"({int(sum(full.values()))} of {len(full)} questions).",
        "",
        f"Tuned on the tuning split: hybrid weight {result['tuned']['hybrid_weight']}, memory "
        f"{json.dumps(result['tuned']['memory'])}. Run: {result['seconds'] / 60:.1f} minutes, "
        f"{result['tokens_computed']:,} tokens through the model.",
        "",
    ]
    for budget in budgets:
        lines += [f"## Budget {budget:.0%}", "", policy_table(table, budget)]
    if any(t["policy"] == DEFAULT_POLICY for t in table):  # (--policy may leave it out)
        lines += ["## The default against every other policy (paired by conversation)", ""]
        for budget in budgets:
            lines += comparison_lines(rows, DEFAULT_POLICY, budget, resamples)
            lines.append(f"- lowest KL at {budget:.0%}: {best(table, budget, 'kl') or 'none measured'}; best "
                         f"recall: {best(table, budget, 'recall') or 'none measured'}.")
        lines += ["", "## What the default is held to", "", *goal_lines(rows, table, budgets, resamples), ""]
    _write_results(out_dir / "pruning.md", "\n".join(lines))

    def points(measure: str, name: str) -> list[Point]:
        pts: list[Point] = []
        for t in table:
            if t["policy"] == name and measure in t:
                e = t[measure]
                pts.append((t["budget"], e.mean, e.low, e.high))
        return pts

    shown = [p for p in PLOTTED if any(t["policy"] == p for t in table)]
    panels = [(title, "budget (share of the conversation kept)", label, series) for title, label, series in (
        ("Behaviour: KL(full ‖ pruned) per token", "KL (nats)", {name: points("kl", name) for name in shown}),
        ("Recall of early facts, later questions", "recall", {name: points("recall", name) for name in shown}))
        if any(series.values())]  # a measure nobody has gets no panel
    if panels:
        (out_dir / "pruning.svg").write_text(svg_panels(panels))
    serial = [{k: (v.__dict__ if isinstance(v, Estimate) else v) for k, v in t.items()} for t in table]
    (out_dir / "pruning.json").write_text(json.dumps({**{k: v for k, v in result.items() if k != "rows"},
                                                     "full_recall": full_recall.__dict__, "table": serial,
                                                     "rows": rows}, indent=1))
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
