"""Run a llama.cpp tree's own `convert_hf_to_gguf.py` on tiny models, with its own `gguf-py`.

    python -m halo_client.testing.gguf_convert TREE HF_DIR OUT.gguf [HF_DIR OUT.gguf ...]

A separate process: the tree's `gguf` package (v1.76's or the current one's) must shadow the one
installed with halo-weave. The converter's model class does all the work (tensor names, Q/K
permutations, norm offsets, hyper-parameters) with `--outtype f32`; only the BPE pre-tokenizer is
named "default" (see `tiny_models`: a made-up vocabulary matches no known pre-tokenizer's hash).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any


def _import_gguf(tree: Path) -> Any:
    sys.path.insert(0, str(tree / "gguf-py"))
    sys.path.insert(0, str(tree))
    # v1.76's gguf-py imports sentencepiece at its top level for SentencePiece vocabularies; the tiny
    # models have a BPE one, so a placeholder stands in while gguf is imported, and is then removed
    # (transformers would take it for the real package).
    placeholder = None
    try:
        importlib.import_module("sentencepiece")
    except ImportError:
        placeholder = types.ModuleType("sentencepiece")
        placeholder.SentencePieceProcessor = None  # type: ignore[attr-defined]
        sys.modules["sentencepiece"] = placeholder
    gguf = importlib.import_module("gguf")
    if placeholder is not None and sys.modules.get("sentencepiece") is placeholder:
        del sys.modules["sentencepiece"]
    return gguf


def _model_class(tree: Path, hf_dir: Path) -> Any:
    if (tree / "conversion").is_dir():  # current llama.cpp: the converter is a package
        conversion: Any = importlib.import_module("conversion")
        hparams = conversion.ModelBase.load_hparams(hf_dir, False)
        architecture = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
        return conversion.get_model_class(architecture, mmproj=False)
    script: Any = importlib.import_module("convert_hf_to_gguf")  # KoboldCPP v1.76's: one module
    hparams = script.Model.load_hparams(hf_dir)
    return script.Model.from_model_architecture(hparams["architectures"][0])


def main(argv: list[str]) -> int:
    if len(argv) < 3 or len(argv) % 2 == 0:
        print(__doc__, file=sys.stderr)
        return 2
    tree = Path(argv[0])
    gguf = _import_gguf(tree)
    import torch

    for hf_dir, out in zip(argv[1::2], argv[2::2], strict=True):
        base = _model_class(tree, Path(hf_dir))

        class TinyVocab(base):  # type: ignore[valid-type,misc]
            model_arch = base.model_arch

            def get_vocab_base_pre(self, tokenizer: Any) -> str:
                return "default"

            def set_vocab(self) -> None:
                self._set_vocab_gpt2()

        with torch.inference_mode():
            TinyVocab(Path(hf_dir), gguf.LlamaFileType.ALL_F32, Path(out)).write()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
