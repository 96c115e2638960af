"""From features to OOD scores: cosine similarities to positive and negative prompts, then a scorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Scores:
    score: torch.Tensor  # [N] higher = more in-distribution
    prediction: torch.Tensor  # [N] argmax over the positive prompts
    max_pos_cos: torch.Tensor  # [N] max cosine to a class prompt (paper Fig. 3)
    max_neg_cos: torch.Tensor | None  # [N] max cosine to a negative prompt


Scorer = Callable[..., torch.Tensor]  # (pos [B, C], neg [B, C, P] | None, *, temperature, logit_scale) -> [B]


def score_features(image_features: torch.Tensor, text_pos: torch.Tensor, text_neg: torch.Tensor | None, *,
                   scorer: Scorer, temperature: float = 1.0, logit_scale: float = 100.0,
                   batch: int = 4096) -> Scores:
    """Score unit image features [N, E] against unit text features [C, E] and [C, P, E].

    ``scorer`` is the scoring function itself (a scorer plugin's, from the registry). Runs where the image
    features are (the device rule: text features follow the images), in fp32.
    """
    outputs: list[tuple[torch.Tensor, ...]] = []
    device = image_features.device
    text_pos = text_pos.to(device, torch.float32)
    text_neg = text_neg.to(device, torch.float32) if text_neg is not None else None
    with torch.no_grad():
        for start in range(0, image_features.shape[0], batch):
            f = image_features[start:start + batch].float()
            pos = f @ text_pos.t()
            neg = torch.einsum("be,cpe->bcp", f, text_neg) if text_neg is not None else None
            score = scorer(pos, neg, temperature=temperature, logit_scale=logit_scale)
            max_neg = neg.flatten(1).max(1).values if neg is not None else torch.full_like(score, float("nan"))
            outputs.append((score, pos.argmax(1), pos.max(1).values, max_neg))
    if not outputs:
        empty = torch.empty(0)
        return Scores(empty, empty.long(), empty, None)
    score, pred, max_pos, max_neg = (torch.cat(parts) for parts in zip(*outputs, strict=True))
    return Scores(score, pred, max_pos, max_neg if text_neg is not None else None)
