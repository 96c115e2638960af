"""Built-in prompt learner: NegPrompt negative prompts (Li et al., CVPR 2024).

The positive context (from fit-pos) is frozen and its C text features are computed once.
P negative contexts (shared by all classes, or one set per class) start from the positive
context plus seeded fp32 noise and are trained with the loss variant chosen
(``negprompt_cli.training.losses``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from negprompt.plugin import (
    LOSS_VARIANTS,
    LossWeights,
    PromptModule,
    PromptSettings,
    SoftPromptTextEncoder,
    TokenizedPrompts,
    UsageError,
    hookimpl,
    negprompt_loss,
)


@dataclass(frozen=True)
class NegPromptOptions:
    """The NegPrompt learner's settings (``fit-neg --n-neg/--neg-csc/--loss-variant/--beta/--gamma/--init-noise``)."""

    n_neg: int = 2  # negative prompts per class (paper: 2)
    neg_csc: bool = False  # class-specific negative contexts (cannot transfer to new class names)
    loss_variant: str = "official"  # the released code's loss; "paper" for Eqs. 4-6 (docs/method.md: why)
    beta: float = 0.1  # NPD weight (paper and released scripts)
    gamma: float = 0.05  # NND weight (paper and released scripts)
    init_noise: float = 1e-3  # fp32 symmetry-breaking noise on the copies of the positive context

    def __post_init__(self) -> None:
        if self.loss_variant not in LOSS_VARIANTS:
            raise UsageError(f"unknown loss variant {self.loss_variant!r}",
                             hint=f"choose one of {', '.join(LOSS_VARIANTS)}")
        if self.n_neg < 1:
            raise UsageError(f"--n-neg must be at least 1 (got {self.n_neg})")


class NegativePrompts(PromptModule):
    ctx_pos: torch.Tensor  # buffers
    text_pos: torch.Tensor
    logit_scale: torch.Tensor

    def __init__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, *, ctx_pos: torch.Tensor, options: NegPromptOptions = NegPromptOptions(),
                 text_chunk: int | None = None) -> None:
        super().__init__()
        self.encoder, self.prompts, self.text_chunk = encoder, prompts, text_chunk
        self.variant, self.weights = options.loss_variant, LossWeights(options.beta, options.gamma)
        self.n_classes, self.n_neg = len(prompts), options.n_neg
        n_neg, neg_csc, init_noise = options.n_neg, options.neg_csc, options.init_noise
        device = encoder.device
        ctx_pos = ctx_pos.to(device, torch.float32)
        self.register_buffer("ctx_pos", ctx_pos.clone())
        with torch.no_grad():
            text_pos = (encoder.encode_shared(ctx_pos, prompts, chunk_size=text_chunk)[0] if ctx_pos.dim() == 2
                        else encoder.encode(ctx_pos, prompts, chunk_size=text_chunk))
            self.register_buffer("text_pos", text_pos)
        if ctx_pos.dim() == 3:  # class-specific positives can only seed class-specific negatives
            neg_csc = True
        n_ctx, width = ctx_pos.shape[-2:]
        if neg_csc:
            base = ctx_pos if ctx_pos.dim() == 3 else ctx_pos.expand(self.n_classes, n_ctx, width)
            start = base.unsqueeze(1).expand(self.n_classes, n_neg, n_ctx, width)
        else:
            start = ctx_pos.unsqueeze(0).expand(n_neg, n_ctx, width)
        # Symmetry-breaking noise, kept in fp32 (the released code's fp16 cast rounds 1e-5 noise away).
        noise = (torch.rand(start.shape, generator=generator) * 2 - 1) * init_noise
        self.neg_csc = self.class_specific = neg_csc
        self.prompts_per_class = n_neg
        self.ctx_neg = torch.nn.Parameter(start.detach().clone() + noise.to(device))
        self.register_buffer("logit_scale", encoder.model.logit_scale.detach().exp().float().clone())

    def negative_features(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """[C, P, E] unit features of every (class, negative prompt) pair (or of ``classes`` only)."""
        prompts = self.prompts if classes is None else self.prompts.subset(classes)
        c, p = len(prompts), self.n_neg
        if not self.neg_csc:  # shared contexts: each prefix runs once per layer
            return self.encoder.encode_shared(self.ctx_neg, prompts, chunk_size=self.text_chunk).transpose(0, 1)
        ctx_neg = self.ctx_neg if classes is None else self.ctx_neg[classes]
        ctx = ctx_neg.transpose(0, 1).reshape(p * c, *ctx_neg.shape[-2:])  # prompt-major rows
        feats = self.encoder.encode(ctx, prompts.repeat(p), chunk_size=self.text_chunk)
        return feats.view(p, c, -1).transpose(0, 1)

    supports_class_parallel = True

    def all_negative_features(self) -> torch.Tensor:
        """[C, P, E] for every class; under class-parallel training this rank encodes its share only and the
        shares are gathered (differentiably)."""
        if self.class_parallel is None:
            return self.negative_features()
        local = self.negative_features(self.class_parallel.share(self.n_classes))
        return self.class_parallel.gather(local, self.n_classes)

    def loss_and_backward(self, image_features: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradients; with ``text_chunk`` the text graph never holds more than one chunk.

        Gradient caching: the loss couples all C·P negative features (a softmax over them), so
        first all features are computed without a graph, the loss and its gradient with respect
        to those features are taken, and then the features are re-encoded chunk by chunk with
        autograd and the cached feature gradients are back-propagated. Same gradient, bounded memory.
        Under class-parallel training each rank re-encodes only its own classes and the gradients are
        summed over the ranks (``negprompt_cli.training.class_parallel``).
        """
        parallel = self.class_parallel
        if self.text_chunk is None or self.text_chunk >= self.n_classes:
            loss, logits = self.loss(image_features, labels)
            loss.backward()
            if parallel is not None:
                parallel.reduce_gradients(self.parameters())
            return loss.detach(), logits
        with torch.no_grad():
            neg = self.all_negative_features()
        neg = neg.float().requires_grad_(True)
        terms = negprompt_loss(self.variant, image_features.float(), self.text_pos.float(), neg, labels,
                               self.logit_scale, self.weights)
        terms["loss"].backward()
        feature_grad = neg.grad
        assert feature_grad is not None  # the loss reads every negative feature
        mine = parallel.share(self.n_classes) if parallel is not None else torch.arange(self.n_classes)
        for start in range(0, len(mine), self.text_chunk):
            classes = mine[start:start + self.text_chunk]
            chunk = self.negative_features(classes).float()
            (chunk * feature_grad[classes.to(feature_grad.device)]).sum().backward()
        if parallel is not None:
            parallel.reduce_gradients(self.parameters())
        return terms["loss"].detach(), self.class_logits(image_features)

    def loss_terms(self, image_features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        neg = self.all_negative_features().float()
        return negprompt_loss(self.variant, image_features.float(), self.text_pos.float(), neg, labels,
                              self.logit_scale, self.weights)

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        terms = self.loss_terms(image_features, labels)
        return terms["loss"], self.class_logits(image_features)

    def class_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(image_features.float(), dim=-1) @ self.text_pos.float().t()

    def export(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            neg = self.all_negative_features()
        return {"ctx_pos": self.ctx_pos, "ctx_neg": self.ctx_neg.detach(), "text_pos": self.text_pos,
                "text_neg": neg}


    def artifact_prompt(self) -> dict[str, Any]:
        return {"n_neg": self.n_neg, "neg_csc": self.neg_csc}


class NegPromptLearner:
    """The registered learner: ``kind``, its ``Options``, and how to build the module."""

    kind = "negative"
    Options = NegPromptOptions

    def __call__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, *, ctx_pos: torch.Tensor, options: NegPromptOptions | None = None,
                 text_chunk: int | None = None, **settings_given: Any) -> NegativePrompts:
        """``settings_given`` (n_neg=..., loss_variant=...) override ``options`` field by field."""
        options = replace(options or NegPromptOptions(), **settings_given)
        return NegativePrompts(encoder, prompts, settings, generator, ctx_pos=ctx_pos, options=options,
                               text_chunk=text_chunk)


@hookimpl
def register_prompt_learners(register: Callable[..., None]) -> None:
    register("negprompt", NegPromptLearner(), description="NegPrompt negative prompts (paper or released-code loss)")
