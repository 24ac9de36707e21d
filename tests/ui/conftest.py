"""A workbench against a real mock server on a real loopback socket, with a page model watching."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from halo_client.client import KoboldClient
from halo_client.config import Config, SamplerSettings
from halo_client.testing import MockBackend, MockKoboldServer
from halo_client.ui.sessions import SessionStore
from halo_client.ui.workbench import Workbench
from tests.ui.page_model import PageModel


@dataclass
class Bench:
    workbench: Workbench
    server: MockKoboldServer
    page: PageModel
    tmp: Path

    async def command(self, **command: Any) -> PageModel:
        """Send a command as a page would; returns what that page was answered."""
        answers = PageModel()
        await self.workbench.handle(json.dumps(command), answers)
        return answers

    async def say(self, text: str) -> None:
        replies = len(self.page.of("reply_done"))
        errors = len(self.page.of("error"))
        await self.command(type="send", text=text)
        await self.workbench.idle()
        await self.page.wait_for(lambda: len(self.page.of("reply_done")) > replies
                                 or len(self.page.of("error")) > errors)


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    backend = MockBackend(strict_template=True)
    async with MockKoboldServer(backend=backend) as server:
        client = KoboldClient(server.url, timeout=10)
        workbench = Workbench(client, sessions=SessionStore(tmp_path / "sessions"),
                              settings=Config(sampler=SamplerSettings(temperature=0.0, max_length=60)),
                              settings_path=tmp_path / "settings.json")
        page = PageModel()
        workbench.subscribe(page)
        await workbench.start()
        await workbench.wait_connected()
        await workbench.idle()  # memory's embedder loaded: a test's own stand-in is not raced by it
        try:
            yield Bench(workbench, server, page, tmp_path)
        finally:
            await workbench.close()
            await client.aclose()
