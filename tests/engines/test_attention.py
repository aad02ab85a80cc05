"""The engine's grouped-query sdpa attention gives transformers' sdpa results, masks included."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from pipeline.engines.attention import NAME, gqa_sdpa_attention, register


class _Layer(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _padded_causal_mask(pad: list[int], q_len: int, kv_len: int) -> torch.Tensor:
    """Boolean (batch, 1, q, kv): row b left-padded by pad[b]; query i sits at kv position
    kv_len - q_len + i and sees the real keys up to itself."""
    kv = torch.arange(kv_len)
    q = torch.arange(kv_len - q_len, kv_len)
    causal = kv[None, :] <= q[:, None]
    real = torch.stack([kv >= p for p in pad])
    return (causal[None] & real[:, None, :])[:, None]


@pytest.mark.parametrize("q_len", [7, 1])  # prefill, decode
def test_matches_transformers_sdpa_with_padding_and_grouped_heads(q_len):
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, kv_len, dim = 3, 8, 2, 7, 16
    query = torch.randn(batch, heads, q_len, dim, generator=g)
    key = torch.randn(batch, kv_heads, kv_len, dim, generator=g)
    value = torch.randn(batch, kv_heads, kv_len, dim, generator=g)
    mask = _padded_causal_mask([0, 2, 4], q_len, kv_len)
    layer = _Layer(heads // kv_heads)
    ours, _ = gqa_sdpa_attention(layer, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=0.25)
    assert ours.shape == (batch, q_len, heads, dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_without_mask_prefill_is_causal():
    g = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, 4, 5, 8, generator=g) for _ in range(3))
    layer = _Layer(1)
    ours, _ = gqa_sdpa_attention(layer, query, key, value, None)
    # the first query sees only the first key: its output is that key's value
    torch.testing.assert_close(ours[0, 0], value[0, :, 0])
    theirs, _ = sdpa_attention_forward(layer, query, key, value, None)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.slow
def test_a_model_gives_the_same_logits_as_with_sdpa(tiny_models):
    """Whole model, left-padded image batch: logits equal to transformers' sdpa path."""
    from transformers import AutoModelForImageTextToText

    from pipeline.engines import EngineConfig, build_engine
    from tests.engine_fixtures import make_requests

    engine = build_engine(EngineConfig(engine="transformers", model=str(tiny_models[0])))
    assert engine.model.config.get_text_config()._attn_implementation == NAME
    items, errors = engine.prepare_all(make_requests(3))
    assert not errors and len({it.length for it in items}) > 1  # rows really are padded
    batch = engine.collate(items)
    positions, _, _ = engine.positions(batch)
    reference = AutoModelForImageTextToText.from_pretrained(
        tiny_models[0], dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.inference_mode():
        ours = engine.model(**batch, position_ids=positions).logits
        theirs = reference(**batch, position_ids=positions).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-4, atol=1e-4)
    assert register() == NAME  # registering again is harmless
