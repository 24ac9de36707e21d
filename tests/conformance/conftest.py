"""The conformance suite: every rule of api_spec/, checked against any server.

    pytest tests/conformance                                  # the built-in servers, in process
    pytest tests/conformance --server-url http://127.0.0.1:5001 [--server-password PW]
                             [--model-path MODEL.gguf]        # a running server, e.g. patched KoboldCPP

With `--model-path`, each frame is also compared with the reference backend's frame for the
same tokens (fidelity). Built-in targets: the mock server (its oracle is the mock backend) and
every registered reference target.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from halo_client.serving.backend import ModelBackend
from halo_client.serving.server import ContractServer
from halo_client.testing import MockBackend, MockKoboldServer
from halo_client.testing.threaded import ServerThread

PASSWORD = "conformance-pw"
ALLOWED_ORIGIN = "https://allowed.example"


@dataclass
class Target:
    name: str
    url: str
    password: str | None
    #: builds a backend that recomputes the server's frames; None: fidelity is not checked
    oracle: Callable[[], ModelBackend] | None
    #: fidelity tolerances
    max_abs: float = 1e-5
    mean_tv: float = 1e-5
    top1: float = 1.0
    #: the in-process server, when there is one (its own counters back some checks)
    server: ContractServer | None = None
    allowed_origin: str | None = None
    notes: list[str] = field(default_factory=list)


Tolerances = dict[str, float]  # Target's max_abs, mean_tv, top1
#: name -> factory of (server, oracle factory, tolerances); reference targets register here
BUILTIN: dict[str, Callable[[], tuple[ContractServer, Callable[[], ModelBackend], Tolerances]]] = {}


def _mock() -> tuple[ContractServer, Callable[[], ModelBackend], dict[str, float]]:
    server = MockKoboldServer(password=PASSWORD, allowed_origins=(ALLOWED_ORIGIN,),
                              backend=MockBackend(max_context_length=4096))
    return server, MockBackend, {}


def _reference(path: Path, n_ctx: int) -> tuple[ContractServer, Callable[[], ModelBackend], dict[str, float]]:
    from halo_client.reference import ReferenceBackend

    server = ContractServer(ReferenceBackend(path, n_ctx=n_ctx), password=PASSWORD, port=0,
                            allowed_origins=(ALLOWED_ORIGIN,))
    oracle = ReferenceBackend(path, n_ctx=n_ctx)  # one instance: prefill serves any sequence
    return server, lambda: oracle, {"max_abs": 1e-5}


def _reference_tiny() -> tuple[ContractServer, Callable[[], ModelBackend], dict[str, float]]:
    from halo_client.reference.tiny_model import write_tiny_llama

    return _reference(write_tiny_llama(Path(tempfile.mkdtemp()) / "tiny.gguf", n_ctx=4096), 4096)


def _reference_smollm2() -> tuple[ContractServer, Callable[[], ModelBackend], dict[str, float]]:
    from halo_client.reference import default_model

    return _reference(default_model(), 2048)


def _llama_cpp(path: Path, n_ctx: int, tolerances: Tolerances) -> tuple[
        ContractServer, Callable[[], ModelBackend], Tolerances]:
    """The llama.cpp engine (the Halo Weave libllama) in this process; its oracle is the reference
    backend rounding K, V and the query to F16 as llama.cpp's default KV cache does."""
    from halo_client.llama_cpp import LlamaCppBackend
    from halo_client.reference import ReferenceBackend

    server = ContractServer(LlamaCppBackend(path, n_ctx=n_ctx, n_threads=2), password=PASSWORD, port=0,
                            allowed_origins=(ALLOWED_ORIGIN,))
    oracle = ReferenceBackend(path, n_ctx=n_ctx, kv_cache="f16")
    return server, lambda: oracle, tolerances


def _llama_cpp_tiny() -> tuple[ContractServer, Callable[[], ModelBackend], Tolerances]:
    from halo_client.reference.tiny_model import write_tiny_llama

    path = write_tiny_llama(Path(tempfile.mkdtemp()) / "tiny.gguf", n_ctx=4096)
    return _llama_cpp(path, 4096, {"max_abs": 2e-3, "mean_tv": 1e-3, "top1": 0.99})


def _llama_cpp_smollm2() -> tuple[ContractServer, Callable[[], ModelBackend], Tolerances]:
    from halo_client.reference import default_model

    # Q4_1 weights: llama.cpp also quantizes activations to 8 bits (see _default_max_abs)
    return _llama_cpp(default_model(), 2048, {"max_abs": 0.1, "mean_tv": 0.015, "top1": 0.97})


BUILTIN["mock"] = _mock
BUILTIN["reference-tiny"] = _reference_tiny
BUILTIN["reference-smollm2"] = _reference_smollm2
BUILTIN["llama.cpp-tiny"] = _llama_cpp_tiny
BUILTIN["llama.cpp-smollm2"] = _llama_cpp_smollm2
#: targets that load the real model (marked `model`: `make test-fast` leaves them out)
LOADS_A_MODEL = frozenset({"reference-smollm2", "llama.cpp-smollm2"})
#: targets that need the Halo Weave build of libllama (make patch-and-build HOST=llama.cpp)
NEEDS_LLAMA_LIB = frozenset({"llama.cpp-tiny", "llama.cpp-smollm2"})


def _llama_lib_missing() -> str | None:
    """Why the llama.cpp targets cannot run here, or None."""
    from halo_client.llama_cpp import LlamaLibraryError, find_library

    try:
        find_library()
    except LlamaLibraryError as exc:
        return (f"{exc.message} The llama.cpp engine's conformance needs it: make patch-and-build HOST=llama.cpp "
                "BACKEND=cpu (CI builds it and runs these), or HALO_LLAMA_LIB=PATH")
    return None


def _default_max_abs(model_path: str) -> float:
    """The largest |server - reference| of one attention value a C++ server may show by default.

    An all-F32 model leaves only the server's F16 KV cache and summation order: 2e-3. Quantized
    weights add llama.cpp's 8-bit quantization of activations in every matmul, which moves a single
    sharply peaked value by up to ~0.055 (SmolLM2 Q4_1, measured) while the mean total-variation
    distance stays near 0.011: 0.1 still catches a shifted column or a stale layer (errors of ~0.5).
    """
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(model_path)
    all_f32 = all(t.tensor_type == GGMLQuantizationType.F32 for t in reader.tensors)
    return 2e-3 if all_f32 else 0.1


def _reference_runs(model_path: str) -> bool:
    """The numpy reference (the fidelity oracle) runs llama-family GGUFs only."""
    from gguf import GGUFReader

    field = GGUFReader(model_path).get_field("general.architecture")
    return field is not None and field.contents() == "llama"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("halo conformance")
    group.addoption("--server-url", default=None, help="check a running server instead of the built-in ones")
    group.addoption("--server-password", default=None, help="the running server's --password")
    group.addoption("--allowed-origin", default=None, help="an Origin the running server allows")
    group.addoption("--server-pid", type=int, default=None,
                    help="pid of the running server: lets the suite measure its memory")
    group.addoption("--model-path", default=None, help="GGUF the running server runs: enables fidelity")
    group.addoption("--kobold-host-api", action="store_true", default=False,
                    help="the running server also serves KoboldCPP's own API (the patched KoboldCPP): check that "
                         "Halo Weave traffic leaves KoboldCPP's answers unchanged, and judge aborts by its counters")
    group.addoption("--server-kv-cache", choices=["f16", "f32"], default="f16",
                    help="the running server's KV cache type, which the reference reproduces: f16 is "
                         "llama.cpp's and KoboldCPP's default, f32 is KoboldCPP's --attentionexport f32kv")
    group.addoption("--fidelity-max-abs", type=float, default=None,
                    help="largest allowed |server - reference| of one attention value (default: 2e-3 for an "
                         "all-F32 model, 0.1 for a quantized one)")
    group.addoption("--fidelity-mean-tv", type=float, default=None,
                    help="largest allowed mean total-variation distance of a row")
    group.addoption("--fidelity-top1", type=float, default=None,
                    help="smallest allowed share of rows whose most-attended column agrees")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        names = ["external"] if metafunc.config.getoption("--server-url") else list(BUILTIN)
        missing = _llama_lib_missing() if NEEDS_LLAMA_LIB & set(names) else None
        params = []
        for n in names:
            marks: list[pytest.MarkDecorator] = [pytest.mark.model] if n in LOADS_A_MODEL else []
            if n in NEEDS_LLAMA_LIB:
                marks.append(pytest.mark.process)  # (runs llama.cpp's threads; left out by make test-fast)
                if missing:
                    marks.append(pytest.mark.skip(reason=missing))
            params.append(pytest.param(n, marks=marks))
        metafunc.parametrize("target", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    config = request.config
    if request.param == "external":
        model_path = config.getoption("--model-path")
        oracle = None
        notes: list[str] = []
        if model_path and _reference_runs(model_path):
            from halo_client.reference import load_backend

            kv_cache = config.getoption("--server-kv-cache")

            def oracle() -> ModelBackend:
                return load_backend(model_path, kv_cache=kv_cache)

        elif model_path:
            notes.append("the numpy reference runs llama-family GGUFs only: this model's fidelity is checked against "
                         "HF transformers by the fidelity tests, not here")
        default_max_abs = _default_max_abs(model_path) if model_path else 0.0
        yield Target(
            name="external", url=config.getoption("--server-url").rstrip("/"),
            password=config.getoption("--server-password"), oracle=oracle,
            max_abs=config.getoption("--fidelity-max-abs") or default_max_abs,
            mean_tv=config.getoption("--fidelity-mean-tv") or 0.015,
            top1=config.getoption("--fidelity-top1") or 0.97,
            allowed_origin=config.getoption("--allowed-origin"), notes=notes,
        )
        return
    server, oracle_factory, tolerances = BUILTIN[request.param]()
    with ServerThread(lambda: server) as running:
        target = Target(name=request.param, url=running.url, password=PASSWORD, oracle=oracle_factory,
                        server=server, allowed_origin=ALLOWED_ORIGIN)
        for key, value in tolerances.items():
            setattr(target, key, value)
        yield target
