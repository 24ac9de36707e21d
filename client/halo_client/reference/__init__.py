"""The reference backend: llama-family GGUF models in numpy, with exact attention.

    from halo_client.reference import ReferenceBackend, load_backend
    backend = ReferenceBackend.load_default(n_ctx=4096)   # SmolLM2-135M-Instruct, fetched once, then cached
    backend = ReferenceBackend.from_path("model.gguf")    # any llama-family GGUF
    backend = load_backend()                              # the same, with progress on stderr (the CLI's way)

`halo_client.reference.tiny_model.write_tiny_llama` writes a tiny random llama GGUF for tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

from halo_client.reference.backend import ReferenceBackend
from halo_client.reference.gguf_model import ModelFileError
from halo_client.reference.llama import KVCacheType
from halo_client.reference.model_store import ModelFetchError, default_model

__all__ = ["KVCacheType", "ModelFetchError", "ModelFileError", "ReferenceBackend", "default_model", "load_backend"]


def _progress(line: str) -> None:
    sys.stderr.write(f"\r{line}\033[K")
    sys.stderr.flush()


def load_backend(path: str | Path | None = None, *, n_ctx: int = 4096, quiet: bool = False,
                 kv_cache: KVCacheType = "f32") -> ReferenceBackend:
    """The reference backend for `path`, or for the default model when `path` is None."""
    model = Path(path) if path is not None else default_model()
    backend = ReferenceBackend(model, n_ctx=n_ctx, progress=None if quiet else _progress, kv_cache=kv_cache)
    if not quiet:
        sys.stderr.write("\n")
    return backend
