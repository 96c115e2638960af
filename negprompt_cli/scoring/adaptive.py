"""Test-time negatives (``score --adaptive``): an AdaNeg-style memory of confident test features.

AdaNeg (Zhang et al., NeurIPS 2024) keeps, for every label (each ID class and each negative), a
memory of up to ``slots`` test image features. Per batch, in stream order:

1. score the batch with the scorer against the static text features (the *vanilla* score, an ID
   probability in [0, 1]);
2. write the confident images into memory: ID score > t + g·(1 − t) into the slot of the predicted ID
   class, ID score < t − g·t into the slot of the nearest negative (t = 0.5, g = 0.5 as released: above
   0.75 and below 0.25). A full slot replaces its highest-entropy entry when the newcomer's entropy
   (softmax over the ID classes or over the negatives, at the backbone's logit scale) is lower;
3. each label's *proxy* is its text feature plus its stored image features, renormalised (the released
   code's mean over text and slots); score the batch again against the proxies and return
   ``adaptive + λ·vanilla`` (λ = 0.1, released "combine").

The memory is written before the batch is scored, so a batch's confident images already help it, as in
the released code. Everything is deterministic for a given image order and batch size. Any scorer whose
score is an ID probability in [0, 1] can run adaptively (registered with ``probability=True``): neglabel, csp, the
hybrids and negprompt-sum; for the hybrids the learned negative prompts get memory slots like the
mined labels. The memory starts empty for every ``score`` run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError
from ..presets import ADAPTIVE_SLOTS, ADAPTIVE_WEIGHT
from .test_time import BatchStream


@dataclass(frozen=True)
class AdaptiveOptions:
    slots: int = ADAPTIVE_SLOTS  # image features remembered per label (AdaNeg's memleng)
    threshold: float = 0.5  # t
    gap: float = 0.5  # g: confident ID above t + g(1 - t), confident OOD below t - g t
    weight: float = ADAPTIVE_WEIGHT  # λ: final = adaptive + λ · vanilla
    batch: int = 256  # images per memory update (the stream's batch)

    def __post_init__(self) -> None:
        if self.batch < 2:
            raise UsageError(f"--adaptive needs a batch of at least 2 images (got --batch-size {self.batch})",
                             hint="the memory is updated once per batch, as AdaNeg does; use --batch-size 64 or more")
        if self.slots < 1:
            raise UsageError(f"--adaptive-slots must be at least 1 (got {self.slots})")
        if not (0 < self.threshold < 1 and 0 <= self.gap < 1):
            raise UsageError("the adaptive threshold must lie in (0, 1) and the gap in [0, 1)")

    def record(self) -> dict[str, Any]:
        return {"slots": self.slots, "threshold": self.threshold, "gap": self.gap, "weight": self.weight,
                "batch": self.batch, "method": "AdaNeg (NeurIPS 2024), memory per label, combine"}


@dataclass
class LabelMemory:
    """Per-label feature memory: [K, slots, E] features, [K, slots] entropies, [K] fill counts, and the
    running [K, E] sum of each label's stored features (so proxies cost O(K·E) per batch, not O(K·slots·E))."""

    features: torch.Tensor
    entropy: torch.Tensor
    count: torch.Tensor
    sums: torch.Tensor
    writes: dict[str, int] = field(default_factory=lambda: {"id": 0, "ood": 0})

    @classmethod
    def empty(cls, labels: int, slots: int, dim: int, device: torch.device) -> LabelMemory:
        return cls(torch.zeros(labels, slots, dim, device=device), torch.zeros(labels, slots, device=device),
                   torch.zeros(labels, dtype=torch.long, device=device), torch.zeros(labels, dim, device=device))

    def write(self, label: int, feature: torch.Tensor, entropy: float) -> bool:
        """Store ``feature`` for ``label``; when full, replace the highest-entropy entry if this one is lower."""
        filled = int(self.count[label])
        if filled < self.features.shape[1]:
            slot = filled
            self.count[label] += 1
        else:
            worst = int(torch.argmax(self.entropy[label]))
            if entropy >= float(self.entropy[label, worst]):
                return False
            slot = worst
        self.sums[label] += feature - self.features[label, slot]
        self.features[label, slot] = feature
        self.entropy[label, slot] = entropy
        return True

    def proxies(self, text: torch.Tensor) -> torch.Tensor:
        """[K, E]: each label's text feature plus its stored image features, renormalised."""
        return torch.nn.functional.normalize(text + self.sums, dim=-1)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


class AdaptiveScorer(BatchStream):
    """The memory and its scorer over one stream of image features, fed in order in pieces of any size: the
    memory is updated per ``options.batch`` images of the stream, whatever the pieces, so feeding a stream
    whole or window by window gives the same scores (:class:`BatchStream`). Memory: the label memory, and less than
    one batch."""

    def __init__(self, text_pos: torch.Tensor, text_neg: torch.Tensor | None, mined: torch.Tensor | None, *,
                 scorer: Callable[..., torch.Tensor], temperature: float, logit_scale: float,
                 options: AdaptiveOptions, scorer_options: dict[str, Any] | None = None,
                 device: torch.device | None = None) -> None:
        if text_neg is None and mined is None:
            raise UsageError("--adaptive needs negatives to adapt: a negative-label scorer (neglabel, csp, a "
                             "hybrid) or negative prompts")
        device = device or text_pos.device
        self.scorer, self.temperature, self.logit_scale = scorer, temperature, logit_scale
        self.options, self.extra, self.device = options, scorer_options or {}, device
        pos_text = text_pos.to(device, torch.float32)
        self.c = pos_text.shape[0]
        self.neg_shape = tuple(text_neg.shape) if text_neg is not None else None
        negatives = []  # every negative label, in one list: mined labels first, then the learned prompts
        if mined is not None:
            negatives.append(mined.to(device, torch.float32))
        if text_neg is not None:
            negatives.append(text_neg.to(device, torch.float32).flatten(0, 1))
        self.has_mined = mined is not None
        self.n_mined = mined.shape[0] if mined is not None else 0
        self.all_text = torch.cat([pos_text, torch.cat(negatives)])
        self.memory = LabelMemory.empty(self.all_text.shape[0], options.slots, self.all_text.shape[1], device)
        self.high = options.threshold + options.gap * (1 - options.threshold)
        self.low = options.threshold - options.gap * options.threshold
        super().__init__(options.batch, self.all_text.shape[1], device)

    def _run(self, f: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cos = f @ labels.t()
        pos, neg_all = cos[:, :self.c], cos[:, self.c:]
        mined_cos = neg_all[:, :self.n_mined] if self.has_mined else None
        prompt_cos = (neg_all[:, self.n_mined:].reshape(f.shape[0], *self.neg_shape[:2])
                      if self.neg_shape is not None else None)
        kwargs = dict(self.extra, mined=mined_cos) if self.has_mined else dict(self.extra)
        return (self.scorer(pos, prompt_cos, temperature=self.temperature, logit_scale=self.logit_scale, **kwargs),
                pos, neg_all)

    def _batch(self, f: torch.Tensor) -> torch.Tensor:
        memory, c = self.memory, self.c
        vanilla, pos, neg_all = self._run(f, self.all_text)
        id_entropy = _entropy(self.logit_scale * pos)
        ood_entropy = _entropy(self.logit_scale * neg_all)
        id_label, ood_label = pos.argmax(1), c + neg_all.argmax(1)
        for i in range(f.shape[0]):
            value = float(vanilla[i])
            if value > self.high and memory.write(int(id_label[i]), f[i], float(id_entropy[i])):
                memory.writes["id"] += 1
            elif value < self.low and memory.write(int(ood_label[i]), f[i], float(ood_entropy[i])):
                memory.writes["ood"] += 1
        adapted, _, _ = self._run(f, memory.proxies(self.all_text))
        return (adapted + self.options.weight * vanilla).cpu()

    def record(self) -> dict[str, Any]:
        filled = self.memory.count
        return {**self.options.record(), "id_writes": self.memory.writes["id"],
                "ood_writes": self.memory.writes["ood"],
                "id_labels_with_memory": int((filled[:self.c] > 0).sum()),
                "negative_labels_with_memory": int((filled[self.c:] > 0).sum())}


def adaptive_scores(image_features: torch.Tensor, text_pos: torch.Tensor, text_neg: torch.Tensor | None,
                    mined: torch.Tensor | None, *, scorer: Callable[..., torch.Tensor], temperature: float,
                    logit_scale: float, options: AdaptiveOptions,
                    scorer_options: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Scores [N] of ``image_features`` [N, E] (in stream order) and what the memory did.

    ``text_pos`` [C, E], ``text_neg`` [C, P, E] (learned negatives) or None, ``mined`` [M, E] or None:
    the same inputs ``score_features`` takes. A stream too large to hold: :class:`AdaptiveScorer`.
    """
    adaptive = AdaptiveScorer(text_pos, text_neg, mined, scorer=scorer, temperature=temperature,
                              logit_scale=logit_scale, options=options, scorer_options=scorer_options,
                              device=image_features.device)
    scores = torch.cat([adaptive.feed(image_features), adaptive.finish()])
    return scores, adaptive.record()
