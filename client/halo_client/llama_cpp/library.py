"""The Halo Weave build of libllama, through ctypes: where it is, and its C interface.

`kobold_patch/llama.cpp/halo_engine.h` is the interface; this module mirrors its two structures
and declares its functions. `make patch-and-build HOST=llama.cpp` builds the library into
`build/llama.cpp-0.3.36/build-<backend>/bin/libllama.so`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from halo_client.errors import HaloError

#: the environment variable naming the library (the CLI's --llama-lib wins over it)
LIB_ENV: Final = "HALO_LLAMA_LIB"
#: the llama.cpp version the build takes (the llama-cpp-python sdist that vendors it)
LLAMA_CPP_TREE: Final = "llama.cpp-0.3.36"
_REPO: Final = Path(__file__).resolve().parents[3]

#: capture codes (halo_engine.h's halo_engine_capture): 0 none, 1 + the layout's code
CAPTURE_CODES: Final = {"full": 1, "layer_stats": 2, "model_stats": 3}
#: export modes (halo_engine_export)
EXPORT_MODES: Final = {"off": 0, "on": 1, "f32kv": 2}


class LlamaLibraryError(HaloError):
    """The Halo Weave libllama is missing, not a Halo Weave build, or refused a model."""


class EngineParams(ctypes.Structure):
    _fields_ = [
        ("model_path", ctypes.c_char_p),
        ("n_ctx", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("n_threads_batch", ctypes.c_int32),
        ("n_batch", ctypes.c_int32),
        ("n_gpu_layers", ctypes.c_int32),
        ("export_mode", ctypes.c_int32),
        ("swa_full", ctypes.c_int32),
        ("context_shift", ctypes.c_int32),
        ("rpc_servers", ctypes.c_char_p),
    ]


class EngineInfo(ctypes.Structure):
    _fields_ = [
        ("attention_available", ctypes.c_int32),
        ("n_vocab", ctypes.c_int32),
        ("n_layer", ctypes.c_int32),
        ("n_head", ctypes.c_int32),
        ("n_head_kv", ctypes.c_int32),
        ("n_embd", ctypes.c_int32),
        ("n_ctx_train", ctypes.c_int32),
        ("n_ctx", ctypes.c_int32),
        ("n_swa", ctypes.c_int32),
        ("bos", ctypes.c_int32),
        ("eos", ctypes.c_int32),
        ("eot", ctypes.c_int32),
        ("add_bos", ctypes.c_int32),
        ("flash_attn", ctypes.c_int32),
        ("kv_f32", ctypes.c_int32),
        ("rope_freq_base", ctypes.c_float),
        ("rope_freq_scale", ctypes.c_float),
        ("arch", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("chat_template", ctypes.c_char_p),
        ("reason", ctypes.c_char_p),
    ]


def default_library_paths() -> list[Path]:
    """Where `make patch-and-build HOST=llama.cpp` puts the library, CUDA build first, for this
    checkout (the package's source tree) and for the current directory."""
    roots = [_REPO, Path.cwd()]
    names = ("build-cuda", "build-cpu", "build-cuda-rpc", "build-cpu-rpc")
    seen: list[Path] = []
    for root in roots:
        for name in names:
            path = root / "build" / LLAMA_CPP_TREE / name / "bin" / "libllama.so"
            if path not in seen:
                seen.append(path)
    return seen


def find_library(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The library to load: `explicit`, else $HALO_LLAMA_LIB, else the first built default."""
    for given in (explicit, os.environ.get(LIB_ENV) or None):
        if given:
            path = Path(given)
            if not path.is_file():
                raise LlamaLibraryError(f"No Halo Weave libllama at {path} (no such file).",
                                        "Build it with: make patch-and-build HOST=llama.cpp BACKEND=cpu (or cuda); "
                                        f"or name a build ({LIB_ENV}).")
            return path
    for path in default_library_paths():
        if path.is_file():
            return path
    raise LlamaLibraryError(
        "No Halo Weave build of libllama found (looked in build/" + LLAMA_CPP_TREE + "/build-*/bin).",
        f"Build it with: make patch-and-build HOST=llama.cpp BACKEND=cpu (or cuda); or name one with {LIB_ENV}=PATH.")


_P = ctypes.c_void_p
_I32 = ctypes.c_int32
_PROTOTYPES: Final[dict[str, tuple[type | None, Sequence[type]]]] = {
    "halo_engine_load": (_P, (ctypes.POINTER(EngineParams), ctypes.c_char_p, ctypes.c_size_t)),
    "halo_engine_free": (None, (_P,)),
    "halo_engine_error": (ctypes.c_char_p, (_P,)),
    "halo_engine_get_info": (None, (_P, ctypes.POINTER(EngineInfo))),
    "halo_engine_tokenize": (_I32, (_P, ctypes.c_char_p, _I32, _I32, _I32, ctypes.POINTER(_I32), _I32)),
    "halo_engine_token_piece": (_I32, (_P, _I32, ctypes.c_char_p, _I32)),
    "halo_engine_prefill": (_I32, (_P, ctypes.POINTER(_I32), _I32, _I32)),
    "halo_engine_decode": (_I32, (_P, _I32, _I32)),
    "halo_engine_logits": (ctypes.POINTER(ctypes.c_float), (_P,)),
    "halo_engine_n_past": (_I32, (_P,)),
    "halo_engine_attention": (_I32, (_P, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t)),
    "halo_engine_capture_bytes": (None, (_P, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64))),
    "halo_engine_reset": (None, (_P,)),
}

_loaded: dict[Path, ctypes.CDLL] = {}


def load_library(path: Path) -> ctypes.CDLL:
    """The library at `path` with its functions declared (loaded once per process; one build per
    process: every build's libggml*.so have the same sonames, so a second build would run on the
    first one's, e.g. without the RPC backend it was built with)."""
    path = path.resolve()
    if path in _loaded:
        return _loaded[path]
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise LlamaLibraryError(f"Could not load {path}: {exc}.",
                                "It needs its libggml*.so next to it, as the build leaves them.") from exc
    if not hasattr(lib, "halo_engine_load"):
        raise LlamaLibraryError(f"{path} is a libllama without Halo Weave's attention export (no halo_engine_load).",
                                "Build the Halo Weave one with: make patch-and-build HOST=llama.cpp")
    for other in _loaded:
        if other.parent != path.parent:
            # its libggml*.so have the sonames of the first build's, which the dynamic linker reuses
            raise LlamaLibraryError(f"This process already serves the libllama at {other}; the build at {path} "
                                    "cannot run next to it (it would run on the first build's libggml).",
                                    "Use one build per process (start another process for the other build).")
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = list(argtypes)
    _loaded[path] = lib
    return lib
