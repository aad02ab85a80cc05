"""Visual advantage (VA) for VA-OPD: image degradation, VA, rollout weights, token groups.

Follows the seed paper "Visual-Advantage On-Policy Distillation" (arXiv 2605.21924) and
its official defaults:

* the teacher scores each student rollout twice at T=1, with the image ``v`` and with a
  degraded ``ṽ`` (``degrade``: bilinear downscale to 10% per side, nearest upscale back,
  so the processor sees the same size and produces the same number of visual tokens);
* ``VA_t = max(log p_T(y_t | v) - log p_T(y_t | ṽ), 0)``, detached;
* rollout weights: softmax over the K rollouts of a prompt of the standardised mean VA,
  ``w = softmax(z / τ)``, ``z = (m - mean(m)) / (std(m) + ε)`` (population std), uniform
  when all means are equal;
* per rollout, the top ``ceil(0.2·T)`` tokens by VA form the high group, the rest the low
  group; ``loss_k = λ·mean(KL | high) + (1-λ)·mean(KL | low)`` with λ = 0.5;
* total ``Σ_k w_k·loss_k``, averaged over prompts.

Choices the paper leaves open, made here as in its reference code: ties in VA are broken
by token order (earlier first); a rollout whose low group is empty (T small enough that
ceil(0.2·T) = T) puts all of its mass on the high group.

Tensors are laid out (rollouts, length) with rollouts prompt-major: rows ``p*K .. p*K+K-1``
belong to prompt ``p``; ``mask`` marks completion tokens.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from PIL import Image, ImageFilter, ImageStat

DegradeMode = Literal["downscale", "blur", "blank"]


def degrade(image: Image.Image, mode: DegradeMode = "downscale", factor: float = 0.1) -> Image.Image:
    """A copy of ``image`` without fine visual detail, of the same size and mode.

    * ``downscale``: bilinear resize to ``factor`` of each side (at least 1 pixel), then
      nearest-neighbour back to the original size (the paper's pixelation);
    * ``blur``: Gaussian blur of radius ``0.5 / factor`` pixels, i.e. detail finer than
      about the same ``1/factor``-pixel cells is removed;
    * ``blank``: every pixel set to the image's mean colour (no spatial detail at all,
      global colour kept so that only *detail* is removed).

    The size is kept because the processor turns image size into the number of visual
    tokens: a different count would shift every position of the rollout.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"degrade expects a PIL image, got {type(image).__name__}")
    if not (0.0 < factor <= 1.0) or math.isnan(factor):
        raise ValueError(f"factor must be in (0, 1], got {factor}")
    w, h = image.size
    # Palette and 1-bit images do not interpolate: work in a continuous mode, convert back.
    src = image.convert("RGB") if image.mode in ("P", "1", "PA") else image
    if mode == "downscale":
        small = src.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.Resampling.BILINEAR)
        out = small.resize((w, h), Image.Resampling.NEAREST)
    elif mode == "blur":
        out = src.filter(ImageFilter.GaussianBlur(radius=0.5 / factor))
    elif mode == "blank":
        mean = tuple(round(v) for v in ImageStat.Stat(src).mean)
        out = Image.new(src.mode, (w, h), mean if len(mean) > 1 else mean[0])
    else:
        raise ValueError(f"unknown degrade mode {mode!r}: use 'downscale', 'blur' or 'blank'")
    return out.convert(image.mode) if out.mode != image.mode else out


def visual_advantage(
    logp_full: torch.Tensor, logp_degraded: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``max(log p_T(y|v) - log p_T(y|ṽ), 0)``, detached, zero outside ``mask``."""
    if logp_full.shape != logp_degraded.shape:
        raise ValueError(
            f"the two teacher views must score the same tokens: shapes "
            f"{tuple(logp_full.shape)} vs {tuple(logp_degraded.shape)}"
        )
    va = (logp_full.detach().float() - logp_degraded.detach().float()).clamp_min(0.0)
    if mask is not None:
        va = va.masked_fill(~mask.bool(), 0.0)
    return va


def _check_layout(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if values.ndim != 2 or mask.shape != values.shape:
        raise ValueError(
            f"expected (rollouts, length) tensors of one shape, got {tuple(values.shape)} "
            f"and mask {tuple(mask.shape)}"
        )
    lengths = mask.bool().sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("every rollout needs at least one completion token")
    return lengths


def rollout_mean_va(va: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean VA over each rollout's completion tokens: (R, L) -> (R,)."""
    lengths = _check_layout(va, mask)
    return (va * mask.bool()).sum(-1) / lengths


def rollout_weights(mean_va: torch.Tensor, tau: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Per-prompt softmax of standardised mean VA: (P, K) -> (P, K), rows sum to 1.

    ``z = (m - mean(m)) / (std(m) + ε)`` with the population std, ``w = softmax(z / τ)``.
    Equal means give z = 0, hence uniform weights 1/K (the plain OPD average).
    """
    if mean_va.ndim != 2:
        raise ValueError(f"mean_va must be (prompts, rollouts), got shape {tuple(mean_va.shape)}")
    if tau <= 0 or eps <= 0:
        raise ValueError(f"tau and eps must be positive, got tau={tau}, eps={eps}")
    m = mean_va.detach().double()
    z = (m - m.mean(-1, keepdim=True)) / (m.std(-1, correction=0, keepdim=True) + eps)
    return torch.softmax(z / tau, dim=-1).float()


def high_va_mask(va: torch.Tensor, mask: torch.Tensor, high_frac: float = 0.2) -> torch.Tensor:
    """Boolean (R, L): per rollout, its top ``ceil(high_frac·T)`` completion tokens by VA.

    Ties are broken by position (earlier token first) so the grouping is deterministic.
    """
    if not 0.0 < high_frac <= 1.0:
        raise ValueError(f"high_frac must be in (0, 1], got {high_frac}")
    lengths = _check_layout(va, mask)
    valid = mask.bool()
    # Padding sorts last (-inf); the stable descending sort keeps ties in position order.
    keyed = va.detach().float().masked_fill(~valid, float("-inf"))
    order = torch.argsort(keyed, dim=-1, descending=True, stable=True)
    n_high = torch.ceil(lengths.double() * high_frac).long().clamp(min=1)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(va.shape[-1], device=va.device).expand_as(order))
    return (rank < n_high[:, None]) & valid


def grouped_rollout_loss(
    per_token: torch.Tensor, high: torch.Tensor, mask: torch.Tensor, lam: float = 0.5
) -> torch.Tensor:
    """``λ·mean(per_token | high) + (1-λ)·mean(per_token | low)`` per rollout: (R, L) -> (R,).

    Each group gets its share whatever its size (the point of VA-OPD: the few high-VA
    tokens are not diluted by the many low ones). An empty low group gives the rollout's
    whole mass to the high group.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    _check_layout(per_token, mask)
    valid = mask.bool()
    hi = high.bool() & valid
    lo = valid & ~hi
    n_hi = hi.sum(-1)
    n_lo = lo.sum(-1)
    if bool((n_hi == 0).any()):
        raise ValueError("every rollout needs at least one high-VA token")
    zero = torch.zeros_like(per_token)
    mean_hi = torch.where(hi, per_token, zero).sum(-1) / n_hi
    mean_lo = torch.where(lo, per_token, zero).sum(-1) / n_lo.clamp(min=1)
    return torch.where(n_lo > 0, lam * mean_hi + (1.0 - lam) * mean_lo, mean_hi)


def va_opd_loss(
    per_token: torch.Tensor,
    va: torch.Tensor,
    mask: torch.Tensor,
    *,
    rollouts_per_prompt: int,
    num_prompts: int,
    lam: float = 0.5,
    high_frac: float = 0.2,
    tau: float = 1.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The VA-OPD objective for whole prompt groups: ``Σ_p Σ_k w_pk·loss_pk / num_prompts``.

    ``per_token`` (R, L) is the per-token KL term against the teacher on the *full* image
    (with gradient); ``va`` (R, L) the detached visual advantage; R = P·K, prompt-major.
    ``num_prompts`` is the number of prompts in the whole optimizer step (not only these
    P), so micro-batches of whole prompts accumulate to the exact step objective.
    Returns the loss and detached diagnostics (rollout weight range, VA mass and share
    of the high groups).
    """
    k = rollouts_per_prompt
    if k < 1 or per_token.shape[0] % k:
        raise ValueError(f"{per_token.shape[0]} rollouts is not a whole number of groups of K={k}")
    if va.shape != per_token.shape:
        raise ValueError(f"va shape {tuple(va.shape)} != per-token shape {tuple(per_token.shape)}")
    if num_prompts <= 0:
        raise ValueError(f"num_prompts must be positive, got {num_prompts}")
    weights = rollout_weights(rollout_mean_va(va, mask).view(-1, k), tau=tau, eps=eps).view(-1)
    high = high_va_mask(va, mask, high_frac)
    per_rollout = grouped_rollout_loss(per_token, high, mask, lam)
    loss = (weights.to(per_rollout.dtype) * per_rollout).sum() / num_prompts
    total_va = float(va[mask.bool()].sum())
    high_va = float(va[high].sum())
    stats = {
        "rollout_weight_max": float(weights.max()),
        "rollout_weight_min": float(weights.min()),
        "high_group_va_mass": high_va,
        "high_group_va_share": high_va / total_va if total_va > 0 else float("nan"),
    }
    return loss, stats


def top_va_share(va: torch.Tensor, mask: torch.Tensor, top_frac: float = 0.1) -> float:
    """Share of the total VA mass carried by the top ``ceil(top_frac·N)`` of all N tokens.

    Pooled over every completion token given (the paper reports ~93% for the top 10%).
    NaN when there is no VA mass at all (nothing to share).
    """
    values = va.detach().float()[mask.bool()]
    total = float(values.sum())
    if values.numel() == 0 or total <= 0:
        return float("nan")
    n_top = max(1, math.ceil(top_frac * values.numel()))
    return float(torch.topk(values, n_top).values.sum()) / total


def va_summary(va: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The VA distribution over completion tokens, for the metrics log."""
    values = va.detach().float()[mask.bool()]
    if values.numel() == 0:
        return {}
    q = torch.quantile(values, torch.tensor([0.5, 0.9, 0.99]))
    return {
        "va_mean": float(values.mean()),
        "va_max": float(values.max()),
        "va_p50": float(q[0]),
        "va_p90": float(q[1]),
        "va_p99": float(q[2]),
        "va_frac_positive": float((values > 0).float().mean()),
        "va_top10_share": top_va_share(va, mask, 0.1),
    }
