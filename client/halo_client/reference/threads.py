"""How many BLAS threads a forward pass of the numpy llama gets: one for a generated token; for a
prompt, the library's own count while the machine has a core to spare, else one.

numpy's OpenBLAS runs every matrix product on one thread per core, and its threads spin while
they wait for work. A generated token is one row through products of a few hundred by a few
thousand (SmolLM2-135M: 576 x 1728): too little work to share, so the extra threads only cost.
On a machine whose cores are busy with other programs it is worse: a spinning thread loses its
time slice, and every product waits for it. A prompt is a matrix-matrix product of hundreds of
rows, which more threads speed up, but only on cores that are free. Measured on the project's
2-core machine at load average 16-19 (bench/bench_reference.py, `make bench`): the library's
two threads gave 0.28 tokens/s of generation where one thread gave 1.8-2.2, and 8.5 prompt
tokens/s where one thread gave 33.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from threadpoolctl import ThreadpoolController

#: from this many rows in one pass (a prompt, a teacher-forced reply) on, a pass is a prompt;
#: below it (a generated token, a short re-request), it runs on one thread
PROMPT_ROWS: Final = 64


def _load_average() -> float:
    return os.getloadavg()[0]


class BlasThreads:
    """The BLAS thread count of each forward pass, set around the pass and restored after it.

    `prompt_threads`: most threads for a pass of `prompt_rows` rows or more; None: the library's
    own count as the process started (one per core, or what OPENBLAS_NUM_THREADS or
    OMP_NUM_THREADS asked for). A prompt gets them while the machine's 1-minute load average is
    below its core count less a half (a core to spare), else one thread."""

    def __init__(self, *, token_threads: int = 1, prompt_threads: int | None = None,
                 prompt_rows: int = PROMPT_ROWS, load_average: Callable[[], float] = _load_average,
                 cores: int | None = None) -> None:
        self._controller = ThreadpoolController()
        blas = self._controller.select(user_api="blas")
        library = max((int(lib.num_threads) for lib in blas.lib_controllers), default=1)
        self.token_threads = max(1, token_threads)
        self.prompt_threads = max(1, prompt_threads if prompt_threads is not None else library)
        self.prompt_rows = prompt_rows
        self._load_average = load_average
        self._cores = cores if cores is not None else (os.cpu_count() or 1)

    def threads_for(self, rows: int) -> int:
        if rows < self.prompt_rows:
            return self.token_threads
        if self.prompt_threads == 1:
            return 1
        spare = self._load_average() < self._cores - 0.5
        return self.prompt_threads if spare else 1

    @contextmanager
    def for_rows(self, rows: int) -> Iterator[int]:
        """BLAS runs on `threads_for(rows)` threads inside; yields that count."""
        threads = self.threads_for(rows)
        with self._controller.limit(limits=threads, user_api="blas"):
            yield threads
