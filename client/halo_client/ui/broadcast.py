"""The pages watching the workbench: each one a subscriber that queues what it is sent."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

#: a subscriber: takes JSON text or a binary levels update; must not block (it queues)
Emit = Callable[[str | bytes], None]


class Broadcast:
    def __init__(self) -> None:
        self._subscribers: list[Emit] = []

    def add(self, emit: Emit) -> None:
        self._subscribers.append(emit)

    def remove(self, emit: Emit) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(emit)

    def __call__(self, message: str | bytes) -> None:
        """Send `message` to every page."""
        for emit in list(self._subscribers):
            emit(message)
