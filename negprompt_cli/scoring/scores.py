"""From features to OOD scores: cosine similarities to positive and negative prompts, then a scorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Scores:
    score: torch.Tensor  # [N] higher = more in-distribution
    prediction: torch.Tensor  # [N] argmax over the positive prompts
    max_pos_cos: torch.Tensor  # [N] max cosine to a class prompt (paper Fig. 3)
    max_neg_cos: torch.Tensor | None  # [N] max cosine to a negative prompt


Scorer = Callable[..., torch.Tensor]  # (pos [B, C], neg [B, C, P] | None, *, temperature, logit_scale) -> [B]


class ScorerContractError(ValueError):
    """A scorer returned something else than one score per image."""


def _check_shape(score: Any, images: int) -> None:
    if not isinstance(score, torch.Tensor) or tuple(score.shape) != (images,) or not score.is_floating_point():
        what = (f"a {score.dtype} tensor of shape {list(score.shape)}" if isinstance(score, torch.Tensor)
                else f"a {type(score).__name__}")
        raise ScorerContractError(f"returned {what}, not one floating-point score per image ([{images}])")


def score_features(image_features: torch.Tensor, text_pos: torch.Tensor, text_neg: torch.Tensor | None, *,
                   scorer: Scorer, temperature: float = 1.0, logit_scale: float = 100.0,
                   batch: int = 4096, mined: torch.Tensor | None = None,
                   scorer_options: dict[str, Any] | None = None, local: torch.Tensor | None = None,
                   texts: Any = None) -> Scores:
    """Score unit image features [N, E] against unit text features [C, E] and [C, P, E].

    ``scorer`` is the scoring function itself (a scorer plugin's, from the registry). ``mined`` ([M, E]
    negative labels from a lexicon) reaches the scorer as the cosines ``mined`` [B, M], with
    ``scorer_options``. ``local`` ([N, P, E] patch features) reaches it as the cosines ``local`` [B, P, C].
    ``texts`` (``composed_texts.ComposedTexts``, for a scorer that writes texts per image) reaches it with the
    batch's image features as ``features``.
    Runs where the image features are (the device rule: text features follow the images), in fp32.
    """
    outputs: list[tuple[torch.Tensor, ...]] = []
    device = image_features.device
    text_pos = text_pos.to(device, torch.float32)
    text_neg = text_neg.to(device, torch.float32) if text_neg is not None else None
    mined = mined.to(device, torch.float32) if mined is not None else None
    with torch.no_grad():
        for start in range(0, image_features.shape[0], batch):
            f = image_features[start:start + batch].float()
            extra = dict(scorer_options or {})
            if local is not None:
                extra["local"] = local[start:start + batch].to(device, torch.float32) @ text_pos.t()
            if texts is not None:
                extra |= {"features": f, "texts": texts}
            pos = f @ text_pos.t()
            neg = torch.einsum("be,cpe->bcp", f, text_neg) if text_neg is not None else None
            if mined is not None:
                mined_cos = f @ mined.t()
                score = scorer(pos, neg, temperature=temperature, logit_scale=logit_scale, mined=mined_cos, **extra)
                neg_cos: torch.Tensor | None = (torch.cat([mined_cos, neg.flatten(1)], dim=1) if neg is not None
                                                else mined_cos)
            else:
                score = scorer(pos, neg, temperature=temperature, logit_scale=logit_scale, **extra)
                neg_cos = neg.flatten(1) if neg is not None else None
            _check_shape(score, f.shape[0])
            max_neg = neg_cos.max(1).values if neg_cos is not None else torch.full_like(score, float("nan"))
            outputs.append((score, pos.argmax(1), pos.max(1).values, max_neg))
    if not outputs:
        empty = torch.empty(0)
        return Scores(empty, empty.long(), empty, None)
    score, pred, max_pos, max_neg = (torch.cat(parts) for parts in zip(*outputs, strict=True))
    return Scores(score, pred, max_pos, max_neg if text_neg is not None or mined is not None else None)
