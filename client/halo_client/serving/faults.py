"""Faults a test can ask the server to commit, to prove the client survives them.

Only the mock server is built with a `FaultPlan`; the reference server never is.
"""

from __future__ import annotations

from dataclasses import dataclass

from halo_client.messages import ErrorCode


@dataclass
class FaultPlan:
    #: seconds to wait before each token is sent (a slow model)
    token_delay_s: float = 0.0
    #: seconds to wait before answering any REST request (a slow or loading server)
    response_delay_s: float = 0.0
    #: cut the TCP connection abruptly (no close frame) just before sending this token index
    drop_before_token: int | None = None
    #: send a damaged attention frame (wrong magic) for this token index
    corrupt_frame_at: int | None = None
    #: send a truncated attention frame for this token index
    truncate_frame_at: int | None = None
    #: answer with an `error` message of this code just before this token index
    error_at: int | None = None
    error_code: ErrorCode = "INTERNAL"
    #: answer every generation with BUSY, as if another client held the model
    always_busy: bool = False
