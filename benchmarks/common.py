"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def current_commit() -> str:
    """The short commit id the benchmark ran at (recorded next to every result)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


# The fit-neg step both perf.py (CPU) and gpu.py (CUDA) time: seeded random ViT text towers, P negatives per class,
# one batch of unit image features; and the released code's loss, written its way, to compare against.
P, BATCH, SEED = 2, 64, 0


def text_backbone(arch: str = "ViT-B-16"):  # type: ignore[no-untyped-def]
    import numpy as np
    import open_clip
    import torch

    from negprompt_cli.features.backbone import Backbone

    torch.manual_seed(SEED)
    model = open_clip.create_model(arch, pretrained=None)
    model.eval().requires_grad_(False)
    model.logit_scale.data.fill_(float(np.log(100.0)))
    return Backbone(name=arch, pretrained="none", model=model, preprocess=None, tokenizer=open_clip.get_tokenizer(arch),
                    image_size=224)


def inputs(c: int, width: int, embed: int):  # type: ignore[no-untyped-def]
    import open_clip
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(SEED)
    names = list(open_clip.IMAGENET_CLASSNAMES[:c])
    ctx_pos = torch.randn(16, width, generator=g) * 0.02
    ctx_neg = ctx_pos.repeat(P, 1, 1) + (torch.rand(P, 16, width, generator=g) * 2 - 1) * 1e-3
    f = F.normalize(torch.randn(BATCH, embed, generator=g), dim=-1)
    labels = torch.randint(0, c, (BATCH,), generator=g)
    return names, ctx_pos, ctx_neg, f, labels


def reference_official_loss(f, pos, neg_rows, labels, scale, c):  # type: ignore[no-untyped-def]
    """core/train_clip.py ('MSP'), written the released way: interleaved logits, per-class loops."""
    import torch

    neg = neg_rows.view(P, c, -1).transpose(0, 1)  # [C, P, E]
    columns = []
    for k in range(c):
        columns.append(pos[k:k + 1])
        columns.append(neg[k])
    text = torch.cat(columns)  # [c0_pos, c0_neg1, c0_neg2, c1_pos, ...]
    logits = scale * f @ text.t()
    target = torch.zeros_like(logits)
    for b, y in enumerate(labels.tolist()):
        target[b, y * (1 + P):(y + 1) * (1 + P)] = 1
    nis = torch.nn.MultiLabelSoftMarginLoss()(logits, target)
    all_class_dis = 0
    for k in range(c):
        all_class_dis = all_class_dis + (1 - (pos[k:k + 1] * neg[k]).sum(-1)).mean()
    npd = -all_class_dis / c
    nnd = 0
    for k in range(c):
        mean_norm = neg[k].mean(0).norm()
        nnd = nnd - (1 - mean_norm)
    nnd = nnd / c
    return nis + 0.1 * npd + 0.05 * nnd
