"""Scores that depend on the test stream: what the core gives a test-time scorer, and what it gets back.

A scorer registered with ``test_time=True`` (TANL, ``--scorer tanl``) cannot score an image on its own: what it
knows grows with the images scored before, and it may read the statistics of the batch an image is in. The core
therefore never calls it per batch of cosines; it calls ``scorer.start(context)`` once per ``score`` run and feeds
the returned :class:`ScoreStream` the image features in stream order (inputs in command-line order, each folder
sorted), as ``score --adaptive`` feeds AdaNeg's memory. A stream is consumed in batches of ``context.batch``
(``--batch-size``) whatever the pieces it is fed in: :class:`BatchStream` does that cutting once for every
test-time method, so a stream fed whole or window by window gives the same scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class StreamContext:
    """What a test-time scorer starts from (all unit features, on ``device``)."""

    text_pos: torch.Tensor  # [C, E] the ID class prompts
    text_neg: torch.Tensor | None  # [C, P, E] learned negative prompts, or None
    labels: torch.Tensor | None  # [M, E] negative labels: a whole-pool scorer's candidate corpus, else the mined
    temperature: float  # τ: logits are cos / τ
    logit_scale: float  # the backbone's s
    batch: int  # images per update of what the stream knows (``--batch-size``)
    seed: int  # every random choice the scorer makes draws from this
    device: torch.device
    image_size: int  # the backbone's input size, for scorers that encode images of their own
    encode_pixels: Callable[[torch.Tensor], torch.Tensor]  # preprocessed pixels [N, 3, H, W] -> unit features
    options: Any = None  # the scorer's ``Options``, filled from ``--scorer-option KEY=VALUE``
    extra: dict[str, Any] = field(default_factory=dict)


class ScoreStream(Protocol):
    def feed(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of the images of every batch this piece of the stream completes (the rest waits)."""
        ...

    def finish(self) -> torch.Tensor:
        """Scores of the images still waiting (the last, partial batch)."""
        ...

    def record(self) -> dict[str, Any]:
        """What the run did and with which settings (the score summary keeps it)."""
        ...


class BatchStream:
    """Cuts a stream fed in pieces of any size into the method's batches; a subclass scores one batch
    (``_batch``). Holds less than one batch of features besides the method's own state."""

    def __init__(self, batch: int, dim: int, device: torch.device) -> None:
        self.batch, self.dim, self.device = batch, dim, device
        self.waiting: list[torch.Tensor] = []  # fed features short of a whole batch

    def _batch(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feed(self, features: torch.Tensor) -> torch.Tensor:
        if features.numel():
            self.waiting.append(features.to(self.device, torch.float32))
        pending = torch.cat(self.waiting) if self.waiting else torch.empty(0, self.dim, device=self.device)
        whole = pending.shape[0] - pending.shape[0] % self.batch
        self.waiting = [pending[whole:]] if whole < pending.shape[0] else []
        with torch.no_grad():
            scores = [self._batch(pending[s:s + self.batch]).cpu() for s in range(0, whole, self.batch)]
        return torch.cat(scores) if scores else torch.empty(0)

    def finish(self) -> torch.Tensor:
        pending, self.waiting = self.waiting, []
        with torch.no_grad():
            return self._batch(torch.cat(pending)).cpu() if pending else torch.empty(0)


def stream_all(stream: ScoreStream, features: torch.Tensor) -> torch.Tensor:
    """The scores [N] of ``features`` [N, E] fed as one stream, in order."""
    return torch.cat([stream.feed(features), stream.finish()])
