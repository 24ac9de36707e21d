"""What sentence-transformers computes for a mean-pooled, normalized model, from transformers itself:
the reference the numpy encoders are checked against (the `agreement` extra's torch and transformers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from halo_client.embedding import SentenceEmbedder


def expected_vectors(embedder: SentenceEmbedder, texts: list[str], model_dir: Path, model_class: str,
                     pad_id: int) -> npt.NDArray[np.float32]:
    """transformers' `model_class` (e.g. "BertModel") from `model_dir`, run on `embedder`'s own
    tokens (padded on the right with `pad_id`): mean-pooled over each text's tokens, unit length."""
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - CI installs them; a missing one fails, it is not skipped
        raise ImportError("this test needs torch and transformers: pip install -e '.[agreement]'") from exc
    model = getattr(transformers, model_class).from_pretrained(str(model_dir), local_files_only=True)
    model.train(False)  # inference: no dropout
    encodings = embedder.tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(texts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    out: npt.NDArray[np.float32] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
