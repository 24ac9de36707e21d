"""The fidelity harness itself: the cache-reuse plan, the statistics, the requests, and the
transformers cache replay that stands for a server that shifts its KV cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from halo_client.testing.fidelity import PROMPT_TOKENS, Agreement, agreement, requests
from halo_client.testing.hf_attention import reuse_plan
from halo_client.testing.tiny_models import ARCHITECTURES, special_ids, vocabulary


def test_reuse_plan_prefix_only() -> None:
    assert reuse_plan([1, 2, 3, 4], [1, 2, 9, 9, 9]) == (2, 0, 2)
    assert reuse_plan([], [5, 6]) == (0, 0, 0)


def test_reuse_plan_never_reuses_the_last_token() -> None:
    """A server decodes at least the last token again, for its logits."""
    assert reuse_plan([1, 2, 3, 4], [1, 2, 3, 4]) == (4, 0, 3)


def test_reuse_plan_finds_the_dropped_chunk() -> None:
    cached = list(range(100, 200))
    wanted = cached[:10] + cached[30:] + [7, 8, 9]
    start, gap, reused = reuse_plan(cached, wanted)
    assert (start, gap) == (10, 20)
    assert reused == 10 + 70  # the 70 cells after the gap, then the new tokens are decoded


def test_reuse_plan_ignores_short_coincidences() -> None:
    cached = [1, 2, 3, 50, 60, 70, 80]
    assert reuse_plan(cached, [1, 2, 3, 60, 70, 4], min_match=4) == (3, 0, 3)


def test_agreement_statistics() -> None:
    want = np.zeros((2, 3, 4), np.float32)
    want[:, :, 0] = 1.0
    got = want.copy()
    got[1, 2] = [0.25, 0.75, 0.0, 0.0]  # layer 1, head 2: TV 0.75, argmax moved
    found = agreement([got, want], [want, want])
    assert found.max_abs.tolist() == [0.0, 0.75]
    assert found.top1_share.tolist() == [1.0, 5 / 6]
    assert found.mean_tv.tolist() == pytest.approx([0.0, 0.75 / 6])
    with pytest.raises(AssertionError, match="shape"):
        Agreement.empty(2).add(got[:, :, :3], want)


def test_requests_drop_a_middle_chunk_and_never_use_special_tokens() -> None:
    fresh, shift, *_ = requests(len(vocabulary()))
    assert len(fresh.input_ids) == PROMPT_TOKENS
    assert shift.input_ids[:100] == fresh.input_ids[:100]
    assert shift.input_ids[100:360] == fresh.input_ids[140:]
    assert not set(fresh.input_ids + shift.input_ids) & set(special_ids())


@pytest.mark.model
def test_hf_config_keeps_its_meaning_with_the_keys_older_converters_read(tmp_path: Path) -> None:
    from transformers import AutoConfig

    from halo_client.testing.tiny_models import write_hf_model

    for name in ("qwen2", "gemma3"):
        directory = write_hf_model(ARCHITECTURES[name], tmp_path / name, seed=0)
        saved = json.loads((directory / "config.json").read_text())
        assert saved["rope_theta"] == 1_000_000.0
        assert AutoConfig.from_pretrained(directory).rope_parameters == (
            AutoConfig.for_model(ARCHITECTURES[name].model_type, **ARCHITECTURES[name].config).rope_parameters)


@pytest.mark.model
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_cache_replay(name: str, tmp_path: Path) -> None:
    """Replaying a cache without changes gives the fresh frames; after dropping cells, the first
    layer (which sees only tokens and positions) still equals a fresh pass over the shorter
    context while later layers do not: their kept keys were computed with the dropped tokens."""
    import torch

    from halo_client.testing.hf_attention import HFAttention, KVCacheReplay
    from halo_client.testing.tiny_models import write_hf_model

    torch.set_num_threads(1)
    hf = HFAttention.from_pretrained(write_hf_model(ARCHITECTURES[name], tmp_path, seed=3))
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(3, 270, 100)]
    generated = [5, 6, 7]
    fresh = hf.frames(ids, generated)
    replay = KVCacheReplay(hf)
    replayed = replay.feed(ids)[-1:] + [replay.feed([t])[0] for t in generated[:-1]]
    assert max(float(np.abs(a - b).max()) for a, b in zip(fresh, replayed, strict=True)) < 1e-5

    shifted = KVCacheReplay(hf)
    shifted.feed(ids)
    shifted.drop(60, 80)  # within every sliding window of the last query
    shorter = ids[:60] + ids[80:]
    shifted.truncate(len(shorter) - 1)
    got = shifted.feed(shorter[-1:])[0]
    want = hf.frames(shorter, [0])[0]
    assert float(np.abs(got[0] - want[0]).max()) < 1e-5
    assert float(np.abs(got[1:] - want[1:]).max()) > 1e-3
