"""Current llama.cpp as a Halo Weave engine: the patched libllama driven through ctypes.

    from halo_client.llama_cpp import LlamaCppBackend
    backend = LlamaCppBackend("gemma-3-270m-it-Q4_K_M.gguf", n_ctx=4096, n_threads=4)
    ContractServer(backend, ...)          # what `halo-client serve --engine llama.cpp` runs

The library comes from `make patch-and-build HOST=llama.cpp` (or `library=`, or $HALO_LLAMA_LIB).
"""

from __future__ import annotations

from halo_client.llama_cpp.backend import ExportMode, LlamaCppBackend, LlamaCppError
from halo_client.llama_cpp.library import LIB_ENV, LlamaLibraryError, default_library_paths, find_library

__all__ = ["LIB_ENV", "ExportMode", "LlamaCppBackend", "LlamaCppError", "LlamaLibraryError", "default_library_paths",
           "find_library"]
