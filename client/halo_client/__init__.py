"""Halo Weave client: stream a local model's attention and keep long chats inside its context.

The public API, importable from `halo_client` itself:

- `KoboldClient` talks to any server of the contract (`api_spec/`): `model_info()`,
  `tokenize()`, `detokenize()`, and `generate_stream()`, whose `GenerationStream` yields a
  `TokenEvent` per token (with its `AttentionFrame` when asked) and a final `DoneEvent`;
- `encode_frame` / `decode_frame`: the attention frame codec, without I/O;
- the errors, one hierarchy under `HaloError`.

The conversation layer (state, brightness tracker, pruner, sessions, `Chat`) is
`halo_client.conversation`.
"""

from importlib.metadata import PackageNotFoundError, version

from halo_client.client import DEFAULT_URL, DoneEvent, GenerationStream, KoboldClient, StreamEvent, TokenEvent
from halo_client.errors import (
    FrameError,
    HaloError,
    ProtocolError,
    RequestTimeout,
    ServerBusy,
    ServerError,
    ServerUnreachable,
    Unauthorized,
)
from halo_client.frame import AttentionFrame, decode_frame, encode_frame
from halo_client.messages import ErrorCode, ModelInfo

try:
    __version__ = version("halo-weave")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_URL",
    "AttentionFrame",
    "DoneEvent",
    "ErrorCode",
    "FrameError",
    "GenerationStream",
    "HaloError",
    "KoboldClient",
    "ModelInfo",
    "ProtocolError",
    "RequestTimeout",
    "ServerBusy",
    "ServerError",
    "ServerUnreachable",
    "StreamEvent",
    "TokenEvent",
    "Unauthorized",
    "__version__",
    "decode_frame",
    "encode_frame",
]
