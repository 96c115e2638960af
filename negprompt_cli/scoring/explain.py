"""Why an image got its score (``score --explain``): its closest classes and, for scorers that read negatives,
its closest negative prompts and mined negative labels, each with its cosine.

A flagged image is usually explained by one negative it is closer to than to any class (a texture word, a
negative prompt of a similar class); a missed one by a class it resembles. Cosines are the unit-feature dot
products the scorers start from (before τ or the logit scale).
"""

from __future__ import annotations

from typing import Any

import torch

from ..presets import EXPLAIN_TOP


def negative_prompt_names(class_names: list[str], per_class: int) -> list[str]:
    """Readable names of the [C, P] negative prompts in their flattened order: ``neg2:cat`` is the second
    negative context around the class name "cat"."""
    return [f"neg{p + 1}:{name}" for name in class_names for p in range(per_class)]


def explain(features: torch.Tensor, text_pos: torch.Tensor, names: list[str], *, text_neg: torch.Tensor | None,
            mined: torch.Tensor | None, mined_names: list[str] | None, top: int = EXPLAIN_TOP,
            batch: int = 4096) -> list[dict[str, list[dict[str, Any]]]]:
    """Per image: ``top_classes`` and ``nearest_negatives`` as lists of {"name", "cos"}, nearest first.
    Negatives are the ones given (negative prompts, mined labels, or both as a hybrid reads them); none: an
    empty list (a scorer that reads no negatives, e.g. energy)."""
    device = features.device
    pos_t = text_pos.to(device, torch.float32)
    neg_t = text_neg.to(device, torch.float32).flatten(0, 1) if text_neg is not None else None
    neg_names = negative_prompt_names(names, text_neg.shape[1]) if text_neg is not None else []
    mined_t = mined.to(device, torch.float32) if mined is not None else None
    all_neg_names = neg_names + list(mined_names or [])
    out: list[dict[str, list[dict[str, Any]]]] = []
    with torch.no_grad():
        for start in range(0, features.shape[0], batch):
            f = features[start:start + batch].float()
            pos = f @ pos_t.t()
            k = min(top, pos.shape[1])
            pos_val, pos_idx = pos.topk(k, dim=1)
            parts = [f @ t.t() for t in (neg_t, mined_t) if t is not None]
            neg_val = neg_idx = None
            if parts:
                neg = torch.cat(parts, dim=1)
                neg_val, neg_idx = neg.topk(min(top, neg.shape[1]), dim=1)
            for i in range(f.shape[0]):
                entry: dict[str, list[dict[str, Any]]] = {
                    "top_classes": [{"name": names[int(j)], "cos": round(float(v), 4)}
                                    for v, j in zip(pos_val[i], pos_idx[i], strict=True)],
                    "nearest_negatives": []}
                if neg_val is not None and neg_idx is not None:
                    entry["nearest_negatives"] = [{"name": all_neg_names[int(j)], "cos": round(float(v), 4)}
                                                  for v, j in zip(neg_val[i], neg_idx[i], strict=True)]
                out.append(entry)
    return out
