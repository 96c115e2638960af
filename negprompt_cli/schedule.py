"""Learning-rate schedules, stepped once per epoch."""

from __future__ import annotations

import math


def cosine_with_warmup(epoch: int, *, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """CoOp's schedule: constant ``warmup_lr`` for the warm-up epochs, then cosine from ``lr`` to 0.

    Epoch ``e`` (0-based) after warm-up uses ``lr * (1 + cos(pi * k / K)) / 2`` with
    ``k = e - warmup_epochs`` and ``K = epochs - warmup_epochs``, so the first real epoch
    trains at the full ``lr``.
    """
    if epoch < warmup_epochs:
        return warmup_lr
    span = max(1, epochs - warmup_epochs)
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))
