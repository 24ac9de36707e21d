"""The server's one generation slot: generations run one at a time (the model has one KV cache)."""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

#: how long a new generation waits for one whose client has gone to stop (it does within a token)
ABORT_GRACE_S: Final = 5.0


class Holder(Protocol):
    """What the slot needs to know of the generation holding it."""

    @property
    def stopping(self) -> bool:
        """The holder's client is gone or asked to abort: it ends within a token."""
        ...


class GenerationSlot:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._holder: Holder | None = None

    async def acquire(self, holder: Holder) -> bool:
        """Take the slot for `holder`; False means BUSY. A generation that is stopping (its
        client gone or aborting) is waited for, briefly, rather than answered BUSY: the
        client that replaced it (a re-request after pruning) should not have to retry."""
        if self._lock.locked() and not (self._holder is None or self._holder.stopping):
            return False
        try:
            await asyncio.wait_for(self._lock.acquire(), ABORT_GRACE_S)
        except TimeoutError:
            return False
        self._holder = holder
        return True

    def release(self) -> None:
        self._holder = None
        self._lock.release()
