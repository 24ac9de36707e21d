"""Test doubles: `MockKoboldServer` serves the contract from a toy model, with fault injection."""

from __future__ import annotations

from halo_client.serving.faults import FaultPlan
from halo_client.serving.server import ContractServer
from halo_client.testing.mock_backend import MockBackend, check_chatml

__all__ = ["FaultPlan", "MockBackend", "MockKoboldServer", "check_chatml"]


class MockKoboldServer(ContractServer):
    """REST + WebSocket on one 127.0.0.1 port, like KoboldCPP, backed by `MockBackend`.

    `port=0` picks a free port (read `.port` / `.url` after start). Change `.faults` between
    requests to inject faults.
    """

    faults: FaultPlan  # always a plan here, which tests change between requests

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str | None = None,
        allowed_origins: tuple[str, ...] = (),
        allowed_hosts: tuple[str, ...] = (),
        faults: FaultPlan | None = None,
        backend: MockBackend | None = None,
    ) -> None:
        self.mock = backend or MockBackend()
        super().__init__(self.mock, host=host, port=port, password=password,
                         allowed_origins=allowed_origins, allowed_hosts=allowed_hosts,
                         faults=faults or FaultPlan())
