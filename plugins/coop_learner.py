"""Built-in prompt learner: CoOp (Zhou et al., IJCV 2022), the positive-prompt stage of NegPrompt.

One learned context shared by all classes (or one per class with ``csc``), the class name
at the end, cross-entropy over classes at the backbone's logit scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from negprompt.plugin import (
    PromptModule,
    PromptSettings,
    SoftPromptTextEncoder,
    TokenizedPrompts,
    hookimpl,
    initial_context,
)


class CoOpPrompts(PromptModule):
    logit_scale: torch.Tensor  # a buffer

    def __init__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, text_chunk: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.prompts = prompts
        self.text_chunk = text_chunk
        device = encoder.model.token_embedding.weight.device
        ctx = initial_context(encoder, settings, len(prompts), generator)
        self.ctx = torch.nn.Parameter(ctx.to(device))
        self.register_buffer("logit_scale", encoder.model.logit_scale.detach().exp().float().clone())

    def text_features(self) -> torch.Tensor:
        if self.ctx.dim() == 2:  # one shared context: its prefix runs once per layer
            return self.encoder.encode_shared(self.ctx, self.prompts, chunk_size=self.text_chunk)[0]
        return self.encoder.encode(self.ctx, self.prompts, chunk_size=self.text_chunk)

    def class_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        return self.logit_scale * image_features.to(text.dtype) @ text.t()

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.class_logits(image_features).float()
        return F.cross_entropy(logits, labels), logits

    def export(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"ctx_pos": self.ctx.detach(), "text_pos": self.text_features()}


class CoOpLearner:
    """The registered learner. CoOp's settings are the prompt layout itself (``PromptSettings``): no Options."""

    kind = "positive"
    Options = None

    def __call__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, *, options: Any = None, text_chunk: int | None = None) -> CoOpPrompts:
        return CoOpPrompts(encoder, prompts, settings, generator, text_chunk=text_chunk)


@hookimpl
def register_prompt_learners(register: Callable[..., None]) -> None:
    register("coop", CoOpLearner(), description="CoOp positive prompts (cross-entropy over classes)")
