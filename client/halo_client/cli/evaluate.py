"""`halo-client eval`: benchmarks of what Halo Weave does."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from halo_client.cli.app import main
from halo_client.serving.backend import ModelBackend


@main.group("eval")
def eval_group() -> None:
    """Benchmarks of what Halo Weave does."""


class ProgressLine:
    """On a terminal, one line redrawn in place: a bar, the share done, the time left. Elsewhere
    (a log, CI), one plain line per step."""

    def __init__(self, stream: object = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, message: str) -> None:
        elapsed = time.monotonic() - self.started
        left = elapsed / done * (total - done) if done else 0.0
        if not self.tty:
            click.echo(f"[{done}/{total}, {elapsed:.0f} s] {message}", err=True)
            return
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"\r[{bar}] {done}/{total} {elapsed / 60:.1f} min, ~{left / 60:.1f} min left: {message}"
        click.echo(line[:160].ljust(160) + ("\n" if done >= total else ""), err=True, nl=False)


def _budgets(value: str) -> tuple[float, ...]:
    try:
        budgets = tuple(float(v) for v in value.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: shares like 0.25,0.5") from exc
    if not budgets or not all(0 < b < 1 for b in budgets):
        raise click.BadParameter(f"{value!r}: each budget is a share between 0 and 1")
    return budgets


@eval_group.command("pruning")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="GGUF to run in process (default: SmolLM2-135M-Instruct, fetched on first use).")
@click.option("--backend", type=click.Choice(["reference", "mock"]), default="reference", show_default=True,
              help="mock: the test double, for a quick check of the pipeline (its numbers mean nothing).")
@click.option("--conversations", "conversations_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Your own conversations (JSON Lines; format in docs/pruning.md) instead of "
              "generated ones.")
@click.option("--handwritten", "handwritten_files", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Conversations written by people (JSON Lines, the same format; repeatable): those of split "
              "\"report\" are held out and reported apart, never tuned on (this repository's: "
              "docs/conversations.handwritten.jsonl); those of split \"tune\" join the tuning split "
              "(docs/conversations.handwritten-tune.jsonl, docs/conversations.handwritten-tune-natural.jsonl).")
@click.option("--count", default=40, show_default=True, help="Generated held-out conversations.")
@click.option("--tune", "tune_count", default=8, show_default=True, help="Generated tuning conversations.")
@click.option("--budgets", default="0.25,0.5", show_default=True, callback=lambda _c, _p, v: _budgets(v),
              help="Shares of the conversation the pruned context may keep.")
@click.option("--min-tokens", default=600, show_default=True, help="Shortest generated history.")
@click.option("--max-tokens", default=1200, show_default=True, help="Longest generated history.")
@click.option("--reply-tokens", default=32, show_default=True, help="Most tokens per model reply in the history.")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the generated conversations (which facts, fillers and questions): the same seed, the "
                   "same chats, tuning split first (unused with --conversations).")
@click.option("--attention-recall/--no-attention-recall", default=True, show_default=True,
              help="In the recall study, the model's own attention as a retriever (a recall pass per message).")
@click.option("--cost-sentences", type=click.IntRange(0), default=2000, show_default=True,
              help="Archived sentences for memory's cost per message (0: not measured).")
@click.option("--score", "scores", multiple=True,
              help="A candidate for the default's pruning score (repeatable; default: all, tuned on the tuning "
                   "split). One: the default uses it and the tuning replays are skipped.")
@click.option("--memory-count", "counts", multiple=True, type=click.IntRange(0, 64),
              help="A candidate for how many sentences memory brings back per message (repeatable; default: 3, "
                   "4, 5, replayed on the tuning split). One: memory brings back that many and the replays are "
                   "skipped.")
@click.option("--policy", "policies", multiple=True, help="Only this policy (repeatable; default: all).")
@click.option("--workers", type=click.IntRange(1, 64), default=min(os.cpu_count() or 1, 4), show_default=True,
              help="Processes measuring conversations side by side (each loads the model, one BLAS thread each).")
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Run nothing: write the report again from a pruning.json's rows (e.g. after changing the report).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/pruning"),
              show_default=True, help="Where pruning.md, pruning.svg and pruning.json go.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out/pruning/cache"), show_default=True, help="Model replies, reused by reruns.")
def eval_pruning(model_path: str | None, backend: str, conversations_file: Path | None,
                 handwritten_files: tuple[Path, ...],
                 count: int, tune_count: int, budgets: tuple[float, ...], min_tokens: int, max_tokens: int,
                 reply_tokens: int, seed: int, attention_recall: bool, cost_sentences: int,
                 scores: tuple[str, ...], counts: tuple[int, ...], policies: tuple[str, ...], workers: int,
                 from_json: Path | None,
                 out_dir: Path, cache_dir: Path) -> None:
    """Prune chats with brightness, memory and the known baselines; measure what each loses, and which
    earlier sentence each recall candidate finds for a later message."""
    if from_json is not None:
        from halo_client.evaluation.report import report_from_json

        report_from_json(from_json, out_dir)
        click.echo((out_dir / "pruning.md").read_text())
        return
    from halo_client.evaluation.benchmark import COUNTS, SCORES, BenchmarkConfig, Tuned, policy_factories, run
    from halo_client.evaluation.dataset import ConversationFileError, load_conversations

    known = policy_factories(Tuned())
    unknown = [p for p in policies if p not in known]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r}; known: {', '.join(known)}", param_hint="--policy")
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r}; known: {', '.join(SCORES)}", param_hint="--score")
    conversations = load_conversations(conversations_file) if conversations_file is not None else None
    try:
        handwritten = load_conversations(*handwritten_files) if handwritten_files else None
    except ConversationFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--handwritten") from exc
    model: ModelBackend
    if backend == "mock":
        from halo_client.testing import MockBackend

        model = MockBackend(max_context_length=16384)
    else:
        from halo_client.reference import load_backend

        model = load_backend(model_path, n_ctx=8192)
    config = BenchmarkConfig(tune=tune_count, report=count, seed=seed, min_tokens=min_tokens, max_tokens=max_tokens,
                             reply_tokens=reply_tokens, budgets=budgets, cache_dir=cache_dir,
                             conversations=conversations, handwritten=handwritten, policies=policies or None,
                             workers=workers, attention_recall=attention_recall, cost_sentences=cost_sentences,
                             scores=tuple(dict.fromkeys(scores)) or tuple(SCORES),
                             counts=tuple(dict.fromkeys(counts)) or COUNTS)
    result = run(model, config, out_dir, ProgressLine())
    click.echo((out_dir / "pruning.md").read_text())
    click.echo(f"[{len(result['rows'])} rows in {result['seconds'] / 60:.1f} min; table {out_dir / 'pruning.md'}, "
               f"plot {out_dir / 'pruning.svg'}]", err=True)
