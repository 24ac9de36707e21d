"""Reference backend speed, and what its choice of BLAS threads is worth on a busy machine.

    python bench/bench_reference.py [--model PATH] [--contexts 512 2048] [--tokens 16]
                                    [--repeats 3] [--busy N]

Three thread policies, measured in one run, alternating their order every repeat:
- `chosen`: what the backend does (halo_client/reference/threads.py): one BLAS thread for a
  generated token; for a prompt the library's own count while the load average leaves a core
  to spare, else one;
- `library`: the library's count for everything (what the backend did before it chose);
- `one`: one thread for everything (is the prompt's choice right?).
For each context: prompt processing (`ctx` tokens from an empty cache) and generation
(`--tokens` greedy tokens after it, each with the full post-softmax attention), tokens/s as
medians over the repeats, and the ratios chosen / library and one / library with a 95 %
bootstrap interval of the median of the per-repeat ratios.

`--busy N` runs N processes that spin for the whole measurement, so that the machine is as busy
as a shared one (default: one per core; 0 measures the machine as it is). The load average is
printed before and after. Targets on the project's 2-core machine: generation >= 15 tokens/s at
512 context with attention, prompt processing >= 100 tokens/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from halo_client.reference import ReferenceBackend, load_backend
from halo_client.reference.threads import BlasThreads

POLICIES = ("chosen", "library", "one")


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_machine(processes: int) -> Iterator[None]:
    """`processes` busy loops for the duration (each a process: no GIL shared with the benchmark)."""
    # a terminated benchmark (timeout, kill) still stops its spinners: SIGTERM unwinds like Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for p in spinners:
        p.start()
    try:
        yield
    finally:
        for p in spinners:
            p.terminate()
        for p in spinners:
            p.join()


def policy(name: str) -> BlasThreads:
    library = BlasThreads().prompt_threads  # the library's count, as the process started
    if name == "chosen":
        return BlasThreads()
    if name == "library":  # whatever the load
        return BlasThreads(token_threads=library, prompt_threads=library, load_average=lambda: 0.0)
    return BlasThreads(token_threads=1, prompt_threads=1)


def measure(backend: ReferenceBackend, ids: list[int], ctx: int, tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, generation tokens/s with attention) at `ctx`."""
    backend.reset()
    started = time.perf_counter()
    result = backend.prefill(ids[:ctx], True)
    prompt = ctx / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(tokens):
        result = backend.decode(int(np.argmax(result.logits)), True)
    return prompt, tokens / (time.perf_counter() - started)


def ratio_interval(ratios: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median of per-repeat ratios and a 95 % bootstrap interval of it."""
    values = np.asarray(ratios)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(2000, len(values)), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(values)), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--tokens", type=int, default=16, help="generated tokens per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per policy and context")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="processes that spin during the measurement (default: one per core; 0: none)")
    args = parser.parse_args()
    backend = load_backend(args.model, n_ctx=max(args.contexts) + args.tokens + 1, quiet=True)
    text = "The lighthouse keeper counted ships, wrote their names and watched the weather. " * 400
    ids = backend.tokenize(text, False)
    p = backend.params
    print(f"{backend.model_info().model_name}: {p.n_layer} layers, {p.n_head} query heads, {p.n_head_kv} KV heads")
    threads = {name: policy(name) for name in POLICIES}
    print("BLAS threads (token / prompt): " + ", ".join(
        f"{name} {t.token_threads} / {t.prompt_threads}" for name, t in threads.items()))
    backend.prefill(ids[:64], True)  # warm-up
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.busy} spinning processes")
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    with busy_machine(args.busy):
        time.sleep(1.0 if args.busy else 0.0)
        for ctx in args.contexts:
            for r in range(args.repeats):
                order = POLICIES if r % 2 == 0 else POLICIES[::-1]
                for name in order:
                    backend.model.threads = threads[name]
                    results.setdefault((ctx, name), []).append(measure(backend, ids, ctx, args.tokens))
        load = os.getloadavg()
    backend.model.threads = threads["chosen"]
    print(f"load average at the end (spinners still running): {' '.join(f'{v:.2f}' for v in load)}")
    for ctx in args.contexts:
        print(f"context {ctx}, {args.repeats} repeats, medians:")
        for name in POLICIES:
            prompt = float(np.median([m[0] for m in results[ctx, name]]))
            gen = float(np.median([m[1] for m in results[ctx, name]]))
            print(f"  {name:8} prompt {prompt:7.1f} tokens/s, generation {gen:6.2f} tokens/s with attention")
        for name in ("chosen", "one"):
            for what, i in (("generation", 1), ("prompt", 0)):
                ratios = [a[i] / b[i] for a, b in zip(results[ctx, name], results[ctx, "library"], strict=True)]
                mid, low, high = ratio_interval(ratios)
                print(f"  {what:10} {name} / library: {mid:5.2f} (95 % interval {low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
