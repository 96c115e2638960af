"""LoCoOp (Miyai et al., NeurIPS 2023, "Few-Shot Out-of-Distribution Detection via Prompt Learning"): CoOp's
positive prompts trained with an OOD regularisation on the image's own patches.

Our implementation of the released trainer (AtsuMiyai/LoCoOp @a311b39, ``trainers/locoop.py``; ImageNet:
``train.sh ... 0.25 200``). A patch whose top-K classes (by its softmax over the class prompts, logits s·cos)
do not include the image's label is taken as background, an OOD region; training maximises the entropy of
those patches' class distribution while the global feature learns the classes with cross-entropy:

    loss = CE(s·cos(global, t_c), y) − λ · mean_{OOD patches} H(softmax_c(s·cos(patch, t_c)))

with λ = ``weight`` (0.25) and K = ``top_k`` (200, for ImageNet's 1,000 classes; the README asks to change
both for other datasets; K at or above the class count leaves no patch OOD and the term vanishes). The patch
features are GL-MCM's (the last block's value path), which the core encodes and caches for a learner that says
``local = True``; training rows then carry each image's global feature followed by its patch features.
The artifact is a fit-pos artifact like CoOp's; LoCoOp's paper scores it with MCM or GL-MCM
(``score --scorer gl-mcm``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from negprompt.plugin import (
    CoOpPrompts,
    PromptSettings,
    SoftPromptTextEncoder,
    TokenizedPrompts,
    UsageError,
    hookimpl,
    split_rows,
)


@dataclass(frozen=True)
class LoCoOpOptions:
    """``--learner-option KEY=VALUE``; defaults: the released ImageNet run."""

    weight: float = 0.25  # λ
    top_k: int = 200  # K

    def __post_init__(self) -> None:
        if self.weight < 0 or self.top_k < 1:
            raise UsageError(f"LoCoOp needs weight >= 0 and top_k >= 1 (got {self.weight}, {self.top_k})")


def background_entropy(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mean entropy of the patches whose top-K classes miss the image's label (the release's
    ``entropy_select_topk``, with its +1e-5 inside the log); 0 when there is none. ``local_logits`` [B, P, C]."""
    p = F.softmax(local_logits.flatten(0, 1), dim=-1)
    k = min(top_k, p.shape[1])
    top = torch.topk(p, k=k, dim=1).indices
    label = labels.repeat_interleave(local_logits.shape[1])
    background = ~top.eq(label[:, None]).any(dim=1)
    chosen = p[background]
    if chosen.shape[0] == 0:
        return local_logits.new_zeros(())
    return -torch.mean(torch.sum(chosen * torch.log(chosen + 1e-5), dim=1))


class LoCoOpPrompts(CoOpPrompts):
    """CoOp's context, trained with LoCoOp's loss on rows that carry patch features."""

    def __init__(self, *args: Any, options: LoCoOpOptions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = options

    def class_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        glob, _ = split_rows(image_features, text.shape[1])
        return self.logit_scale * glob.to(text.dtype) @ text.t()

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loss(image_features, labels)[:2]

    def loss_terms(self, image_features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, _, parts = self._loss(image_features, labels)
        return {"loss": loss, **parts}

    def _loss(self, image_features: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        text = self.text_features()
        glob, patches = split_rows(image_features, text.shape[1])
        logits = (self.logit_scale * glob.to(text.dtype) @ text.t()).float()
        loss_id = F.cross_entropy(logits, labels)
        if patches is None:  # rows without patches (e.g. validation features of another run): CoOp's loss
            return loss_id, logits, {"loss_id": loss_id}
        local_logits = (self.logit_scale * patches.to(text.dtype) @ text.t()).float()
        loss_en = -background_entropy(local_logits, labels, self.options.top_k)
        return loss_id + self.options.weight * loss_en, logits, {"loss_id": loss_id, "loss_en": loss_en}


class LoCoOpLearner:
    """The registered learner: positive prompts, trained on rows with patch features (``local``)."""

    kind = "positive"
    local = True  # the core encodes the training images with their patch features
    Options = LoCoOpOptions

    def __call__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, *, options: LoCoOpOptions | None = None,
                 text_chunk: int | None = None) -> LoCoOpPrompts:
        return LoCoOpPrompts(encoder, prompts, settings, generator, text_chunk=text_chunk,
                             options=options or LoCoOpOptions())


@hookimpl
def register_prompt_learners(register: Callable[..., None]) -> None:
    register("locoop", LoCoOpLearner(), description="LoCoOp positive prompts: CoOp + entropy maximisation on "
             "background patches (patch features; ViT backbones)")
