"""`halo-client eval pruning`: the whole benchmark, from conversations to tables with confidence
intervals and a plot.

1. Conversations: generated (a tuning split and a held-out split) or a user's own file.
2. Each is played against the model (`dialog.play`): the full-context run.
3. Tuning, on the tuning split only: the hybrid's weight and memory's threshold.
4. Every policy at every budget over every held-out conversation (`replay.replay`).
5. Per policy and budget, each measure's mean over conversations with a bootstrap 95 %
   interval (`stats`), and the product default against every other policy, paired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.conversation.memory import MemorySettings
from halo_client.evaluation.conversations import Conversation, make_conversations
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
from halo_client.evaluation.report import DEFAULT_POLICY, write_report
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
    tail: str = "FQQFQQ"
    budgets: tuple[float, ...] = (0.25, 0.5)
    cache_dir: Path | None = None
    #: a user's own conversations instead of generated ones
    conversations: list[Conversation] | None = None
    #: only these policies (None: all)
    policies: tuple[str, ...] | None = None
    hybrid_weights: tuple[float, ...] = (0.5, 1.0, 2.0)
    memory_grid: tuple[MemorySettings, ...] = (MemorySettings(max_recalled=1), MemorySettings(max_recalled=2),
                                               MemorySettings(max_recalled=2, min_relevance=2.0))
    resamples: int = 2000


def policy_factories(tuned: Tuned) -> dict[str, tuple[Callable[[Dialog], Policy], MemorySettings | None]]:
    """Every policy the benchmark compares: a factory (per conversation) and memory, if on."""
    def brightness(name: str, **kw: Any) -> Callable[[Dialog], Policy]:
        return lambda _d: Brightness(name, **kw)

    return {
        "brightness": (brightness("brightness"), None),
        DEFAULT_POLICY: (brightness("brightness"), tuned.memory),
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


def evaluate(dialogs: Sequence[Dialog], model: InProcessModel, policies: dict[str, tuple[Callable[[Dialog], Policy],
             MemorySettings | None]], budgets: Sequence[float], tick: Callable[[str], None]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dialog in dialogs:
        for fraction in budgets:
            measured: Measured = {}
            for name, (factory, memory) in policies.items():
                for result in replay(dialog, model, factory(dialog), fraction, memory=memory, measured=measured):
                    rows.append(summary_row(dialog, name, fraction, result))
                tick(f"{dialog.conversation.name}, {fraction:.0%}, {name}")
    return rows


def tune(dialogs: Sequence[Dialog], model: InProcessModel, config: BenchmarkConfig,
         tick: Callable[[str], None]) -> Tuned:
    """On the tuning split: the hybrid weight with the lowest KL at 50 %, and memory's settings
    with the best recall at the lowest budget among those whose KL at 50 % is within 0.01 of the
    lowest."""
    tuned = Tuned()
    if not dialogs:
        return tuned
    middle = min(config.budgets, key=lambda b: abs(b - 0.5))
    low = min(config.budgets)

    def score(factory: Callable[[Dialog], Policy], memory: MemorySettings | None, fraction: float,
              measure: str) -> float:
        values: list[float] = []
        for dialog in dialogs:
            values.extend(r.measures[measure] for r in replay(dialog, model, factory(dialog), fraction, memory=memory)
                          if measure in r.measures)
        return float(np.mean(values)) if values else float("nan")

    def hybrid(weight: float) -> Callable[[Dialog], Policy]:
        return lambda _d: Hybrid(Brightness("brightness"), weight)

    weights = {}
    for weight in config.hybrid_weights:
        weights[weight] = score(hybrid(weight), None, middle, "kl")
        tick(f"tuning the hybrid: weight {weight}, KL {weights[weight]:.4f}")
    tuned.hybrid_weight = min(weights, key=lambda w: weights[w])
    options = []
    for memory in config.memory_grid:
        kl = score(lambda _d: Brightness("brightness"), memory, middle, "kl")
        recall = score(lambda _d: Brightness("brightness"), memory, low, "recall")
        options.append((memory, kl, recall))
        tick(f"tuning memory: {memory.max_recalled} at most, relevance >= {memory.min_relevance}: "
             f"KL {kl:.4f} at {middle:.0%}, recall {recall:.3f} at {low:.0%}")
    best_kl = min(kl for _m, kl, _r in options)
    tuned.memory = max((o for o in options if o[1] <= best_kl + 0.01), key=lambda o: o[2])[0]
    return tuned


def run(backend: ModelBackend, config: BenchmarkConfig, out_dir: Path, progress: Progress) -> dict[str, Any]:
    """The benchmark; writes pruning.md, pruning.json and pruning.svg to `out_dir`."""
    started = time.perf_counter()
    model = InProcessModel(backend)
    if config.conversations is not None:
        conversations = config.conversations
    else:
        conversations = make_conversations(
            config.tune, config.report, seed=config.seed, count_tokens=lambda t: len(backend.tokenize(t, False)),
            min_tokens=config.min_tokens, max_tokens=config.max_tokens, reply_tokens=config.reply_tokens,
            tail=config.tail)
    tuning = [c for c in conversations if c.split == "tune"]
    held_out = [c for c in conversations if c.split == "report"]
    factories = policy_factories(Tuned())
    names = [n for n in factories if config.policies is None or n in config.policies]
    units = (len(conversations) + (len(config.hybrid_weights) + len(config.memory_grid) if tuning else 0)
             + len(held_out) * len(config.budgets) * len(names))
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        progress(done, units, message)

    dialogs: dict[str, Dialog] = {}
    for conversation in conversations:
        dialog = play(conversation, model, reply_tokens=config.reply_tokens, probe_tokens=config.probe_tokens,
                      cache_dir=config.cache_dir)
        dialogs[conversation.name] = dialog
        tick(f"played {conversation.name} ({conversation.split}): {dialog.history_tokens} tokens, "
             f"{len(dialog.tail)} later messages")
    tuned = tune([dialogs[c.name] for c in tuning], model, config, tick)
    factories = policy_factories(tuned)
    chosen = {n: factories[n] for n in names}
    rows = evaluate([dialogs[c.name] for c in held_out], model, chosen, config.budgets, tick)
    elapsed = time.perf_counter() - started
    result = {
        "model": model.info.model_name,
        "config": {"tune": len(tuning), "report": len(held_out), "budgets": list(config.budgets),
                   "tail": config.tail, "min_tokens": config.min_tokens, "max_tokens": config.max_tokens,
                   "reply_tokens": config.reply_tokens, "probe_tokens": config.probe_tokens, "seed": config.seed},
        "tuned": {"hybrid_weight": tuned.hybrid_weight, "memory": tuned.memory.model_dump()},
        "rows": rows,
        "seconds": elapsed,
        "tokens_computed": model.computed,
    }
    write_report(result, out_dir, config.resamples)
    return result


def load_result(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
