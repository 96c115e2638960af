"""The contract between the training loop and prompt-learner plugins.

A learner plugin registers a :class:`LearnerBuilder`: an object with a ``kind``, the dataclass of
its own ``Options``, and a call that builds a :class:`PromptModule`. The core only uses what
these two classes declare (training: ``loss_and_backward``, ``parameters``; selection and
records: ``loss_terms``, ``class_logits``; artifacts: ``export`` and ``artifact_prompt``), so CoOp,
NegPrompt and any third-party learner are interchangeable behind ``--learner NAME``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from ..features.text_encoder import SoftPromptTextEncoder, TokenizedPrompts
from ..registry import parse_pairs, plugin_options
from .class_parallel import ClassParallel


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
    """Learnable prompts over a frozen encoder: everything the core calls on a learner's module.

    ``text_chunk`` (classes per text-encoder chunk, or None) is set by the core before training;
    ``prompts_per_class`` and ``class_specific`` describe the module's text graph so the core can
    size that chunk (``--text-chunk auto``).
    """

    text_chunk: int | None = None
    prompts_per_class: int = 1
    class_specific: bool = False
    # Class-parallel training under torchrun (see ``class_parallel``): a learner that can split its classes
    # over ranks says so here; the core then sets ``class_parallel`` before training.
    supports_class_parallel: bool = False
    class_parallel: ClassParallel | None = None

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

    def loss_terms(self, image_features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss and its named parts (recorded before and after training; "loss" is what validation uses)."""
        return {"loss": self.loss(image_features, labels)[0]}

    def export(self) -> dict[str, torch.Tensor]:
        """Tensors to store in the artifact."""
        raise NotImplementedError

    def artifact_prompt(self) -> dict[str, Any]:
        """Entries this learner adds to the artifact's ``prompt`` section (its prompt layout)."""
        return {}


def exported_tensors(module: PromptModule) -> dict[str, torch.Tensor]:
    """The module's export at the stage boundary: detached fp32 CPU tensors (the device rule)."""
    with torch.no_grad():
        return {k: v.detach().to("cpu", torch.float32) for k, v in module.export().items()}


class LearnerBuilder(Protocol):
    """What a learner plugin registers (``register(name, learner)``).

    ``kind``: "positive" (fit-pos) or "negative" (fit-neg). ``Options``: the dataclass of the
    learner's own settings (the core fills it from ``learner_options`` and records it in the
    artifact; a learner without settings may leave it out). Calling the learner builds the module:
    ``learner(encoder, prompts, settings, generator, options=..., **stage_inputs)``, where a
    negative learner's stage input is ``ctx_pos``, the positive contexts it builds on.
    """

    kind: str
    Options: type | None

    def __call__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, *, options: Any = None, **stage_inputs: Any) -> PromptModule: ...


def learner_options(name: str, learner: Any, given: dict[str, Any]) -> Any:
    """The learner's Options filled with ``given`` (``--learner-option KEY=VALUE``; ``plugin_options``' rules)."""
    return plugin_options("learner", name, learner, given)


def parse_option_pairs(pairs: list[str]) -> dict[str, str]:
    """``--learner-option KEY=VALUE`` texts (repeatable) -> {KEY: VALUE}; the learner's Options convert them."""
    return parse_pairs(pairs, "--learner-option")


def options_record(options: Any) -> dict[str, Any]:
    return asdict(options) if options is not None else {}


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
