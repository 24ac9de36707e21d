"""`LlamaCppBackend`: current llama.cpp (the Halo Weave build of libllama) as a `ModelBackend`.

llama.cpp does the model's work (`llama_decode`, with its KV cache, threads, GPU or RPC
devices); the attention of the newest position comes from the capture inside llama.cpp's graph,
already reduced to the request's layout when it asks for `layer_stats` or `model_stats`.
Sampling, stop tokens and banned tokens stay with the contract's server (`serving/`), over the
logits this backend returns, so every engine follows the same rules.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import numpy as np

from halo_client.frame import frame_shape
from halo_client.llama_cpp.library import (
    CAPTURE_CODES,
    EXPORT_MODES,
    EngineInfo,
    EngineParams,
    LlamaLibraryError,
    find_library,
    load_library,
)
from halo_client.messages import AttentionLayout, AttentionSupport, ModelInfo
from halo_client.serving.backend import ForwardResult

ExportMode = Literal["on", "f32kv", "off"]
_LAYOUTS: Final[list[AttentionLayout]] = ["full", "layer_stats", "model_stats"]


class LlamaCppError(LlamaLibraryError):
    """llama.cpp failed a decode (the message says why); the cached sequence is forgotten."""


class LlamaCppBackend:
    """Implements `ModelBackend` (and `ReducesInGraph`) over libllama.

    `n_ctx`: the server's context (the KV cache). `n_threads`: decoding threads (0: every CPU).
    `n_gpu_layers`: layers on the GPU or RPC devices (-1: all, 0: none).
    `attention_export`: "on" (flash attention disabled, F16 KV cache as llama.cpp's default),
    "f32kv" (an F32 KV cache: keys and values not rounded to F16), "off" (llama.cpp's defaults,
    flash attention included; no frames). `rpc_servers`: "host:port,..." of ggml rpc-servers to
    spread the layers over. `context_shift`: a re-request that drops a span of the cached
    sequence moves the rest down (llama.cpp re-ropes its keys) instead of recomputing it.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, library: str | os.PathLike[str] | None = None,
                 n_ctx: int = 4096, n_threads: int = 0, n_threads_batch: int = 0, n_batch: int = 512,
                 n_gpu_layers: int = -1, attention_export: ExportMode = "on", swa_full: bool = False,
                 context_shift: bool = False, rpc_servers: str | None = None) -> None:
        self.path = Path(model_path)
        self.library_path = find_library(library)
        self._lib = load_library(self.library_path)
        params = EngineParams(
            model_path=str(self.path).encode(), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch,
            n_batch=n_batch, n_gpu_layers=n_gpu_layers, export_mode=EXPORT_MODES[attention_export],
            swa_full=int(swa_full), context_shift=int(context_shift),
            rpc_servers=rpc_servers.encode() if rpc_servers else None)
        err = ctypes.create_string_buffer(1024)
        # 0: every CPU (llama.cpp's own default is a fixed 4, too many on a small machine)
        n_threads = n_threads or os.cpu_count() or 4
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch or n_threads
        handle = self._lib.halo_engine_load(ctypes.byref(params), err, len(err))
        if not handle:
            raise LlamaLibraryError(f"llama.cpp could not serve {self.path}: {err.value.decode(errors='replace')}")
        self._engine = ctypes.c_void_p(handle)
        self._lock = threading.Lock()  # close() against a call in flight
        info = EngineInfo()
        self._lib.halo_engine_get_info(self._engine, ctypes.byref(info))
        self.engine_info = info
        self.n_vocab = int(info.n_vocab)
        self.architecture = (info.arch or b"").decode()
        self.description = (info.description or b"").decode()
        self.flash_attention = bool(info.flash_attn)
        self._layout: AttentionLayout = "full"
        self._frames = 0  # this generation's frames and the bytes they read from the capture (logged)
        self._frames_layout: AttentionLayout = "full"
        self._capture_read = [0, 0]
        self._frame_buffer = np.empty(0, np.float32)
        self._pieces: dict[int, bytes] = {}
        self._info = self._make_info(info)

    def _make_info(self, info: EngineInfo) -> ModelInfo:
        def token(value: int) -> int | None:
            return value if value >= 0 else None

        reason = (info.reason or b"").decode() or None
        # a model without attention (recurrent: Mamba, RWKV) has no heads; the contract counts at
        # least one, and its attention is unavailable anyway
        heads, kv_heads = max(1, info.n_head), max(1, info.n_head_kv)
        return ModelInfo(
            model_name=self.path.stem, architecture=self.architecture, vocab_size=info.n_vocab,
            num_layers=info.n_layer, num_attention_heads=heads, num_key_value_heads=kv_heads,
            hidden_size=info.n_embd, max_context_length=info.n_ctx, max_trained_context=info.n_ctx_train,
            bos_token_id=token(info.bos), eos_token_id=token(info.eos), eot_token_id=token(info.eot),
            rope_freq_base=float(info.rope_freq_base), rope_freq_scale=float(info.rope_freq_scale),
            chat_template=info.chat_template.decode() if info.chat_template is not None else None,
            attention_api_version=1,
            attention=AttentionSupport(available=bool(info.attention_available),
                                       reason=None if info.attention_available else reason,
                                       dtypes=["float32", "float16"], layouts=list(_LAYOUTS)),
        )

    # ---- ModelBackend

    def model_info(self) -> ModelInfo:
        return self._info

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            out = (ctypes.c_int32 * cap)()
            n = self._lib.halo_engine_tokenize(self._engine, data, len(data), int(add_special_tokens),
                                               int(add_special_tokens), out, cap)
            if n >= 0:
                return list(out[:n])
            cap = -n

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.halo_engine_token_piece(self._engine, token_id, buf, len(buf))
            if n < 0 and n != -(2**31):
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.halo_engine_token_piece(self._engine, token_id, buf, len(buf))
            if n < 0:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.n_vocab})")
            piece = buf.raw[:n]
            self._pieces[token_id] = piece
        return piece

    def set_attention_layout(self, layout: AttentionLayout) -> None:
        """The layout the next generation's frames come in (computed in llama.cpp's graph)."""
        self._layout = layout

    def prefill(self, input_ids: Sequence[int], want_attention: bool) -> ForwardResult:
        self._log_frames()  # a prefill starts a generation: the last one's frames are counted
        ids = (ctypes.c_int32 * len(input_ids))(*input_ids)
        capture = CAPTURE_CODES[self._layout] if want_attention else 0
        self._check(self._lib.halo_engine_prefill(self._engine, ids, len(input_ids), capture))
        return self._result(want_attention)

    def decode(self, token_id: int, want_attention: bool) -> ForwardResult:
        capture = CAPTURE_CODES[self._layout] if want_attention else 0
        self._check(self._lib.halo_engine_decode(self._engine, token_id, capture))
        return self._result(want_attention)

    # ---- the rest

    @property
    def n_past(self) -> int:
        """Positions the KV cache holds (the sequence so far)."""
        return int(self._lib.halo_engine_n_past(self._engine))

    def capture_bytes(self) -> tuple[int, int]:
        """Bytes the last frame read from the capture, and how many of them came from a device
        (a GPU or an RPC server) rather than host memory."""
        total, device = ctypes.c_int64(), ctypes.c_int64()
        self._lib.halo_engine_capture_bytes(self._engine, ctypes.byref(total), ctypes.byref(device))
        return int(total.value), int(device.value)

    def reset(self) -> None:
        """Forget the cached sequence (the next prefill computes every position)."""
        self._lib.halo_engine_reset(self._engine)

    def _log_frames(self) -> None:
        """One line per generation with frames, as the KoboldCPP patch logs it (bench_context.py
        reads it): what a frame read from the capture, and how much of it from a device."""
        if self._frames:
            kib = 1024.0 * self._frames
            print(f"Attention export: {self._frames} frames ({self._frames_layout}), "
                  f"{self._capture_read[0] / kib:.1f} KiB per frame read from the capture, "
                  f"{self._capture_read[1] / kib:.1f} KiB of it from a device", file=sys.stderr, flush=True)
        self._frames = 0
        self._capture_read = [0, 0]

    def close(self) -> None:
        self._log_frames()
        with self._lock:
            if self._engine:
                self._lib.halo_engine_free(self._engine)
                self._engine = ctypes.c_void_p()

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, rc: int) -> None:
        if rc != 0:
            message = (self._lib.halo_engine_error(self._engine) or b"").decode(errors="replace")
            raise LlamaCppError(f"llama.cpp: {message}")

    def _result(self, want_attention: bool) -> ForwardResult:
        logits = np.ctypeslib.as_array(self._lib.halo_engine_logits(self._engine), shape=(self.n_vocab,))
        if not want_attention:
            return ForwardResult(logits, None)
        info = self._info
        shape = frame_shape(self._layout, info.num_layers, info.num_attention_heads, self.n_past)
        size = int(np.prod(shape))
        if self._frame_buffer.size < size:  # grown in steps: a frame per token, one buffer
            self._frame_buffer = np.empty(max(size, 2 * self._frame_buffer.size), np.float32)
        frame = self._frame_buffer[:size]
        out = frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self._check(self._lib.halo_engine_attention(self._engine, out, size))
        read, from_device = self.capture_bytes()
        self._frames += 1
        self._frames_layout = self._layout
        self._capture_read[0] += read
        self._capture_read[1] += from_device
        return ForwardResult(logits, frame.reshape(shape), layout=self._layout)
