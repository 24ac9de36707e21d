"""KoboldCPP's model through its ctypes handle: the exports of expose.cpp (attention_export.cpp
behind them), the generation inputs of a stream request, and the events it queues per token."""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Optional

from .validation import DTYPES, LAYOUTS, Rejected, Request

API_VERSION = 1
#: halo_event_out.finish_reason -> the contract's finish_reason
FINISH = {0: "length", 1: "eos", 2: "stop_token", 3: "aborted"}


def kobold_seed(seed: int) -> int:
    """KoboldCPP takes seeds <= 0 (and 0xFFFFFFFF) as 'random': map every other seed into [1, 2^31 - 2]."""
    if seed < 0:
        return -1
    if 0 < seed < 2 ** 31 - 1:
        return seed
    return (seed - 1) % (2 ** 31 - 2) + 1


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
