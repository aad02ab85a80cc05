"""Grouped-query attention through torch's sdpa without copying the KV cache.

transformers' own "sdpa" attention hands grouped-query heads to torch
(``enable_gqa=True``) only when there is no attention mask; with one (any left-padded
batch) it first repeats every key/value head to the query-head count, which copies the
whole KV cache of every layer at every decoding step. When a prompt is sampled n times
that cache is n rows per prompt, and on the CPU the copy was most of the decode time
(one layer at 128 rows x 230 cached tokens: 62 ms with the copy, 6 ms without).
torch's sdpa takes grouped heads and a boolean mask together, so this function passes
both straight through; everything else (mask building, causal flag) is as in
transformers.
"""

from __future__ import annotations

from pipeline.core.lazy import lazy

torch = lazy("torch")
transformers = lazy("transformers")
masking_utils = lazy("transformers.masking_utils")

NAME = "deltaprompts_gqa_sdpa"


def gqa_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, heads, q_len, head_dim)
    key: torch.Tensor,  # (batch, kv_heads, kv_len, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # boolean (True = attend) or additive, or None
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # A causal flag only without a mask and with more than one query (as transformers).
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=causal, enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``NAME`` a valid ``attn_implementation`` (attention + sdpa-style masks)."""
    transformers.AttentionInterface.register(NAME, gqa_sdpa_attention)
    masking_utils.AttentionMaskInterface.register(NAME, masking_utils.sdpa_mask)
    return NAME
