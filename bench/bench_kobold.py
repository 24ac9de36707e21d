"""The patched KoboldCPP's speed, as ratios measured in one run.

Starts the patched server (attention export on, as `make serve` runs it) and, with
`--unpatched-dir`, an unpatched KoboldCPP v1.76 on the same model, then measures decode
tokens/s, alternating the configurations so that both see the same machine load:

- attention / no attention: tokens/s of a generation streamed through `halo-client`'s
  `KoboldClient` with `return_attention` (every frame decoded and applied to an
  `AttentionTracker`, as the chat does) / the same request without attention; at each context
  length (1,024 and 4,096 by default). Aim: >= 0.90.
- patched / unpatched: tokens/s of KoboldCPP's own `/api/v1/generate` on the patched server
  (attention export on, no attention asked) / on the unpatched server (`/api/extra/perf`'s
  last_eval). Aim: >= 0.98.

Rates are decode rates (the prompt is reused between repetitions, as KoboldCPP fast-forwards
it): for the stream, (tokens - 1) / (time from the first token to `done`), as the client sees it.

    python bench/bench_kobold.py --kobold-dir build/koboldcpp-v1.76 --model M.gguf \
        [--unpatched-dir DIR] [--contexts 1024 4096] [--tokens 128] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.client import DoneEvent, KoboldClient, TokenEvent
from halo_client.conversation.tracker import AttentionTracker
from halo_client.testing.ports import free_port
from halo_client.testing.processes import stop_process

FILLER = ("The lighthouse keeper counted the ships that passed in the night and wrote each name in a blue "
          "notebook, with the hour, the weather and the colour of the sails. ")


@contextmanager
def serving(cmd: list[str], cwd: Path | None, log: Path, probe: str, what: str) -> Any:
    """Runs a server process until the block ends; yields its URL once `probe` answers."""
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(url + probe, timeout=2) as r:
                    r.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start; see {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        stop_process(proc, 10)


def kobold_server(directory: Path, model: Path, ctx: int, threads: int, extra: list[str], log: Path) -> Any:
    cmd = [sys.executable, "koboldcpp.py", "--model", str(model), "--host", "127.0.0.1", "--port", "{port}",
           "--contextsize", str(ctx), "--threads", str(threads), "--blasthreads", str(threads), "--usecpu",
           "--skiplauncher", "--quiet", *extra]
    return serving(cmd, directory, log, "/api/v1/model", f"the {directory} server")


def engine_server(model: Path, ctx: int, threads: int, threads_batch: int, log: Path,
                  llama_lib: Path | None = None, extra: tuple[str, ...] = ()) -> Any:
    """`halo-client serve --engine llama.cpp` (the Halo Weave libllama), attention export on."""
    cmd = [sys.executable, "-m", "halo_client.cli", "serve", "--engine", "llama.cpp", "--model", str(model),
           "--port", "{port}", "--ctx-size", str(ctx), "--threads", str(threads), "--threads-batch",
           str(threads_batch), *(["--llama-lib", str(llama_lib)] if llama_lib else []), *extra]
    return serving(cmd, None, log, "/api/v1/model/info", "the llama.cpp engine")


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def kobold_generate_rate(url: str, prompt: str, tokens: int) -> float:
    """Decode tokens/s of KoboldCPP's own /api/v1/generate, from /api/extra/perf."""
    http_json(url + "/api/v1/generate", {"prompt": prompt, "max_length": tokens, "temperature": 0,
                                         "ban_eos_token": True, "rep_pen": 1.0})
    perf = http_json(url + "/api/extra/perf")
    return 1000.0 / float(perf["last_eval"])


async def stream_measure(url: str, ids: list[int], tokens: int, banned: list[int], attention: bool,
                         layout: str = "full") -> dict[str, float]:
    """One greedy generation streamed as the chat reads it (each frame applied to an
    AttentionTracker): decode tokens/s, frame bytes per token, the client's CPU ms per token."""
    tracker = AttentionTracker()
    brightness = np.zeros(len(ids) + tokens + 1, np.float32)
    positions = np.arange(len(ids) + tokens + 1, dtype=np.int64)
    first = last = 0.0
    count = 0
    frame_bytes = 0
    cpu0 = time.process_time()
    params: dict[str, Any] = {"return_attention": attention}
    if attention and layout != "full":  # (a full-frame request leaves the field out, as old clients do)
        params["attention_layout"] = layout
    # a long prompt's first token can take long on a CPU (the 32x32 model's 16k prompt: most of an hour)
    async with KoboldClient(url, timeout=4 * 3600) as client, client.generate_stream(
            ids, max_length=tokens, temperature=0, rep_pen=1.0, banned_token_ids=banned, **params) as stream:
        async for event in stream:
            now = time.perf_counter()
            if isinstance(event, DoneEvent):
                last = now
                if event.token_count != tokens:
                    raise RuntimeError(f"generation stopped after {event.token_count} tokens ({event.finish_reason})")
                break
            assert isinstance(event, TokenEvent)
            if count == 0:
                first = now
            count += 1
            if attention:
                assert event.attention is not None
                frame = event.attention
                frame_bytes += 32 + frame.values.nbytes
                tracker.update(brightness, positions[: frame.values.shape[2]], frame.values, frame.layout)
    cpu = time.process_time() - cpu0
    return {"tps": (count - 1) / (last - first), "frame_bytes": frame_bytes / count,
            "client_cpu_ms": 1000 * cpu / count}


async def stream_rate(url: str, ids: list[int], tokens: int, banned: list[int], attention: bool) -> float:
    return (await stream_measure(url, ids, tokens, banned, attention))["tps"]


@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kobold-dir", type=Path, default=Path("build/koboldcpp-v1.76"))
    parser.add_argument("--unpatched-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    if not str(args.model) or not args.model.is_file():
        parser.error(f"--model {args.model}: no such GGUF file (make kobold-bench MODEL=PATH.gguf)")
    for d in (args.kobold_dir, args.unpatched_dir):
        if d is not None and not (d / "koboldcpp_default.so").is_file():
            parser.error(f"{d} has no koboldcpp_default.so: build it (make patch-and-build BACKEND=cpu)")
    model = args.model.resolve()
    server_ctx = max(args.contexts) + args.tokens + 64
    logs = Path(os.environ.get("TMPDIR", "/tmp"))

    with ExitStack() as stack:
        patched = stack.enter_context(kobold_server(args.kobold_dir.resolve(), model, server_ctx, args.threads,
                                                    ["--attentionexport"], logs / "bench_kobold_patched.log"))
        unpatched = None
        if args.unpatched_dir is not None:
            unpatched = stack.enter_context(kobold_server(args.unpatched_dir.resolve(), model, server_ctx,
                                                          args.threads, [], logs / "bench_kobold_unpatched.log"))
        info = http_json(patched + "/api/v1/model/info")
        banned = [t for t in (info["eos_token_id"], info["eot_token_id"]) if t is not None]
        filler = FILLER * (max(args.contexts) // 20 + 10)
        plain_ids = http_json(patched + "/api/v1/tokenize", {"text": filler, "add_special_tokens": False})["token_ids"]
        bos = [info["bos_token_id"]] if info["bos_token_id"] is not None else []
        rows: list[dict[str, Any]] = []
        for ctx in args.contexts:
            # the same tokens on both paths (KoboldCPP's text API adds BOS), so that each request
            # reuses the previous one's prompt instead of processing it again
            ids = bos + plain_ids[: ctx - len(bos)]
            prompt = http_json(patched + "/api/v1/detokenize", {"token_ids": ids[len(bos):]})["text"]
            plain, attn, kob_p, kob_u = Series(), Series(), Series(), Series()
            # warm-up: prompt processing, first-use caches (pieces), page faults
            asyncio.run(stream_rate(patched, ids, 4, banned, True))
            kobold_generate_rate(patched, prompt, 4)
            if unpatched:
                kobold_generate_rate(unpatched, prompt, 4)
            for rep in range(args.repeats):
                # each pair in alternating order, so that neither side always runs first
                for attention in ((False, True) if rep % 2 == 0 else (True, False)):
                    series = attn if attention else plain
                    series.values.append(asyncio.run(stream_rate(patched, ids, args.tokens, banned, attention)))
                for url, series in ((patched, kob_p), (unpatched, kob_u))[:: 1 if rep % 2 == 0 else -1]:
                    if url:
                        series.values.append(kobold_generate_rate(url, prompt, args.tokens))
            row: dict[str, Any] = {
                "context": ctx, "stream_no_attention_tps": plain.median, "stream_attention_tps": attn.median,
                "attention_ratio": attn.median / plain.median, "patched_generate_tps": kob_p.median,
                "frame_mb": 4 * info["num_layers"] * info["num_attention_heads"] * ctx / 1e6,
                "samples": {"stream_no_attention": plain.values, "stream_attention": attn.values,
                            "patched_generate": kob_p.values, "unpatched_generate": kob_u.values},
            }
            if unpatched:
                row["unpatched_generate_tps"] = kob_u.median
                row["patched_ratio"] = kob_p.median / kob_u.median
            rows.append(row)

    print(f"model {model.name}: {info['num_layers']} layers x {info['num_attention_heads']} heads; "
          f"{args.tokens} tokens x {args.repeats} repeats (medians), {args.threads} threads, CPU "
          f"{platform.processor() or platform.machine()}, {datetime.now(timezone.utc):%Y-%m-%d}")
    print(f"{'context':>8} {'frame MB':>9} {'no attn t/s':>12} {'attn t/s':>9} {'ratio':>6}   "
          f"{'patched t/s':>11} {'unpatched t/s':>13} {'ratio':>6}")
    for r in rows:
        unp = f"{r['unpatched_generate_tps']:13.1f} {r['patched_ratio']:6.3f}" if "patched_ratio" in r else \
            f"{'-':>13} {'-':>6}"
        print(f"{r['context']:8d} {r['frame_mb']:9.2f} {r['stream_no_attention_tps']:12.1f} "
              f"{r['stream_attention_tps']:9.1f} {r['attention_ratio']:6.3f}   {r['patched_generate_tps']:11.1f} {unp}")
    if args.json:
        args.json.write_text(json.dumps({"model": model.name, "tokens": args.tokens, "repeats": args.repeats,
                                         "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
