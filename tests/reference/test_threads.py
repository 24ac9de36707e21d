"""The reference model chooses its BLAS threads per pass: one for a generated token (numpy's
default of one per core made decoding 4x slower on a busy machine: bench/bench_reference.py);
for a prompt the library's own count while a core is free, else one; the process's setting is
left as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from halo_client.reference import ReferenceBackend
from halo_client.reference.llama import LlamaModel
from halo_client.reference.threads import PROMPT_ROWS, BlasThreads


def blas_threads() -> int:
    return max(int(lib.num_threads) for lib in ThreadpoolController().select(user_api="blas").lib_controllers)


@pytest.fixture
def library_threads() -> Iterator[int]:
    """numpy's BLAS set to 3 threads, as a 3-core machine's default would be."""
    with threadpool_limits(limits=3, user_api="blas"):
        yield 3


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The BLAS thread count inside each forward pass (read where each layer starts)."""
    counts: list[int] = []
    norm = LlamaModel._rmsnorm

    def observed(x: Any, weight: Any, eps: float) -> Any:
        counts.append(blas_threads())
        return norm(x, weight, eps)

    monkeypatch.setattr(LlamaModel, "_rmsnorm", staticmethod(observed))
    return counts


def test_a_generated_token_runs_on_one_thread_and_a_prompt_on_the_librarys(
        tiny_path: Path, library_threads: int, seen: list[int]) -> None:
    backend = ReferenceBackend(tiny_path, n_ctx=512)
    backend.model.threads = BlasThreads(load_average=lambda: 0.0, cores=4)  # an idle 4-core machine
    result = backend.prefill(list(range(1, PROMPT_ROWS + 11)), True)
    assert set(seen) == {library_threads}
    seen.clear()
    backend.decode(int(np.argmax(result.logits)), True)
    assert set(seen) == {1}
    assert blas_threads() == library_threads  # restored after the pass


def test_a_short_re_request_is_a_token_not_a_prompt(tiny_path: Path, library_threads: int, seen: list[int]) -> None:
    backend = ReferenceBackend(tiny_path, n_ctx=512)
    backend.prefill(list(range(1, 8)), False)
    assert set(seen) == {1}


def test_a_prompt_on_a_busy_machine_runs_on_one_thread(library_threads: int) -> None:
    """Measured: on a busy machine one thread processes a prompt faster than the library's count."""
    def on(load: float) -> int:
        return BlasThreads(load_average=lambda: load, cores=4).threads_for(PROMPT_ROWS)

    assert (on(0.0), on(3.4), on(3.5), on(12.0)) == (library_threads, library_threads, 1, 1)
    assert BlasThreads(load_average=lambda: 0.0).threads_for(PROMPT_ROWS - 1) == 1


def test_the_counts_can_be_chosen(library_threads: int) -> None:
    chosen = BlasThreads(token_threads=2, prompt_threads=1, prompt_rows=10, load_average=lambda: 0.0)
    assert (chosen.threads_for(9), chosen.threads_for(10)) == (2, 1)
