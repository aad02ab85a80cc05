"""Distillation losses on hand-computed small tensors (trainer/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import (
    chunked_generalized_jsd,
    chunked_token_logprobs,
    generalized_jsd,
    sampled_reverse_kl,
    token_logprobs,
)

torch.set_num_threads(1)

# Two 2-token distributions worked by hand: teacher T = (0.5, 0.5), student S = (0.9, 0.1).
T = [0.5, 0.5]
S = [0.9, 0.1]
KL_T_S = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # forward KL = 0.51083
KL_S_T = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # reverse KL = 0.36806
M = [0.7, 0.3]  # β = 0.5 mixture
JSD_HALF = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) + 0.5 * (
    0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
)  # = 0.10174


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor([probs], dtype=torch.float64))


def test_hand_values_are_what_the_formulas_say():
    # Guards the constants above against typos: the literals were worked out on paper.
    assert KL_T_S == pytest.approx(0.51083, abs=1e-5)
    assert KL_S_T == pytest.approx(0.36806, abs=1e-5)
    assert JSD_HALF == pytest.approx(0.10174, abs=1e-5)


@pytest.mark.parametrize(
    ("beta", "expected"), [(0.0, KL_T_S), (0.5, JSD_HALF), (1.0, KL_S_T)], ids=["forward", "half", "reverse"]
)
def test_generalized_jsd_hand_values(beta, expected):
    got = generalized_jsd(logits_of(S), logits_of(T), beta)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_jsd_endpoints_are_the_normalised_limits():
    # JSD_β → 0 at both ends; JSD_β/β → KL(T||S) and JSD_β/(1-β) → KL(S||T).
    s, t = logits_of(S), logits_of(T)
    eps = 1e-4
    assert generalized_jsd(s, t, eps).item() / eps == pytest.approx(KL_T_S, rel=1e-3)
    assert generalized_jsd(s, t, 1 - eps).item() / eps == pytest.approx(KL_S_T, rel=1e-3)


def test_jsd_half_is_symmetric_and_bounded_by_log2():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    ab, ba = generalized_jsd(a, b, 0.5), generalized_jsd(b, a, 0.5)
    assert torch.allclose(ab, ba, atol=1e-6)
    assert bool((ab >= 0).all()) and bool((ab <= math.log(2) + 1e-6).all())
    assert generalized_jsd(a, a, 0.5).abs().max().item() < 1e-6


def test_jsd_gradient_flows_to_student_only():
    s = torch.randn(3, 7, requires_grad=True)
    t = torch.randn(3, 7, requires_grad=True)
    generalized_jsd(s, t, 0.5).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_sampled_reverse_kl_value_and_gradient_by_hand():
    # Student (0.5, 0.25, 0.25), teacher (0.25, 0.25, 0.5), the student sampled token 0:
    # k = log 0.5 - log 0.25 = log 2; d/dz of k·log softmax(z)[0] = log 2 · (onehot - p_s).
    z = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)).requires_grad_()
    t = torch.log(torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64))
    tok = torch.tensor([0])
    per_token = sampled_reverse_kl(token_logprobs(z, tok), token_logprobs(t, tok))
    assert per_token.item() == pytest.approx(math.log(2), abs=1e-12)
    per_token.sum().backward()
    expected = math.log(2) * torch.tensor([[0.5, -0.25, -0.25]], dtype=torch.float64)
    assert torch.allclose(z.grad, expected, atol=1e-12)


def test_sampled_reverse_kl_is_unbiased_for_the_reverse_kl_gradient():
    # E_{x~p_s}[grad surrogate(x)] summed exactly over the vocabulary equals grad KL(p_s||p_t).
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 6, generator=g, dtype=torch.float64)
    p_s = torch.softmax(z, -1).detach()[0]
    expected_grad = torch.zeros_like(z)
    for x in range(6):
        tok = torch.tensor([x])
        (gz,) = torch.autograd.grad(sampled_reverse_kl(token_logprobs(z, tok), token_logprobs(t, tok)).sum(), z)
        expected_grad += p_s[x] * gz
    (kl_grad,) = torch.autograd.grad(generalized_jsd(z, t, 1.0).sum(), z)
    assert torch.allclose(expected_grad, kl_grad, atol=1e-10)


def test_sampled_reverse_kl_never_differentiates_the_teacher():
    s = torch.tensor([-1.0, -2.0], requires_grad=True)
    t = torch.tensor([-1.5, -0.5], requires_grad=True)
    sampled_reverse_kl(s, t).sum().backward()
    assert t.grad is None
    # d/ds_i of k_i·s_i (k detached) = k_i = s_i - t_i
    assert torch.allclose(s.grad, torch.tensor([0.5, -1.5]))


def test_shape_and_range_errors_are_clear():
    with pytest.raises(ValueError, match="shape"):
        sampled_reverse_kl(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="one vocabulary"):
        generalized_jsd(torch.zeros(1, 4), torch.zeros(1, 5), 0.5)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(torch.zeros(1, 4), torch.zeros(1, 4), 1.5)


class RecordingHead(torch.nn.Module):
    """A linear head that remembers the largest number of rows it was ever given."""

    def __init__(self, hidden: int, vocab: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g, dtype=torch.float64))
        self.max_rows = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.max_rows = max(self.max_rows, h.shape[0])
        return h @ self.weight.T


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_chunked_jsd_matches_unchunked_and_bounds_the_logits(beta):
    g = torch.Generator().manual_seed(2)
    n, hs, ht, vocab = 7, 4, 5, 9
    s_hidden = torch.randn(n, hs, generator=g, dtype=torch.float64, requires_grad=True)
    t_hidden = torch.randn(n, ht, generator=g, dtype=torch.float64)
    s_head, t_head = RecordingHead(hs, vocab, 3), RecordingHead(ht, vocab, 4)

    direct = generalized_jsd(s_head(s_hidden), t_head(t_hidden), beta)
    d_hidden, d_weight = torch.autograd.grad(direct.sum(), [s_hidden, s_head.weight])
    s_head.max_rows = t_head.max_rows = 0

    chunked = chunked_generalized_jsd(s_hidden, s_head, t_hidden, t_head, beta, chunk_size=3)
    c_hidden, c_weight = torch.autograd.grad(chunked.sum(), [s_hidden, s_head.weight])
    assert torch.allclose(chunked, direct, atol=1e-12)
    assert torch.allclose(c_hidden, d_hidden, atol=1e-12)
    assert torch.allclose(c_weight, d_weight, atol=1e-12)
    assert s_head.max_rows == 3 and t_head.max_rows == 3  # never all 7 rows at once
    assert t_head.weight.grad is None


def test_chunked_token_logprobs_match_direct():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    head = RecordingHead(4, 6, 6)
    tokens = torch.randint(0, 6, (10,), generator=g)
    direct = torch.log_softmax(head(hidden), -1).gather(-1, tokens[:, None]).squeeze(-1)
    (d_grad,) = torch.autograd.grad(direct.sum(), hidden)
    head.max_rows = 0
    chunked = chunked_token_logprobs(hidden, head, tokens, chunk_size=4)
    (c_grad,) = torch.autograd.grad(chunked.sum(), hidden)
    assert torch.allclose(chunked, direct, atol=1e-12)
    assert torch.allclose(c_grad, d_grad, atol=1e-12)
    assert head.max_rows == 4


def test_gradient_accumulation_with_global_count_equals_full_batch():
    # Two micro-batches of unequal token counts: each micro-batch's per-token sum divided by
    # the STEP's token count (what the trainers do) sums to the full-batch token mean.
    g = torch.Generator().manual_seed(7)
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(4, 5, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    n = int(mask.sum())

    full = ((x @ w) ** 2 * mask).sum() / n
    (g_full,) = torch.autograd.grad(full, w)
    acc = torch.zeros(3)
    for rows in (slice(0, 1), slice(1, 4)):
        (gm,) = torch.autograd.grad(((x[rows] @ w) ** 2 * mask[rows]).sum() / n, w)
        acc += gm
    assert torch.allclose(acc, g_full, atol=1e-6)
    # and the naive per-micro-batch mean would not be exact here
    naive = torch.zeros(3)
    for rows in (slice(0, 1), slice(1, 4)):
        (gm,) = torch.autograd.grad(((x[rows] @ w) ** 2 * mask[rows]).sum() / mask[rows].sum() / 2, w)
        naive += gm
    assert not torch.allclose(naive, g_full, atol=1e-4)
