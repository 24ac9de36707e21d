"""`halo-client eval pruning`: the whole benchmark, from conversations to tables with confidence
intervals and a plot.

1. Conversations: generated (a tuning split and a held-out split) or a user's own file.
2. Each is played against the model (`dialog.play`): the full-context run.
3. Tuning, on the tuning split only: the hybrid's weight and memory's settings.
4. Every policy at every budget over every held-out conversation (`replay.replay`), one
   conversation at a time, in worker processes when asked to (`workers`).
5. Per policy and budget, each measure's mean over conversations with a bootstrap 95 %
   interval (`stats`), and the product default against every other policy, paired.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.conversation.memory import MemorySettings
from halo_client.conversation.pruner import PrunerSettings
from halo_client.evaluation.conversations import TAIL, Conversation, make_conversations
from halo_client.evaluation.dialog import Dialog, play
from halo_client.evaluation.model import InProcessModel
from halo_client.evaluation.policies import (
    FIRST_DESIGN,
    Brightness,
    Gold,
    HeavyHitters,
    Hybrid,
    LastQuery,
    Policy,
    QuestionAttention,
    RandomOrder,
    Recency,
    SelfInformation,
    Streaming,
)
from halo_client.evaluation.replay import Measured, replay, summary_row
from halo_client.evaluation.report import DEFAULT_POLICY, save_rows, write_report
from halo_client.serving.backend import ModelBackend

#: Progress: (units done, units in all, what just happened)
Progress = Callable[[int, int, str], None]


@dataclass
class Tuned:
    hybrid_weight: float = 1.0
    memory: MemorySettings = field(default_factory=MemorySettings)


@dataclass
class BenchmarkConfig:
    tune: int = 8
    report: int = 40
    seed: int = 0
    min_tokens: int = 600
    max_tokens: int = 1200
    reply_tokens: int = 32
    probe_tokens: int = 64
    tail: str = TAIL
    budgets: tuple[float, ...] = (0.25, 0.5)
    cache_dir: Path | None = None
    #: a user's own conversations instead of generated ones
    conversations: list[Conversation] | None = None
    #: only these policies (None: all)
    policies: tuple[str, ...] | None = None
    hybrid_weights: tuple[float, ...] = (0.5, 1.0, 2.0)
    #: processes measuring conversations side by side (a reference backend only; 1: this process)
    workers: int = 1
    memory_grid: tuple[MemorySettings, ...] = (MemorySettings(max_recalled=1), MemorySettings(max_recalled=2),
                                               MemorySettings(max_recalled=2, min_relevance=2.0))
    resamples: int = 2000


def policy_factories(tuned: Tuned) -> dict[str, tuple[Callable[[Dialog], Policy], MemorySettings | None]]:
    """Every policy the benchmark compares: a factory (per conversation) and memory, if on."""
    def brightness(name: str, **kw: Any) -> Callable[[Dialog], Policy]:
        return lambda _d: Brightness(name, **kw)

    window = PrunerSettings().recent_share
    return {
        # the product's defaults: brightness, the pruner's recent window, memory
        DEFAULT_POLICY: (brightness("brightness", recent_share=window), tuned.memory),
        "default without memory": (brightness("brightness", recent_share=window), None),
        # the brightness policy before the recent window and memory
        "brightness": (brightness("brightness"), None),
        "brightness (first design)": (brightness("first design", settings=FIRST_DESIGN), None),
        "brightness (content-renormalized)": (brightness("content", reduction="content"), None),
        "brightness (head-normalized)": (brightness("head-normalized", reduction="head_max"), None),
        "brightness (per frame)": (brightness("per frame", per_frame=True), None),
        "hybrid": (lambda _d: Hybrid(Brightness("brightness"), tuned.hybrid_weight), None),
        "h2o": (lambda _d: HeavyHitters(), None),
        "tova": (lambda _d: LastQuery(), None),
        "streaming": (lambda _d: Streaming(), None),
        "recency": (lambda _d: Recency(), None),
        "recency + memory": (lambda _d: Recency(), tuned.memory),
        # one draw per conversation; the seed follows the conversation, three seeds in turn
        "random": (lambda d: RandomOrder(_conversation_index(d) % 3), None),
        "self-information": (lambda _d: SelfInformation(), None),
        "question-attention": (lambda _d: QuestionAttention(), None),
        "gold": (lambda _d: Gold(), None),
    }


def _conversation_index(dialog: Dialog) -> int:
    digits = "".join(c for c in dialog.conversation.name if c.isdigit())
    return int(digits) if digits else 0


def measure(dialog: Dialog, model: InProcessModel, policies: dict[str, tuple[Callable[[Dialog], Policy],
            MemorySettings | None]], budgets: Sequence[float]) -> list[dict[str, Any]]:
    """Every policy at every budget over one held-out conversation: its rows."""
    rows: list[dict[str, Any]] = []
    for fraction in budgets:
        measured: Measured = {}
        for name, (factory, memory) in policies.items():
            for result in replay(dialog, model, factory(dialog), fraction, memory=memory, measured=measured):
                rows.append(summary_row(dialog, name, fraction, result))
    return rows


def _default_brightness(_dialog: Dialog) -> Policy:
    return Brightness("brightness", recent_share=PrunerSettings().recent_share)


def _hybrid(weight: float) -> Callable[[Dialog], Policy]:
    return lambda _d: Hybrid(Brightness("brightness"), weight)


def tuning_scores(dialog: Dialog, model: InProcessModel, config: BenchmarkConfig) -> dict[str, float]:
    """One tuning conversation's score for every option: the hybrid's KL at the budget nearest
    50 % per weight, memory's KL there and recall at the lowest budget per setting."""
    middle = min(config.budgets, key=lambda b: abs(b - 0.5))
    low = min(config.budgets)

    def mean(factory: Callable[[Dialog], Policy], memory: MemorySettings | None, fraction: float,
             measure: str) -> float:
        values = [r.measures[measure] for r in replay(dialog, model, factory(dialog), fraction, memory=memory)
                  if measure in r.measures]
        return float(np.mean(values)) if values else float("nan")

    scores = {f"hybrid {w} kl": mean(_hybrid(w), None, middle, "kl") for w in config.hybrid_weights}
    for i, memory in enumerate(config.memory_grid):
        scores[f"memory {i} kl"] = mean(_default_brightness, memory, middle, "kl")
        scores[f"memory {i} recall"] = mean(_default_brightness, memory, low, "recall")
    return scores


def choose(scores: Sequence[dict[str, float]], config: BenchmarkConfig) -> Tuned:
    """From the tuning conversations' scores: the hybrid weight with the lowest mean KL, and the
    memory setting with the best recall among those whose KL is within 0.01 of the lowest."""
    tuned = Tuned()
    if not scores:
        return tuned

    def mean(key: str) -> float:
        return float(np.nanmean([s[key] for s in scores]))

    tuned.hybrid_weight = min(config.hybrid_weights, key=lambda w: mean(f"hybrid {w} kl"))
    kls = [mean(f"memory {i} kl") for i in range(len(config.memory_grid))]
    fit = [i for i, kl in enumerate(kls) if kl <= min(kls) + 0.01]
    tuned.memory = config.memory_grid[max(fit, key=lambda i: mean(f"memory {i} recall"))]
    return tuned


@dataclass(frozen=True)
class _Task:
    conversation: Conversation
    #: None: a tuning conversation; else the tuned settings to measure the policies with
    tuned: Tuned | None
    policies: tuple[str, ...]


@dataclass(frozen=True)
class _Done:
    name: str
    split: str
    history_tokens: int
    rows: list[dict[str, Any]]
    scores: dict[str, float]
    computed: int


def _work(task: _Task, model: InProcessModel, config: BenchmarkConfig) -> _Done:
    before = model.computed
    dialog = play(task.conversation, model, reply_tokens=config.reply_tokens, probe_tokens=config.probe_tokens,
                  cache_dir=config.cache_dir)
    rows: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    if task.tuned is None:
        scores = tuning_scores(dialog, model, config)
    else:
        factories = policy_factories(task.tuned)
        rows = measure(dialog, model, {n: factories[n] for n in task.policies}, config.budgets)
    return _Done(task.conversation.name, task.conversation.split, dialog.history_tokens, rows, scores,
                 model.computed - before)


#: a worker process's model and settings (`_start_worker`)
_WORKER: dict[str, Any] = {}


def _start_worker(path: str, n_ctx: int, config: BenchmarkConfig) -> None:
    from halo_client.reference import ReferenceBackend

    _WORKER["model"] = InProcessModel(ReferenceBackend(path, n_ctx=n_ctx))
    _WORKER["config"] = config


def _work_in_worker(task: _Task) -> _Done:
    return _work(task, _WORKER["model"], _WORKER["config"])


class _Runner:
    """Runs tasks in this process, or (`workers` > 1, a reference backend) in worker processes,
    each with its own model and one BLAS thread: the conversations are independent, and on a
    shared machine one BLAS thread per process is several times faster than threads that wait
    on each other."""

    def __init__(self, backend: ModelBackend, config: BenchmarkConfig) -> None:
        self.config = config
        self.model = InProcessModel(backend)
        path, n_ctx = getattr(backend, "path", None), getattr(backend, "n_ctx", None)
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        if config.workers > 1 and path is not None and n_ctx is not None:
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            shared = dataclasses.replace(config, conversations=None)
            self.pool = concurrent.futures.ProcessPoolExecutor(
                config.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                initargs=(str(path), int(n_ctx), shared))

    def map(self, tasks: Sequence[_Task]) -> Iterator[_Done]:
        if self.pool is None:
            for task in tasks:
                yield _work(task, self.model, self.config)
            return
        futures = [self.pool.submit(_work_in_worker, task) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def run(backend: ModelBackend, config: BenchmarkConfig, out_dir: Path, progress: Progress) -> dict[str, Any]:
    """The benchmark; writes pruning.md, pruning.json and pruning.svg to `out_dir`."""
    started = time.perf_counter()
    if config.conversations is not None:
        conversations = config.conversations
    else:
        conversations = make_conversations(
            config.tune, config.report, seed=config.seed, count_tokens=lambda t: len(backend.tokenize(t, False)),
            min_tokens=config.min_tokens, max_tokens=config.max_tokens, reply_tokens=config.reply_tokens,
            tail=config.tail)
    tuning = [c for c in conversations if c.split == "tune"]
    held_out = [c for c in conversations if c.split == "report"]
    names = tuple(n for n in policy_factories(Tuned()) if config.policies is None or n in config.policies)
    runner = _Runner(backend, config)
    computed = 0
    done = 0
    try:
        scores = []
        for result in runner.map([_Task(c, None, names) for c in tuning]):
            done += 1
            computed += result.computed
            scores.append(result.scores)
            progress(done, len(conversations), f"tuned on {result.name}: {result.history_tokens} tokens")
        tuned = choose(scores, config)
        rows: list[dict[str, Any]] = []
        for result in runner.map([_Task(c, tuned, names) for c in held_out]):
            done += 1
            computed += result.computed
            rows += result.rows
            progress(done, len(conversations), f"measured {result.name}: {result.history_tokens} tokens, "
                     f"{len(names)} policies x {len(config.budgets)} budgets")
    finally:
        runner.close()
    order = {c.name: i for i, c in enumerate(conversations)}
    rows.sort(key=lambda r: (order[r["conversation"]], r["budget"], names.index(r["policy"]), r["step"]))
    result_json = {
        "model": runner.model.info.model_name,
        "config": {"tune": len(tuning), "report": len(held_out), "budgets": list(config.budgets),
                   "tail": config.tail, "min_tokens": config.min_tokens, "max_tokens": config.max_tokens,
                   "reply_tokens": config.reply_tokens, "probe_tokens": config.probe_tokens, "seed": config.seed,
                   "workers": config.workers, "own": config.conversations is not None},
        "tuned": {"hybrid_weight": tuned.hybrid_weight, "memory": tuned.memory.model_dump()},
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "tokens_computed": computed,
    }
    # the rows first: should the report fail, nothing that was computed is lost (`--from-json` rewrites it)
    save_rows(result_json, out_dir)
    write_report(result_json, out_dir, config.resamples)
    return result_json
