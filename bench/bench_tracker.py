"""Tracker and pruner speed, as ratios against a bare lower bound in the same run.

- One tracker update of a [28, 28, 4096] frame, from the received bytes: decode (a zero-copy
  view), aggregate, distance weights, accumulate, map columns to positions; against
  `frame.sum(axis=(0, 1))` on the same frame. float32 and float16.
- One prune decision on a 32,000-token conversation (sentences of ~20 tokens).

    python bench/bench_tracker.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from halo_client.conversation.dictionary import ConversationState
from halo_client.conversation.pruner import Pruner
from halo_client.conversation.tracker import AttentionTracker
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
    raw = rng.random((layers, heads, ctx), dtype=np.float32)
    raw /= raw.sum(-1, keepdims=True)
    positions = np.sort(rng.choice(ctx + 500, ctx, replace=False)).astype(np.int64)
    brightness = np.ones(ctx + 500, np.float32)
    tracker = AttentionTracker()
    print(f"{'what':44} {'time':>9} {'bound':>9} {'ratio':>6}")
    for dtype in ("float32", "float16"):
        message = encode_frame(0, raw, dtype)
        view = decode_frame(message).values
        bound = best_of(lambda v=view: v.sum(axis=(0, 1), dtype=np.float32))
        update = best_of(lambda m=message: tracker.update(brightness, positions, decode_frame(m).values))
        print(f"{'tracker update [28, 28, 4096] ' + dtype:44} {update * 1e3:7.2f}ms {bound * 1e3:7.2f}ms "
              f"{update / bound:6.2f}")
    state = ConversationState(capacity=40_000)
    words = [(5, b" word")] * 19 + [(6, b".")]
    for turn in range(1600):
        state.add_message("user" if turn % 2 else "assistant", words, [(1, b"<s>")], [(2, b"</s>")])
    state.brightness[:] = rng.random(len(state)).astype(np.float32)
    pruner = Pruner()

    def decide() -> None:
        snapshot = state._cols["deleted"].copy()
        pruner.prune(state, len(state) - 2000)
        state._cols["deleted"][:] = snapshot

    restore_only = best_of(lambda: state._cols["deleted"].copy(), 10)
    decision = best_of(decide, 10) - restore_only
    print(f"{f'prune decision, {len(state):,} tokens':44} {decision * 1e3:7.2f}ms {'5.00ms':>9} "
          f"{decision / 5e-3:6.2f}")


if __name__ == "__main__":
    main()
