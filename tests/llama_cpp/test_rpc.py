"""Past one machine: a model's layers on two ggml rpc-servers (loopback stands in for two hosts)
give the single-process frames, in every layout, the reduced ones computed where the layers are.

Needs a build with RPC=1 (make patch-and-build HOST=llama.cpp BACKEND=cpu RPC=1): its libllama and
ggml-rpc-server, found as build-cpu-rpc next to the default library or through HALO_LLAMA_RPC_LIB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from halo_client.llama_cpp import LlamaCppBackend, default_library_paths
from halo_client.messages import AttentionLayout
from halo_client.reference.tiny_model import write_tiny_llama
from halo_client.testing.ports import free_port, wait_for_port
from halo_client.testing.processes import stop_process

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def rpc_lib() -> Path:
    given = os.environ.get("HALO_LLAMA_RPC_LIB")
    candidates = [Path(given)] if given else [p for p in default_library_paths() if "-rpc/" in str(p)]
    for lib in candidates:
        if lib.is_file() and (lib.parent / "ggml-rpc-server").is_file():
            return lib
    pytest.skip("needs a Halo Weave libllama built with RPC (make patch-and-build HOST=llama.cpp BACKEND=cpu RPC=1) "
                "and its ggml-rpc-server next to it, or HALO_LLAMA_RPC_LIB=PATH; kobold_patch/README.md reports the "
                "run (bench/bench_rpc.py on SmolLM2, conformance over two rpc-servers)")


_CHILD_ENV = "HALO_RPC_TEST_CHILD"


@pytest.fixture(scope="module")
def in_own_process(rpc_lib: Path) -> bool:
    """This module's tests run in a pytest process of their own (the fixture asserts they passed
    there): one process serves one libllama build (the same soname), and the other tests load the
    build without RPC."""
    if os.environ.get(_CHILD_ENV) == "1":
        return False
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env={**os.environ, "HALO_LLAMA_RPC_LIB": str(rpc_lib), _CHILD_ENV: "1"},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "3 passed" in done.stdout, f"in a process of its own:\n{done.stdout[-4000:]}"
    return True


@pytest.fixture(scope="module")
def rpc_servers(rpc_lib: Path, in_own_process: bool) -> Iterator[str]:
    if in_own_process:
        yield ""
        return
    procs, endpoints = [], []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(subprocess.Popen([str(rpc_lib.parent / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port),
                                           "-t", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(port, timeout=60)
            endpoints.append(f"127.0.0.1:{port}")
        yield ",".join(endpoints)
    finally:
        for proc in procs:
            stop_process(proc, 10)


def frames(backend: LlamaCppBackend, ids: list[int], layout: AttentionLayout, steps: int = 4) -> list[np.ndarray]:
    backend.set_attention_layout(layout)
    result = backend.prefill(ids, True)
    out = []
    for i in range(steps):
        assert result.attention is not None
        out.append(result.attention.copy())
        result = backend.decode(3 + i, True)
    return out


@pytest.mark.parametrize("layout", ["full", "layer_stats", "model_stats"])
def test_layers_over_two_rpc_servers_give_the_single_process_frames(
        rpc_lib: Path, rpc_servers: str, tmp_path: Path, layout: AttentionLayout, in_own_process: bool) -> None:
    if in_own_process:
        return  # passed in the process of its own (the fixture asserts it)
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=4, n_ctx=1024)
    ids = [3 + (i * 7) % 250 for i in range(200)]
    with LlamaCppBackend(model, library=rpc_lib, n_ctx=1024, n_threads=1, n_gpu_layers=0) as one:
        want = frames(one, ids, layout)
    with LlamaCppBackend(model, library=rpc_lib, n_ctx=1024, n_threads=1, n_gpu_layers=-1,
                         rpc_servers=rpc_servers) as spread:
        got = frames(spread, ids, layout)
        read, from_devices = spread.capture_bytes()
    assert from_devices == read > 0  # every layer's capture was read from an rpc-server
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)
