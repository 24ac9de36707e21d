"""The engines a fidelity check runs against, each started on a GGUF and reached by its URL.

- `reference`: halo-client's numpy llama (llama-architecture GGUFs only), in this process; always there.
- `koboldcpp-v1.76`: the patched KoboldCPP v1.76 (`koboldcpp.py --attentionexport f32kv`, CPU);
  `HALO_KOBOLDCPP_DIR` = a tree built by `make patch-and-build BACKEND=cpu KOBOLDCPP_DIR=DIR`.
- `llama.cpp`: the current-llama.cpp engine (`halo-client serve --engine llama.cpp`, F32 KV cache);
  its patched libllama is `HALO_LLAMA_LIB`, else the one `make patch-and-build HOST=llama.cpp
  BACKEND=cpu` built in this checkout (as `halo-client serve` finds it).
  `llama.cpp+context-shift` is the same with `--context-shift` (it moves its cache after a pruned
  re-request instead of recomputing).

Each engine also names the llama.cpp generation whose converter makes its GGUFs (`tiny_models`)
and whose attention semantics it has (`semantics`: "v1.76" or "current"; the numpy reference
follows llama.cpp's llama).
"""

from __future__ import annotations

import abc
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from halo_client.testing.ports import free_port
from halo_client.testing.processes import stop_process

Semantics = Literal["v1.76", "current"]

KOBOLDCPP_ENV = "HALO_KOBOLDCPP_DIR"
LLAMA_LIB_ENV = "HALO_LLAMA_LIB"
#: the architectures KoboldCPP v1.76's llama.cpp can load (of those the fidelity suite covers)
V176_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "gemma2", "phi3"})


class EngineUnavailable(RuntimeError):
    """The engine is not built or not configured here; the message says how to provide it."""


class EngineFailed(RuntimeError):
    """The engine's server did not start or died; the message ends with its log."""


class Engine(abc.ABC):
    name: str
    semantics: Semantics
    #: how the engine serves a request that drops a middle chunk of the previous one: "recompute"
    #: (frames equal a fresh forward pass), "shift" (it reuses the shifted cells), None: not known
    after_shift: Literal["recompute", "shift"] | None
    #: a line the engine logs when the fidelity requests make it shift its cache (evidence that the
    #: `after_shift` scenario follows a real shift), None: it logs none
    shift_log_line: str | None = None

    @abc.abstractmethod
    def unavailable(self) -> str | None:
        """Why this engine cannot run here (naming what to set and how to build it), or None."""

    @abc.abstractmethod
    def knows(self, gguf_arch: str) -> bool:
        """Whether the engine loads GGUFs of this general.architecture."""

    @abc.abstractmethod
    def converter_tree(self, cache: Path) -> Path:
        """The llama.cpp source tree whose convert_hf_to_gguf.py makes this engine's GGUFs."""

    @abc.abstractmethod
    def serve(self, gguf: Path, n_ctx: int) -> contextlib.AbstractContextManager[Server]:
        """The engine serving `gguf` with `n_ctx` context, until the context manager exits."""


@dataclass
class Server:
    url: str
    #: the server's log so far (stdout and stderr), for evidence such as KoboldCPP's context shift
    log: Path | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise EngineFailed(f"the server exited with {proc.returncode} before answering; its log:\n"
                               + log.read_text(errors="replace")[-4000:])
        try:
            with urllib.request.urlopen(url + "/api/v1/model/info", timeout=2) as answer:
                answer.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise EngineFailed(f"the server did not answer within {timeout:g} s; its log:\n"
                                   + log.read_text(errors="replace")[-4000:]) from None
            time.sleep(0.3)


@contextlib.contextmanager
def _process(cmd: list[str], cwd: Path | None, env: dict[str, str] | None, port: int) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="halo-engine-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, log)
            yield Server(url, log)
        finally:
            stop_process(proc)


class ReferenceEngine(Engine):
    name = "reference"
    semantics: Semantics = "current"
    after_shift = "recompute"

    def unavailable(self) -> str | None:
        return None

    def knows(self, gguf_arch: str) -> bool:
        return gguf_arch == "llama"

    def converter_tree(self, cache: Path) -> Path:
        from halo_client.testing.llama_cpp_source import llama_cpp_tree

        return llama_cpp_tree(cache)

    @contextlib.contextmanager
    def serve(self, gguf: Path, n_ctx: int) -> Iterator[Server]:
        from halo_client.reference import ReferenceBackend
        from halo_client.serving.server import ContractServer
        from halo_client.testing.threaded import ServerThread

        with ServerThread(lambda: ContractServer(ReferenceBackend(gguf, n_ctx=n_ctx), port=0)) as running:
            yield Server(running.url)


class KoboldEngine(Engine):
    """The patched KoboldCPP v1.76, CPU, with an F32 KV cache (`--attentionexport f32kv`) unless told
    `kv_cache="f16"` (KoboldCPP's default, which rounds keys and values: not what an F32 model computes)."""

    def __init__(self, kv_cache: Literal["f32", "f16"] = "f32") -> None:
        self.kv_cache = kv_cache

    name = "koboldcpp-v1.76"
    semantics: Semantics = "v1.76"
    after_shift = "recompute"
    # PurgeMissingTokens, for the request without frames that drops tokens 20-59 (positions are 1-based)
    shift_log_line = "[Context Shifting: Erased 40 tokens at position 21]"

    @property
    def directory(self) -> Path | None:
        value = os.environ.get(KOBOLDCPP_ENV)
        return Path(value) if value else None

    def unavailable(self) -> str | None:
        how = (f"set {KOBOLDCPP_ENV}=DIR of a patched KoboldCPP v1.76 built with `make patch-and-build BACKEND=cpu "
               f"KOBOLDCPP_DIR=DIR` (KOBOLDCPP_SRC=a v1.76 tree when offline); CI does not build it: "
               f"kobold_patch/README.md's fidelity table reports the run")
        directory = self.directory
        if directory is None:
            return f"no patched KoboldCPP: {how}"
        if not (directory / "koboldcpp.py").is_file() or "halo_api_route" not in (
                directory / "koboldcpp.py").read_text(errors="replace"):
            return f"{directory} is not a patched KoboldCPP tree: {how}"
        if not (directory / "koboldcpp_default.so").is_file():
            return f"{directory} has no CPU build (koboldcpp_default.so): {how}"
        return None

    def knows(self, gguf_arch: str) -> bool:
        return gguf_arch in V176_ARCHITECTURES

    def converter_tree(self, cache: Path) -> Path:
        assert self.directory is not None
        return self.directory

    @contextlib.contextmanager
    def serve(self, gguf: Path, n_ctx: int) -> Iterator[Server]:
        assert self.directory is not None
        port = free_port()
        cmd = [sys.executable, "koboldcpp.py", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--contextsize", str(n_ctx), "--threads", "1", "--blasthreads", "1", "--usecpu", "--skiplauncher",
               "--attentionexport", *(["f32kv"] if self.kv_cache == "f32" else [])]
        with _process(cmd, self.directory, None, port) as server:
            yield server


class LlamaCppEngine(Engine):
    """The current-llama.cpp engine: `halo-client serve --engine llama.cpp --attention-export f32kv`
    over the patched libllama that `HALO_LLAMA_LIB` names. With `context_shift`, `--context-shift`:
    a re-request that drops a span of the cached tokens moves the rest of the cache instead of
    recomputing it (whether it can, with a sliding-window cache, is the engine's call: the checks
    accept either computation there and report which)."""

    semantics: Semantics = "current"

    def __init__(self, *, context_shift: bool = False) -> None:
        self.context_shift = context_shift
        self.name = "llama.cpp+context-shift" if context_shift else "llama.cpp"
        self.after_shift = None if context_shift else "recompute"

    def unavailable(self) -> str | None:
        from halo_client.llama_cpp import LlamaLibraryError, find_library

        try:
            find_library()
        except LlamaLibraryError as exc:
            return f"no current-llama.cpp engine: {exc}"
        return None

    @staticmethod
    def library() -> Path:
        """The patched libllama: $HALO_LLAMA_LIB, else where `make patch-and-build HOST=llama.cpp` put it."""
        from halo_client.llama_cpp import find_library

        return find_library()

    def knows(self, gguf_arch: str) -> bool:
        return True

    def converter_tree(self, cache: Path) -> Path:
        """The tree the library was built in (its own llama.cpp), else the sdist's converter."""
        from halo_client.llama_cpp import LlamaLibraryError
        from halo_client.testing.llama_cpp_source import llama_cpp_tree

        try:
            built_in = self.library().resolve().parent
        except LlamaLibraryError:  # no build: the sdist's converter (KoboldCPP's check uses it too)
            built_in = None
        return llama_cpp_tree(cache, built_in)

    @contextlib.contextmanager
    def serve(self, gguf: Path, n_ctx: int) -> Iterator[Server]:
        port = free_port()
        lib = str(self.library())
        cmd = [sys.executable, "-m", "halo_client.cli", "serve", "--engine", "llama.cpp", "--model", str(gguf),
               "--llama-lib", lib, "--host", "127.0.0.1", "--port", str(port), "--context", str(n_ctx),
               "--attention-export", "f32kv", "--threads", "1", "--threads-batch", "1",
               *(["--context-shift"] if self.context_shift else [])]
        with _process(cmd, None, {**os.environ, LLAMA_LIB_ENV: lib}, port) as server:
            yield server


ENGINES: dict[str, Engine] = {e.name: e for e in (
    ReferenceEngine(), KoboldEngine(), LlamaCppEngine(), LlamaCppEngine(context_shift=True))}
