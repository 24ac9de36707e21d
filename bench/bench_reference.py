"""Reference backend speed on this machine: prompt processing and generation with attention.

    python bench/bench_reference.py [--model PATH] [--contexts 512 2048] [--tokens 32]

Prompt processing: a prompt of `ctx` tokens from an empty cache (batched, matrix-matrix).
Generation: `--tokens` greedy tokens after it, one at a time through the KV cache, each with the
full post-softmax attention [layers, heads, ctx] (and without, for comparison). Targets on the
project's 2-core machine: generation >= 15 tokens/s at 512 context with attention, prompt
processing >= 100 tokens/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from halo_client.reference import load_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--tokens", type=int, default=32, help="generated tokens per measurement")
    args = parser.parse_args()
    backend = load_backend(args.model, n_ctx=max(args.contexts) + args.tokens + 1, quiet=True)
    text = "The lighthouse keeper counted ships, wrote their names and watched the weather. " * 400
    ids = backend.tokenize(text, False)
    p = backend.params
    print(f"{backend.model_info().model_name}: {p.n_layer} layers, {p.n_head} query heads, {p.n_head_kv} KV heads")
    backend.prefill(ids[:64], True)  # warm-up
    for ctx in args.contexts:
        backend.reset()
        started = time.perf_counter()
        result = backend.prefill(ids[:ctx], True)
        prompt = ctx / (time.perf_counter() - started)
        rates = {}
        for attention in (True, False):
            result = backend.prefill(ids[:ctx], attention)  # back to ctx tokens (reuses the cache: one position)
            started = time.perf_counter()
            for _ in range(args.tokens):
                result = backend.decode(int(np.argmax(result.logits)), attention)
            rates[attention] = args.tokens / (time.perf_counter() - started)
        print(f"context {ctx:5}: prompt {prompt:6.0f} tokens/s, generation {rates[True]:5.1f} tokens/s with "
              f"attention ({rates[False]:5.1f} without)")


if __name__ == "__main__":
    main()
