"""Tracker and pruner speed, as ratios against a bare lower bound in the same run.

- One tracker update of a [28, 28, 4096] frame, from the received bytes: decode (a zero-copy
  view), aggregate, distance weights, accumulate, map columns to positions; against the bare
  `frame.sum(axis=(0, 1))` on the same frame (the issue's bound; aim: <= 2x). float32 and
  float16, every aggregation.
  For float16 numpy's own sum is slow (it accumulates in float16, or widens element by
  element with dtype=float32), so two more columns compare with `sum(dtype=float32)` and with
  the float32 frame's bare sum: the tracker widens float16 by bit arithmetic (tracker.py).
- One prune decision on a 32,000+-token conversation (sentences of ~20 tokens); aim <= 5 ms.

    python bench/bench_tracker.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from halo_client.conversation.pruner import Pruner
from halo_client.conversation.state import ConversationState
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings
from halo_client.frame import decode_frame, encode_frame


def best_of(func: Callable[[], object], repeat: int = 30) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    layers, heads, ctx = 28, 28, 4096
    raw = rng.random((layers, heads, ctx), dtype=np.float32) ** 4
    raw /= raw.sum(-1, keepdims=True)
    positions = np.sort(rng.choice(ctx + 500, ctx, replace=False)).astype(np.int64)
    brightness = np.ones(ctx + 500, np.float32)
    f32_view = decode_frame(encode_frame(0, raw, "float32")).values
    f32_bound = best_of(lambda: f32_view.sum(axis=(0, 1)))
    print(f"{'tracker update [28, 28, 4096]':40} {'time':>8} {'bound':>8} {'ratio':>6}   float16 only: "
          f"{'vs sum(dtype=f32)':>17} {'vs f32 frame sum':>16}")
    for dtype in ("float32", "float16"):
        message = encode_frame(0, raw, dtype)
        view = decode_frame(message).values
        bound = best_of(lambda: view.sum(axis=(0, 1)))  # noqa: B023 - called before the loop moves on
        bound32 = best_of(lambda: view.sum(axis=(0, 1), dtype=np.float32))  # noqa: B023
        for aggregation in ("mean", "max", "last_layer", "weighted_layers"):
            tracker = AttentionTracker(TrackerSettings(aggregation=aggregation))
            def update_once(m: bytes = message, t: AttentionTracker = tracker) -> None:
                t.update(brightness, positions, decode_frame(m).values)

            update = best_of(update_once)
            extra = (f"{update / bound32:17.2f} {update / f32_bound:16.2f}" if dtype == "float16" else "")
            label = f"{dtype} {aggregation}" + (" (default)" if aggregation == "mean" else "")
            print(f"{label:40} {update * 1e3:6.2f}ms {bound * 1e3:6.2f}ms {update / bound:6.2f}   {extra}")
    state = ConversationState(capacity=40_000)
    words = [(5, b" word")] * 19 + [(6, b".")]
    for turn in range(1600):
        state.add_message("user" if turn % 2 else "assistant", words, [(1, b"<s>")], [(2, b"</s>")])
    state.brightness[:] = rng.random(len(state)).astype(np.float32)
    pruner = Pruner()

    def decide() -> None:
        before = state.column("deleted").copy()
        pruner.prune(state, len(state) - 2000)
        state.undelete(np.flatnonzero(state.column("deleted") & ~before))

    def restore_only() -> None:
        before = state.column("deleted").copy()
        state.undelete(np.flatnonzero(state.column("deleted") & ~before))

    restore_only_s = best_of(restore_only, 10)
    decision = best_of(decide, 10) - restore_only_s
    print(f"{f'prune decision, {len(state):,} tokens':40} {decision * 1e3:6.2f}ms {5.0:6.2f}ms "
          f"{decision / 5e-3:6.2f}")


if __name__ == "__main__":
    main()
