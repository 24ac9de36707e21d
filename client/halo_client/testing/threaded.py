"""Run a contract server on its own event loop in a background thread.

Tests then talk to it exactly as to an external server (a URL), which is what lets one
conformance suite judge the mock, the reference server and a patched KoboldCPP alike.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from halo_client.serving.server import ContractServer


class ServerThread:
    def __init__(self, factory: Callable[[], ContractServer]) -> None:
        self._factory = factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="halo-server")
        self.server: ContractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> ServerThread:
        self._thread.start()

        async def start() -> ContractServer:
            server = self._factory()
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=120)
        return self

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(timeout=30)
            self.server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
