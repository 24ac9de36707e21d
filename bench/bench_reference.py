"""Reference backend speed on this machine: prompt processing and generation with attention.

    python bench/bench_reference.py [--model PATH]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from halo_client.reference import load_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    backend = load_backend(args.model, quiet=True)
    text = "The lighthouse keeper counted ships, wrote their names and watched the weather. " * 200
    ids = backend.tokenize(text, False)
    print(f"{backend.model_info().model_name}: {backend.params.n_layer} layers, {backend.params.n_head} heads")
    for ctx in (512, 2048):
        backend.prefill([0], False)  # empty the cache: the timing below processes every token
        started = time.perf_counter()
        result = backend.prefill(ids[:ctx], True)
        prompt = ctx / (time.perf_counter() - started)
        started, count = time.perf_counter(), 32
        for _ in range(count):
            result = backend.decode(int(np.argmax(result.logits)), True)
        generation = count / (time.perf_counter() - started)
        print(f"context {ctx:5}: prompt {prompt:6.0f} tokens/s, generation with attention {generation:5.1f} tokens/s")


if __name__ == "__main__":
    main()
