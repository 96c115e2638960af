"""Shared-prefix text encoding: the exact same result as the plain path, with the context computed once.

With the class name at the end and causal attention, the hidden states of
``[SOS, ctx_1 .. ctx_M]`` do not depend on the class name: at every layer they are the same for
all C classes that share a context. So each layer runs the prefix once per distinct context
(P sequences of 1 + M tokens) and every class only runs its own few suffix tokens (name,
suffix, EOT), attending to the cached prefix keys and values. For ImageNet names with 16
context tokens that is ~4 instead of ~20 tokens per class and layer.

Only open_clip's standard text blocks (``ResidualAttentionBlock`` with a batch-first
``nn.MultiheadAttention``) and a causal mask are supported; ``supported()`` says when to fall
back to the plain path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def supported(model: Any) -> bool:
    if getattr(model, "attn_mask", None) is None:
        return False
    for block in model.transformer.resblocks:
        attn = getattr(block, "attn", None)
        if not isinstance(attn, torch.nn.MultiheadAttention) or not attn.batch_first or hasattr(block, "ln_1_kv"):
            return False
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            return False
    return getattr(model.transformer, "batch_first", True)


def _qkv(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head q, k, v of the block's attention for hidden states x [N, L, D] -> [N, H, L, Dh]."""
    attn = block.attn
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    n, length, width = q.shape
    heads = attn.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, length, heads, width // heads).transpose(1, 2)

    return split(q), split(k), split(v)


def _finish(block, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    n, heads, length, head_width = attended.shape
    merged = attended.transpose(1, 2).reshape(n, length, heads * head_width)
    x = x + block.ls_1(block.attn.out_proj(merged))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _gather(prefix: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """``prefix[owner]`` whose backward sums the C suffix rows' gradients in fp32.

    Under bf16/fp16 autocast the gather's backward would accumulate thousands of per-class
    contributions in the low precision itself (at C = 1000 that lost a third of the gradient);
    gathering from an fp32 copy makes the sum fp32 with one rounding at the end.
    """
    if prefix.dtype in (torch.float32, torch.float64):
        return prefix[owner]
    return prefix.float()[owner].to(prefix.dtype)


def _layer(block, p_x: torch.Tensor, s_x: torch.Tensor, owner: torch.Tensor, mask: torch.Tensor,
           causal_prefix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: the prefix on its own, every suffix attending to its prefix's keys/values and itself."""
    pq, pk, pv = _qkv(block, p_x)
    sq, sk, sv = _qkv(block, s_x)
    keys = torch.cat([_gather(pk, owner), sk], dim=2)
    values = torch.cat([_gather(pv, owner), sv], dim=2)
    s_att = F.scaled_dot_product_attention(sq, keys, values, attn_mask=mask)
    p_att = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=causal_prefix)
    return _finish(block, p_x, p_att), _finish(block, s_x, s_att)


def encode(model: Any, prefix: torch.Tensor, suffix: torch.Tensor, suffix_eot: torch.Tensor,
           owner: torch.Tensor) -> torch.Tensor:
    """Pooled (pre-projection, post-ln_final) EOT states.

    ``prefix`` [P, Lp, D]: embedded SOS + context (+ positions), one row per distinct context.
    ``suffix`` [N, S, D]: embedded suffix tokens (+ positions), padded at the end.
    ``suffix_eot`` [N]: index of each row's EOT inside the suffix.
    ``owner`` [N]: which prefix row each suffix row continues.
    """
    lp, s = prefix.shape[1], suffix.shape[1]
    causal_prefix = torch.full((lp, lp), float("-inf"), device=prefix.device, dtype=prefix.dtype).triu(1)
    # suffix query i (absolute position lp + i) sees all prefix keys and suffix keys j <= i
    mask = torch.zeros(s, lp + s, device=prefix.device, dtype=prefix.dtype)
    mask[:, lp:] = torch.full((s, s), float("-inf"), device=prefix.device, dtype=prefix.dtype).triu(1)
    p_x, s_x = prefix, suffix
    recompute = bool(getattr(model.transformer, "grad_checkpointing", False)) and torch.is_grad_enabled()
    for block in model.transformer.resblocks:
        if recompute:  # --grad-checkpoint: keep only each layer's inputs, recompute in backward
            p_x, s_x = checkpoint(_layer, block, p_x, s_x, owner, mask, causal_prefix, use_reentrant=False)
        else:
            p_x, s_x = _layer(block, p_x, s_x, owner, mask, causal_prefix)
    pooled = s_x[torch.arange(s_x.shape[0], device=s_x.device), suffix_eot]
    return model.ln_final(pooled)
