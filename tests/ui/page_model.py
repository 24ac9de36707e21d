"""What a page does with the workbench's messages, in Python: the same bookkeeping as
static/transcript.js (tokens by position, flags, the active list, the epoch), so tests can check
without a browser that every levels update fits the page it arrives at."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from halo_client.ui.protocol import decode_levels


class PageModel:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.levels: list[bytes] = []
        self.text: dict[int, str] = {}
        self.deleted: dict[int, bool] = {}
        self.pinned: dict[int, bool] = {}
        self.brightness: dict[int, float] = {}
        self.buckets: dict[int, int] = {}
        self.epoch = -1
        self.mismatches: list[str] = []
        self.applied = 0

    # the subscriber the workbench calls
    def __call__(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.levels.append(message)
            self._apply_levels(message)
            return
        data = json.loads(message)
        self.messages.append(data)
        kind = data["type"]
        if kind == "snapshot":
            self.text.clear()
            self.deleted.clear()
            self.pinned.clear()
            self.epoch = data["epoch"]
            if "rows" in data:
                self._rows(data["rows"], new=True)
        elif kind == "rows":
            self.epoch = data["epoch"]
            self._rows(data["update"], new=False)
            self._rows(data["add"], new=True)
        elif kind == "token":
            self.text[data["position"]] = data["text"]
            self.deleted[data["position"]] = False
            self.pinned[data["position"]] = False

    def _rows(self, rows: dict[str, Any], *, new: bool) -> None:
        for i, p in enumerate(rows["position"]):
            if new:
                self.text.setdefault(p, rows["text"][i])
            self.deleted[p] = bool(rows["deleted"][i])
            self.pinned[p] = bool(rows["pinned"][i])

    def active(self) -> list[int]:
        return sorted(p for p, gone in self.deleted.items() if not gone)

    def _apply_levels(self, message: bytes) -> None:
        epoch, _newest, _sent, brightness, buckets = decode_levels(message)
        active = self.active()
        if epoch != self.epoch or brightness.size != len(active):
            self.mismatches.append(f"epoch {epoch}/{self.epoch}, count {brightness.size}/{len(active)}")
            return
        for p, b, k in zip(active, brightness.tolist(), buckets.tolist(), strict=True):
            self.brightness[p] = b
            self.buckets[p] = k
        self.applied += 1

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def last_levels(self) -> tuple[int, npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
        epoch, _newest, _sent, brightness, buckets = decode_levels(self.levels[-1])
        return epoch, brightness, buckets

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError("the page never saw what it waited for")
            await asyncio.sleep(0.01)
