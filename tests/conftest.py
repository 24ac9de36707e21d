"""Shared fixtures: a real mock server on a real loopback socket for each test that asks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest

from halo_client.client import KoboldClient
from halo_client.testing import MockKoboldServer


@pytest.fixture(autouse=True)
def _no_user_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's own settings file (halo_client/config.py), nor do the
    processes tests start: each sees the defaults unless it writes a file of its own."""
    monkeypatch.setenv("HALO_CONFIG", str(tmp_path_factory.getbasetemp() / "no-settings.json"))


#: CI sets it after building the llama.cpp engine: a test that would skip for want of that build fails
REQUIRE_LLAMA_LIB_ENV = "HALO_REQUIRE_LLAMA_LIB"
#: how every "no such build" reason begins (halo_client.llama_cpp.find_library's messages)
_NO_LLAMA_LIB = "No Halo Weave "


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_LLAMA_LIB_ENV) == "1" and _NO_LLAMA_LIB in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_LLAMA_LIB_ENV}=1, yet skipped for want of the llama.cpp engine: {report.longrepr}"


@pytest.fixture(autouse=True)
def _stand_in_embedder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory's sentence embedder is a real model (all-mpnet-base-v2 in int8): tests marked `model` get it,
    the others a stand-in (`make test-fast` loads no model), unless they pass one of their own."""
    if request.node.get_closest_marker("model") is None:
        from halo_client.conversation.memory import recall
        from halo_client.testing.embedder import WordHashEmbedder

        monkeypatch.setattr(recall, "default_embedder", lambda progress=None, name=None: WordHashEmbedder())


@pytest.fixture
async def mock_server() -> AsyncIterator[MockKoboldServer]:
    async with MockKoboldServer() as server:
        yield server


@pytest.fixture
async def client(mock_server: MockKoboldServer) -> AsyncIterator[KoboldClient]:
    async with KoboldClient(mock_server.url, timeout=10) as c:
        yield c
