"""The contract between the training loop and prompt-learner plugins.

A learner plugin registers a *builder*: ``build(encoder, prompts, settings, generator)``
returning a :class:`PromptModule`. The training loop only ever calls ``loss`` and
``parameters``; artifacts are written from ``export``. This keeps CoOp, NegPrompt and any
third-party learner interchangeable behind ``negprompt fit-pos --learner NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .text_encoder import SoftPromptTextEncoder, TokenizedPrompts


@dataclass(frozen=True)
class PromptSettings:
    """How the prompt is laid out and initialised (stored in the artifact's ``prompt`` section)."""

    n_ctx: int = 16
    ctx_init: str | None = None
    csc: bool = False  # class-specific context
    suffix: str = "."
    class_token_position: str = "end"

    def as_dict(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "ctx_init": self.ctx_init, "csc": self.csc, "suffix": self.suffix,
                "class_token_position": self.class_token_position}


class PromptModule(torch.nn.Module):
    """Learnable prompts over a frozen encoder."""

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss, class logits [B, C]) for unit-norm image features."""
        raise NotImplementedError

    def class_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits used for accuracy (no gradient needed)."""
        raise NotImplementedError

    def loss_and_backward(self, image_features: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the loss and accumulate gradients; learners may override to bound memory."""
        loss, logits = self.loss(image_features, labels)
        loss.backward()
        return loss.detach(), logits

    def export(self) -> dict[str, torch.Tensor]:
        """Tensors to store in the artifact."""
        raise NotImplementedError


def exported_tensors(module: PromptModule) -> dict[str, torch.Tensor]:
    """The module's export at the stage boundary: detached fp32 CPU tensors (the device rule)."""
    with torch.no_grad():
        return {k: v.detach().to("cpu", torch.float32) for k, v in module.export().items()}


class LearnerBuilder(Protocol):
    kind: str  # "positive" (fit-pos) or "negative" (fit-neg)

    def __call__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, **options: Any) -> PromptModule: ...


def initial_context(encoder: SoftPromptTextEncoder, settings: PromptSettings, n_classes: int,
                    generator: torch.Generator) -> torch.Tensor:
    """CoOp's initialisation: word embeddings of ``ctx_init``, or N(0, 0.02^2) from the seeded generator."""
    width = encoder.backbone.text_width
    if settings.ctx_init:
        words = encoder.word_embeddings(settings.ctx_init)
        if words.shape[0] != settings.n_ctx:
            raise ValueError(f"ctx_init {settings.ctx_init!r} has {words.shape[0]} tokens, n_ctx is {settings.n_ctx}")
        ctx = words.cpu()
        return ctx.unsqueeze(0).repeat(n_classes, 1, 1) if settings.csc else ctx
    shape = (n_classes, settings.n_ctx, width) if settings.csc else (settings.n_ctx, width)
    return torch.randn(shape, generator=generator) * 0.02
