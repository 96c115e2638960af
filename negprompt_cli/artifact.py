"""Prompt artifacts: one ``.safetensors`` file holding learned contexts and their metadata.

The file is self-describing: which backbone and weights it was trained on, the prompt
layout (context length, initialisation, class-token position, suffix), the class names,
the full training configuration, the seed and the package versions. safetensors metadata
must be ``str -> str``, so the metadata lives as one JSON document under ``negprompt``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import check_output_path, write_atomic
from .errors import IncompatibleArtifactError, NotFoundError

SCHEMA_VERSION = 1
METADATA_KEY = "negprompt"
KINDS = ("positive", "negative")  # fit-pos output, fit-neg output


@dataclass
class PromptArtifact:
    """Learned prompts plus everything needed to use or reproduce them."""

    kind: str
    tensors: dict[str, torch.Tensor]
    backbone: dict[str, Any]  # Backbone.identity(): name, pretrained, quick_gelu
    prompt: dict[str, Any]  # n_ctx, ctx_init, csc, class_token_position, suffix
    class_names: list[str]
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def metadata(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "backbone": self.backbone,
            "prompt": self.prompt,
            "class_names": self.class_names,
            "training": self.training,
            "extra": self.extra,
            "versions": self.versions or package_versions(),
        }

    def check_backbone(self, identity: dict[str, Any], path: str | Path = "prompts") -> None:
        """Refuse prompts trained on another backbone or other weights (exit code 5).

        An ``identity`` that names no weights (``pretrained`` None) matches any weights of that backbone.
        """
        theirs = (_norm(identity.get("backbone")), identity.get("pretrained"))
        mine = (_norm(self.backbone.get("backbone")), self.backbone.get("pretrained") if theirs[1] else None)
        if mine != theirs:
            raise IncompatibleArtifactError(
                f"{path} was trained on {_describe(self.backbone)}, but the backbone is {_describe(identity)}",
                hint=f"use --backbone {self.backbone.get('backbone')} "
                     f"--pretrained {self.backbone.get('pretrained')}, or retrain",
            )


def package_versions() -> dict[str, str]:
    import open_clip

    from . import __version__

    return {"negprompt": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def save_prompts(artifact: PromptArtifact, path: str | Path) -> Path:
    """Write atomically: the file either appears complete or not at all."""
    path = check_output_path(Path(path))
    meta = artifact.metadata()
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in artifact.tensors.items()}
    meta["tensors_sha256"] = tensors_digest(tensors)
    header = {"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    return path


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes: damaged tensor data is caught on load."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        h.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_prompts(path: str | Path, *, kind: str | None = None) -> PromptArtifact:
    """Read and validate an artifact; every problem is a one-line IncompatibleArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"prompts file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise IncompatibleArtifactError(
            f"{path} is not a negprompt prompts file (unreadable or truncated safetensors: {exc})"
        ) from exc
    if METADATA_KEY not in header:
        raise IncompatibleArtifactError(f"{path} is a safetensors file but not a negprompt artifact "
                                        "(no negprompt metadata)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise IncompatibleArtifactError(f"{path} has corrupt negprompt metadata: {exc}") from exc
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise IncompatibleArtifactError(
            f"{path} uses artifact schema {version!r}; this negprompt reads schema {SCHEMA_VERSION}",
            hint="upgrade negprompt (pip install -U negprompt)" if isinstance(version, int)
            and version > SCHEMA_VERSION else None,
        )
    expected = meta.get("tensors_sha256")  # artifacts written before checksums have none
    if expected is not None and tensors_digest(tensors) != expected:
        raise IncompatibleArtifactError(f"{path} is damaged: its tensors do not match the checksum in its metadata",
                                        hint="re-download it (negprompt pull) or retrain it")
    missing = [k for k in ("kind", "backbone", "prompt", "class_names") if k not in meta]
    if missing:
        raise IncompatibleArtifactError(f"{path} metadata lacks {', '.join(missing)}")
    artifact = PromptArtifact(
        kind=meta["kind"], tensors=tensors, backbone=meta["backbone"], prompt=meta["prompt"],
        class_names=list(meta["class_names"]), training=meta.get("training", {}),
        extra=meta.get("extra", {}), versions=meta.get("versions", {}), schema_version=version,
    )
    if kind is not None and artifact.kind != kind:
        expected = {"positive": "a fit-pos", "negative": "a fit-neg"}.get(kind, kind)
        raise IncompatibleArtifactError(f"{path} is a {artifact.kind} prompts artifact; expected {expected} "
                                        "artifact")
    return artifact


def _norm(name: Any) -> str:
    return str(name).replace("/", "-").lower()


def _describe(identity: dict[str, Any]) -> str:
    pretrained = identity.get("pretrained")
    return f"{identity.get('backbone')}" + (f" ({pretrained})" if pretrained else "")
