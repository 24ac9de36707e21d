"""KoboldCPP-compatible sampling on fixed logits."""

from __future__ import annotations

import numpy as np

from halo_client.messages import GenerateRequest
from halo_client.serving.sampling import Sampler

LOGITS = np.array([1.0, 5.0, 3.0, 4.9, -2.0, 0.0], np.float32)


def sampler(**kw: object) -> Sampler:
    return Sampler(GenerateRequest(input_ids=[0], **kw))  # type: ignore[arg-type]


def test_temperature_zero_and_top_k_one_are_greedy() -> None:
    assert sampler(temperature=0).sample(LOGITS, []) == 1
    assert sampler(top_k=1, temperature=2.0).sample(LOGITS, []) == 1


def test_banned_tokens_are_never_sampled() -> None:
    s = sampler(temperature=5.0, top_k=0, top_p=1.0, banned_token_ids=[1, 3], sampler_seed=1)
    assert {s.sample(LOGITS, []) for _ in range(300)}.isdisjoint({1, 3})


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    # token 1 (5.0) was just used: 5.0 / 1.1 = 4.55 < 4.9, so greedy moves to token 3
    assert sampler(temperature=0, rep_pen=1.1).sample(LOGITS, [1]) == 3
    assert sampler(temperature=0, rep_pen=1.1, rep_pen_range=1).sample(LOGITS, [1, 0]) == 1


def test_top_k_and_top_p_limit_the_candidates() -> None:
    s = sampler(temperature=10.0, top_k=2, top_p=1.0, sampler_seed=3)
    assert {s.sample(LOGITS, []) for _ in range(300)} == {1, 3}
    # the top two hold ~0.8 of the untempered mass: top_p 0.5 keeps them, 0.3 only the first
    s = sampler(temperature=10.0, top_k=0, top_p=0.3, sampler_seed=3)
    assert {s.sample(LOGITS, []) for _ in range(100)} == {1}


def test_seed_makes_sampling_reproducible() -> None:
    a = sampler(temperature=3.0, top_k=0, top_p=1.0, sampler_seed=7)
    b = sampler(temperature=3.0, top_k=0, top_p=1.0, sampler_seed=7)
    assert [a.sample(LOGITS, []) for _ in range(50)] == [b.sample(LOGITS, []) for _ in range(50)]
    assert len({a.sample(LOGITS, []) for _ in range(200)}) > 2


def test_caller_logits_are_not_modified() -> None:
    logits = LOGITS.copy()
    sampler(rep_pen=2.0, banned_token_ids=[1]).sample(logits, [2, 3])
    np.testing.assert_array_equal(logits, LOGITS)
