"""Class-parallel text encoding for very large class lists (fit-neg under torchrun).

The text graph grows with C·P (every class times every negative prompt), the image side does not.
So the ranks of a torchrun job split the *classes*: rank r encodes a contiguous share of them, the
shares are all-gathered into the full [C, P, E] features by a differentiable gather, and every rank
takes the same loss on the same image batch. Memory and text-encoder time per rank fall with N; the
gradient is the one-process gradient:

- every rank holds the same loss, so the gradient with respect to its own share is already on the
  rank: the gather's backward just keeps that slice, with no communication (unlike
  ``torch.distributed.nn.functional.all_gather``, deprecated in torch 2.14, whose backward sums the N
  identical copies and would need the loss scaled by 1/N);
- each rank's parameter gradient then holds its share's contribution only, and
  :meth:`ClassParallel.reduce_gradients` sums them over the ranks, so every rank ends the step with
  the full gradient and takes the same optimiser step.

With gradient caching (``--text-chunk``) the gather needs no autograd: the features are gathered
without a graph, each rank re-encodes only its own share with the cached feature gradients, and
the same sum over ranks completes the gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import Ranks, _collective


class _GatherShares(torch.autograd.Function):
    """all_gather of equally sized (padded) shares; backward keeps this rank's slice of the gradient."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, ranks: Ranks) -> torch.Tensor:
        ctx.rank, ctx.rows = ranks.rank, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(ranks.world_size)]
        _collective(ranks, "gathering text features", lambda: dist.all_gather(parts, local.contiguous()))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows], None


class ClassParallel:
    """The ranks' split of a class list and the collectives a learner needs to train on it."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks

    def bounds(self, n_classes: int) -> list[tuple[int, int]]:
        """[start, stop) of every rank's contiguous share (sizes differ by at most one)."""
        world = self.ranks.world_size
        return [(r * n_classes // world, (r + 1) * n_classes // world) for r in range(world)]

    def share(self, n_classes: int) -> torch.Tensor:
        start, stop = self.bounds(n_classes)[self.ranks.rank]
        return torch.arange(start, stop)

    def gather(self, local: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Every rank's share (rows along dim 0) in class order, differentiable with respect to ``local``
        (given that every rank goes on to take the same loss)."""
        sizes = [stop - start for start, stop in self.bounds(n_classes)]
        largest = max(sizes)
        padded = F.pad(local, (0, 0) * (local.dim() - 1) + (0, largest - local.shape[0]))
        gathered = _GatherShares.apply(padded, self.ranks)
        return torch.cat([gathered[r * largest:r * largest + size] for r, size in enumerate(sizes)])

    def reduce_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Sum the parameters' gradients over the ranks (each holds its share's contribution)."""
        for param in params:
            if param.grad is not None:
                _collective(self.ranks, "summing gradients", functools.partial(dist.all_reduce, param.grad))
