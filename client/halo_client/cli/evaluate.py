"""`halo-client eval`: benchmarks of what Halo Weave does."""

from __future__ import annotations

from pathlib import Path

import click

from halo_client.cli.app import main
from halo_client.serving.backend import ModelBackend


@main.group("eval")
def eval_group() -> None:
    """Benchmarks of what Halo Weave does."""


@eval_group.command("pruning")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="GGUF to run in process (default: SmolLM2-135M-Instruct, fetched on first use).")
@click.option("--backend", type=click.Choice(["reference", "mock"]), default="reference", show_default=True,
              help="mock: the test double, for a quick check of the pipeline (its numbers mean nothing).")
@click.option("--conversations", default=6, show_default=True, help="How many (a third tune, the rest report).")
@click.option("--min-tokens", default=1000, show_default=True)
@click.option("--max-tokens", default=4000, show_default=True)
@click.option("--reply-tokens", default=40, show_default=True, help="Most tokens per model reply.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/pruning"),
              show_default=True, help="Where pruning.md, pruning.svg and pruning.json go.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out/pruning/cache"), show_default=True, help="Model replies, reused by reruns.")
def eval_pruning(model_path: str | None, backend: str, conversations: int, min_tokens: int, max_tokens: int,
                 reply_tokens: int, seed: int, out_dir: Path, cache_dir: Path) -> None:
    """Prune long chats with brightness and the known baselines; measure what each loses."""
    from halo_client.evaluation.benchmark import BenchmarkConfig, run

    model: ModelBackend
    if backend == "mock":
        from halo_client.testing import MockBackend

        model = MockBackend(max_context_length=16384)
    else:
        from halo_client.reference import load_backend

        model = load_backend(model_path, n_ctx=8192)  # conversations run up to ~4,000 tokens plus questions
    config = BenchmarkConfig(conversations=conversations, seed=seed, min_tokens=min_tokens,
                             max_tokens=max_tokens, reply_tokens=reply_tokens, cache_dir=cache_dir)
    table = run(model, config, out_dir, progress=lambda line: click.echo(line, err=True))
    click.echo((out_dir / "pruning.md").read_text())
    click.echo(f"[{len(table)} rows; table {out_dir / 'pruning.md'}, plot {out_dir / 'pruning.svg'}]", err=True)
