from __future__ import annotations

from pathlib import Path

import pytest

from halo_client.reference import ReferenceBackend
from halo_client.reference.tiny_model import write_tiny_llama


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama with ChatML: the benchmark's real code paths in milliseconds."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_ctx=4096)


@pytest.fixture
def tiny(tiny_path: Path) -> ReferenceBackend:
    return ReferenceBackend(tiny_path, n_ctx=4096)
