"""The llama.cpp engine without attention against llama-cpp-python's own generation, same llama.cpp.

Both run the llama.cpp of the llama-cpp-python 0.3.36 sdist: the engine as `halo-client serve
--engine llama.cpp` drives it (the Halo Weave libllama, ctypes, the contract's sampler over the
logits), llama-cpp-python as its `Llama.generate` does (built from the same sdist, GGML_NATIVE=OFF,
in a venv of its own: its libllama and libggml cannot share a process with the engine's). Each
measurement is a fresh process; configurations alternate; medians of decode tokens/s (greedy, the
prompt processed first and not counted), by the clock and by the process's CPU time (tokens per
CPU-second: on a machine other work shares, the steadier measure of the same work):

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


class Clock:
    """Decode rates from the first token on: by the clock and by this process's CPU time."""

    def __init__(self) -> None:
        self.count = 0
        self.first = self.last = (0.0, 0.0)

    def tick(self) -> None:
        self.last = (time.perf_counter(), time.process_time())
        if self.count == 0:
            self.first = self.last
        self.count += 1

    def rates(self) -> dict[str, float]:
        n = self.count - 1
        return {"tps": n / (self.last[0] - self.first[0]), "cpu_tps": n / (self.last[1] - self.first[1])}


def engine_worker(args: argparse.Namespace) -> dict[str, float]:
    from halo_client.llama_cpp import LlamaCppBackend
    from halo_client.messages import GenerateRequest
    from halo_client.serving.generation import Finished, GeneratedToken, generate

    backend = LlamaCppBackend(args.model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.prompt_threads,
                              attention_export=args.mode)
    info = backend.model_info()
    ids = backend.tokenize(FILLER * (args.prompt_tokens // 20 + 10), True)[: args.prompt_tokens]
    request = GenerateRequest(input_ids=ids, max_length=args.tokens, temperature=0.0, rep_pen=1.0,
                              banned_token_ids=sorted(info.end_token_ids))
    clock = Clock()
    for item in generate(backend, request, info, lambda: False):
        if isinstance(item, GeneratedToken):
            clock.tick()
        else:
            assert isinstance(item, Finished) and item.token_count == args.tokens, item
    return clock.rates()


def llama_cpp_python_worker(args: argparse.Namespace) -> dict[str, float]:
    from llama_cpp import Llama  # type: ignore[import-not-found]  # (its own venv)

    llm = Llama(str(args.model), n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.prompt_threads,
                n_batch=512, flash_attn=args.mode == "on", verbose=False)
    ids = llm.tokenize((FILLER * (args.prompt_tokens // 20 + 10)).encode(), add_bos=True)[: args.prompt_tokens]
    clock = Clock()
    for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        clock.tick()
        if clock.count == args.tokens:
            break
    return clock.rates()


def run(args: argparse.Namespace, name: str) -> dict[str, float]:
    kind, mode = CONFIGS[name]
    python = sys.executable if kind == "engine" else args.llama_cpp_python
    cmd = [python, __file__, "--worker", kind, "--mode", mode, "--model", str(args.model), "--tokens",
           str(args.tokens), "--prompt-tokens", str(args.prompt_tokens), "--threads", str(args.threads),
           "--prompt-threads", str(args.prompt_threads), "--ctx", str(args.ctx)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return {k: float(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


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
        print(json.dumps(engine_worker(args) if args.worker == "engine" else llama_cpp_python_worker(args)))
        return
    if not args.llama_cpp_python:
        parser.error("--llama-cpp-python PYTHON is needed (a venv where llama-cpp-python 0.3.36 is installed)")
    samples: dict[str, dict[str, list[float]]] = {m: {name: [] for name in CONFIGS} for m in ("tps", "cpu_tps")}
    names = list(CONFIGS)
    for rep in range(args.repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            for measure, value in run(args, name).items():
                samples[measure][name].append(value)
        print(f"  rep {rep + 1}: " + ", ".join(f"{n} {samples['tps'][n][-1]:.2f} ({samples['cpu_tps'][n][-1]:.2f} "
                                               "per CPU-s)" for n in names), flush=True)
    load = os.getloadavg()
    print(f"{args.model.name}: {args.tokens} tokens after a {args.prompt_tokens}-token prompt, "
          f"{args.threads} thread(s), medians of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, {datetime.now(timezone.utc):%Y-%m-%d}")
    result: dict[str, Any] = {"model": args.model.name, "tokens": args.tokens, "prompt_tokens": args.prompt_tokens,
                              "threads": args.threads, "repeats": args.repeats, "samples": samples,
                              "load_average": load, "medians": {}, "ratios": {}}
    for measure, label in (("tps", "tokens/s"), ("cpu_tps", "tokens per CPU-second")):
        medians = {name: statistics.median(v) for name, v in samples[measure].items()}
        result["medians"][measure] = medians
        for name, value in medians.items():
            print(f"| {name} | {value:.2f} {label} | {', '.join(f'{x:.2f}' for x in samples[measure][name])} |")
        for a, b in RATIOS:
            # the spread of the per-repeat ratios (the runs of one repeat are adjacent in time)
            per_rep = sorted(x / y for x, y in zip(samples[measure][a], samples[measure][b], strict=True))
            ratio = medians[a] / medians[b]
            result["ratios"][f"{a} / {b} ({label})"] = {"median": ratio, "per_repeat": per_rep}
            print(f"{a} / {b}, {label}: {ratio:.3f} (per repeat {per_rep[0]:.3f} .. {per_rep[-1]:.3f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
