"""NegPrompt's loss terms, vectorised over classes and prompts (no Python loop over classes).

Shapes: ``f`` [B, E] unit image features, ``pos`` [C, E] unit positive text features (frozen),
``neg`` [C, P, E] unit negative text features, ``scale`` the logit scale s (~100 for CLIP).

Two variants, both exact:

* ``paper``: Eqs. 4-6 of the paper.
* ``official``: what the released scripts compute (``open_set_method='MSP'``,
  ``core/train_clip.py``): a multi-label soft-margin loss over all C·(1+P) logits with the
  ground-truth class group as target, the NPD term with the opposite sign, and NND as the norm
  of the mean negative direction. (The released total also adds 1e-8 × the positive CE, whose
  gradient is zero because the positives are frozen; it is left out.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

VARIANTS = ("paper", "official")


@dataclass(frozen=True)
class LossWeights:
    beta: float = 0.1  # NPD weight (paper and released scripts)
    gamma: float = 0.05  # NND weight (paper and released scripts)


# -- paper (Eqs. 4-6) -----------------------------------------------------------------------------
def nis_paper(f: torch.Tensor, neg: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Eq. 4: cross-entropy between the uniform distribution and softmax over the C·P negative logits."""
    z = scale * f @ neg.flatten(0, 1).t()  # [B, C*P]
    return (torch.logsumexp(z, dim=1) - z.mean(dim=1)).mean()


def npd_paper(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Eq. 5: minus the mean cosine between each negative prompt and its class's positive prompt."""
    return -(neg * pos.unsqueeze(1)).sum(-1).mean()


def nnd_paper(neg: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean cosine over ordered pairs l != l' of a class's negative prompts (0 when P = 1)."""
    p = neg.shape[1]
    if p < 2:
        return neg.sum() * 0.0
    gram = neg @ neg.transpose(1, 2)  # [C, P, P]
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)
    return (off_diagonal / (p * (p - 1))).mean()


# -- released code ('MSP') ---------------------------------------------------------------------
def nis_official(f: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor,
                 scale: float | torch.Tensor) -> torch.Tensor:
    """MultiLabelSoftMarginLoss over [B, C·(1+P)] logits; target 1 on the GT class's positive and negatives."""
    c, p, _ = neg.shape
    text = torch.cat([pos.unsqueeze(1), neg], dim=1).flatten(0, 1)  # [C*(1+P), E], class-major
    z = scale * f @ text.t()
    target = F.one_hot(labels, c).to(z.dtype).repeat_interleave(1 + p, dim=1)
    return F.multilabel_soft_margin_loss(z, target)


def npd_official(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-(1/C) Σ_c mean_l (1 - cos(t_c, t_{c,l})): minimising it pushes negatives *away* from positives."""
    return (neg * pos.unsqueeze(1)).sum(-1).mean() - 1.0


def nnd_official(neg: torch.Tensor) -> torch.Tensor:
    """mean_c (‖mean_l t_{c,l}‖ − 1): smaller when a class's negatives point in different directions."""
    return (neg.mean(dim=1).norm(dim=-1) - 1.0).mean()


def negprompt_loss(variant: str, f: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor,
                   scale: float | torch.Tensor, weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Total loss and its terms for ``variant``.

    Always fp32 (or float64), autocast off: the softmax and the sums over C·P logits are where
    bf16/fp16 would lose the gradient, and they are cheap next to the text tower.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown loss variant {variant!r}")
    dtype = torch.promote_types(neg.dtype, torch.float32)
    f, pos, neg = f.to(dtype), pos.to(dtype), neg.to(dtype)
    with torch.autocast(device_type=f.device.type, enabled=False):
        if variant == "paper":
            nis, npd, nnd = nis_paper(f, neg, scale), npd_paper(pos, neg), nnd_paper(neg)
        else:
            nis, npd, nnd = nis_official(f, pos, neg, labels, scale), npd_official(pos, neg), nnd_official(neg)
    return {"loss": nis + weights.beta * npd + weights.gamma * nnd, "nis": nis, "npd": npd, "nnd": nnd}
