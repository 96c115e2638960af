"""Loading a backbone by name through the plugin registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .backbone import Backbone, resolve_device
from .registry import get_host

if TYPE_CHECKING:
    from .artifact import PromptArtifact

DEFAULT_BACKBONE = "ViT-B/16"


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
