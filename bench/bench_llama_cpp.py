"""The llama.cpp engine without attention against llama-cpp-python's own generation, same llama.cpp.

Both run the llama.cpp of the llama-cpp-python 0.3.36 sdist: the engine as `halo-client serve
--engine llama.cpp` drives it (the Halo Weave libllama, ctypes, the contract's sampler over the
logits), llama-cpp-python as its `Llama.generate` does (built from the same sdist, GGML_NATIVE=OFF,
in a venv of its own: its libllama and libggml cannot share a process with the engine's). Each
measurement is a fresh process; configurations alternate; medians of decode tokens/s (greedy, the
prompt processed first and not counted):

- engine, export on but not asked (flash attention disabled, as export needs) / llama-cpp-python
  with flash attention off (its default): what the patch costs llama.cpp when nobody asks. Aim >= 0.98.
- engine, export off (llama.cpp's default: flash attention AUTO) / llama-cpp-python with
  flash_attn=True.

    python bench/bench_llama_cpp.py --model M.gguf --llama-cpp-python /path/to/venv/bin/python
        [--tokens 128] [--prompt-tokens 1024] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FILLER = ("The lighthouse keeper counted the ships that passed in the night and wrote each name in a blue "
          "notebook, with the hour, the weather and the colour of the sails. ")
CONFIGS = {
    "engine, export on (not asked)": ("engine", "on"),
    "llama-cpp-python, flash_attn off": ("llama-cpp-python", "off"),
    "engine, export off": ("engine", "off"),
    "llama-cpp-python, flash_attn on": ("llama-cpp-python", "on"),
}
RATIOS = (("engine, export on (not asked)", "llama-cpp-python, flash_attn off"),
          ("engine, export off", "llama-cpp-python, flash_attn on"))


def engine_worker(args: argparse.Namespace) -> float:
    from halo_client.llama_cpp import LlamaCppBackend
    from halo_client.messages import GenerateRequest
    from halo_client.serving.generation import Finished, GeneratedToken, generate

    backend = LlamaCppBackend(args.model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.prompt_threads,
                              attention_export=args.mode)
    info = backend.model_info()
    ids = backend.tokenize(FILLER * (args.prompt_tokens // 20 + 10), True)[: args.prompt_tokens]
    request = GenerateRequest(input_ids=ids, max_length=args.tokens, temperature=0.0, rep_pen=1.0,
                              banned_token_ids=sorted(info.end_token_ids))
    first = last = 0.0
    count = 0
    for item in generate(backend, request, info, lambda: False):
        if isinstance(item, GeneratedToken):
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
        else:
            assert isinstance(item, Finished) and item.token_count == args.tokens, item
    return (count - 1) / (last - first)


def llama_cpp_python_worker(args: argparse.Namespace) -> float:
    from llama_cpp import Llama  # type: ignore[import-not-found]  # (its own venv)

    llm = Llama(args.model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.prompt_threads, n_batch=512,
                flash_attn=args.mode == "on", verbose=False)
    ids = llm.tokenize((FILLER * (args.prompt_tokens // 20 + 10)).encode(), add_bos=True)[: args.prompt_tokens]
    first = last = 0.0
    count = 0
    for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        last = time.perf_counter()
        if count == 0:
            first = last
        count += 1
        if count == args.tokens:
            break
    return (count - 1) / (last - first)


def run(args: argparse.Namespace, name: str) -> float:
    kind, mode = CONFIGS[name]
    python = sys.executable if kind == "engine" else args.llama_cpp_python
    cmd = [python, __file__, "--worker", kind, "--mode", mode, "--model", str(args.model), "--tokens",
           str(args.tokens), "--prompt-tokens", str(args.prompt_tokens), "--threads", str(args.threads),
           "--prompt-threads", str(args.prompt_threads), "--ctx", str(args.ctx)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["tps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--llama-cpp-python", default=None, help="the python of a venv with llama-cpp-python 0.3.36")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=["engine", "llama-cpp-python"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="on", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tps = engine_worker(args) if args.worker == "engine" else llama_cpp_python_worker(args)
        print(json.dumps({"tps": tps}))
        return
    if not args.llama_cpp_python:
        parser.error("--llama-cpp-python PYTHON is needed (a venv where llama-cpp-python 0.3.36 is installed)")
    samples: dict[str, list[float]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for rep in range(args.repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            samples[name].append(run(args, name))
        print(f"  rep {rep + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in samples.items()), flush=True)
    medians = {name: statistics.median(v) for name, v in samples.items()}
    load = os.getloadavg()
    print(f"{args.model.name}: {args.tokens} tokens after a {args.prompt_tokens}-token prompt, "
          f"{args.threads} thread(s), medians of {args.repeats}; {platform.processor() or platform.machine()}, "
          "load average "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, {datetime.now(timezone.utc):%Y-%m-%d}")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} t/s | {', '.join(f'{x:.2f}' for x in samples[name])} |")
    result: dict[str, Any] = {"model": args.model.name, "tokens": args.tokens, "prompt_tokens": args.prompt_tokens,
                              "threads": args.threads, "repeats": args.repeats, "samples": samples, "medians": medians,
                              "load_average": load, "ratios": {}}
    for a, b in RATIOS:
        ratio = medians[a] / medians[b]
        # the spread of the per-repeat ratios (runs of one repeat are adjacent in time)
        per_rep = sorted(x / y for x, y in zip(samples[a], samples[b], strict=True))
        result["ratios"][f"{a} / {b}"] = {"median": ratio, "per_repeat": per_rep}
        print(f"{a} / {b}: {ratio:.3f} (per repeat {per_rep[0]:.3f} .. {per_rep[-1]:.3f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
