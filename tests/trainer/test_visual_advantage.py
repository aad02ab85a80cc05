"""VA-OPD pieces on hand-computed tensors (trainer/visual_advantage.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.visual_advantage import (
    degrade,
    grouped_rollout_loss,
    high_va_mask,
    rollout_mean_va,
    rollout_weights,
    top_va_share,
    va_opd_loss,
    va_summary,
    visual_advantage,
)

torch.set_num_threads(1)


def noise_image(w: int = 100, h: int = 60, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


# ---------------------------------------------------------------- degrade


@pytest.mark.parametrize("mode", ["downscale", "blur", "blank"])
@pytest.mark.parametrize("image_mode", ["RGB", "L", "P", "RGBA"])
def test_degrade_keeps_size_and_mode(mode, image_mode):
    img = noise_image(mode=image_mode)
    out = degrade(img, mode)
    assert out.size == img.size and out.mode == img.mode
    assert out is not img


def test_downscale_is_blocks_of_one_tenth_the_resolution():
    img = noise_image(100, 60)
    out = np.asarray(degrade(img, "downscale", 0.1)).astype(int)
    # 100x60 -> 10x6 bilinear -> nearest back: every 10x10 block is one colour.
    blocks = out.reshape(6, 10, 10, 10, 3)
    assert (blocks == blocks[:, :1, :, :1, :]).all()
    assert len({tuple(p) for p in out.reshape(-1, 3)}) <= 60
    # bilinear averaging removes most of the pixel noise
    assert out.std() < 0.5 * np.asarray(img).std()


def test_downscale_floor_keeps_at_least_one_pixel():
    img = noise_image(7, 5)
    out = np.asarray(degrade(img, "downscale", 0.1))
    assert (out == out[0, 0]).all()  # 7x5 at 10% -> 1x1 -> one colour


def test_blank_is_the_mean_colour_and_blur_smooths():
    img = noise_image(40, 30)
    arr = np.asarray(img).astype(float)
    blank = np.asarray(degrade(img, "blank")).astype(float)
    assert (blank == blank[0, 0]).all()
    assert np.abs(blank[0, 0] - arr.reshape(-1, 3).mean(0)).max() <= 0.5
    blurred = np.asarray(degrade(img, "blur")).astype(float)
    assert blurred.std() < 0.5 * arr.std()


def test_degrade_rejects_bad_arguments():
    img = noise_image(10, 10)
    with pytest.raises(ValueError, match="factor"):
        degrade(img, "downscale", 0.0)
    with pytest.raises(ValueError, match="unknown degrade mode"):
        degrade(img, "pixelate")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        degrade(np.zeros((4, 4)))  # type: ignore[arg-type]


# ---------------------------------------------------------------- VA and weights


def test_visual_advantage_clamps_masks_and_detaches():
    full = torch.tensor([[-1.0, -3.0, -0.5]], requires_grad=True)
    degraded = torch.tensor([[-2.0, -1.0, -4.0]])
    mask = torch.tensor([[1, 1, 0]])
    va = visual_advantage(full, degraded, mask)
    assert va.tolist() == [[1.0, 0.0, 0.0]]  # +1, clamp(-2), masked(+3.5)
    assert not va.requires_grad
    with pytest.raises(ValueError, match="same tokens"):
        visual_advantage(full, degraded[:, :2])


def test_rollout_mean_va_over_completion_tokens_only():
    va = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert rollout_mean_va(va, mask).tolist() == [1.5, 4.0]


def test_rollout_weights_by_hand():
    # K=2, means (1, 3): population std 1, z = (-1, 1), w = softmax(z).
    w = rollout_weights(torch.tensor([[1.0, 3.0]]), tau=1.0, eps=1e-12)
    e = math.exp(2)
    assert w[0].tolist() == pytest.approx([1 / (1 + e), e / (1 + e)], abs=1e-6)  # 0.1192, 0.8808
    # τ = 2 halves z: softmax(-0.5, 0.5)
    w2 = rollout_weights(torch.tensor([[1.0, 3.0]]), tau=2.0, eps=1e-12)
    assert w2[0].tolist() == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)], abs=1e-6)
    # K=4, means (0,0,0,4): mean 1, std sqrt(3), z = (-1,-1,-1,3)/sqrt(3)
    w4 = rollout_weights(torch.tensor([[0.0, 0.0, 0.0, 4.0]]), eps=1e-12)[0].tolist()
    lo, hi = math.exp(-1 / math.sqrt(3)), math.exp(3 / math.sqrt(3))
    assert w4 == pytest.approx([lo / (3 * lo + hi)] * 3 + [hi / (3 * lo + hi)], abs=1e-6)
    assert w4[3] == pytest.approx(0.77044, abs=1e-5)


def test_rollout_weights_uniform_when_equal_and_rows_independent():
    w = rollout_weights(torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))
    assert w[0].tolist() == pytest.approx([0.25] * 4)
    assert w[1].tolist() == pytest.approx([0.25] * 4)
    assert w.sum(-1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert w[2, 1] > w[2, 0]
    with pytest.raises(ValueError, match="prompts, rollouts"):
        rollout_weights(torch.zeros(4))


# ---------------------------------------------------------------- token groups


def test_high_va_mask_top_ceil_fraction_with_position_ties():
    pad = 9.0  # a large value in padding must never be chosen
    va = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.5, 0.5, 0.3, 0.0, 0.0, 0.0, 0.2],  # T=10 -> 2 tokens: 0.9 and the first 0.5
            [0.4, 0.0, 0.7, pad, pad, pad, pad, pad, pad, pad],  # T=3 -> ceil(0.6) = 1
            [0.0, pad, pad, pad, pad, pad, pad, pad, pad, pad],  # T=1 -> 1 (low group empty)
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, pad, pad, pad, pad],  # T=6, all tied -> first 2
        ]
    )
    lengths = [10, 3, 1, 6]
    mask = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])
    high = high_va_mask(va, mask, 0.2)
    assert [torch.nonzero(r).flatten().tolist() for r in high] == [[1, 3], [2], [0], [0, 1]]


def test_grouped_rollout_loss_by_hand():
    per_token = torch.arange(1.0, 11.0).repeat(2, 1)  # 1..10
    mask = torch.tensor([[1] * 10, [1] + [0] * 9])
    high = torch.zeros(2, 10, dtype=torch.bool)
    high[0, [1, 3]] = True
    high[1, 0] = True
    # row 0: high (2+4)/2 = 3, low (1+3+5+6+7+8+9+10)/8 = 6.125 -> 0.5*3 + 0.5*6.125
    # row 1: T=1, the empty low group hands its mass to the high group -> 1
    got = grouped_rollout_loss(per_token, high, mask, lam=0.5)
    assert got.tolist() == pytest.approx([4.5625, 1.0])
    got_lam = grouped_rollout_loss(per_token, high, mask, lam=0.8)
    assert got_lam[0].item() == pytest.approx(0.8 * 3 + 0.2 * 6.125)


def _two_prompt_batch():
    # P=2 prompts x K=2 rollouts, length 5 (prompt 1's rollouts have 2 tokens).
    va = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],  # A: mean 0.2, high = {0}
            [0.0, 0.0, 0.0, 0.0, 0.0],  # B: mean 0.0, all tied -> high = {0}
            [0.5, 0.5, 0.0, 0.0, 0.0],  # C: mean 0.5, tie -> high = {0}
            [1.0, 0.0, 0.0, 0.0, 0.0],  # D: mean 0.5, high = {0}
        ]
    )
    per_token = torch.tensor(
        [
            [2.0, 1.0, 1.0, 1.0, 1.0],  # loss_A = 0.5*2 + 0.5*1 = 1.5
            [1.0, 1.0, 1.0, 1.0, 3.0],  # loss_B = 0.5*1 + 0.5*1.5 = 1.25
            [4.0, 2.0, 0.0, 0.0, 0.0],  # loss_C = 0.5*4 + 0.5*2 = 3
            [2.0, 6.0, 0.0, 0.0, 0.0],  # loss_D = 0.5*2 + 0.5*6 = 4
        ],
        requires_grad=True,
    )
    mask = torch.tensor([[1] * 5, [1] * 5, [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    return per_token, va, mask


def test_va_opd_loss_by_hand():
    per_token, va, mask = _two_prompt_batch()
    loss, stats = va_opd_loss(per_token, va, mask, rollouts_per_prompt=2, num_prompts=2)
    # prompt 0: means (0.2, 0): z ≈ (1, -1) -> w = (e, 1/e)/(e + 1/e); prompt 1: equal -> (0.5, 0.5)
    wa = math.e / (math.e + 1 / math.e)
    expected = ((wa * 1.5 + (1 - wa) * 1.25) + (0.5 * 3 + 0.5 * 4)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)  # ≈ 2.4851
    assert stats["rollout_weight_max"] == pytest.approx(wa, abs=1e-5)
    # high tokens carry VA 1 (A) + 0.5 (C) + 1 (D) of the total 3
    assert stats["high_group_va_share"] == pytest.approx(2.5 / 3)

    loss.backward()
    g = per_token.grad
    assert g[0, 0].item() == pytest.approx(wa * 0.5 / 1 / 2, abs=1e-6)  # high token of A
    assert g[0, 1].item() == pytest.approx(wa * 0.5 / 4 / 2, abs=1e-6)  # a low token of A
    assert g[3, 1].item() == pytest.approx(0.5 * 0.5 / 1 / 2, abs=1e-6)
    assert g[2, 2].item() == 0.0  # padding


def test_va_opd_loss_accumulates_over_prompt_microbatches():
    per_token, va, mask = _two_prompt_batch()
    joint, _ = va_opd_loss(per_token, va, mask, rollouts_per_prompt=2, num_prompts=2)
    parts = [
        va_opd_loss(per_token[r], va[r], mask[r], rollouts_per_prompt=2, num_prompts=2)[0]
        for r in (slice(0, 2), slice(2, 4))
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(joint.item(), abs=1e-6)


def test_va_opd_loss_rejects_partial_groups():
    per_token, va, mask = _two_prompt_batch()
    with pytest.raises(ValueError, match="groups of K=3"):
        va_opd_loss(per_token, va, mask, rollouts_per_prompt=3, num_prompts=2)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="at least one completion token"):
        va_opd_loss(per_token, va, empty, rollouts_per_prompt=2, num_prompts=2)


def test_uniform_va_reduces_to_grouped_average_with_uniform_weights():
    # Equal VA everywhere: weights 1/K, so the loss is the mean over rollouts of grouped means.
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    va = torch.ones(2, 5)
    mask = torch.ones(2, 5)
    loss, _ = va_opd_loss(per_token, va, mask, rollouts_per_prompt=2, num_prompts=1)
    # rollout 0: high = first token (ties by position) -> 0.5*1 + 0.5*(2+3+4+5)/4 = 2.25
    assert loss.item() == pytest.approx(0.5 * 2.25 + 0.5 * 5.0)


# ---------------------------------------------------------------- VA distribution


def test_top_va_share_by_hand():
    va = torch.zeros(1, 20)
    va[0, :4] = torch.tensor([9.0, 1.0, 0.5, 0.5])
    mask = torch.ones(1, 20)
    assert top_va_share(va, mask, 0.1) == pytest.approx(10 / 11)  # top 2 of 20
    mask15 = mask.clone()
    mask15[0, 15:] = 0
    assert top_va_share(va, mask15, 0.1) == pytest.approx(10 / 11)  # ceil(1.5) = 2
    assert math.isnan(top_va_share(torch.zeros(1, 5), torch.ones(1, 5)))


def test_va_summary_reports_the_distribution():
    va = torch.tensor([[0.0, 0.0, 2.0, 0.0], [4.0, 0.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    s = va_summary(va, mask)
    assert s["va_mean"] == pytest.approx(1.0)
    assert s["va_max"] == pytest.approx(4.0)
    assert s["va_frac_positive"] == pytest.approx(2 / 6)
    assert s["va_top10_share"] == pytest.approx(4 / 6)
