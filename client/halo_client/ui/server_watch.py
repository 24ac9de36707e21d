"""Watching the model server: its status for the pages, and the chat set up when it comes.

While the workbench is idle it asks the server's `model/info` every `POLL_S`; while the server
is away it retries with backoff (`BACKOFF_S`), saying on the pages when the next try is. When the
server answers (again, or with another model) the workbench's `on_info` sets the chat up. A
reply streaming is never interrupted by a poll; a failed request elsewhere `wake`s the watch
to look at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from halo_client.client import KoboldClient
from halo_client.errors import HaloError
from halo_client.messages import ModelInfo
from halo_client.ui.page_messages import kind_of, message

POLL_S: Final = 2.0
BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0)


class ServerWatch:
    def __init__(self, client: KoboldClient, *, on_info: Callable[[ModelInfo], Awaitable[None]],
                 busy: Callable[[], bool], broadcast: Callable[[str], None],
                 model: Callable[[], dict[str, Any] | None]) -> None:
        self.client = client
        self._on_info = on_info
        self._busy = busy
        self._broadcast = broadcast
        self._model = model
        self.connection: dict[str, Any] = {"status": "connecting", "message": f"connecting to {client.url}",
                                           "url": client.url, "retry_in": None}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="halo-ui-monitor")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def wake(self) -> None:
        """Look at the server now (a request just failed, or a reply ended)."""
        self._wake.set()

    @property
    def connected(self) -> bool:
        return bool(self.connection["status"] == "connected")

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            if not self._busy():
                try:
                    info = await self.client.model_info(refresh=True)
                    await self._on_info(info)
                    self.set("connected", f"connected to {self.client.url}")
                    failures = 0
                except HaloError as exc:
                    delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                    failures += 1
                    self.set(kind_of(exc), str(exc), delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    def set(self, status: str, text: str, retry_in: float | None = None) -> None:
        """The connection's status, sent to the pages when it changed (or a retry is due)."""
        changed = (status, text) != (self.connection["status"], self.connection["message"])
        self.connection = {"status": status, "message": text, "url": self.client.url, "retry_in": retry_in}
        if changed or retry_in is not None:
            self._broadcast(message("connection", **self.connection, model=self._model()))
