"""The contract between the training loop and prompt-learner plugins.

A learner plugin registers a :class:`LearnerBuilder`: an object with a ``kind``, the dataclass of
its own ``Options``, and a call that builds a :class:`PromptModule`. The core only uses what
these two classes declare (training: ``loss_and_backward``, ``parameters``; selection and
records: ``loss_terms``, ``class_logits``; artifacts: ``export`` and ``artifact_prompt``), so CoOp,
NegPrompt and any third-party learner are interchangeable behind ``--learner NAME``.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch

from ..errors import UsageError
from ..features.text_encoder import SoftPromptTextEncoder, TokenizedPrompts
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
    """The learner's Options filled with ``given``; unknown names and bad values are usage errors. A value given
    as text (``--learner-option KEY=VALUE``) is converted to the field's declared type (int, float, bool, str, or
    any of them ``| None``)."""
    options_type = getattr(learner, "Options", None)
    if options_type is None:
        if given:
            raise UsageError(f"learner {name!r} takes no options (got {', '.join(sorted(given))})")
        return None
    known = {f.name for f in fields(options_type)}
    unknown = sorted(set(given) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise UsageError(f"learner {name!r} has no option {unknown[0]!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""),
                         hint=f"its options: {', '.join(sorted(known))}")
    try:
        hints = typing.get_type_hints(options_type)
    except Exception:  # annotations this module cannot resolve: the values go to the learner as text
        hints = {}
    values = {k: _from_text(name, k, v, hints.get(k)) if isinstance(v, str) else v for k, v in given.items()}
    try:
        return options_type(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"learner {name!r}: {exc}") from None
    except UsageError as exc:  # the learner's own check (__post_init__): said with the learner's name
        raise UsageError(f"learner {name!r}: {exc.message}", hint=exc.hint) from None


def parse_option_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` texts (``--learner-option``, repeatable) -> {KEY: VALUE}; the learner converts the values."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--learner-option takes KEY=VALUE (got {pair!r})",
                             hint="e.g. --learner-option n_neg=4; negprompt plugins lists each learner's options")
        if key in options:
            raise UsageError(f"--learner-option {key} is given twice")
        options[key] = value
    return options


def _from_text(name: str, key: str, text: str, hint: Any) -> Any:
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_args(hint) else [hint]
    optional = type(None) in typing.get_args(hint)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    kind = kinds[0] if len(kinds) == 1 else str
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes", "on")
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        raise UsageError(f"learner {name!r} option {key} takes {getattr(kind, '__name__', kind)} (got {text!r})")\
            from None
    return text  # a type the command line cannot spell: the learner checks it


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
