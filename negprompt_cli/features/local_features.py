"""Local (patch) features of a CLIP ViT: one feature per image patch, in the text embedding space.

GL-MCM (Miyai et al., 2023; code AtsuMiyai/GL-MCM, ``clip/model.py``) and LoCoOp read them as the released code
computes them: the last transformer block is run once more on its own input with attention replaced by each
token's own value (no mixing between tokens: v = x + out_proj(W_v·ln_1(x) + b_v), then the block's MLP), and the
result goes through ``ln_post`` and the projection like the class token does. We take the block's input with a
forward pre-hook during the ordinary ``encode_image`` call, so the global feature is exactly the one the cache
holds and the extra cost is one block's value path and MLP.

Only open_clip ``VisionTransformer`` towers with class-token pooling have this form (CLIP ViT-B/16, B/32, L/14 and
the world's toy CLIP); ResNets, attention-pooled (CoCa) and timm towers (SigLIP) are refused with a reason.

A cache row with local features holds the global feature followed by the P patch features, each unit-norm:
(1 + P)·E floats (ViT-B/16 at 224 px: 197 x 512 float32 = 394 KiB an image, 19 GiB for ImageNet's 50,000
validation images), under its own cache key, beside the global-only rows of the same backbone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..devices import autocast
from ..errors import UsageError
from .backbone import Backbone

LOCAL_TAG = "local-vv1"  # part of the cache key of rows that carry patch features (bump if the recipe changes)


def local_support(backbone: Backbone) -> str | None:
    """None when the backbone's image tower can give local features, else why not (one phrase)."""
    visual = getattr(backbone.model, "visual", None)
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if visual is None or transformer is None or not blocks:
        return f"{backbone.name}'s image tower is not a vision transformer (a ResNet or another kind)"
    if getattr(visual, "attn_pool", None) is not None:
        return f"{backbone.name}'s image tower pools with attention (CoCa-style), not its class token"
    if getattr(visual, "pool_type", "tok") != "tok":
        return f"{backbone.name}'s image tower pools by {visual.pool_type!r}, not its class token"
    last = blocks[-1]
    if not all(hasattr(last, name) for name in ("ln_1", "attn", "ln_2", "mlp")) or not hasattr(
            last.attn, "in_proj_weight") or getattr(visual, "proj", None) is None:
        return f"{backbone.name}'s last image block is not CLIP's (ln_1, multi-head attention, ln_2, MLP, projection)"
    return None


def check_local(backbone: Backbone) -> None:
    """Refuse, in one line, a backbone whose image tower cannot give local features."""
    reason = local_support(backbone)
    if reason is not None:
        raise UsageError(f"local (patch) features are not available: {reason}",
                         hint="use a CLIP ViT backbone (ViT-B/16, ViT-B/32, ...), or a global scorer")


def _value_path(block: Any, x: torch.Tensor) -> torch.Tensor:
    """The block with each token attending only to itself (GL-MCM's local path), tokens last-but-one dim."""
    width = x.shape[-1]
    weight, bias = block.attn.in_proj_weight[2 * width:], block.attn.in_proj_bias
    value = F.linear(block.ln_1(x), weight, bias[2 * width:] if bias is not None else None)
    ls_1 = getattr(block, "ls_1", torch.nn.Identity())
    ls_2 = getattr(block, "ls_2", torch.nn.Identity())
    v = x + ls_1(block.attn.out_proj(value))
    return v + ls_2(block.mlp(block.ln_2(v)))


def encode_local(backbone: Backbone, pixels: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Rows [B, (1 + P)·E] on the CPU: each image's unit global feature (``encode_image``, as the cache holds it)
    followed by its P unit patch features (:func:`local_support` must have said yes)."""
    visual = backbone.model.visual
    captured: list[torch.Tensor] = []
    hook = visual.transformer.resblocks[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        with torch.no_grad(), autocast(backbone.device, precision):
            pooled = backbone.model.encode_image(pixels.to(backbone.device))
            x = captured[-1]
            if not getattr(visual.transformer, "batch_first", True):
                x = x.transpose(0, 1)  # LND -> NLD
            tokens = visual.ln_post(_value_path(visual.transformer.resblocks[-1], x))[:, 1:] @ visual.proj
    finally:
        hook.remove()
    pooled = F.normalize(pooled.float(), dim=-1)
    tokens = F.normalize(tokens.float(), dim=-1)
    return torch.cat([pooled[:, None], tokens], dim=1).flatten(1).cpu()


def split_rows(rows: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(global [N, E], patches [N, P, E] or None) of cache rows of width E or (1 + P)·E."""
    if rows.shape[1] == dim:
        return rows, None
    return rows[:, :dim], rows[:, dim:].reshape(rows.shape[0], -1, dim)
