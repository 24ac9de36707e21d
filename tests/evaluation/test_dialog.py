"""Playing a conversation on a real (tiny) model: frames, surprisal, the tail's reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from halo_client.evaluation.conversations import make_conversation
from halo_client.evaluation.dialog import play
from halo_client.evaluation.model import InProcessModel, log_softmax
from halo_client.reference import ReferenceBackend
from halo_client.serving.backend import ForwardResult


def conversation(backend: ReferenceBackend, seed: int = 3, tail: str = "FQQ"):  # type: ignore[no-untyped-def]
    return make_conversation(seed, count_tokens=lambda t: len(backend.tokenize(t, False)), min_tokens=700,
                             max_tokens=1000, reply_tokens=8, tail=tail)


def test_play_keeps_what_policies_and_measures_need(tiny: ReferenceBackend, tmp_path: Path) -> None:
    model = InProcessModel(tiny)
    conv = conversation(tiny)
    dialog = play(conv, model, reply_tokens=8, probe_tokens=12, cache_dir=tmp_path)
    state = dialog.history_state()
    im_start = tiny.tokenize("<|im_start|>", True)[-1]
    assert state.input_ids().count(im_start) == len(state.turns) == 1 + len(conv.messages)
    assert dialog.history_tokens == len(state)
    replies = [t for t in dialog.history if t.role == "assistant"]
    assert len(dialog.frames) == sum(len(t.content) for t in replies)  # one frame per generated token
    for frame in dialog.frames:
        assert np.isclose(frame.values.sum(), 1.0, atol=1e-4)  # rows sum to 1, so does their mean
        assert frame.values.shape == frame.positions.shape
    tail_tokens = sum(s.user.size + s.reply.size for s in dialog.tail)
    assert len(dialog.surprisal) == len(state) + tail_tokens and (dialog.surprisal >= 0).all()
    assert [s.step.kind for s in dialog.tail] == ["fidelity", "question", "question"]
    for step in dialog.tail:
        assert step.reference.shape == (len(step.reply.content), model.info.vocab_size)
        np.testing.assert_allclose(np.exp(step.reference).sum(axis=1), 1.0, atol=1e-4)
    question = dialog.tail[1]
    assert question.step.fact is not None
    a, b = question.answer
    answer = b"".join(p for _, p in question.reply.content[a:b]).decode()
    assert answer.strip() == question.step.fact.answer
    # a rerun replays the cached replies in one pass each: the same conversation, the same numbers
    again = play(conv, model, reply_tokens=8, probe_tokens=12, cache_dir=tmp_path)
    assert again.history_state().input_ids() == state.input_ids()
    np.testing.assert_allclose(again.surprisal, dialog.surprisal, atol=1e-4)
    np.testing.assert_allclose(again.tail[0].reference, dialog.tail[0].reference, atol=1e-4)
    for f, g in zip(again.frames, dialog.frames, strict=True):
        np.testing.assert_array_equal(f.positions, g.positions)
        np.testing.assert_allclose(f.values, g.values, atol=1e-5)


class StepByStep:
    """The reference backend without its rows pass: what any other backend offers."""

    def __init__(self, backend: ReferenceBackend) -> None:
        self.inner = backend

    def model_info(self):  # type: ignore[no-untyped-def]
        return self.inner.model_info()

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.inner.tokenize(text, add_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        return self.inner.token_bytes(token_id)

    def prefill(self, input_ids: Sequence[int], want_attention: bool) -> ForwardResult:
        return self.inner.prefill(input_ids, want_attention)

    def decode(self, token_id: int, want_attention: bool) -> ForwardResult:
        return self.inner.decode(token_id, want_attention)


def test_rows_from_any_backend_are_the_native_rows(tiny: ReferenceBackend, tiny_path: Path) -> None:
    ids = tiny.tokenize("the cat sat on the mat. then it ran away from the dog!", False)
    native = InProcessModel(tiny).rows(ids, 6, True)
    stepped = InProcessModel(StepByStep(ReferenceBackend(tiny_path, n_ctx=512))).rows(ids, 6, True)
    np.testing.assert_allclose(native[0], stepped[0], atol=1e-4)
    assert native[1] is not None and stepped[1] is not None
    np.testing.assert_allclose(native[1], stepped[1], atol=1e-5)
    np.testing.assert_allclose(np.exp(log_softmax(native[0])).sum(axis=1), 1.0)
