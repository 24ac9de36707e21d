"""`halo-client eval pruning`: the whole benchmark, from conversations to tables with confidence
intervals and a plot.

1. Conversations: generated (a tuning split and a held-out split, questions in the fact's words
   and in other words) or a user's own file; and, reported apart, a held-out set written by
   people (`handwritten`: docs/conversations.handwritten.jsonl, frozen before any tuning).
2. Each is played against the model (`dialog.play`): the full-context run; its archive (every
   sentence of its history) goes to the recall study (`retrieval`), with a recall pass through
   the model for the attention retrievers.
3. Tuning, on the tuning split only: the heads attention votes with and memory's settings (from
   the recall study's tuning archives, false recalls counted), then the default's pruning score
   among the candidates in `SCORES` (replayed, by the default rule: KL at the middle budget, then
   recall at the lowest), then how many sentences memory brings back per message (replayed with
   that score: the answer NLL at the lowest budget, KL at the middle one, `choose_count`).
4. Every policy at every budget over every held-out conversation (`replay.replay`), one
   conversation at a time, in worker processes when asked to (`workers`).
5. Per set, policy and budget, each measure's mean over conversations with a bootstrap 95 %
   interval (`stats`), the product default against every other policy, paired; memory's cost
   per message on a 2,000-sentence archive (`costs`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
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
from halo_client.evaluation.dialog import Dialog, Rows, play
from halo_client.evaluation.model import InProcessModel
from halo_client.evaluation.policies import (
    Brightness,
    Gold,
    HeavyHitters,
    LastQuery,
    Policy,
    QuestionAttention,
    QuestionHeads,
    RandomOrder,
    Recency,
    SelfInformation,
    Streaming,
)
from halo_client.evaluation.replay import Measured, replay, summary_row
from halo_client.evaluation.report import DEFAULT_POLICY, save_rows, write_report
from halo_client.evaluation.retrieval import (
    Archive,
    archive_of,
    attention_pass,
    choose_heads,
    choose_memory,
    match_scores,
    memory_grid,
    study_rows,
)
from halo_client.evaluation.stats import paired_difference
from halo_client.serving.backend import ModelBackend

#: Progress: (units done, units in all, what just happened)
Progress = Callable[[int, int, str], None]
Heads = dict[Rows, list[tuple[int, int]]]
#: the memory of the product before this benchmark chose one: BM25 alone, one sentence, no threshold
WORDS_MEMORY = MemorySettings(scorer="words", max_recalled=1, min_relevance=0.0)
#: a candidate for memory, measured beside the default: the default's memory (its threshold, names
#: discount and count) with BM25 as a second way back, a sentence sharing the message's rarer words
#: (relevance at least 2) at a similarity of at least 0.2, the two orders fused (`hybrid`). Found
#: on the first half of the LoCoMo windows, where it lowered the default's answer NLL increase, and
#: checked on the tuning split, where it changed no measure but brought back more sentences for the
#: probes (docs/pruning.md). Over the int8 embedder it answered better on the held-out sets, and
#: replayed on the 40 tuning chats it answered no better and kept fewer facts: not the default
HYBRID_CANDIDATE = {"scorer": "hybrid", "min_relevance": 2.0, "min_similarity_with_words": 0.2}
#: the default's memory with the embedder it had before (`MemorySettings.embedder`): all-MiniLM-L6-v2,
#: a fifth of the download and half the recall step; what the larger one buys (docs/pruning.md, "The
#: embedder")
SMALL_EMBEDDER = {"embedder": "all-MiniLM-L6-v2"}
#: the default's embedder with its products in float32 (`halo_client.embedding.onnx_layers`): what int8
#: rounding costs, at twice the recall step
EMBEDDER_FLOAT32 = {"embedder": "all-mpnet-base-v2"}
#: heads attention votes with, per `Rows` (chosen on the tuning split's recall study)
HEAD_COUNT = 5
#: the policies measured on the hand-written set (unless `--policy` says): the default, its parts,
#: the candidates with the same memory, and the baselines its goals name
HANDWRITTEN_POLICIES = (DEFAULT_POLICY, "default without memory", "default (hybrid memory)",
                        "default (small embedder)", "default (embedder in float32)", "brightness + BM25 memory",
                        "brightness + memory", "brightness (per frame) + memory", "question heads + memory",
                        "question heads (last row) + memory", "recency + memory", "recency", "streaming", "gold")


@dataclass
class Tuned:
    #: memory's settings for the default (and "recency + memory")
    memory: MemorySettings = field(default_factory=MemorySettings)
    #: the chosen memory's tuning score per later message (sentences with the fact, less the others)
    memory_score: float = math.nan
    heads: Heads = field(default_factory=dict)
    #: the default's pruning score, a key of `SCORES`
    score: str = "brightness"
    #: per candidate score: KL at the middle budget and recall at the lowest, on the tuning split
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    #: per candidate count of sentences memory brings back (`COUNTS`): the answer NLL increase at
    #: the lowest budget and KL at the middle one, on the tuning split
    counts: dict[int, dict[str, float]] = field(default_factory=dict)


def _window() -> float:
    return PrunerSettings().recent_share


#: the default's candidate pruning scores, each with the pruner's recent window (the newest share
#: of the budget kept last): brightness (the tracker's, as the chat keeps it), brightness per
#: frame, and the newest message's attention in the heads chosen on the tuning split, from its
#: rows or its last row alone
SCORES: dict[str, Callable[[Tuned], Policy]] = {
    "brightness": lambda _t: Brightness("brightness", recent_share=_window()),
    "brightness (per frame)": lambda _t: Brightness("per frame", per_frame=True, recent_share=_window()),
    "question heads": lambda t: QuestionHeads("question heads", t.heads.get("message", []), "message",
                                              recent_share=_window()),
    "question heads (last row)": lambda t: QuestionHeads("question heads (last row)", t.heads.get("last", []),
                                                         "last", recent_share=_window()),
}


#: how many sentences memory may bring back per message: the candidates replayed on the tuning split.
#: One and two are not among them: replayed the same way they answered worse than three at the same
#: KL (+0.70 and +0.63 against +0.46, docs/pruning.md), and each candidate costs two replays of
#: every tuning chat
COUNTS = (3, 4, 5)


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
    #: conversations written by people, held out and reported apart (never tuned on)
    handwritten: list[Conversation] | None = None
    #: only these policies (None: all; the hand-written set: `HANDWRITTEN_POLICIES`)
    policies: tuple[str, ...] | None = None
    #: processes measuring conversations side by side (a reference backend only; 1: this process)
    workers: int = 1
    #: the recall study's attention retrievers (a recall pass through the model per message)
    attention_recall: bool = True
    #: the candidates for the default's pruning score (keys of `SCORES`)
    scores: tuple[str, ...] = tuple(SCORES)
    #: the candidates for how many sentences memory brings back (one: given, not replayed)
    counts: tuple[int, ...] = COUNTS
    #: archived sentences for the cost of memory per message (0: not measured)
    cost_sentences: int = 2000
    resamples: int = 2000


def policy_factories(tuned: Tuned) -> dict[str, tuple[Callable[[Dialog], Policy], MemorySettings | None]]:
    """Every policy the benchmark compares: a factory (per conversation) and memory, if on."""
    def score(name: str) -> Callable[[Dialog], Policy]:
        return lambda _d: SCORES[name](tuned)

    return {
        # the product's default: the chosen score with the recent window, and the chosen memory
        DEFAULT_POLICY: (score(tuned.score), tuned.memory),
        "default without memory": (score(tuned.score), None),
        "default (hybrid memory)": (score(tuned.score), tuned.memory.model_copy(update=HYBRID_CANDIDATE)),
        "default (small embedder)": (score(tuned.score), tuned.memory.model_copy(update=SMALL_EMBEDDER)),
        "default (embedder in float32)": (score(tuned.score), tuned.memory.model_copy(update=EMBEDDER_FLOAT32)),
        # the product's default before this benchmark chose one: brightness, window, BM25 memory
        "brightness + BM25 memory": (score("brightness"), WORDS_MEMORY),
        # attention earning its place: every candidate score with the same memory (the default's own
        # is the default again, measured at no cost: its pruned contexts were measured already)
        **{f"{n} + memory": (score(n), tuned.memory) for n in SCORES},
        "recency + memory": (lambda _d: Recency(), tuned.memory),
        # the plain scores, no window and no memory, and the known baselines
        "brightness": (lambda _d: Brightness("brightness"), None),
        "brightness (per frame)": (lambda _d: Brightness("per frame", per_frame=True), None),
        "h2o": (lambda _d: HeavyHitters(), None),
        "tova": (lambda _d: LastQuery(), None),
        "streaming": (lambda _d: Streaming(), None),
        "recency": (lambda _d: Recency(), None),
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


def tuning_scores(dialog: Dialog, model: InProcessModel, config: BenchmarkConfig, tuned: Tuned) -> dict[str, float]:
    """One tuning conversation's score for every candidate pruning score (with the recent window
    and the tuned memory): KL at the budget nearest 50 % and recall at the lowest."""
    middle = min(config.budgets, key=lambda b: abs(b - 0.5))
    low = min(config.budgets)
    out: dict[str, float] = {}
    measured: dict[float, Measured] = {middle: {}, low: {}}
    for name in config.scores:
        for fraction, measure in ((middle, "kl"), (low, "recall")):
            out[f"{name} {measure}"] = _replayed_mean(dialog, model, SCORES[name](tuned), fraction, tuned.memory,
                                                      measured[fraction], measure)
    return out


def _replayed_mean(dialog: Dialog, model: InProcessModel, policy: Policy, fraction: float, memory: MemorySettings,
                   measured: Measured, measure: str) -> float:
    """`measure`'s mean over the steps of one replay that have it (NaN: none has)."""
    values = [r.measures[measure] for r in replay(dialog, model, policy, fraction, memory=memory, measured=measured)
              if measure in r.measures]
    return float(np.mean(values)) if values else float("nan")


def choose_score(scores: Sequence[dict[str, float]],
                 config: BenchmarkConfig) -> tuple[str, dict[str, dict[str, float]]]:
    """The default rule on the tuning conversations: the lowest mean KL, and among the scores
    within 0.01 of it the best recall (then the first listed)."""
    means = {n: {m: float(np.nanmean([s[f"{n} {m}"] for s in scores])) if scores else float("nan")
                 for m in ("kl", "recall")} for n in config.scores}
    if not scores:
        return config.scores[0], means
    lowest = min(v["kl"] for v in means.values())
    fit = [n for n in config.scores if means[n]["kl"] <= lowest + 0.01]
    return max(fit, key=lambda n: (means[n]["recall"], -config.scores.index(n))), means


def count_scores(dialog: Dialog, model: InProcessModel, config: BenchmarkConfig, tuned: Tuned) -> dict[str, float]:
    """One tuning conversation replayed with the default's score and memory bringing back up to
    each of the candidate counts (`BenchmarkConfig.counts`) sentences: the answer NLL increase at
    the lowest budget, KL at the middle."""
    middle = min(config.budgets, key=lambda b: abs(b - 0.5))
    low = min(config.budgets)
    out: dict[str, float] = {}
    measured: dict[float, Measured] = {middle: {}, low: {}}
    for count in config.counts:
        memory = tuned.memory.model_copy(update={"max_recalled": count})
        for fraction, measure in ((low, "answer_nll_increase"), (middle, "kl")):
            out[f"{count} {measure}"] = _replayed_mean(dialog, model, SCORES[tuned.score](tuned), fraction, memory,
                                                       measured[fraction], measure)
    return out


def choose_count(scores: Sequence[dict[str, float]], counts: Sequence[int] = COUNTS
                 ) -> tuple[int, dict[int, dict[str, float]]]:
    """How many sentences memory brings back, from each tuning conversation's `count_scores`: the
    lowest mean answer NLL increase at the lowest budget (ties: fewer) among the counts whose KL at
    the middle budget is not significantly above the lowest-KL count's (the 95 % interval of the
    difference, paired by conversation, reaches 0): more sentences may not buy answers with false
    recalls that change the reply. With no tuning conversation, the product's default.

    Not the fewest counts whose answers are not significantly worse than the best: on 28 tuning
    chats that test cannot tell three sentences from five (+0.456 against +0.281 nats), and would
    take the worse mean (docs/pruning.md)."""
    means = {k: {m: float(np.nanmean([s[f"{k} {m}"] for s in scores])) if scores else float("nan")
                 for m in ("answer_nll_increase", "kl")} for k in counts}
    if not scores:
        return MemorySettings().max_recalled, means
    kl = {k: {str(i): s[f"{k} kl"] for i, s in enumerate(scores) if not math.isnan(s[f"{k} kl"])} for k in counts}
    lowest = min(counts, key=lambda k: (means[k]["kl"], k))
    fit = [k for k in counts if k == lowest or paired_difference(kl[k], kl[lowest]).low <= 0]
    return min(fit, key=lambda k: (means[k]["answer_nll_increase"], k)), means


@dataclass(frozen=True)
class _Task:
    conversation: Conversation
    #: "archive": the recall study's archive of a tuning conversation; "tune": its scores for the
    #: default's candidates; "count": its scores for memory's counts; "measure": a held-out
    #: conversation's rows (and archive)
    kind: str
    tuned: Tuned
    policies: tuple[str, ...] = ()
    #: the held-out set it belongs to ("generated", "handwritten", "yours")
    set_name: str = "generated"


@dataclass(frozen=True)
class _Done:
    name: str
    split: str
    set_name: str
    history_tokens: int
    rows: list[dict[str, Any]]
    scores: dict[str, float]
    archive: Archive | None
    computed: int


def _archive(dialog: Dialog, model: InProcessModel, config: BenchmarkConfig) -> Archive:
    from halo_client.conversation.memory.recall import default_embedder

    archive = archive_of(dialog)
    if config.attention_recall:
        attention_pass(model, archive)
    match_scores(archive, default_embedder())
    return archive


def _work(task: _Task, model: InProcessModel, config: BenchmarkConfig) -> _Done:
    before = model.computed
    dialog = play(task.conversation, model, reply_tokens=config.reply_tokens, probe_tokens=config.probe_tokens,
                  cache_dir=config.cache_dir)
    rows: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    archive = _archive(dialog, model, config) if task.kind in ("archive", "measure") else None
    if task.kind == "tune":
        scores = tuning_scores(dialog, model, config, task.tuned)
    elif task.kind == "count":
        scores = count_scores(dialog, model, config, task.tuned)
    elif task.kind == "measure":
        factories = policy_factories(task.tuned)
        rows = [{**r, "set": task.set_name}
                for r in measure(dialog, model, {n: factories[n] for n in task.policies}, config.budgets)]
    return _Done(task.conversation.name, task.conversation.split, task.set_name, dialog.history_tokens, rows, scores,
                 archive, model.computed - before)


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
    # conversations written by people for tuning ("split": "tune") join the tuning split: its
    # generated chats alone say little about how people ask
    tuning = [(c, "tuning") for c in conversations if c.split == "tune"]
    tuning += [(c, "tuning by hand") for c in config.handwritten or [] if c.split == "tune"]
    main_set = "yours" if config.conversations is not None else "generated"
    held_out = [(c, main_set) for c in conversations if c.split == "report"]
    held_out += [(c, "handwritten") for c in config.handwritten or [] if c.split == "report"]
    names = tuple(n for n in policy_factories(Tuned()) if config.policies is None or n in config.policies)
    runner = _Runner(backend, config)
    computed = 0
    done = 0
    total = (1 + (len(config.scores) > 1) + (len(config.counts) > 1)) * len(tuning) + len(held_out)
    tuned = Tuned()
    study: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    score_fixed = len(config.scores) == 1  # one candidate: the default's score is given, not tuned here
    count_fixed = len(config.counts) == 1  # and memory's count

    def result_json(costs: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": runner.model.info.model_name,
            "config": {"tune": sum(1 for _c, s in tuning if s == "tuning"),
                       "tune_handwritten": sum(1 for _c, s in tuning if s == "tuning by hand"),
                       "report": sum(1 for _c, s in held_out if s == main_set),
                       "handwritten": sum(1 for _c, s in held_out if s == "handwritten"),
                       "budgets": list(config.budgets),
                       "tail": config.tail, "min_tokens": config.min_tokens, "max_tokens": config.max_tokens,
                       "reply_tokens": config.reply_tokens, "probe_tokens": config.probe_tokens, "seed": config.seed,
                       "workers": config.workers, "own": config.conversations is not None},
            "tuned": {"memory": tuned.memory.model_dump(), "memory_score": tuned.memory_score,
                      "heads": {k: [list(h) for h in v] for k, v in tuned.heads.items()}, "score": tuned.score,
                      "score_fixed": score_fixed, "scores": tuned.scores, "count_fixed": count_fixed,
                      "counts": {str(k): v for k, v in tuned.counts.items()}},
            # the policies that ran with memory (the report shows what they brought back)
            "with_memory": [n for n, (_f, memory) in policy_factories(tuned).items()
                            if n in names and memory is not None],
            "rows": rows,
            "study": study,
            "costs": costs,
            "seconds": time.perf_counter() - started,
            "tokens_computed": computed,
        }

    position = {(s, c.name): i for i, (c, s) in enumerate(tuning + held_out)}
    try:
        archives = []
        for result in runner.map([_Task(c, "archive", tuned, set_name=s) for c, s in tuning]):
            done += 1
            computed += result.computed
            assert result.archive is not None
            archives.append((result.archive, result.set_name))
            progress(done, total, f"recall study of {result.name}: {len(result.archive.texts)} sentences")
        # in the split's order, not the order the workers finished in: the heads and memory chosen,
        # and the study's bootstrap intervals, are the same from run to run
        archives.sort(key=lambda a: position[(a[1], a[0].conversation)])
        if archives:
            tuning_archives = [a for a, _s in archives]
            tuned.heads = {rows_: choose_heads(tuning_archives, rows_, HEAD_COUNT) for rows_ in ("message", "last")}
            tuned.memory, tuned.memory_score = choose_memory(tuning_archives, memory_grid())
        scores = []
        for result in runner.map([] if score_fixed else [_Task(c, "tune", tuned) for c, _s in tuning]):
            done += 1
            computed += result.computed
            scores.append(result.scores)
            progress(done, total, f"tuned on {result.name}: {result.history_tokens} tokens")
        tuned.score, tuned.scores = choose_score(scores, config)
        scores = []
        for result in runner.map([] if count_fixed else [_Task(c, "count", tuned) for c, _s in tuning]):
            done += 1
            computed += result.computed
            scores.append(result.scores)
            progress(done, total, f"memory's count tuned on {result.name}")
        count, tuned.counts = (config.counts[0], {}) if count_fixed else choose_count(scores, config.counts)
        tuned.memory = tuned.memory.model_copy(update={"max_recalled": count})
        memories = {"default": tuned.memory, "BM25": WORDS_MEMORY}
        for archive, set_name in archives:
            study += study_rows(archive, set_name, tuned.heads, memories)
        handwritten = tuple(n for n in names if config.policies is not None or n in HANDWRITTEN_POLICIES)
        for result in runner.map([_Task(c, "measure", tuned, handwritten if set_name == "handwritten" else names,
                                        set_name) for c, set_name in held_out]):
            done += 1
            computed += result.computed
            rows += result.rows
            if result.archive is not None:
                study += study_rows(result.archive, result.set_name, tuned.heads, memories)
            measured = len(handwritten if result.set_name == "handwritten" else names)
            progress(done, total, f"measured {result.name}: {result.history_tokens} tokens, "
                     f"{measured} policies x {len(config.budgets)} budgets")
            # what is measured so far, should the run be cut short (`--from-json` reports from it)
            save_rows(result_json({}), out_dir, "pruning.partial.json")
    finally:
        runner.close()
    rows.sort(key=lambda r: (position[(r["set"], r["conversation"])], r["budget"], names.index(r["policy"]), r["step"]))
    study.sort(key=lambda r: position[(r["set"], r["conversation"])])  # stable: each archive's rows keep their order
    costs: dict[str, Any] = {}
    if config.cost_sentences:
        from halo_client.conversation.memory.recall import default_embedder
        from halo_client.evaluation.costs import recall_cost

        costs = recall_cost(default_embedder(), sentences=config.cost_sentences)
    final = result_json(costs)
    # the rows first: should the report fail, nothing that was computed is lost (`--from-json` rewrites it)
    save_rows(final, out_dir)
    write_report(final, out_dir, config.resamples)
    (out_dir / "pruning.partial.json").unlink(missing_ok=True)
    return final
