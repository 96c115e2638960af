"""CoOp's prompt module (Zhou et al., IJCV 2022), public so that a learner plugin can build on it.

One learned context shared by all classes (or one per class with ``csc``), each class name after it, cross-entropy
over the classes at the backbone's logit scale. The built-in ``coop`` learner registers it as is; a variant
subclasses it and overrides what it changes, usually :meth:`CoOpPrompts.loss` (docs/examples/ has one that adds
label smoothing as its own ``--learner-option``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..features.text_encoder import SoftPromptTextEncoder, TokenizedPrompts
from .learners import PromptModule, PromptSettings, initial_context


class CoOpPrompts(PromptModule):
    """CoOp's learnable context over a frozen text tower.

    ``ctx`` is the parameter: ``[n_ctx, width]`` shared, or ``[C, n_ctx, width]`` class-specific. ``prompts`` are
    the tokenised class names (one row per class), ``logit_scale`` the backbone's (a buffer, not learned)."""

    logit_scale: torch.Tensor  # a buffer

    def __init__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, text_chunk: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.prompts = prompts
        self.text_chunk = text_chunk
        device = encoder.device
        ctx = initial_context(encoder, settings, len(prompts), generator)
        self.ctx = torch.nn.Parameter(ctx.to(device))
        self.register_buffer("logit_scale", encoder.model.logit_scale.detach().exp().float().clone())

    def text_features(self) -> torch.Tensor:
        """Unit text features of every class prompt, ``[C, E]``, with the gradient to ``ctx``."""
        if self.ctx.dim() == 2:  # one shared context: its prefix runs once per layer
            return self.encoder.encode_shared(self.ctx, self.prompts, chunk_size=self.text_chunk)[0]
        return self.encoder.encode(self.ctx, self.prompts, chunk_size=self.text_chunk)

    def class_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits, logit scale × cosine, for unit image features ``[B, E]``."""
        text = self.text_features()
        return self.logit_scale * image_features.to(text.dtype) @ text.t()

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy over the classes, the logits): what training minimises."""
        logits = self.class_logits(image_features).float()
        return F.cross_entropy(logits, labels), logits

    def export(self) -> dict[str, torch.Tensor]:
        """The artifact's tensors: the context and the class prompts' text features (so a score needs no text
        tower)."""
        with torch.no_grad():
            return {"ctx_pos": self.ctx.detach(), "text_pos": self.text_features()}
