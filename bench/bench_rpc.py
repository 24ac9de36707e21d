"""The llama.cpp engine past one machine: a model's layers spread over two ggml rpc-servers (on
loopback here, standing in for two hosts), against the same model in one process.

For each layout (no attention, full, layer_stats, model_stats): the frames of a greedy generation
with the layers on the rpc-servers equal the single-process frames (largest difference), and
what crossed the network per generated token (the TCP bytes of the client's connections to the
rpc-servers, both ways, from the kernel's counters: `ss -tin`), of which the capture read (the
engine's own count of what it read from devices).

    python bench/bench_rpc.py --llama-lib build/llama.cpp-0.3.36/build-cpu-rpc/bin/libllama.so \
        --rpc-server build/llama.cpp-0.3.36/build-cpu-rpc/bin/ggml-rpc-server --model SmolLM2.gguf
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.llama_cpp import LlamaCppBackend
from halo_client.messages import AttentionLayout
from halo_client.testing.ports import free_port, wait_for_port
from halo_client.testing.processes import stop_process

LAYOUTS: tuple[AttentionLayout | None, ...] = (None, "full", "layer_stats", "model_stats")
FILLER = ("The lighthouse keeper counted the ships that passed in the night and wrote each name in a blue "
          "notebook, with the hour, the weather and the colour of the sails. ")


@contextmanager
def rpc_server(binary: Path, port: int, threads: int, log: Path) -> Any:
    with open(log, "w") as out:
        proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc, 10)


def tcp_bytes(ports: list[int]) -> int:
    """Bytes sent and received so far on this machine's connections to `ports` (tcp_info)."""
    total = 0
    for port in ports:
        out = subprocess.run(["ss", "-tinH", "state", "established", f"dport = :{port}"], capture_output=True,
                             text=True, check=True).stdout
        for key in ("bytes_acked", "bytes_received"):
            total += sum(int(v) for v in re.findall(rf"\b{key}:(\d+)", out))
    return total


def generation(backend: LlamaCppBackend, ids: list[int], tokens: int, layout: AttentionLayout | None,
               follow: list[int] | None = None, ports: list[int] | None = None
               ) -> tuple[list[np.ndarray], list[int], int, int]:
    """Frames and tokens of a greedy generation; over the decodes only (the prompt is reused, so
    its prefill is one token), the bytes the frames read from devices and those on the network."""
    if layout is not None:
        backend.set_attention_layout(layout)
    result = backend.prefill(ids, layout is not None)
    frames, out, device = [], [], 0
    before = tcp_bytes(ports) if ports else 0
    for i in range(tokens):
        if result.attention is not None:
            frames.append(result.attention.copy())
        token = follow[i] if follow is not None else int(np.argmax(result.logits))
        out.append(token)
        result = backend.decode(token, layout is not None)
        if layout is not None:
            device += backend.capture_bytes()[1]
    moved = tcp_bytes(ports) - before if ports else 0
    return frames, out, device, moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-lib", type=Path, required=True, help="a build with RPC=1")
    parser.add_argument("--rpc-server", type=Path, required=True, help="its ggml-rpc-server")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    local = LlamaCppBackend(args.model, library=args.llama_lib, n_ctx=2048, n_threads=args.threads, n_gpu_layers=0)
    ids = local.tokenize(FILLER * (args.prompt_tokens // 20 + 10), True)[: args.prompt_tokens]
    reference = {layout: generation(local, ids, args.tokens, layout) for layout in LAYOUTS}
    local.close()
    rows = []
    with ExitStack() as stack:
        ports = [free_port(), free_port()]
        endpoints = [stack.enter_context(rpc_server(args.rpc_server, p, args.threads, Path(f"/tmp/rpc-{p}.log")))
                     for p in ports]
        spread = LlamaCppBackend(args.model, library=args.llama_lib, n_ctx=2048, n_threads=args.threads,
                                 n_gpu_layers=-1, rpc_servers=",".join(endpoints))
        for layout in LAYOUTS:
            want_frames, want_tokens, _, _ = reference[layout]
            generation(spread, ids, 1, layout, follow=want_tokens)  # warm: the prompt, this layout's graphs
            started = time.perf_counter()
            frames, tokens, device, moved = generation(spread, ids, args.tokens, layout, follow=want_tokens,
                                                       ports=ports)
            seconds = time.perf_counter() - started
            diff = max((float(np.abs(a - b).max()) for a, b in zip(frames, want_frames, strict=True)), default=0.0)
            row = {"layout": layout or "none", "max_abs_diff_vs_one_process": diff,
                   "greedy_tokens_equal": tokens == want_tokens, "bytes_per_token_on_network": moved / args.tokens,
                   "capture_read_per_token": device / args.tokens, "seconds": seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
        spread.close()
    print(f"{args.model.name}: prompt {len(ids)} tokens, {args.tokens} generated per layout (the prompt reused: "
          "what crosses per token is the decode's)")
    print("| layout | max abs diff vs one process | bytes/token on the network | of which the capture read |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['max_abs_diff_vs_one_process']:.2e} | {r['bytes_per_token_on_network']:,.0f} | "
              f"{r['capture_read_per_token']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model.name, "prompt_tokens": len(ids), "tokens": args.tokens,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
