"""Fidelity, architecture by architecture: each engine's frames against HF transformers.

    pytest tests/fidelity                          # the numpy reference (llama, mistral) always
    HALO_KOBOLDCPP_DIR=build/koboldcpp-v1.76 pytest tests/fidelity      # + the patched KoboldCPP
    HALO_LLAMA_LIB=.../libllama.so pytest tests/fidelity                # + the current-llama.cpp engine

The tiny models are made once per converter and kept in pytest's cache directory
(`.pytest_cache/d/halo-tiny-models`); `HALO_LLAMA_CPP_SRC=DIR` names a llama.cpp source tree whose
converter to use instead of the one in the `llama-cpp-python` sdist (downloaded with pip once).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # None with `-p no:cacheprovider`: made anew each run
    return Path(cache.mkdir("halo-tiny-models")) if cache is not None else tmp_path_factory.mktemp("tiny-models")
