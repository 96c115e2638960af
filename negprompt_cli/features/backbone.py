"""Backbones: what a backbone plugin hands to the core (a frozen CLIP model plus how to feed it), and how
the core asks the plugin registry for one by name.

The core relies on ``encode_image`` and ``encode_text``, and for soft prompts on a CLIP-style text tower
(token_embedding, positional_embedding, transformer, ln_final, text_projection, attn_mask), found on the model
(open_clip ``CLIP``) or on its ``text`` (``CustomTextCLIP``: SigLIP and others): see ``text_tower``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..devices import resolve_device
from ..errors import IncompatibleArtifactError
from ..presets import DEFAULT_BACKBONE
from ..registry import get_host

if TYPE_CHECKING:
    from ..inputs.pixels import TensorPreprocess
    from ..outputs.artifact import PromptArtifact


TOWER_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final")


def text_tower(model: Any) -> Any | None:
    """The module that holds a CLIP-style text transformer: the model itself (open_clip ``CLIP``), its ``text``
    (``CustomTextCLIP``: SigLIP, ...), or None (a Hugging Face text tower, or another shape)."""
    for tower in (model, getattr(model, "text", None)):
        if tower is not None and all(hasattr(tower, part) for part in TOWER_PARTS):
            return tower
    return None


class BackboneFactory(Protocol):
    """What a plugin registers with ``register_backbones`` (or returns from ``resolve_backbone``). The core calls
    it with these four keywords only; ``quick_gelu`` None means "whatever the weights were trained with"."""

    def __call__(self, *, pretrained: str | None, device: torch.device, cache_dir: str | None,
                 quick_gelu: bool | None) -> Backbone: ...


@dataclass
class Backbone:
    """A loaded, frozen CLIP backbone."""

    name: str  # canonical name the user can pass back (e.g. "ViT-B/16", "local-dir:/x")
    pretrained: str | None  # tag, file path, or None for the weights that come with the name
    model: Any  # an open_clip CLIP (or one shaped like it: token_embedding, transformer, encode_image, ...)
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> normalised tensor (eval)
    tokenizer: Callable[..., torch.Tensor]
    image_size: int
    quick_gelu: bool = False
    base_model: str | None = None  # Hub id of the weights, for model cards
    extra: dict[str, Any] = field(default_factory=dict)
    # The lexicon that mined-label scorers (neglabel, csp, ...) use when the user names none: a lexicon file or
    # folder, as --lexicon takes; None = WordNet. A model that knows a small vocabulary names its own.
    default_lexicon: str | None = None
    # The files the weights (and their config) were read from. A plugin that names them lets a run whose images
    # are all in the feature cache skip building the model (``backbone_facts``); empty: always built.
    weights_files: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def text_width(self) -> int:
        """Width of the text tower's token embeddings (a soft prompt's vectors); AttributeError without a CLIP-style
        text tower."""
        return int(self._tower().token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self._tower().positional_embedding.shape[0])

    def _tower(self) -> Any:
        tower = text_tower(self.model)
        if tower is None:
            raise AttributeError(f"backbone {self.name!r} has no CLIP-style text tower")
        return tower

    @property
    def embed_dim(self) -> int | None:
        """Width of the joint image-text embedding (None where the text tower does not say)."""
        projection = getattr(text_tower(self.model), "text_projection", None)
        if isinstance(projection, torch.Tensor):
            return int(projection.shape[-1])
        return getattr(projection, "out_features", None)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @property
    def logit_bias(self) -> float | None:
        """The learned bias b of a sigmoid-trained model (SigLIP: logits s·cos + b), None for a softmax-trained
        one; scorers registered with ``logit_bias`` get it (0 where None)."""
        bias = getattr(self.model, "logit_bias", None)
        return float(bias.detach().float().item()) if isinstance(bias, torch.Tensor) else None

    def preprocess_repr(self) -> str:
        """The eval preprocessing as text: part of the feature-cache key (a changed transform is a new key)."""
        return repr(self.preprocess)

    def tensor_preprocess(self) -> TensorPreprocess | None:
        """The preprocessing as batched tensor work (``pixels``), or None where it has steps that path lacks."""
        from ..inputs.pixels import tensor_preprocess_for  # noqa: PLC0415 (features import inputs, not at load)

        return tensor_preprocess_for(self.preprocess)

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
            tower = getattr(self.model, "visual", self.model)  # open_clip's image tower; else the whole model
            for name, tensor in sorted(tower.state_dict().items())[:8]:
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().flatten()[:256].numpy().tobytes())
            self.extra["fingerprint"] = h.hexdigest()[:16]
        return self.extra["fingerprint"]

    def text_fingerprint(self) -> str:
        """A cheap fingerprint of the text tower's weights (keys the mined labels' text features)."""
        if "text_fingerprint" not in self.extra:
            model, tower = self.model, text_tower(self.model)
            if tower is not None and getattr(tower, "text_projection", None) is not None:
                tensors = [tower.token_embedding.weight, tower.positional_embedding, tower.text_projection]
            else:  # a text tower of another shape: its first tensors
                tensors = [t for n, t in sorted(model.state_dict().items()) if not n.startswith("visual.")][:8]
            h = hashlib.sha256()
            for tensor in tensors:
                tensor = getattr(tensor, "weight", tensor)  # a projection that is a Linear layer
                h.update(tensor.detach().float().cpu().flatten()[:4096].numpy().tobytes())
            self.extra["text_fingerprint"] = h.hexdigest()[:16]
        return str(self.extra["text_fingerprint"])


def set_text_checkpointing(backbone: Backbone, enabled: bool) -> None:
    """Recompute text-tower activations in the backward pass: less memory, about a third more compute."""
    transformer: Any = getattr(text_tower(backbone.model), "transformer", None)
    if transformer is not None and hasattr(transformer, "grad_checkpointing"):
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
    trust_backbone: bool = False  # the user accepts a remote backbone the artifact names (--trust-backbone)


# Backbone names that fetch weights from a repository named in the string itself (open_clip's hf-hub:ORG/NAME).
# An artifact is data, often downloaded: it may name such a backbone only when the user chose it too.
REMOTE_SCHEMES = ("hf-hub:",)
TRUSTED_ENV = "NEGPROMPT_TRUSTED_BACKBONES"  # comma-separated names or patterns, e.g. hf-hub:my-org/*


def check_chosen_backbone(name: str, runtime: RuntimeOptions, where: str | Path = "the prompts") -> None:
    """Refuse to download weights from a repository that only an artifact names (exit 5, before any fetch).

    Registered names and open_clip's built-in tags resolve to the weights their publishers list; a local folder
    or file is already on this machine. A remote name is used only when the user chose it: ``--backbone NAME``
    on the command line, ``--trust-backbone``, or a pattern in ``NEGPROMPT_TRUSTED_BACKBONES``.
    """
    if not name.startswith(REMOTE_SCHEMES) or runtime.trust_backbone:
        return
    allowed = [p.strip() for p in os.environ.get(TRUSTED_ENV, "").split(",") if p.strip()]
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed):
        return
    raise IncompatibleArtifactError(
        f"{where} names the backbone {name}, weights from a Hub repository you did not choose: nothing was "
        "downloaded",
        hint=f"if you trust that repository, pass --backbone {name} (or --trust-backbone), or add it to "
             f"{TRUSTED_ENV}")


def artifact_backbone(artifact: PromptArtifact, runtime: RuntimeOptions,
                      where: str | Path = "the prompts") -> BackboneRequest:
    """The backbone an artifact was trained on, to run here; a remote one only if the user chose it."""
    name = str(artifact.backbone["backbone"])
    check_chosen_backbone(name, runtime, where)
    return BackboneRequest(name=name, pretrained=artifact.backbone.get("pretrained"),
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
