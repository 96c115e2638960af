"""What the core needs to know about a backbone without building it, remembered beside the feature cache.

A ``score`` whose images are all in the feature cache and whose prompts hold their text features asks the model
for facts only: its identity and weights fingerprint (the cache key), its preprocessing as text, its logit scale
and widths. Building it costs seconds (importing open_clip, torchvision and timm, reading the weights): most of
such a run. So a run that builds a backbone writes these facts to ``<cache>/backbones/<key>.json``, with the
size and modification time of each file the weights were read from (``Backbone.weights_files``, named by the
plugin); a later run with the same request finds them and gets a :class:`DeferredBackbone`, which builds the
model the first time something needs it (an image to encode, a text to encode).

Facts are used only while every named file is unchanged, for the same request and the same negprompt, torch,
open_clip and plugin versions; a backbone whose plugin names no files (random weights, a Hub repository that may
move) is always built. When a deferred model is built after all, its fingerprints are checked against the facts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..devices import resolve_device
from ..errors import NegPromptError
from ..outputs.atomic import publish
from ..registry import get_host
from .backbone import Backbone, BackboneRequest, load_backbone
from .feature_cache import BACKBONES_DIR, root_folder

if TYPE_CHECKING:
    from ..inputs.pixels import TensorPreprocess

FORMAT = "negprompt-backbone-facts/2"  # 2: the logit bias


@dataclass(frozen=True)
class BackboneFacts:
    """A built backbone as the core reads it, and the files (path, size, mtime_ns) its weights came from."""

    name: str
    pretrained: str | None
    quick_gelu: bool
    base_model: str | None
    default_lexicon: str | None
    image_size: int
    extra: dict[str, Any]  # with the weights' fingerprints
    preprocess: str
    tensor_preprocess: dict[str, Any] | None
    logit_scale: float
    text_width: int | None
    context_length: int | None
    embed_dim: int | None
    logit_bias: float | None = None
    files: list[list[Any]] = field(default_factory=list)

    @classmethod
    def of(cls, backbone: Backbone) -> BackboneFacts | None:
        """The facts of a built backbone; None when its plugin names no weights files (or an extra is not data)."""
        if not backbone.weights_files:
            return None
        backbone.weights_fingerprint()
        backbone.text_fingerprint()
        tensor = backbone.tensor_preprocess()
        try:
            facts = cls(name=backbone.name, pretrained=backbone.pretrained, quick_gelu=bool(backbone.quick_gelu),
                        base_model=backbone.base_model, default_lexicon=backbone.default_lexicon,
                        image_size=int(backbone.image_size),
                        extra=json.loads(json.dumps(backbone.extra)), preprocess=backbone.preprocess_repr(),
                        tensor_preprocess=asdict(tensor) if tensor is not None else None,
                        logit_scale=backbone.logit_scale, text_width=_or_none(lambda: backbone.text_width),
                        context_length=_or_none(lambda: backbone.context_length),
                        embed_dim=_or_none(lambda: backbone.embed_dim), logit_bias=backbone.logit_bias,
                        files=[_stamp(f) for f in backbone.weights_files])
        except (TypeError, ValueError, OSError):  # an extra that is not JSON, a file already gone
            return None
        return facts

    def unchanged(self) -> bool:
        """Whether every weights file is still the one the facts were taken from."""
        try:
            return bool(self.files) and all(_stamp(path) == [path, size, mtime] for path, size, mtime in self.files)
        except OSError:
            return False


def _or_none(read: Any) -> int | None:
    try:
        value = read()
    except AttributeError:  # a text tower without CLIP's attributes
        return None
    return int(value) if value is not None else None


def _stamp(path: str) -> list[Any]:
    status = os.stat(path)
    return [path, status.st_size, status.st_mtime_ns]


def facts_key(request: BackboneRequest) -> str:
    """What the facts depend on besides the weights files: the request and the code that turns it into a model."""
    from .. import __version__  # noqa: PLC0415 (the package's own version, set after its modules load)

    try:
        open_clip_version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        open_clip_version = None
    plugins = sorted((r.name, r.version) for r in get_host().records.values())
    payload = {"format": FORMAT, "name": request.name, "pretrained": request.pretrained,
               "quick_gelu": request.quick_gelu, "weights_cache": request.weights_cache, "negprompt": __version__,
               "torch": torch.__version__, "open_clip": open_clip_version, "plugins": plugins}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_facts(path: Path) -> BackboneFacts | None:
    try:
        data = json.loads(path.read_text())
        if data.pop("format", None) != FORMAT:
            return None
        return BackboneFacts(**data)
    except (OSError, ValueError, TypeError):  # absent, torn or from another version: the model is built
        return None


def write_facts(path: Path, facts: BackboneFacts) -> None:
    """Atomically, and never failing the run: the facts are only a shortcut."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        root_folder(path.parent.parent, path.parent.name)
        tmp.write_text(json.dumps({"format": FORMAT, **asdict(facts)}, indent=1, sort_keys=True))
        publish(tmp, path)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def remembered_backbone(request: BackboneRequest, cache_root: Path) -> Backbone:
    """The backbone ``request`` names: deferred when facts about it are remembered under ``cache_root`` and its
    weights files are unchanged, else built now (and its facts remembered)."""
    path = Path(cache_root) / BACKBONES_DIR / f"{facts_key(request)}.json"
    facts = read_facts(path)
    if facts is not None and facts.unchanged():
        return DeferredBackbone(facts, request)
    backbone = load_backbone(request)
    found = BackboneFacts.of(backbone)
    if found is not None:
        write_facts(path, found)
    return backbone


class DeferredBackbone(Backbone):
    """A backbone known by its facts, whose model is built the first time ``model``, ``preprocess`` or
    ``tokenizer`` is read (see the module docstring)."""

    def __init__(self, facts: BackboneFacts, request: BackboneRequest) -> None:  # noqa: D107
        # Backbone's own fields, from the facts; the three that need the model are properties below
        self.name, self.pretrained, self.quick_gelu = facts.name, facts.pretrained, facts.quick_gelu
        self.image_size, self.base_model, self.extra = facts.image_size, facts.base_model, dict(facts.extra)
        self.default_lexicon = facts.default_lexicon
        self.weights_files = tuple(str(f[0]) for f in facts.files)
        self._facts, self._request = facts, request
        self._built_backbone: Backbone | None = None

    def __repr__(self) -> str:
        state = "built" if self._built_backbone is not None else "not built yet"
        return f"DeferredBackbone({self.name!r}, pretrained={self.pretrained!r}, model {state})"

    @property
    def is_built(self) -> bool:
        return self._built_backbone is not None

    def built(self) -> Backbone:
        """The backbone itself, built on first use; its fingerprints must be the remembered ones."""
        if self._built_backbone is None:
            backbone = load_backbone(self._request)
            found = BackboneFacts.of(backbone)
            if found is None or (found.extra.get("fingerprint"), found.preprocess) != (
                    self._facts.extra.get("fingerprint"), self._facts.preprocess):
                raise NegPromptError(
                    f"the backbone {self.name} is not the one whose facts were remembered, though its weights "
                    "files look unchanged: nothing was written",
                    hint=f"remove {BACKBONES_DIR}/ from the feature cache (--cache-dir) and run again")
            self._built_backbone = backbone
        return self._built_backbone

    # the model and what comes with it
    @property
    def model(self) -> Any:
        return self.built().model

    @model.setter
    def model(self, value: Any) -> None:
        self.built().model = value

    @property
    def preprocess(self) -> Any:
        return self.built().preprocess

    @preprocess.setter
    def preprocess(self, value: Any) -> None:
        self.built().preprocess = value

    @property
    def tokenizer(self) -> Any:
        return self.built().tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.built().tokenizer = value

    # facts, without the model
    @property
    def device(self) -> torch.device:
        if self.is_built:
            return self.built().device
        device = resolve_device(self._request.device)  # where load_backbone puts the parameters:
        return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and device.index is None \
            else device

    @property
    def text_width(self) -> int:
        return self._fact("text_width")

    @property
    def context_length(self) -> int:
        return self._fact("context_length")

    @property
    def embed_dim(self) -> int | None:
        return self._facts.embed_dim

    @property
    def logit_scale(self) -> float:
        return self._facts.logit_scale

    @property
    def logit_bias(self) -> float | None:
        return self._facts.logit_bias

    def preprocess_repr(self) -> str:
        return self._facts.preprocess

    def tensor_preprocess(self) -> TensorPreprocess | None:
        from ..inputs.pixels import TensorPreprocess  # noqa: PLC0415 (as Backbone.tensor_preprocess)

        spec = self._facts.tensor_preprocess
        if spec is None:
            return None
        return TensorPreprocess(size=int(spec["size"]), crop=tuple(spec["crop"]), mean=tuple(spec["mean"]),
                                std=tuple(spec["std"]))

    def _fact(self, name: str) -> int:
        value = getattr(self._facts, name)
        return int(getattr(self.built(), name)) if value is None else int(value)
