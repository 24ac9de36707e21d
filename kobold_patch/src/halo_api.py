"""Halo Weave API for KoboldCPP: attention export next to KoboldCPP's own endpoints.

    GET  /api/v1/model/info        the model, its shape, whether attention export is available
    POST /api/v1/tokenize          token ids of a text, each with its exact bytes (base64)
    POST /api/v1/detokenize        the text of token ids
    WS   /api/v1/generate/stream   generation from input_ids: a `token` message per generated
                                   token, each followed by one binary attention frame when asked

The wire contract is halo-weave's api_spec/ (openapi.yaml, websocket.md). Standard library only:
koboldcpp.py imports this module the first time one of these paths is requested. The WebSocket
(RFC 6455) is served here, inside KoboldCPP's own request handler, on KoboldCPP's own port.

The C side (attention_export.cpp, exported through expose.cpp) captures the attention inside the
compute graph and queues one event per generated token; this module sends them.
"""

import base64
import ctypes
import hashlib
import hmac
import json
import queue
import select
import socket
import struct
import threading
import time

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
FINISH = {0: "length", 1: "eos", 2: "stop_token", 3: "aborted"}
NEEDS_PASSWORD = "this server has a password: send Authorization: Bearer <password>"

STATUS = {"INVALID_REQUEST": 400, "INVALID_TOKEN": 400, "CONTEXT_OVERFLOW": 400, "ATTENTION_UNAVAILABLE": 400,
          "UNAUTHORIZED": 401, "ORIGIN_NOT_ALLOWED": 403, "NOT_FOUND": 404, "PAYLOAD_TOO_LARGE": 413,
          "INTERNAL": 500, "BUSY": 503}

GENERATE_DEFAULTS = {
    "max_length": 100, "temperature": 0.7, "top_p": 0.92, "top_k": 100, "rep_pen": 1.1,
    "rep_pen_range": 320, "sampler_seed": -1, "stop_token_ids": [], "banned_token_ids": [],
    "return_attention": False, "attention_dtype": "float32",
}


class Rejected(Exception):
    """A request the contract refuses, with the error code to answer."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- validation

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and v == v and v not in (float("inf"), float("-inf")))


def _parse_json_object(body):
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected("INVALID_REQUEST", "the request is not valid JSON: %s" % exc) from None
    if not isinstance(obj, dict):
        raise Rejected("INVALID_REQUEST", "the request must be a JSON object")
    return obj


def _check_fields(obj, allowed, required):
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise Rejected("INVALID_REQUEST", "unknown field %s (allowed: %s)" % (unknown[0], ", ".join(sorted(allowed))))
    for name in required:
        if name not in obj:
            raise Rejected("INVALID_REQUEST", "missing field %s" % name)


def _token_list(obj, name, errors, negative):
    value = obj[name]
    if not isinstance(value, list):
        errors.append("%s must be an array of token ids" % name)
        return []
    for t in value:
        if not _is_int(t):
            errors.append("%s holds %r, not an integer token id" % (name, t))
            return []
        if t >= TOKEN_ID_LIMIT:
            errors.append("%s holds %d, larger than any token id" % (name, t))
            return []
        if t < 0:
            negative.append("%s holds token id %d, outside the vocabulary" % (name, t))
            return []
    return value


def parse_generate_request(text):
    """The GenerateRequest of api_spec (schemas/generate_request.json) as a dict with defaults."""
    obj = _parse_json_object(text)
    _check_fields(obj, list(GENERATE_DEFAULTS) + ["input_ids"], ["input_ids"])
    req = dict(GENERATE_DEFAULTS)
    req.update(obj)
    errors, negative = [], []
    for name in ("input_ids", "stop_token_ids", "banned_token_ids"):
        _token_list(req, name, errors, negative)
    if isinstance(req["input_ids"], list) and not req["input_ids"]:
        errors.append("input_ids must hold at least one token id")

    def need(ok, message):
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
    need(req["attention_dtype"] in DTYPES, "attention_dtype must be one of %s" % ", ".join(DTYPES))
    if errors:
        raise Rejected("INVALID_REQUEST", "; ".join(errors[:5]))
    if negative:
        raise Rejected("INVALID_TOKEN", negative[0])
    return req


def check_generate_request(req, info):
    """What the schema cannot see: the vocabulary, the context, attention availability."""
    vocab = info["vocab_size"]
    for name in ("input_ids", "stop_token_ids", "banned_token_ids"):
        bad = [t for t in req[name] if t >= vocab]
        if bad:
            raise Rejected("INVALID_TOKEN", "%s holds token id %d, outside this model's vocabulary [0, %d); "
                           "tokenize with this server's /api/v1/tokenize" % (name, bad[0], vocab))
    total = len(req["input_ids"]) + req["max_length"]
    if total > info["max_context_length"]:
        raise Rejected("CONTEXT_OVERFLOW", "%d input tokens + max_length %d = %d exceeds the server's context of %d "
                       "tokens; prune the conversation or lower max_length (or restart KoboldCPP with a larger "
                       "--contextsize)" % (len(req["input_ids"]), req["max_length"], total, info["max_context_length"]))
    if req["return_attention"]:
        att = info["attention"]
        if not att["available"]:
            raise Rejected("ATTENTION_UNAVAILABLE", "attention export is off on this server: %s" % att["reason"])
        if req["attention_dtype"] not in att["dtypes"]:
            raise Rejected("ATTENTION_UNAVAILABLE", "attention_dtype %s is not offered; this server sends %s"
                           % (req["attention_dtype"], ", ".join(att["dtypes"])))


def parse_tokenize_request(body):
    obj = _parse_json_object(body)
    _check_fields(obj, ["text", "add_special_tokens"], ["text"])
    if not isinstance(obj["text"], str):
        raise Rejected("INVALID_REQUEST", "text must be a string")
    add = obj.get("add_special_tokens", True)
    if not isinstance(add, bool):
        raise Rejected("INVALID_REQUEST", "add_special_tokens must be true or false")
    return obj["text"], add


def parse_detokenize_request(body, vocab):
    obj = _parse_json_object(body)
    _check_fields(obj, ["token_ids"], ["token_ids"])
    errors, negative = [], []
    ids = _token_list(obj, "token_ids", errors, negative)
    if errors:
        raise Rejected("INVALID_REQUEST", errors[0])
    if negative:
        raise Rejected("INVALID_TOKEN", negative[0])
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise Rejected("INVALID_TOKEN", "token id %d is outside the vocabulary [0, %d)" % (bad[0], vocab))
    return ids


def kobold_seed(seed):
    """KoboldCPP takes seeds <= 0 (and 0xFFFFFFFF) as 'random': map every other seed into [1, 2^31 - 2]."""
    if seed < 0:
        return -1
    if 0 < seed < 2 ** 31 - 1:
        return seed
    return (seed - 1) % (2 ** 31 - 2) + 1


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


def register_library(handle):
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

    def __init__(self, kcpp):
        self.kcpp = kcpp
        self.handle = kcpp.handle
        self._info = None
        self._pieces = None
        self._lock = threading.Lock()

    def model_info(self):
        with self._lock:
            if self._info is None:
                out = ModelInfoOut()
                if not self.handle.halo_api_model_info(ctypes.byref(out)):
                    raise Rejected("INTERNAL", "no GGUF text model is loaded: the Halo Weave API needs one")
                name = str(getattr(self.kcpp, "friendlymodelname", "model"))
                if name.startswith("koboldcpp/"):
                    name = name[len("koboldcpp/"):]
                template = out.chat_template.decode("utf-8", "replace") if out.chat_template is not None else None

                def tid(v):
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
                                  "dtypes": list(DTYPES)},
                }
            return self._info

    def tokenize(self, text, add_special):
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (ctypes.c_int * cap)()
            n = self.handle.halo_api_tokenize(data, add_special, add_special, buf, cap)
            if n >= 0:
                return list(buf[:n])
            if n == -1:
                raise Rejected("INTERNAL", "no GGUF text model is loaded: the Halo Weave API needs one")
            cap = -n - 2 + 8

    def pieces(self):
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
                    n = self.handle.halo_api_token_piece(t, buf, 256)
                    if n < -1:
                        big = ctypes.create_string_buffer(-n - 2)
                        n = self.handle.halo_api_token_piece(t, big, len(big))
                        pieces.append(big.raw[:max(n, 0)])
                    else:
                        pieces.append(buf.raw[:max(n, 0)])
                self._pieces = pieces
            return self._pieces

    def start(self, req):
        """Starts handle.generate in a thread; returns it (join it before releasing the model)."""
        kcpp = self.kcpp
        inputs = kcpp.generation_inputs()
        ids = req["input_ids"]
        keep = {
            "ids": (ctypes.c_int * len(ids))(*ids),
            "stop": (ctypes.c_int * max(1, len(req["stop_token_ids"])))(*req["stop_token_ids"]),
            "ban": (ctypes.c_int * max(1, len(req["banned_token_ids"])))(*req["banned_token_ids"]),
        }
        empty = "".encode("utf-8")
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
        inputs.bypass_eos_token = False
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

        def run():
            keep["result"] = self.handle.generate(inputs)  # keep holds the arrays until it returns

        thread = threading.Thread(target=run, name="halo-generate", daemon=True)
        thread.start()
        return thread

    def next_event(self, timeout_ms):
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

    def last_error(self):
        return (self.handle.halo_api_last_error() or b"").decode("utf-8", "replace")

    def abort(self):
        self.handle.abort_generate()

    def generation_finished(self):
        """True when no generation is running (KoboldCPP's own flag, as its SSE streaming reads it)."""
        return bool(self.handle.has_finished())


# --------------------------------------------------------------------------- WebSocket framing

class ProtocolClose(Exception):
    """The connection must be closed with this WebSocket close code."""

    def __init__(self, code, reason):
        Exception.__init__(self, reason)
        self.code = code
        self.reason = reason


def frame_header(opcode, length, fin=True):
    """RFC 6455 section 5.2 header of one unmasked server frame."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def close_payload(code, reason=""):
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


class FrameReader:
    """Reads client frames from a binary file-like object and reassembles messages.

    `next_message()` returns ("text", str) / ("binary", bytes), ("ping", bytes), ("pong", bytes),
    ("close", (code, reason)) or None at EOF, and raises ProtocolClose on a violation: the caller
    closes with that code. Client frames must be masked (1002), messages are limited to
    `max_message` bytes (1009), text must be UTF-8 (1007).
    """

    def __init__(self, rfile, max_message=MAX_MESSAGE):
        self.rfile = rfile
        self.max_message = max_message
        self._parts = []
        self._size = 0
        self._opcode = None

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
        return data

    def _frame(self):
        b0, b1 = self._read(2)
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, length = b1 & 0x80, b1 & 0x7F
        if rsv:
            raise ProtocolClose(1002, "reserved bits set without a negotiated extension")
        if opcode not in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA):
            raise ProtocolClose(1002, "unknown opcode %d" % opcode)
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
            raise ProtocolClose(1009, "message larger than %d bytes" % self.max_message)
        mask = self._read(4)
        payload = self._read(length) if length else b""
        if length:
            # unmask through one big integer XOR: milliseconds even for a 4 MiB message
            key = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
        return bool(fin), opcode, payload

    def next_message(self):
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
                        raise ProtocolClose(1002, "invalid close code %d" % code)
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

    def __init__(self, sock, rfile):
        self.sock = sock
        self.reader = FrameReader(rfile)
        self.messages = queue.Queue()
        self.gone = threading.Event()         # the client closed, vanished, or broke the protocol
        self.close_received = threading.Event()
        self.closed_sent = False
        self.on_message = None                 # called from the reader thread with each text message
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_loop, name="halo-ws-reader", daemon=True)

    def start(self):
        self._thread.start()

    def send_raw(self, *parts):
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

    def send_text(self, obj):
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        return self.send_raw(frame_header(0x1, len(data)) + data)

    def close(self, code=1000, reason=""):
        with self._write_lock:
            if self.closed_sent:
                return
            self.closed_sent = True
            payload = close_payload(code, reason)
            try:
                self.sock.sendall(frame_header(0x8, len(payload)) + payload)
            except OSError:
                pass

    def wait_closed(self, timeout=CLOSE_WAIT_S + 0.5):
        """After our close frame: let the client's come back (or the reader finish draining),
        briefly, for a clean handshake."""
        deadline = time.monotonic() + timeout
        while not self.close_received.is_set() and self._thread.is_alive() and time.monotonic() < deadline:
            self.close_received.wait(0.02)

    def shutdown(self):
        """End the connection: unblocks the reader (the handler's rfile is shared with it, and
        KoboldCPP's handler closes that file once this returns)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(1.0)

    def _lost(self):
        if not self.gone.is_set():
            self.gone.set()
            self.messages.put(None)

    def _read_loop(self):
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

    def _drain(self, seconds=CLOSE_WAIT_S):
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


# --------------------------------------------------------------------------- the server

class HaloServer:
    """The contract's endpoints for one KoboldCPP process (one model, generations serialized)."""

    def __init__(self, kcpp, backend=None):
        self.kcpp = kcpp
        self.backend = backend if backend is not None else KoboldBackend(kcpp)
        self.active = None   # the session generating now

    # ---- shared checks

    def password(self):
        return getattr(self.kcpp, "password", "") or ""

    def allowed_origins(self):
        args = getattr(self.kcpp, "args", None)
        origins = getattr(args, "allowed_origin", None) or []
        return set(o.rstrip("/").lower() for o in origins)

    def authorized(self, headers):
        pw = self.password()
        if not pw:
            return True
        value = headers.get("Authorization") or ""
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), pw.encode("utf-8"))

    def origin_allowed(self, headers):
        origin = headers.get("Origin")
        if origin is None:
            return True  # not a browser: browsers always send Origin with a WebSocket upgrade
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins():
            return True
        host = (headers.get("Host") or "").lower()
        return bool(host) and origin in ("http://" + host, "https://" + host)

    # ---- HTTP plumbing (KoboldCPP's BaseHTTPRequestHandler)

    @staticmethod
    def send_json(handler, status, obj):
        body = json.dumps(obj).encode("utf-8")
        # HTTP/1.1 status line: WebSocket clients refuse an upgrade answered with HTTP/1.0
        handler.protocol_version = "HTTP/1.1"
        handler.close_connection = True
        handler.send_response(status)
        handler.send_header("connection", "close")
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def send_error(self, handler, code, message):
        self.send_json(handler, STATUS[code], {"error": {"code": code, "message": message}})

    def read_body(self, handler):
        length = handler.headers.get("content-length")
        try:
            length = int(length) if length is not None else 0
        except ValueError:
            raise Rejected("INVALID_REQUEST", "bad content-length header") from None
        if length < 0:
            raise Rejected("INVALID_REQUEST", "bad content-length header")
        if length > MAX_BODY:
            if length <= MAX_DRAIN:  # read it so that the client sees the answer, not a reset
                left = length
                while left > 0:
                    chunk = handler.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
            else:
                handler.close_connection = True
            raise Rejected("PAYLOAD_TOO_LARGE", "request bodies are limited to %d bytes" % MAX_BODY)
        return handler.rfile.read(length) if length else b""

    def serve(self, handler, method):
        path = handler.path.split("?", 1)[0].rstrip("/")
        handler.close_connection = True
        try:
            if path == STREAM_PATH and method == "GET" and self.is_upgrade(handler.headers):
                self.upgrade(handler)
                return
            body = self.read_body(handler) if method == "POST" else b""
            if not self.authorized(handler.headers):
                raise Rejected("UNAUTHORIZED", NEEDS_PASSWORD)
            if path == STREAM_PATH:
                raise Rejected("INVALID_REQUEST", "%s is a WebSocket: connect with a WebSocket client" % STREAM_PATH)
            want = "GET" if path == "/api/v1/model/info" else "POST"
            if method != want:
                raise Rejected("INVALID_REQUEST", "%s takes %s, not %s" % (path, want, method))
            if path == "/api/v1/model/info":
                result = self.backend.model_info()
            elif path == "/api/v1/tokenize":
                text, add = parse_tokenize_request(body)
                self.backend.model_info()
                ids = self.backend.tokenize(text, add)
                pieces = self.backend.pieces()
                result = {"tokens": [{"token_id": t, "piece": base64.b64encode(pieces[t]).decode("ascii")} for t in ids],
                          "token_ids": ids, "token_count": len(ids)}
            else:
                ids = parse_detokenize_request(body, self.backend.model_info()["vocab_size"])
                pieces = self.backend.pieces()
                result = {"text": b"".join(pieces[t] for t in ids).decode("utf-8", "replace")}
            self.send_json(handler, 200, result)
        except Rejected as exc:
            self.send_error(handler, exc.code, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - the contract answers every failure with a body
            try:
                self.send_error(handler, "INTERNAL", "%s: %s" % (type(exc).__name__, exc))
            except OSError:
                pass

    @staticmethod
    def is_upgrade(headers):
        return (headers.get("Upgrade") or "").strip().lower() == "websocket"

    # ---- the stream

    def upgrade(self, handler):
        headers = handler.headers
        if not self.authorized(headers):
            raise Rejected("UNAUTHORIZED", NEEDS_PASSWORD)
        if not self.origin_allowed(headers):
            raise Rejected("ORIGIN_NOT_ALLOWED", "Origin %s may not open this stream; start KoboldCPP with "
                           "--allowed-origin %s to allow it" % (headers.get("Origin"), headers.get("Origin")))
        connection = [t.strip().lower() for t in (headers.get("Connection") or "").split(",")]
        key = (headers.get("Sec-WebSocket-Key") or "").strip()
        try:
            key_ok = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            key_ok = False
        if "upgrade" not in connection or headers.get("Sec-WebSocket-Version", "").strip() != "13" or not key_ok:
            raise Rejected("INVALID_REQUEST", "not a valid WebSocket upgrade (RFC 6455: Connection: Upgrade, "
                           "Sec-WebSocket-Version: 13, a 16-byte Sec-WebSocket-Key)")
        sock = handler.connection
        response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Accept: %s\r\n\r\n" % accept_key(key)).encode("ascii")
        handler.wfile.flush()
        sock.sendall(response)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        sock.settimeout(None)
        ws = WebSocket(sock, handler.rfile)
        ws.start()
        try:
            self.session(ws)
        except Exception as exc:  # noqa: BLE001 - after the 101 only a WebSocket message can say it
            self.ws_error(ws, "INTERNAL", "%s: %s" % (type(exc).__name__, exc))
        finally:
            ws.wait_closed()
            ws.shutdown()

    def session(self, ws):
        try:
            text = ws.messages.get(timeout=FIRST_MESSAGE_TIMEOUT_S)
        except queue.Empty:
            self.ws_error(ws, "INVALID_REQUEST", "no generation request within %g s" % FIRST_MESSAGE_TIMEOUT_S)
            return
        if text is None:
            return
        try:
            req = parse_generate_request(text)
            check_generate_request(req, self.backend.model_info())
        except Rejected as exc:
            self.ws_error(ws, exc.code, exc.message)
            return
        except Exception as exc:  # noqa: BLE001
            self.ws_error(ws, "INTERNAL", "%s: %s" % (type(exc).__name__, exc))
            return
        busy = self.kcpp.modelbusy
        if not busy.acquire(blocking=False):
            active = self.active
            if active is not None:
                # a generation whose client is gone ends within a token: wait for it rather than
                # answer BUSY to the client that replaced it (a re-request after pruning)
                ending = active.gone.is_set() or getattr(active, "abort_requested", False)
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

    def ws_error(self, ws, code, message):
        ws.send_text({"type": "error", "code": code, "message": message})
        ws.close(1000)

    def generate(self, ws, req):
        backend = self.backend
        pieces = backend.pieces()
        ws.abort_requested = False

        def on_message(text):
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
                            error = "the generation ended without finishing: " + (backend.last_error() or "unknown error")
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
        if error is not None:
            self.ws_error(ws, "INTERNAL", error)
            return
        gen_s = done.generation_ms / 1000.0
        ws.send_text({"type": "done", "finish_reason": FINISH.get(done.finish_reason, "aborted"),
                      "token_count": done.token_count, "prompt_tokens": done.prompt_tokens,
                      "timings": {"prompt_ms": max(done.prompt_ms, 0.0), "generation_ms": max(done.generation_ms, 0.0),
                                  "tokens_per_second": done.token_count / gen_s if gen_s > 0 else 0.0}})
        ws.close(1000)


_servers = {}
_servers_lock = threading.Lock()


def serve(handler, method, kcpp):
    """Entry point from koboldcpp.py's do_GET/do_POST for the paths in PATHS."""
    with _servers_lock:
        server = _servers.get(id(kcpp))
        if server is None:
            server = _servers[id(kcpp)] = HaloServer(kcpp)
    server.serve(handler, method)
