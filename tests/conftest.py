"""Shared fixtures: a real mock server on a real loopback socket for each test that asks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from halo_client.client import KoboldClient
from halo_client.testing import MockKoboldServer


@pytest.fixture(autouse=True)
def _no_user_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's own settings file (halo_client/config.py), nor do the
    processes tests start: each sees the defaults unless it writes a file of its own."""
    monkeypatch.setenv("HALO_CONFIG", str(tmp_path_factory.getbasetemp() / "no-settings.json"))


@pytest.fixture
async def mock_server() -> AsyncIterator[MockKoboldServer]:
    async with MockKoboldServer() as server:
        yield server


@pytest.fixture
async def client(mock_server: MockKoboldServer) -> AsyncIterator[KoboldClient]:
    async with KoboldClient(mock_server.url, timeout=10) as c:
        yield c
