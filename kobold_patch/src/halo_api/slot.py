"""KoboldCPP's one generation at a time: its own `modelbusy` lock, which its endpoints take too."""

from __future__ import annotations

import threading
from typing import Callable

from .websocket import WebSocket

#: how long a new stream waits for one whose client has gone to stop (it does within a token)
ABORT_GRACE_S = 5.0
#: KoboldCPP's own endpoints keep the lock 50 ms after their generation ended (a sleep)
ENDING_GRACE_S = 0.5


class GenerationSlot:
    """The model's one generation slot, shared with KoboldCPP's own endpoints.

    `acquire` answers False (BUSY) only while another generation is running: one that is ending
    anyway is waited for, briefly. The holder must `release` before its client hears that the
    generation ended (api_spec: BUSY means another generation is running, so a client that
    starts its next stream the moment `done` arrives must get the slot)."""

    def __init__(self, lock: threading.Lock, generation_finished: Callable[[], bool]) -> None:
        self._lock = lock
        self._generation_finished = generation_finished
        self.holder: WebSocket | None = None   # the stream generating now; None: free, or KoboldCPP's own

    def acquire(self, holder: WebSocket) -> bool:
        if not self._lock.acquire(blocking=False):
            active = self.holder
            if active is not None:
                # a generation whose client is gone ends within a token: wait for it rather than
                # answer BUSY to the client that replaced it (a re-request after pruning)
                ending = active.gone.is_set() or active.abort_requested
                grace = ABORT_GRACE_S
            else:
                # KoboldCPP's own endpoints hold the lock a moment after their generation ended
                # (a 50 ms sleep): a client that follows one must not be told BUSY
                ending = self._generation_finished()
                grace = ENDING_GRACE_S
            if not ending or not self._lock.acquire(timeout=grace):
                return False
        self.holder = holder
        return True

    def release(self) -> None:
        self.holder = None
        self._lock.release()
