"""Attention-frame throughput, client <- mock server over loopback, against a raw socket.

For each frame shape, in one run:
- baseline: a separate process writes the same number of bytes, frame-sized, on a plain TCP
  socket; this process reads each frame-sized block and views it with numpy.frombuffer;
- stream: a separate `halo-client mock-server` process generates tokens with attention; this
  process consumes them through `KoboldClient.generate_stream` (WebSocket, frame decoding and
  contract checks included);
- websockets: the same stream received with the `websockets` library's asyncio client instead
  of halo_client's own receive path (`websocket_client.py`), each message parsed and each frame
  decoded the same way: the case for the custom receive path, measured in the same run.
Reports MB/s and frames/s of each and the ratios to the baseline (the aim is >= 0.5).

    python bench/bench_transport.py [--frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

import numpy as np
import websockets

from halo_client.client import STREAM_PATH, KoboldClient, TokenEvent
from halo_client.frame import decode_frame
from halo_client.messages import GenerateRequest, TokenMessage
from halo_client.testing.ports import free_port, wait_for_port

SHAPES = [(30, 9, 2048), (28, 28, 4096)]

RAW_SENDER = r"""
import socket, sys
size, count = int(sys.argv[1]), int(sys.argv[2])
payload = bytes(size)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
for _ in range(count):
    conn.sendall(payload)
conn.close()
"""


def raw_baseline(size: int, count: int) -> float:
    """Seconds to receive `count` blocks of `size` bytes and view each as float32."""
    proc = subprocess.Popen([sys.executable, "-c", RAW_SENDER, str(size), str(count)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.perf_counter()
    for _ in range(count):
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = sock.recv_into(view[got:], size - got)
            if n == 0:
                raise ConnectionError("sender stopped early")
            got += n
        frame = np.frombuffer(buf, dtype="<f4")
        assert frame.size * 4 == size
    elapsed = time.perf_counter() - started
    sock.close()
    proc.wait()
    return elapsed


async def stream(url: str, ctx: int, count: int) -> tuple[float, int]:
    """Seconds and bytes to receive `count` frames whose ctx starts at `ctx`."""
    async with KoboldClient(url, timeout=120) as client:
        await client.model_info()
        input_ids = [3 + (i % 256) for i in range(ctx)]
        received = 0
        started = time.perf_counter()
        async with client.generate_stream(input_ids, max_length=count, return_attention=True,
                                          temperature=0, banned_token_ids=[2]) as events:
            async for event in events:
                if isinstance(event, TokenEvent) and event.attention is not None:
                    received += event.attention.values.nbytes + 32
        return time.perf_counter() - started, received


async def stream_websockets(url: str, ctx: int, count: int) -> tuple[float, int]:
    """`stream`, received with the websockets library: JSON messages validated, frames decoded."""
    request = GenerateRequest(input_ids=[3 + (i % 256) for i in range(ctx)], max_length=count,
                              return_attention=True, temperature=0, banned_token_ids=[2])
    received = 0
    started = time.perf_counter()
    async with websockets.connect("ws://" + url.split("://", 1)[1] + STREAM_PATH, max_size=None,
                                  compression=None) as ws:
        await ws.send(request.model_dump_json())
        async for message in ws:
            if isinstance(message, str):
                if '"token"' in message[:20]:
                    TokenMessage.model_validate_json(message)
                continue
            received += decode_frame(message).values.nbytes + 32
    return time.perf_counter() - started, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per shape and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds; the best of each side is reported, so load "
                             "from other processes on a small machine does not decide the ratio")
    args = parser.parse_args()
    count = args.frames
    print(f"{'shape':>16} {'raw MB/s':>10} {'halo MB/s':>10} {'halo/raw':>9} {'websockets MB/s':>16} "
          f"{'websockets/raw':>15}")
    for layers, heads, ctx in SHAPES:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "halo_client.cli", "mock-server", "--port", str(port),
             "--layers", str(layers), "--heads", str(heads), "--context", str(ctx + count + 1)],
            stderr=subprocess.DEVNULL)
        ws_best = raw_best = lib_best = float("inf")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_port(port)
            asyncio.run(stream(url, ctx, 3))  # warm up
            for _ in range(args.rounds):
                ws_s, ws_bytes = asyncio.run(stream(url, ctx, count))
                lib_s, lib_bytes = asyncio.run(stream_websockets(url, ctx, count))
                assert lib_bytes == ws_bytes, (lib_bytes, ws_bytes)
                # the raw run moves exactly as many bytes, in blocks of the mean frame size
                raw_s = raw_baseline(ws_bytes // count, count)
                ws_best, raw_best, lib_best = min(ws_best, ws_s), min(raw_best, raw_s), min(lib_best, lib_s)
        finally:
            server.terminate()
            server.wait()
        raw_mb, ws_mb, lib_mb = (ws_bytes / best / 1e6 for best in (raw_best, ws_best, lib_best))
        print(f"{[layers, heads, ctx]!s:>16} {raw_mb:10.0f} {ws_mb:10.0f} {ws_mb / raw_mb:9.2f} {lib_mb:16.0f} "
              f"{lib_mb / raw_mb:15.2f}")


if __name__ == "__main__":
    main()
