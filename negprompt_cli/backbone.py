"""Backbones: what a backbone plugin hands to the core (a frozen CLIP model plus how to feed it), and how
the core asks the plugin registry for one by name.

The core only relies on the open_clip CLIP text-tower attributes (token_embedding,
positional_embedding, transformer, ln_final, text_projection, attn_mask) and encode_image,
so any plugin that produces an ``open_clip.model.CLIP``-shaped model works.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .devices import resolve_device
from .presets import DEFAULT_BACKBONE
from .registry import get_host

if TYPE_CHECKING:
    from .artifact import PromptArtifact


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


def set_text_checkpointing(backbone: Backbone, enabled: bool) -> None:
    """Recompute text-tower activations in the backward pass: less memory, about a third more compute."""
    transformer = backbone.model.transformer
    if hasattr(transformer, "grad_checkpointing"):
        transformer.grad_checkpointing = enabled




@dataclass(frozen=True)
class BackboneRequest:
    """What the user asked for on the command line."""

    name: str = DEFAULT_BACKBONE
    pretrained: str | None = None
    device: str = "auto"
    weights_cache: str | None = None  # where open_clip / the Hub cache downloaded weights (--weights-cache)
    quick_gelu: bool | None = None
    offline: bool = False


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a stored backbone here (the backbone itself comes from the artifact)."""

    device: str = "auto"
    weights_cache: str | None = None
    offline: bool = False
    text_chunk: int | None = None


def artifact_backbone(artifact: PromptArtifact, runtime: RuntimeOptions) -> BackboneRequest:
    return BackboneRequest(name=artifact.backbone["backbone"], pretrained=artifact.backbone.get("pretrained"),
                           device=runtime.device, weights_cache=runtime.weights_cache,
                           quick_gelu=artifact.backbone.get("quick_gelu"), offline=runtime.offline)


def load_backbone(request: BackboneRequest) -> Backbone:
    if request.offline:
        _force_hub_offline()
    factory = get_host().backbone_factory(request.name)
    device: torch.device = resolve_device(request.device)
    return factory(pretrained=request.pretrained, device=device, cache_dir=request.weights_cache,
                   quick_gelu=request.quick_gelu)


def _force_hub_offline() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE at import; set the live constant so --offline takes effect."""
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
