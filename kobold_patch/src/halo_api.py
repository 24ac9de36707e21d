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
Python >= 3.9 (as KoboldCPP v1.76): koboldcpp.py imports this module the first time one of these
paths is requested. The WebSocket (RFC 6455) is served here, inside KoboldCPP's own request
handler, on KoboldCPP's own port.

KoboldCPP's handler is shared: each of its server threads builds ONE handler object and serves
every request of every connection it accepts with it, speaking HTTP/1.0 (its answers end when
the connection closes; many carry no Content-Length). So nothing here may leave state on the
handler that outlives one request, `protocol_version` above all: this module writes its answers
whole (status line included), each with a Content-Length and `Connection: close`, and leaves
`close_connection` True, as KoboldCPP's HTTP/1.0 handling always does.

The C side (attention_export.cpp, exported through expose.cpp) captures the attention inside the
compute graph and queues one event per generated token; this module sends them.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import hmac
import http
import io
import ipaddress
import json
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

API_VERSION = 1
STREAM_PATH = "/api/v1/generate/stream"
PATHS = ("/api/v1/model/info", "/api/v1/tokenize", "/api/v1/detokenize", STREAM_PATH)
MAX_BODY = 4 * 1024 * 1024          # REST request bodies
MAX_MESSAGE = 4 * 1024 * 1024       # client -> server WebSocket message, after reassembly
MAX_DRAIN = 64 * 1024 * 1024        # an oversized body is read (and dropped) up to this size
FIRST_MESSAGE_TIMEOUT_S = 30.0
ABORT_GRACE_S = 5.0
ENDING_GRACE_S = 0.5                # KoboldCPP's own endpoints keep the model lock 50 ms after their generation
CLOSE_WAIT_S = 1.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TOKEN_ID_LIMIT = 2 ** 31
DTYPES = ("float32", "float16")
#: attention_layout values, in the order of their code (frame header offset 14; generation_inputs)
LAYOUTS = ("full", "layer_stats", "model_stats")
FINISH = {0: "length", 1: "eos", 2: "stop_token", 3: "aborted"}
NO_PASSWORD = "This server has a password, and the request carried none (Authorization: Bearer <password>)."
WRONG_PASSWORD = "The password is wrong."

STATUS = {"INVALID_REQUEST": 400, "INVALID_TOKEN": 400, "CONTEXT_OVERFLOW": 400, "ATTENTION_UNAVAILABLE": 400,
          "UNAUTHORIZED": 401, "ORIGIN_NOT_ALLOWED": 403, "HOST_NOT_ALLOWED": 403, "NOT_FOUND": 404,
          "PAYLOAD_TOO_LARGE": 413, "INTERNAL": 500, "BUSY": 503}

GENERATE_DEFAULTS: dict[str, Any] = {
    "max_length": 100, "temperature": 0.7, "top_p": 0.92, "top_k": 100, "rep_pen": 1.1,
    "rep_pen_range": 320, "sampler_seed": -1, "stop_token_ids": [], "banned_token_ids": [],
    "return_attention": False, "attention_dtype": "float32", "attention_layout": "full",
}

#: a generation request, validated, with every default filled in
Request = dict[str, Any]


class Rejected(Exception):
    """A request the contract refuses, with the error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- validation

def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and v == v and v not in (float("inf"), float("-inf")))


def _parse_json_object(body: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected("INVALID_REQUEST", f"the request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejected("INVALID_REQUEST", "the request must be a JSON object")
    return obj


def _check_fields(obj: dict[str, Any], allowed: Iterable[str], required: Iterable[str]) -> None:
    allowed = sorted(allowed)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise Rejected("INVALID_REQUEST", f"unknown field {unknown[0]} (allowed: {', '.join(allowed)})")
    for name in required:
        if name not in obj:
            raise Rejected("INVALID_REQUEST", f"missing field {name}")


def _token_list(obj: dict[str, Any], name: str, errors: list[str], outside: list[str]) -> list[int]:
    """The ids of obj[name]; a malformed list goes to `errors` (INVALID_REQUEST), an integer that
    can be no token id of any vocabulary (negative, or past 2**31) to `outside` (INVALID_TOKEN,
    like an id past this model's vocabulary: rule Q2)."""
    value = obj[name]
    if not isinstance(value, list):
        errors.append(f"{name} must be an array of token ids")
        return []
    for t in value:
        if not _is_int(t):
            errors.append(f"{name} holds {t!r}, not an integer token id")
            return []
        if t < 0 or t >= TOKEN_ID_LIMIT:
            outside.append(f"{name} holds token id {t}, outside the vocabulary")
            return []
    return value


def parse_generate_request(text: str) -> Request:
    """The GenerateRequest of api_spec (schemas/generate_request.json) as a dict with defaults."""
    obj = _parse_json_object(text)
    _check_fields(obj, [*GENERATE_DEFAULTS, "input_ids"], ["input_ids"])
    req = dict(GENERATE_DEFAULTS)
    req.update(obj)
    errors: list[str] = []
    outside: list[str] = []
    for name in ("input_ids", "stop_token_ids", "banned_token_ids"):
        _token_list(req, name, errors, outside)
    if isinstance(req["input_ids"], list) and not req["input_ids"]:
        errors.append("input_ids must hold at least one token id")

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    v = req["max_length"]
    need(_is_int(v) and v >= 1, "max_length must be an integer >= 1")
    v = req["temperature"]
    need(_is_number(v) and v >= 0, "temperature must be a number >= 0")
    v = req["top_p"]
    need(_is_number(v) and 0 < v <= 1, "top_p must be a number in (0, 1]")
    v = req["top_k"]
    need(_is_int(v) and v >= 0, "top_k must be an integer >= 0")
    v = req["rep_pen"]
    need(_is_number(v) and v > 0, "rep_pen must be a number > 0")
    v = req["rep_pen_range"]
    need(_is_int(v) and v >= 0, "rep_pen_range must be an integer >= 0")
    v = req["sampler_seed"]
    need(_is_int(v) and -1 <= v < 2 ** 32, "sampler_seed must be an integer in [-1, 2^32)")
    need(isinstance(req["return_attention"], bool), "return_attention must be true or false")
    need(req["attention_dtype"] in DTYPES, "attention_dtype must be one of " + ", ".join(DTYPES))
    need(req["attention_layout"] in LAYOUTS, "attention_layout must be one of " + ", ".join(LAYOUTS))
    if errors:
        raise Rejected("INVALID_REQUEST", "; ".join(errors[:5]))
    if outside:
        raise Rejected("INVALID_TOKEN", outside[0])
    return req


def check_generate_request(req: Request, info: dict[str, Any]) -> None:
    """What the schema cannot see: the vocabulary, the context, attention availability."""
    vocab = info["vocab_size"]
    for name in ("input_ids", "stop_token_ids", "banned_token_ids"):
        bad = [t for t in req[name] if t >= vocab]
        if bad:
            raise Rejected("INVALID_TOKEN", f"{name} holds token id {bad[0]}, outside this model's vocabulary "
                           f"[0, {vocab}); tokenize with this server's /api/v1/tokenize")
    total = len(req["input_ids"]) + req["max_length"]
    if total > info["max_context_length"]:
        raise Rejected("CONTEXT_OVERFLOW", f"{len(req['input_ids'])} input tokens + max_length {req['max_length']} = "
                       f"{total} exceeds the server's context of {info['max_context_length']} tokens; prune the "
                       "conversation or lower max_length (or restart KoboldCPP with a larger --contextsize)")
    if req["return_attention"]:
        att = info["attention"]
        if not att["available"]:
            raise Rejected("ATTENTION_UNAVAILABLE", f"attention export is off on this server: {att['reason']}")
        if req["attention_dtype"] not in att["dtypes"]:
            raise Rejected("ATTENTION_UNAVAILABLE", f"attention_dtype {req['attention_dtype']} is not offered; "
                           f"this server sends {', '.join(att['dtypes'])}")
        if req["attention_layout"] not in att.get("layouts", ["full"]):
            raise Rejected("ATTENTION_UNAVAILABLE", f"attention_layout {req['attention_layout']} is not offered; "
                           f"this server sends {', '.join(att.get('layouts', ['full']))}")


def parse_tokenize_request(body: bytes) -> tuple[str, bool]:
    obj = _parse_json_object(body)
    _check_fields(obj, ["text", "add_special_tokens"], ["text"])
    if not isinstance(obj["text"], str):
        raise Rejected("INVALID_REQUEST", "text must be a string")
    add = obj.get("add_special_tokens", True)
    if not isinstance(add, bool):
        raise Rejected("INVALID_REQUEST", "add_special_tokens must be true or false")
    return obj["text"], add


def parse_detokenize_request(body: bytes, vocab: int) -> list[int]:
    obj = _parse_json_object(body)
    _check_fields(obj, ["token_ids"], ["token_ids"])
    errors: list[str] = []
    outside: list[str] = []
    ids = _token_list(obj, "token_ids", errors, outside)
    if errors:
        raise Rejected("INVALID_REQUEST", errors[0])
    if outside:
        raise Rejected("INVALID_TOKEN", outside[0])
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise Rejected("INVALID_TOKEN", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
    return ids


def kobold_seed(seed: int) -> int:
    """KoboldCPP takes seeds <= 0 (and 0xFFFFFFFF) as 'random': map every other seed into [1, 2^31 - 2]."""
    if seed < 0:
        return -1
    if 0 < seed < 2 ** 31 - 1:
        return seed
    return (seed - 1) % (2 ** 31 - 2) + 1


# --------------------------------------------------------------------------- who may connect
# The Host and Origin rules of api_spec (H0, H2): the same rules, in the same words, as
# halo_client/serving/access.py, which this standard-library-only module cannot import
# (tests/kobold_patch checks that both answer alike).

def host_name(host_header: str) -> str:
    """The name or address of a `Host` header: no port, no IPv6 brackets, lower case, no
    trailing dot."""
    value = host_header.strip().lower()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AccessPolicy:
    """H0: a Host must be `localhost`, `*.localhost`, an IP address literal (no DNS, so no
    rebinding; KoboldCPP reached by its LAN address keeps working), the name KoboldCPP binds
    (`--host`), an `--allowed-host` name or the host of an `--allowed-origin`; a request without
    Host (HTTP/1.0) passes. H2: a browser Origin must be the server's own or an allowed one."""

    def __init__(self, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (),
                 bind_host: str = "") -> None:
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        hosts = {host_name(h) for h in allowed_hosts if h.strip()}
        hosts |= {host_name(urlsplit(o).netloc) for o in self.allowed_origins if urlsplit(o).netloc}
        if bind_host and not _is_ip(host_name(bind_host)):
            hosts.add(host_name(bind_host))
        self.allowed_hosts = frozenset(hosts)

    def host_allowed(self, host_header: str | None) -> bool:
        if host_header is None:
            return True
        name = host_name(host_header)
        if not name:
            return False
        return (name == "localhost" or name.endswith(".localhost") or _is_ip(name)
                or name in self.allowed_hosts)

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        if origin is None:
            return True  # not a browser: browsers always send Origin with a WebSocket upgrade
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        host = (host_header or "").strip().lower()
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host

    @staticmethod
    def host_refusal(host_header: str) -> str:
        return (f"Host {host_header!r} is not a loopback name or an IP address (a DNS-rebinding "
                "page looks like this); start the server with --allowed-host "
                f"{host_name(host_header) or 'NAME'} to allow it")

    @staticmethod
    def origin_refusal(origin: str) -> str:
        return f"Origin {origin} may not open this stream; start the server with --allowed-origin to allow it"


# --------------------------------------------------------------------------- the C library

class EventOut(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("index", ctypes.c_int), ("token_id", ctypes.c_int),
                ("finish_reason", ctypes.c_int), ("token_count", ctypes.c_int), ("prompt_tokens", ctypes.c_int),
                ("frame_bytes", ctypes.c_longlong), ("prompt_ms", ctypes.c_double),
                ("generation_ms", ctypes.c_double)]


class ModelInfoOut(ctypes.Structure):
    _fields_ = [("available", ctypes.c_int), ("n_vocab", ctypes.c_int), ("n_layer", ctypes.c_int),
                ("n_head", ctypes.c_int), ("n_head_kv", ctypes.c_int), ("n_embd", ctypes.c_int),
                ("n_ctx_train", ctypes.c_int), ("bos", ctypes.c_int), ("eos", ctypes.c_int), ("eot", ctypes.c_int),
                ("rope_freq_base", ctypes.c_float), ("rope_freq_scale", ctypes.c_float),
                ("arch", ctypes.c_char_p), ("chat_template", ctypes.c_char_p), ("reason", ctypes.c_char_p)]


EVENT_TOKEN, EVENT_DONE = 1, 2
FINISH_ERROR = 4

#: an event of the generation, and the frame of a token event (valid until the next event)
Event = tuple[Any, Optional[memoryview]]


def register_library(handle: Any) -> None:
    """argtypes/restype of the exports in expose.cpp (koboldcpp.py calls this in init_library)."""
    handle.halo_api_next_event.argtypes = [ctypes.c_int, ctypes.POINTER(EventOut)]
    handle.halo_api_next_event.restype = ctypes.c_int
    handle.halo_api_event_frame.argtypes = []
    handle.halo_api_event_frame.restype = ctypes.c_void_p
    handle.halo_api_last_error.argtypes = []
    handle.halo_api_last_error.restype = ctypes.c_char_p
    handle.halo_api_model_info.argtypes = [ctypes.POINTER(ModelInfoOut)]
    handle.halo_api_model_info.restype = ctypes.c_int
    handle.halo_api_tokenize.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool,
                                         ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle.halo_api_tokenize.restype = ctypes.c_int
    handle.halo_api_token_piece.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    handle.halo_api_token_piece.restype = ctypes.c_int


class KoboldBackend:
    """The model behind KoboldCPP's ctypes handle. Generations are serialized by the caller."""

    def __init__(self, kcpp: Any) -> None:
        self.kcpp = kcpp
        self.handle = kcpp.handle
        self._info: dict[str, Any] | None = None
        self._pieces: list[bytes] | None = None
        self._lock = threading.Lock()

    def model_info(self) -> dict[str, Any]:
        with self._lock:
            if self._info is None:
                out = ModelInfoOut()
                if not self.handle.halo_api_model_info(ctypes.byref(out)):
                    raise Rejected("INTERNAL", "no GGUF text model is loaded: the Halo Weave API needs one")
                name = str(getattr(self.kcpp, "friendlymodelname", "model"))
                if name.startswith("koboldcpp/"):
                    name = name[len("koboldcpp/"):]
                template = out.chat_template.decode("utf-8", "replace") if out.chat_template is not None else None

                def tid(v: int) -> int | None:
                    return v if v >= 0 else None

                reason = (out.reason or b"").decode("utf-8", "replace")
                self._info = {
                    "model_name": name,
                    "architecture": (out.arch or b"").decode("utf-8", "replace"),
                    "vocab_size": out.n_vocab,
                    "num_layers": out.n_layer,
                    "num_attention_heads": out.n_head,
                    "num_key_value_heads": out.n_head_kv,
                    "hidden_size": out.n_embd,
                    "max_context_length": int(self.kcpp.maxctx),
                    "max_trained_context": out.n_ctx_train,
                    "bos_token_id": tid(out.bos),
                    "eos_token_id": tid(out.eos),
                    "eot_token_id": tid(out.eot),
                    "rope_freq_base": float(out.rope_freq_base),
                    "rope_freq_scale": float(out.rope_freq_scale),
                    "chat_template": template,
                    "attention_api_version": API_VERSION,
                    "attention": {"available": bool(out.available), "reason": None if out.available else reason,
                                  "dtypes": list(DTYPES), "layouts": list(LAYOUTS)},
                }
            return self._info

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (ctypes.c_int * cap)()
            n = int(self.handle.halo_api_tokenize(data, add_special, add_special, buf, cap))
            if n >= 0:
                return list(buf[:n])
            if n == -1:
                raise Rejected("INTERNAL", "no GGUF text model is loaded: the Halo Weave API needs one")
            cap = -n - 2 + 8

    def pieces(self) -> list[bytes]:
        """Every token's exact bytes, read once."""
        with self._lock:
            if self._pieces is None:
                vocab = self._info["vocab_size"] if self._info else None
                if vocab is None:
                    out = ModelInfoOut()
                    self.handle.halo_api_model_info(ctypes.byref(out))
                    vocab = out.n_vocab
                buf = ctypes.create_string_buffer(256)
                pieces = []
                for t in range(vocab):
                    n = int(self.handle.halo_api_token_piece(t, buf, 256))
                    if n < -1:
                        big = ctypes.create_string_buffer(-n - 2)
                        n = int(self.handle.halo_api_token_piece(t, big, len(big)))
                        pieces.append(big.raw[:max(n, 0)])
                    else:
                        pieces.append(buf.raw[:max(n, 0)])
                self._pieces = pieces
            return self._pieces

    def start(self, req: Request) -> threading.Thread:
        """Starts handle.generate in a thread; returns it (join it before releasing the model)."""
        kcpp = self.kcpp
        inputs = kcpp.generation_inputs()
        ids = req["input_ids"]
        keep: dict[str, Any] = {
            "ids": (ctypes.c_int * len(ids))(*ids),
            "stop": (ctypes.c_int * max(1, len(req["stop_token_ids"])))(*req["stop_token_ids"]),
            "ban": (ctypes.c_int * max(1, len(req["banned_token_ids"])))(*req["banned_token_ids"]),
        }
        empty = b""
        inputs.prompt = b"[halo input_ids]"  # not tokenized: input_ids are used as they are
        inputs.memory = empty
        for n in range(len(inputs.images)):
            inputs.images[n] = empty
        inputs.max_context_length = int(kcpp.maxctx)
        inputs.max_length = req["max_length"]
        inputs.temperature = float(req["temperature"])
        # temperature 0 is greedy: KoboldCPP's sampler keeps a tiny temperature, top_k 1 makes it exact
        inputs.top_k = 1 if req["temperature"] == 0 else req["top_k"]
        inputs.top_a = 0.0
        inputs.top_p = float(req["top_p"])
        inputs.min_p = 0.0
        inputs.typical_p = 1.0
        inputs.tfs = 1.0
        inputs.rep_pen = float(req["rep_pen"])
        inputs.rep_pen_range = req["rep_pen_range"]
        inputs.rep_pen_slope = 1.0
        inputs.presence_penalty = 0.0
        inputs.mirostat = 0
        inputs.mirostat_tau = 0.0
        inputs.mirostat_eta = 0.0
        inputs.dry_multiplier = 0.0
        inputs.dry_base = 1.75
        inputs.dry_allowed_length = 2
        inputs.dry_penalty_last_n = 0
        for n in range(len(inputs.dry_sequence_breakers)):
            inputs.dry_sequence_breakers[n] = empty
        inputs.xtc_threshold = 0.2
        inputs.xtc_probability = 0.0
        order = [6, 0, 1, 3, 4, 2, 5]  # KoboldCPP's recommended sampler order
        for i, sampler in enumerate(order):
            inputs.sampler_order[i] = sampler
        inputs.sampler_len = len(order)
        inputs.allow_eos_token = True
        # The stream ends at the contract's eos_token_id / eot_token_id (model_info), which
        # attention_export.cpp checks; KoboldCPP's own check would also end it at llama.cpp's
        # end-of-turn guess (for SmolLM2 <|endoftext|>, not the <|im_end|> model_info names).
        inputs.bypass_eos_token = True
        inputs.render_special = True
        for n in range(len(inputs.stop_sequence)):
            inputs.stop_sequence[n] = empty
        inputs.stream_sse = False
        inputs.grammar = empty
        inputs.grammar_retain_state = False
        inputs.quiet = bool(getattr(kcpp.args, "quiet", False))
        inputs.dynatemp_range = 0.0
        inputs.dynatemp_exponent = 1.0
        inputs.smoothing_factor = 0.0
        for n in range(len(inputs.logit_biases)):
            inputs.logit_biases[n] = kcpp.logit_bias(-1, 0.0)
        for n in range(len(inputs.banned_tokens)):
            inputs.banned_tokens[n] = empty
        inputs.seed = kobold_seed(req["sampler_seed"])
        inputs.halo_input_ids = keep["ids"]
        inputs.halo_input_count = len(ids)
        inputs.halo_stop_ids = keep["stop"]
        inputs.halo_stop_count = len(req["stop_token_ids"])
        inputs.halo_banned_ids = keep["ban"]
        inputs.halo_banned_count = len(req["banned_token_ids"])
        inputs.halo_attention = (1 if req["attention_dtype"] == "float32" else 2) if req["return_attention"] else 0
        inputs.halo_attention_layout = LAYOUTS.index(req["attention_layout"])

        def run() -> None:
            keep["result"] = self.handle.generate(inputs)  # keep holds the arrays until it returns

        thread = threading.Thread(target=run, name="halo-generate", daemon=True)
        thread.start()
        return thread

    def next_event(self, timeout_ms: int) -> Event | None:
        """(EventOut, frame memoryview or None), or None after timeout_ms. The frame is valid until
        the next call."""
        out = EventOut()
        if not self.handle.halo_api_next_event(timeout_ms, ctypes.byref(out)):
            return None
        frame = None
        if out.kind == EVENT_TOKEN and out.frame_bytes > 0:
            ptr = self.handle.halo_api_event_frame()
            frame = memoryview((ctypes.c_ubyte * out.frame_bytes).from_address(ptr)).cast("B")
        return out, frame

    def last_error(self) -> str:
        return str((self.handle.halo_api_last_error() or b"").decode("utf-8", "replace"))

    def abort(self) -> None:
        self.handle.abort_generate()

    def generation_finished(self) -> bool:
        """True when no generation is running (KoboldCPP's own flag, as its SSE streaming reads it)."""
        return bool(self.handle.has_finished())


# --------------------------------------------------------------------------- WebSocket framing

class ProtocolClose(Exception):
    """The connection must be closed with this WebSocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        Exception.__init__(self, reason)
        self.code = code
        self.reason = reason


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """RFC 6455 section 5.2 header of one unmasked server frame."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


#: what FrameReader.next_message returns: (kind, payload)
Message = tuple[str, Any]


class FrameReader:
    """Reads client frames from a binary file-like object and reassembles messages.

    `next_message()` returns ("text", str) / ("binary", bytes), ("ping", bytes), ("pong", bytes),
    ("close", (code, reason)) or None at EOF, and raises ProtocolClose on a violation: the caller
    closes with that code. Client frames must be masked (1002), messages are limited to
    `max_message` bytes (1009), text must be UTF-8 (1007).
    """

    def __init__(self, rfile: io.BufferedIOBase, max_message: int = MAX_MESSAGE) -> None:
        self.rfile = rfile
        self.max_message = max_message
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode: int | None = None

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read(2)
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, length = b1 & 0x80, b1 & 0x7F
        if rsv:
            raise ProtocolClose(1002, "reserved bits set without a negotiated extension")
        if opcode not in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA):
            raise ProtocolClose(1002, f"unknown opcode {opcode}")
        if opcode >= 0x8 and (not fin or length > 125):
            raise ProtocolClose(1002, "control frames must be whole and at most 125 bytes")
        if not masked:
            raise ProtocolClose(1002, "client frames must be masked")
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
            if length >> 63:
                raise ProtocolClose(1002, "frame length has its most significant bit set")
        if opcode < 0x8 and self._size + length > self.max_message:
            raise ProtocolClose(1009, f"message larger than {self.max_message} bytes")
        mask = self._read(4)
        payload = self._read(length) if length else b""
        if length:
            # unmask through one big integer XOR: milliseconds even for a 4 MiB message
            key = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
        return bool(fin), opcode, payload

    def next_message(self) -> Message | None:
        while True:
            try:
                fin, opcode, payload = self._frame()
            except EOFError:
                return None
            if opcode == 0x8:
                if len(payload) == 1:
                    raise ProtocolClose(1002, "close frame with a one-byte payload")
                if len(payload) >= 2:
                    (code,) = struct.unpack("!H", payload[:2])
                    try:
                        reason = payload[2:].decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolClose(1007, "close reason is not UTF-8") from None
                    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
                        raise ProtocolClose(1002, f"invalid close code {code}")
                    return "close", (code, reason)
                return "close", (1005, "")
            if opcode == 0x9:
                return "ping", payload
            if opcode == 0xA:
                return "pong", payload
            if opcode == 0x0:
                if self._opcode is None:
                    raise ProtocolClose(1002, "continuation frame without a message to continue")
            else:
                if self._opcode is not None:
                    raise ProtocolClose(1002, "new message before the fragmented one ended")
                self._opcode = opcode
            self._parts.append(payload)
            self._size += len(payload)
            if not fin:
                continue
            data = b"".join(self._parts)
            kind = self._opcode
            self._parts, self._size, self._opcode = [], 0, None
            if kind == 0x2:
                return "binary", data
            try:
                return "text", data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolClose(1007, "text message is not valid UTF-8") from None


class WebSocket:
    """Server side of one upgraded connection: a reader thread and locked writes."""

    def __init__(self, sock: socket.socket, rfile: io.BufferedIOBase) -> None:
        self.sock = sock
        self.reader = FrameReader(rfile)
        self.messages: queue.Queue[str | None] = queue.Queue()
        self.gone = threading.Event()         # the client closed, vanished, or broke the protocol
        self.close_received = threading.Event()
        self.closed_sent = False
        self.abort_requested = False           # the client sent {"type": "abort"}
        # called from the reader thread with each text message; True: consumed
        self.on_message: Callable[[str], bool] | None = None
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_loop, name="halo-ws-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send_raw(self, *parts: bytes | memoryview) -> bool:
        if self.gone.is_set() or self.closed_sent:
            return False
        try:
            with self._write_lock:
                for part in parts:
                    self.sock.sendall(part)
            return True
        except OSError:
            self._lost()
            return False

    def send_text(self, obj: object) -> bool:
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        return self.send_raw(frame_header(0x1, len(data)) + data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        with self._write_lock:
            if self.closed_sent:
                return
            self.closed_sent = True
            payload = close_payload(code, reason)
            with contextlib.suppress(OSError):
                self.sock.sendall(frame_header(0x8, len(payload)) + payload)

    def wait_closed(self, timeout: float = CLOSE_WAIT_S + 0.5) -> None:
        """After our close frame: let the client's come back (or the reader finish draining),
        briefly, for a clean handshake."""
        deadline = time.monotonic() + timeout
        while not self.close_received.is_set() and self._thread.is_alive() and time.monotonic() < deadline:
            self.close_received.wait(0.02)

    def shutdown(self) -> None:
        """End the connection: unblocks the reader (the handler's rfile is shared with it, and
        KoboldCPP's handler closes that file once this returns)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(1.0)

    def _lost(self) -> None:
        if not self.gone.is_set():
            self.gone.set()
            self.messages.put(None)

    def _read_loop(self) -> None:
        try:
            while True:
                msg = self.reader.next_message()
                if msg is None:
                    break
                kind, payload = msg
                if kind == "ping":
                    self.send_raw(frame_header(0xA, len(payload)) + payload)
                elif kind == "close":
                    code, _reason = payload
                    self.close_received.set()
                    self.close(1000 if code == 1005 else code)
                    break
                elif kind == "binary":
                    raise ProtocolClose(1003, "this endpoint accepts text messages only")
                elif kind == "text":
                    if self.on_message is not None and self.on_message(payload):
                        continue
                    self.messages.put(payload)
        except ProtocolClose as exc:
            self.close(exc.code, exc.reason)
            self._lost()
            self._drain()
        except (OSError, ValueError):
            pass
        finally:
            self._lost()

    def _drain(self, seconds: float = CLOSE_WAIT_S) -> None:
        """After a protocol error: read (and drop) what the client still sends, so that closing the
        socket sends FIN rather than a reset that could destroy our close frame in flight."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                readable, _, _ = select.select([self.sock], [], [], left)
                if not readable or not self.sock.recv(65536):
                    break
        except (OSError, ValueError):
            pass


# --------------------------------------------------------------------------- HTTP answers

def send_json(handler: BaseHTTPRequestHandler, status: int, obj: object) -> None:
    """One whole answer, after which the connection ends.

    The status line is written here, not by handler.send_response, which writes the handler's
    protocol_version (HTTP/1.0 in KoboldCPP): WebSocket clients refuse an upgrade answered with an
    HTTP/1.0 status line, even a refusal. HTTP/1.1 with a Content-Length and `Connection: close`
    is a complete answer to an HTTP/1.0 and an HTTP/1.1 client alike. Nothing on the handler
    changes but close_connection, set True (as KoboldCPP's HTTP/1.0 handling leaves it for every
    request), so the connection ends and its server thread is free for the next one.
    """
    body = json.dumps(obj).encode("utf-8")
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Server: {handler.version_string()}\r\n"
            f"Date: {handler.date_time_string()}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            # as on KoboldCPP's own answers (and the project's servers): any page may read these
            "Access-Control-Allow-Origin: *\r\n"
            "Cache-Control: no-store\r\n\r\n")
    handler.close_connection = True
    handler.log_request(status)  # KoboldCPP's log_message: printed with --debugmode only
    handler.wfile.write(head.encode("latin-1") + body)
    handler.wfile.flush()


def send_error(handler: BaseHTTPRequestHandler, code: str, message: str) -> None:
    send_json(handler, STATUS[code], {"error": {"code": code, "message": message}})


def _discard(handler: BaseHTTPRequestHandler, length: int) -> None:
    """Read and drop a body the answer does not need, so that the client reads the answer rather
    than a reset (closing a socket with unread data sends RST)."""
    left = length
    while left > 0:
        chunk = handler.rfile.read(min(left, 1 << 20))
        if not chunk:
            break
        left -= len(chunk)


def _content_length(handler: BaseHTTPRequestHandler) -> int:
    value = handler.headers.get("content-length")
    try:
        length = int(value) if value is not None else 0
    except ValueError:
        raise Rejected("INVALID_REQUEST", "bad content-length header") from None
    if length < 0:
        raise Rejected("INVALID_REQUEST", "bad content-length header")
    return length


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = _content_length(handler)
    if length > MAX_BODY:
        if length <= MAX_DRAIN:
            _discard(handler, length)
        raise Rejected("PAYLOAD_TOO_LARGE", f"request bodies are limited to {MAX_BODY} bytes")
    return handler.rfile.read(length) if length else b""


def is_upgrade(handler: BaseHTTPRequestHandler) -> bool:
    return (handler.headers.get("Upgrade") or "").strip().lower() == "websocket"


# --------------------------------------------------------------------------- the server

class HaloServer:
    """The contract's endpoints for one KoboldCPP process (one model, generations serialized)."""

    def __init__(self, kcpp: Any, backend: Any = None) -> None:
        self.kcpp = kcpp
        self.backend = backend if backend is not None else KoboldBackend(kcpp)
        self.active: WebSocket | None = None   # the session generating now
        args = getattr(kcpp, "args", None)
        self.access = AccessPolicy(allowed_hosts=getattr(args, "allowed_host", None) or (),
                                   allowed_origins=getattr(args, "allowed_origin", None) or (),
                                   bind_host=getattr(args, "host", None) or "")

    def password(self) -> str:
        return getattr(self.kcpp, "password", "") or ""

    def check_password(self, handler: BaseHTTPRequestHandler) -> None:
        """`UNAUTHORIZED` for a missing or a wrong password, each saying which."""
        pw = self.password()
        if not pw:
            return
        value = handler.headers.get("Authorization")
        if not value:
            raise Rejected("UNAUTHORIZED", NO_PASSWORD)
        scheme, _, token = value.partition(" ")
        # constant time: the comparison must not tell how much of a guess was right
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), pw.encode("utf-8"))):
            raise Rejected("UNAUTHORIZED", WRONG_PASSWORD)

    def serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0].rstrip("/")
        handler.close_connection = True
        try:
            host = handler.headers.get("Host")
            if not self.access.host_allowed(host):  # H0, before anything else
                if method == "POST":
                    length = _content_length(handler)
                    if length <= MAX_DRAIN:
                        _discard(handler, length)
                raise Rejected("HOST_NOT_ALLOWED", self.access.host_refusal(host or ""))
            if path == STREAM_PATH and method == "GET" and is_upgrade(handler):
                self.upgrade(handler)
                return
            body = read_body(handler) if method == "POST" else b""
            self.check_password(handler)
            if path == STREAM_PATH:
                raise Rejected("INVALID_REQUEST", f"{STREAM_PATH} is a WebSocket: connect with a WebSocket client")
            want = "GET" if path == "/api/v1/model/info" else "POST"
            if method != want:
                raise Rejected("INVALID_REQUEST", f"{path} takes {want}, not {method}")
            result: dict[str, Any]
            if path == "/api/v1/model/info":
                result = self.backend.model_info()
            elif path == "/api/v1/tokenize":
                text, add = parse_tokenize_request(body)
                self.backend.model_info()
                ids = self.backend.tokenize(text, add)
                pieces = self.backend.pieces()
                tokens = [{"token_id": t, "piece": base64.b64encode(pieces[t]).decode("ascii")} for t in ids]
                result = {"tokens": tokens, "token_ids": ids, "token_count": len(ids)}
            else:
                ids = parse_detokenize_request(body, self.backend.model_info()["vocab_size"])
                pieces = self.backend.pieces()
                result = {"text": b"".join(pieces[t] for t in ids).decode("utf-8", "replace")}
            send_json(handler, 200, result)
        except Rejected as exc:
            with contextlib.suppress(OSError):
                send_error(handler, exc.code, exc.message)
        except OSError:
            pass  # the client is gone
        except Exception as exc:  # the contract answers every failure with a body
            with contextlib.suppress(OSError):
                send_error(handler, "INTERNAL", f"{type(exc).__name__}: {exc}")
        finally:
            handler.close_connection = True

    # ---- the stream

    def upgrade(self, handler: BaseHTTPRequestHandler) -> None:
        headers = handler.headers
        self.check_password(handler)
        origin = headers.get("Origin")
        if not self.access.origin_allowed(origin, headers.get("Host")):
            raise Rejected("ORIGIN_NOT_ALLOWED", self.access.origin_refusal(origin or ""))
        connection = [t.strip().lower() for t in (headers.get("Connection") or "").split(",")]
        key = (headers.get("Sec-WebSocket-Key") or "").strip()
        try:
            key_ok = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            key_ok = False
        if "upgrade" not in connection or (headers.get("Sec-WebSocket-Version") or "").strip() != "13" or not key_ok:
            raise Rejected("INVALID_REQUEST", "not a valid WebSocket upgrade (RFC 6455: Connection: Upgrade, "
                           "Sec-WebSocket-Version: 13, a 16-byte Sec-WebSocket-Key)")
        sock = handler.connection
        # the 101 is HTTP/1.1 by definition; written here, like every answer of this module
        response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode("ascii")
        handler.log_request(101)
        handler.wfile.flush()
        sock.sendall(response)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        ws = WebSocket(sock, handler.rfile)
        ws.start()
        try:
            self.session(ws)
        except Exception as exc:  # after the 101 only a WebSocket message can say it
            self.ws_error(ws, "INTERNAL", f"{type(exc).__name__}: {exc}")
        finally:
            ws.wait_closed()
            ws.shutdown()

    def session(self, ws: WebSocket) -> None:
        try:
            text = ws.messages.get(timeout=FIRST_MESSAGE_TIMEOUT_S)
        except queue.Empty:
            self.ws_error(ws, "INVALID_REQUEST", f"no generation request within {FIRST_MESSAGE_TIMEOUT_S:g} s")
            return
        if text is None:
            return
        try:
            req = parse_generate_request(text)
            check_generate_request(req, self.backend.model_info())
        except Rejected as exc:
            self.ws_error(ws, exc.code, exc.message)
            return
        except Exception as exc:
            self.ws_error(ws, "INTERNAL", f"{type(exc).__name__}: {exc}")
            return
        busy = self.kcpp.modelbusy
        if not busy.acquire(blocking=False):
            active = self.active
            if active is not None:
                # a generation whose client is gone ends within a token: wait for it rather than
                # answer BUSY to the client that replaced it (a re-request after pruning)
                ending = active.gone.is_set() or active.abort_requested
                grace = ABORT_GRACE_S
            else:
                # KoboldCPP's own endpoints hold the lock a moment after their generation ended
                # (a 50 ms sleep): a client that follows one must not be told BUSY
                ending = self.backend.generation_finished()
                grace = ENDING_GRACE_S
            if not ending or not busy.acquire(timeout=grace):
                self.ws_error(ws, "BUSY", "another generation is running; retry when it is done")
                return
        try:
            self.active = ws
            self.generate(ws, req)
        finally:
            self.active = None
            busy.release()

    def ws_error(self, ws: WebSocket, code: str, message: str) -> None:
        ws.send_text({"type": "error", "code": code, "message": message})
        ws.close(1000)

    def generate(self, ws: WebSocket, req: Request) -> None:
        backend = self.backend
        pieces = backend.pieces()

        def on_message(text: str) -> bool:
            # after the request the only message a client may send is {"type": "abort"}
            try:
                if json.loads(text) == {"type": "abort"}:
                    ws.abort_requested = True
                    backend.abort()
            except ValueError:
                pass
            return True

        ws.on_message = on_message
        while not ws.messages.empty():  # an abort that raced the request
            item = ws.messages.get_nowait()
            if item is not None:
                on_message(item)
        thread = backend.start(req)
        done = None
        error = None
        aborted_for_client = False
        try:
            while True:
                if ws.gone.is_set() and not aborted_for_client:
                    backend.abort()  # the client left: stop within a token
                    aborted_for_client = True
                got = backend.next_event(50)
                if got is None:
                    if not thread.is_alive():
                        got = backend.next_event(0)
                        if got is None:
                            error = "the generation ended without finishing: " + (
                                backend.last_error() or "unknown error")
                            break
                    else:
                        if aborted_for_client:
                            backend.abort()  # an abort sent before the generation began is lost: repeat
                        continue
                event, frame = got
                if event.kind == EVENT_DONE:
                    done = event
                    break
                if ws.gone.is_set():
                    continue  # drain until done; nobody reads
                message = json.dumps({"type": "token", "index": event.index, "token_id": event.token_id,
                                      "piece": base64.b64encode(pieces[event.token_id]).decode("ascii")},
                                     separators=(",", ":")).encode("utf-8")
                head = frame_header(0x1, len(message)) + message
                if frame is not None:
                    ws.send_raw(head + frame_header(0x2, len(frame)), frame)
                else:
                    ws.send_raw(head)
        finally:
            thread.join()
        if ws.gone.is_set():
            return
        if error is None and done is not None and done.finish_reason == FINISH_ERROR:
            error = backend.last_error() or "the generation failed"
        if error is not None or done is None:
            self.ws_error(ws, "INTERNAL", error or "the generation ended without finishing")
            return
        gen_s = done.generation_ms / 1000.0
        ws.send_text({"type": "done", "finish_reason": FINISH.get(done.finish_reason, "aborted"),
                      "token_count": done.token_count, "prompt_tokens": done.prompt_tokens,
                      "timings": {"prompt_ms": max(done.prompt_ms, 0.0), "generation_ms": max(done.generation_ms, 0.0),
                                  "tokens_per_second": done.token_count / gen_s if gen_s > 0 else 0.0}})
        ws.close(1000)


_servers: dict[int, HaloServer] = {}
_servers_lock = threading.Lock()


def serve(handler: BaseHTTPRequestHandler, method: str, kcpp: Any) -> None:
    """Entry point from koboldcpp.py's do_GET/do_POST for the paths in PATHS."""
    with _servers_lock:
        server = _servers.get(id(kcpp))
        if server is None:
            server = _servers[id(kcpp)] = HaloServer(kcpp)
    server.serve(handler, method)
