"""The reference backend: llama-family GGUF models in numpy, with exact attention.

    from halo_client.reference import ReferenceBackend, load_backend
    backend = ReferenceBackend.load_default(n_ctx=4096)   # SmolLM2-135M-Instruct, fetched once, then cached
    backend = ReferenceBackend.from_path("model.gguf")    # any llama-family GGUF
    backend = load_backend()                              # the same, with progress on stderr (the CLI's way)

`halo_client.reference.tiny_model.write_tiny_llama` writes a tiny random llama GGUF for tests.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from halo_client.errors import HaloError
from halo_client.reference.backend import ReferenceBackend
from halo_client.reference.gguf_model import ModelFileError
from halo_client.reference.llama import KVCacheType
from halo_client.reference.model_store import ModelFetchError, default_model

__all__ = ["KVCacheType", "MissingExtra", "ModelFetchError", "ModelFileError", "ReferenceBackend", "default_model",
           "load_backend", "require_extra"]


class MissingExtra(HaloError):
    """The reference backend's packages (gguf, tokenizers) are not installed."""


def require_extra() -> None:
    """Raise `MissingExtra` unless the reference backend can run: checked before anything is
    downloaded or loaded, so a missing package costs one line, not a 93 MB download first."""
    missing = []
    for module in ("gguf", "tokenizers"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtra(f"the reference model needs {' and '.join(missing)}, which are not installed.",
                           "Install the extra: pip install 'halo-weave[reference]'.")


class _Progress:
    """Loading progress on stderr: one updating line on a terminal, a few plain lines otherwise
    (a log file gets no carriage returns or escape codes)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, line: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r{line}\033[K")
            sys.stderr.flush()
        elif not self.last:
            print(line, file=sys.stderr)  # the first line says what is happening
        self.last = line

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        elif self.last:
            print(self.last, file=sys.stderr)  # and the last how it ended


def load_backend(path: str | Path | None = None, *, n_ctx: int = 4096, quiet: bool = False,
                 kv_cache: KVCacheType = "f32") -> ReferenceBackend:
    """The reference backend for `path`, or for the default model when `path` is None."""
    require_extra()
    model = Path(path) if path is not None else default_model()
    progress = _Progress()
    backend = ReferenceBackend(model, n_ctx=n_ctx, progress=None if quiet else progress, kv_cache=kv_cache)
    if not quiet:
        progress.end()
    return backend
