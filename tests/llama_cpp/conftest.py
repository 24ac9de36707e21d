"""The llama.cpp engine's tests need the Halo Weave build of libllama; without it they are
skipped with the reason (CI builds it first: .ci/run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from halo_client.llama_cpp import LlamaLibraryError, find_library


@pytest.fixture(scope="session")
def llama_lib() -> Path:
    try:
        return find_library()
    except LlamaLibraryError as exc:
        pytest.skip(f"{exc.message} Build it with make patch-and-build HOST=llama.cpp BACKEND=cpu (CI does, then "
                    "runs these), or set HALO_LLAMA_LIB=PATH")
