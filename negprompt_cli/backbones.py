"""Loading a backbone by name through the plugin registry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbone import Backbone, resolve_device
from .registry import get_host

DEFAULT_BACKBONE = "ViT-B/16"


@dataclass(frozen=True)
class BackboneRequest:
    """What the user asked for on the command line."""

    name: str = DEFAULT_BACKBONE
    pretrained: str | None = None
    device: str = "auto"
    cache_dir: str | None = None  # where open_clip / the Hub cache weights
    quick_gelu: bool | None = None
    offline: bool = False


def load_backbone(request: BackboneRequest) -> Backbone:
    if request.offline:
        _force_hub_offline()
    factory = get_host().backbone_factory(request.name)
    device: torch.device = resolve_device(request.device)
    return factory(pretrained=request.pretrained, device=device, cache_dir=request.cache_dir,
                   quick_gelu=request.quick_gelu)


def _force_hub_offline() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE at import; set the live constant so --offline takes effect."""
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
