"""Distillation losses as small pure functions (torch only, no model code).

Two families, both evaluated only on completion tokens (the caller selects them):

* **Sampled-token reverse KL** (the default): on the student's own sampled tokens
  ``x_t ~ p_s``, the per-token estimate ``k_t = log p_s(x_t) - log p_t(x_t)`` of
  KL(p_s || p_t). It needs only the teacher's log-probs of the sampled tokens, so the
  teacher could be any scorer with the same tokenizer.
* **Generalized JSD with β** over the full vocabulary (GKD, Agarwal et al. 2024). It needs
  the teacher's full distribution, so both models run in process, and it is computed in
  chunks of completion positions from hidden states so that (tokens x vocab) logits are
  never materialised all at once.

Every per-token function returns one value per token; the trainers sum them and divide by
the *global* token count of the optimizer step (all micro-batches), so that summing the
gradients of several micro-batches gives exactly the gradient of the mean over the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Head = Callable[[torch.Tensor], torch.Tensor]  # hidden (n, H) -> logits (n, V)


def sampled_reverse_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token reverse-KL surrogate on the student's sampled tokens (policy-gradient form).

    With ``k = log p_s(x) - log p_t(x)`` (detached: it acts as a negative advantage), the
    surrogate is ``k + k * (log p_s(x) - stop_grad(log p_s(x)))``:

    * its **value** is ``k``, the single-sample (k1) estimate of KL(p_s || p_t) at this
      position, so the logged loss reads as a KL;
    * its **gradient** is ``k * grad log p_s(x)``. For x ~ p_s (T=1, top_p=1, no top-k)
      ``E[k * grad log p_s(x)] = grad KL(p_s || p_t)`` exactly (the extra term
      ``E[grad log p_s] = 0``), so the estimator is unbiased for the per-position reverse
      KL given the prefix. Like the public OPD recipes, it does not propagate a token's KL
      to earlier tokens (discount 0). Sampling at any other temperature or with a
      truncated distribution biases it.

    Both inputs have the same shape; the teacher's log-probs never receive a gradient.
    """
    if student_logprobs.shape != teacher_logprobs.shape:
        raise ValueError(
            f"student and teacher log-probs differ in shape: "
            f"{tuple(student_logprobs.shape)} vs {tuple(teacher_logprobs.shape)}"
        )
    k = (student_logprobs - teacher_logprobs).detach()
    return k + k * (student_logprobs - student_logprobs.detach())


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence per row over the last (vocabulary) axis.

    ``JSD_β(T || S) = β·KL(T || M) + (1-β)·KL(S || M)`` with ``M = β·T + (1-β)·S``
    (T = teacher, S = student, both softmax at temperature 1). JSD_β tends to 0 at both
    ends, so the endpoints are defined by their normalised limits and special-cased:

    * ``beta == 0``: ``KL(T || S)``, the **forward** KL (mode-covering; = lim JSD_β/β);
    * ``beta == 1``: ``KL(S || T)``, the **reverse** KL (mode-seeking; = lim JSD_β/(1-β)),
      which is what on-policy distillation and VA-OPD minimise.

    Computed in at least float32. Gradients flow to the student only.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: "
            f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)} "
            "(full-vocabulary losses need one vocabulary)"
        )
    log_s = F.log_softmax(_upcast(student_logits), dim=-1)
    log_t = F.log_softmax(_upcast(teacher_logits.detach()), dim=-1).to(log_s.dtype)
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    # log M = logsumexp(log T + log β, log S + log(1-β)), stable for tiny probabilities.
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1.0 - beta))
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32: bf16/fp16 log-softmax over a large vocabulary loses too much."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last axis from log-probabilities (0·log 0 counted as 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per row, in at least float32."""
    logits = _upcast(logits)
    return logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunks(n: int, chunk_size: int) -> list[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


def _maybe_checkpoint(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    # Without recomputation, autograd would keep every chunk's (chunk x vocab) softmax alive
    # until backward, i.e. the full (tokens x vocab) tensor after all: recompute per chunk.
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def chunked_token_logprobs(
    hidden: torch.Tensor, head: Head, tokens: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """log p(token) for each row of ``hidden`` (n, H), computing logits ``chunk_size`` rows at a time.

    ``head`` maps hidden states to logits (a model's output embedding). Differentiable
    through ``hidden`` and the head's parameters, with per-chunk recomputation in backward.
    """
    if hidden.shape[0] != tokens.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows but {tokens.shape[0]} tokens")

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return token_logprobs(head(h), t)

    parts = [_maybe_checkpoint(piece, hidden[s], tokens[s]) for s in _chunks(hidden.shape[0], chunk_size)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def chunked_generalized_jsd(
    student_hidden: torch.Tensor,
    student_head: Head,
    teacher_hidden: torch.Tensor,
    teacher_head: Head,
    beta: float,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Per-token generalized JSD (see ``generalized_jsd``) from hidden states, in chunks.

    ``student_hidden`` (n, Hs) and ``teacher_hidden`` (n, Ht) are the final hidden states
    at the n positions that predict completion tokens, row i of each predicting the same
    token. Logits exist for at most ``chunk_size`` rows at a time, in forward and in the
    recomputed backward; the teacher side never receives a gradient.
    """
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(
            f"student has {student_hidden.shape[0]} token rows, teacher {teacher_hidden.shape[0]}"
        )
    teacher_hidden = teacher_hidden.detach()

    def piece(hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher_head(ht)
        return generalized_jsd(student_head(hs), t_logits, beta)

    parts = [
        _maybe_checkpoint(piece, student_hidden[s], teacher_hidden[s])
        for s in _chunks(student_hidden.shape[0], chunk_size)
    ]
    return torch.cat(parts) if parts else student_hidden.new_zeros(0, dtype=torch.float32)
