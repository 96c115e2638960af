"""What a backbone plugin hands to the core: a frozen CLIP model plus how to feed it.

The core only relies on the open_clip CLIP text-tower attributes (token_embedding,
positional_embedding, transformer, ln_final, text_projection, attn_mask) and encode_image,
so any plugin that produces an ``open_clip.model.CLIP``-shaped model works.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import NegPromptWarning, UsageError


@dataclass
class Backbone:
    """A loaded, frozen CLIP backbone."""

    name: str  # canonical name the user can pass back (e.g. "ViT-B/16", "local-dir:/x")
    pretrained: str | None  # tag, file path, or None for the weights that come with the name
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> normalised tensor (eval)
    tokenizer: Callable[..., torch.Tensor]
    image_size: int
    quick_gelu: bool = False
    base_model: str | None = None  # Hub id of the weights, for model cards
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def text_width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def identity(self) -> dict[str, Any]:
        """What must match for prompts trained on one backbone to be valid on another."""
        return {"backbone": self.name, "pretrained": self.pretrained, "quick_gelu": self.quick_gelu}

    def feature_key(self, preprocess_id: str) -> str:
        """Cache key for image features: weights identity plus the exact preprocessing."""
        payload = json.dumps({**self.identity(), "weights": self.weights_fingerprint(),
                              "preprocess": preprocess_id}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def weights_fingerprint(self) -> str:
        """A cheap fingerprint of the image tower weights, so two random-init models never share a cache."""
        if "fingerprint" not in self.extra:
            h = hashlib.sha256()
            for name, tensor in sorted(self.model.visual.state_dict().items())[:8]:
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().flatten()[:256].numpy().tobytes())
            self.extra["fingerprint"] = h.hexdigest()[:16]
        return self.extra["fingerprint"]


def resolve_device(requested: str | None) -> torch.device:
    """'auto' (default) picks CUDA when present; anything else is passed to torch."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise UsageError(f"invalid --device {requested!r}", hint="use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {requested} asked for CUDA, but no CUDA device is available",
                         hint="use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {requested}: this machine has {count} CUDA device(s)",
                         hint=f"use cuda:0 .. cuda:{count - 1}, or cuda")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {requested}: only cpu and cuda devices are supported",
                         hint="use auto, cpu, cuda or cuda:N")
    return device


PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(device: torch.device, precision: str) -> str:
    """The precision that will actually run: CPU always runs fp32 (CPU autocast is slower here), and says so."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" and precision != "fp32":
        # stacklevel 1: one location, so the warning shows once per run even when several stages ask
        warnings.warn(f"--precision {precision} applies to CUDA only; running fp32 on {device.type}",
                      PrecisionWarning, stacklevel=1)
        return "fp32"
    return precision


class PrecisionWarning(NegPromptWarning):
    """A requested precision that this device does not run."""


def autocast(device: torch.device, precision: str):  # type: ignore[no-untyped-def]
    """Mixed precision on CUDA (bf16/fp16 autocast); fp32 elsewhere. Stages call check_precision first."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    enabled = device.type == "cuda" and precision != "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def set_text_checkpointing(backbone: Backbone, enabled: bool) -> None:
    """Recompute text-tower activations in the backward pass: less memory, about a third more compute."""
    transformer = backbone.model.transformer
    if hasattr(transformer, "grad_checkpointing"):
        transformer.grad_checkpointing = enabled
