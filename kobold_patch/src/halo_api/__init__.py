"""Halo Weave API for KoboldCPP: attention export next to KoboldCPP's own endpoints.

    GET  /api/v1/model/info        the model, its shape, whether attention export is available
    POST /api/v1/tokenize          token ids of a text, each with its exact bytes (base64)
    POST /api/v1/detokenize        the text of token ids
    WS   /api/v1/generate/stream   generation from input_ids: a `token` message per generated
                                   token, each followed by one binary attention frame when asked:
                                   every head ("full"), or the mean and max over heads per layer
                                   ("layer_stats") or over the whole model ("model_stats"),
                                   computed in the graph (attention_export.cpp)

The wire contract is halo-weave's api_spec/ (openapi.yaml, websocket.md). Standard library only,
Python >= 3.9 (as KoboldCPP v1.76): apply.sh puts this package next to koboldcpp.py, which
imports it in `init_library` (`register_library`) and routes these paths to `serve`. The
WebSocket (RFC 6455) is served here, inside KoboldCPP's own request handler, on its own port.

    server.py      routing, the REST answers, the upgrade (one HaloServer per KoboldCPP process)
    stream.py      one generation stream: request, slot, tokens and frames, abort, `done`
    slot.py        one generation at a time, on KoboldCPP's own `modelbusy` lock
    validation.py  the contract's request rules
    access.py      Host (H0), Origin (H2) and the password
    answers.py     whole HTTP answers on KoboldCPP's shared handler, request bodies
    framing.py     RFC 6455 framing without sockets
    websocket.py   one upgraded connection: its reader thread and writes
    backend.py     KoboldCPP's ctypes handle: the exports of expose.cpp, generation inputs, events

The C side (attention_export.cpp, exported through expose.cpp) captures the attention inside the
compute graph and queues one event per generated token; this package sends them.
"""

from __future__ import annotations

from .access import AccessPolicy, check_password, host_name
from .backend import EventOut, KoboldBackend, ModelInfoOut, kobold_seed, register_library
from .framing import FrameReader, ProtocolClose, accept_key, close_payload, frame_header
from .server import PATHS, STREAM_PATH, HaloServer, serve
from .slot import GenerationSlot
from .stream import StreamSession
from .validation import Rejected, check_generate_request, parse_generate_request
from .websocket import WebSocket

__all__ = ["PATHS", "STREAM_PATH", "AccessPolicy", "EventOut", "FrameReader", "GenerationSlot", "HaloServer",
           "KoboldBackend", "ModelInfoOut", "ProtocolClose", "Rejected", "StreamSession", "WebSocket",
           "accept_key", "check_generate_request", "check_password", "close_payload", "frame_header",
           "host_name", "kobold_seed", "parse_generate_request", "register_library", "serve"]
