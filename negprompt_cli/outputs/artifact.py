"""Prompt artifacts: one ``.safetensors`` file holding learned contexts and their metadata.

The file is self-describing: which backbone and weights it was trained on, the prompt
layout (context length, initialisation, class-token position, suffix), the class names,
the full training configuration, the seed and the package versions. safetensors metadata
must be ``str -> str``, so the metadata lives as one JSON document under ``negprompt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..errors import IncompatibleArtifactError, NegPromptError, NotFoundError, UsageError
from .atomic import check_output_path, write_atomic

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
                hint=f"use {_backbone_flags(self.backbone)}, or retrain",
            )


def _backbone_flags(backbone: dict[str, Any]) -> str:
    """The flags that name ``backbone`` as a shell takes them: a name with a space quoted, no ``--pretrained``
    for weights an artifact does not name (``--pretrained None`` would name weights called "None")."""
    import shlex

    flags = f"--backbone {shlex.quote(str(backbone.get('backbone')))}"
    if backbone.get("pretrained"):
        flags += f" --pretrained {shlex.quote(str(backbone['pretrained']))}"
    return flags


def package_versions() -> dict[str, str]:
    import open_clip

    from .. import __version__

    return {"negprompt": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def save_prompts(artifact: PromptArtifact, path: str | Path) -> Path:
    """Write atomically: the file either appears complete or not at all."""
    path = check_output_path(Path(path))
    meta = artifact.metadata()
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_source_date_epoch()))
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in artifact.tensors.items()}
    broken = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if broken:  # never write a file that loading refuses
        raise NegPromptError(f"the prompts to write to {path} hold non-finite values (NaN or infinity) in "
                             f"{', '.join(sorted(broken))}: training diverged",
                             hint="lower --lr, or train in fp32 (--precision fp32)")
    meta["tensors_sha256"] = tensors_digest(tensors)
    header = {"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)}
    data = canonical_safetensors(save(tensors, metadata=header))
    write_atomic(path, lambda tmp: write_bytes(tmp, data))
    return path


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def artifact_id(path: str | Path) -> str:
    """A prompts file's short identity (the first 16 hex digits of its SHA-256), written in every score row."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def canonical_safetensors(data: bytes) -> bytes:
    """The same file with its JSON header's keys in sorted order. safetensors writes the metadata from a hash map
    whose order changes from one map to the next, so two saves of the same prompts differed in their bytes; a
    reader does not care about the order, a checksum of the file (or a reproducible build) does."""
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    ordered = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(ordered) > size:  # never: the same keys and values, compact as safetensors writes them
        return data
    return data[:8] + ordered + b" " * (size - len(ordered)) + data[8 + size:]


def _source_date_epoch() -> float | None:
    """``SOURCE_DATE_EPOCH`` (the reproducible-builds convention), so that two runs of the same training write
    byte-identical files; None (now) when unset or not a whole number of seconds."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else None


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
    if str(path).startswith("hf:"):  # "hf://..." (a Path makes it "hf:/..."): never a file name to look up
        raise UsageError(f"{str(path)!r} is a Hugging Face Hub reference, not a prompts file",
                         hint="the command line resolves hf://ORG/NAME[@REVISION] itself; in Python pass "
                              "negprompt.resolve_prompts(reference), which downloads (or finds) the file")
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
    if len(header[METADATA_KEY]) > MAX_METADATA_CHARS:
        raise IncompatibleArtifactError(f"{path}: negprompt metadata of {len(header[METADATA_KEY]):,} characters "
                                        f"(more than {MAX_METADATA_CHARS:,}): not an artifact negprompt wrote")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise IncompatibleArtifactError(f"{path} has corrupt negprompt metadata: {exc}") from exc
    except RecursionError:
        raise IncompatibleArtifactError(f"{path}: negprompt metadata nested too deeply to be an artifact "
                                        "negprompt wrote") from None
    if not isinstance(meta, dict):
        raise IncompatibleArtifactError(f"{path}: negprompt metadata is a JSON {type(meta).__name__}, not an object")
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
    check_schema(meta, tensors, path)
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


MAX_METADATA_CHARS = 64 * 1024 * 1024  # far above any real artifact (class names and history of a large run)
MAX_CONTEXT_TOKENS = 1024  # far above any CLIP text tower's context; the backbone's own length is checked on use
_OPTIONAL_DICTS = ("training", "extra", "versions")


def _field_error(path: Path, name: str, problem: str) -> IncompatibleArtifactError:
    return IncompatibleArtifactError(f"{path}: metadata field {name} {problem}",
                                     hint="the file is damaged or was not written by negprompt: re-download or "
                                          "retrain it")


def check_schema(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The metadata's types and the tensors' shapes, consistent with each other, before any model or image work
    (an artifact from the Hub is untrusted input): exit 5 naming the field."""
    if meta["kind"] not in KINDS:
        raise _field_error(path, "kind", f"is {meta['kind']!r}, not one of {', '.join(KINDS)}")
    backbone = meta["backbone"]
    if not isinstance(backbone, dict):
        raise _field_error(path, "backbone", "is not an object")
    if not isinstance(backbone.get("backbone"), str) or not backbone["backbone"].strip():
        raise _field_error(path, "backbone.backbone", "is missing or not a name")
    if backbone.get("pretrained") is not None and not isinstance(backbone["pretrained"], str):
        raise _field_error(path, "backbone.pretrained", "is not a string")
    if backbone.get("quick_gelu") is not None and not isinstance(backbone["quick_gelu"], bool):
        raise _field_error(path, "backbone.quick_gelu", "is not true or false")
    prompt = meta["prompt"]
    if not isinstance(prompt, dict):
        raise _field_error(path, "prompt", "is not an object")
    n_ctx = prompt.get("n_ctx")
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or not 1 <= n_ctx <= MAX_CONTEXT_TOKENS:
        raise _field_error(path, "prompt.n_ctx", f"is {n_ctx!r}, not a context length from 1 to "
                                                 f"{MAX_CONTEXT_TOKENS}")
    for key in ("suffix", "ctx_init", "class_token_position"):
        if prompt.get(key) is not None and not isinstance(prompt[key], str):
            raise _field_error(path, f"prompt.{key}", "is not a string")
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _field_error(path, "class_names", "is not a non-empty list of strings")
    for key in _OPTIONAL_DICTS:
        if key in meta and not isinstance(meta[key], dict):
            raise _field_error(path, key, "is not an object")
    _check_tensors(tensors, meta["kind"], n_ctx, len(names), path)


def _check_tensors(tensors: dict[str, torch.Tensor], kind: str, n_ctx: int, classes: int, path: Path) -> None:
    """Shapes the metadata implies: contexts [n_ctx, D] or [C, n_ctx, D] (negatives [P, n_ctx, D] or
    [C, P, n_ctx, D]), text features [C, E] and [C, P, E], every size at least 1."""
    def bad(name: str, problem: str) -> IncompatibleArtifactError:
        shape = list(tensors[name].shape) if name in tensors else None
        return IncompatibleArtifactError(f"{path}: tensor {name} {problem} (shape {shape}, {classes} class "
                                         f"name(s), n_ctx {n_ctx})",
                                         hint="the file is damaged or was not written by negprompt: re-download "
                                              "or retrain it")

    required = ["ctx_pos"] + (["ctx_neg"] if kind == "negative" else [])
    for name in required:
        if name not in tensors:
            raise bad(name, "is missing")
    for name, tensor in tensors.items():
        if tensor.numel() == 0 or not tensor.is_floating_point():
            raise bad(name, "is empty or not floating point")
        if not bool(torch.isfinite(tensor).all()):  # a checksum only says the bytes are the ones written
            raise bad(name, f"holds {int((~torch.isfinite(tensor)).sum())} non-finite value(s) (NaN or infinity)")
    ctx_pos = tensors["ctx_pos"]
    if ctx_pos.dim() not in (2, 3) or ctx_pos.shape[-2] != n_ctx or (ctx_pos.dim() == 3
                                                                      and ctx_pos.shape[0] != classes):
        raise bad("ctx_pos", "does not hold n_ctx context vectors (per class with --csc)")
    width = ctx_pos.shape[-1]
    neg = tensors.get("ctx_neg")
    if neg is not None and (neg.dim() not in (3, 4) or neg.shape[-2] != n_ctx or neg.shape[-1] != width
                            or (neg.dim() == 4 and neg.shape[0] != classes)):
        raise bad("ctx_neg", "does not hold negative contexts of the positive contexts' size")
    text_pos = tensors.get("text_pos")
    if text_pos is not None and (text_pos.dim() != 2 or text_pos.shape[0] != classes):
        raise bad("text_pos", "does not hold one feature per class name")
    text_neg = tensors.get("text_neg")
    if text_neg is not None:
        per_class = neg.shape[-3] if neg is not None else None
        if (text_neg.dim() != 3 or text_neg.shape[0] != classes or per_class != text_neg.shape[1]
                or (text_pos is not None and text_neg.shape[2] != text_pos.shape[1])):
            raise bad("text_neg", "does not hold the negative prompts' features for every class name")


def check_fits_backbone(artifact: PromptArtifact, width: int, context_length: int, embed_dim: int | None,
                        path: str | Path) -> None:
    """Context vectors as wide as the backbone's token embeddings, stored features as wide as its embedding, and
    fewer context tokens than its context length (a declared size far beyond the model fails here, not after
    minutes of work or out of memory)."""
    ctx_width = int(artifact.tensors["ctx_pos"].shape[-1])
    if ctx_width != width:
        raise IncompatibleArtifactError(f"{path}: context vectors are {ctx_width} wide, the backbone's token "
                                        f"embeddings {width}", hint="use the backbone the prompts were trained on")
    text_pos = artifact.tensors.get("text_pos")
    if embed_dim is not None and text_pos is not None and int(text_pos.shape[-1]) != embed_dim:
        raise IncompatibleArtifactError(f"{path}: stored text features are {int(text_pos.shape[-1])} wide, the "
                                        f"backbone's embedding {embed_dim}",
                                        hint="use the backbone the prompts were trained on")
    n_ctx = int(artifact.prompt["n_ctx"])
    if n_ctx >= context_length - 2:  # start and end tokens need their places too
        raise IncompatibleArtifactError(f"{path}: {n_ctx} context tokens do not fit the backbone's "
                                        f"{context_length}-token text tower")


def _norm(name: Any) -> str:
    return str(name).replace("/", "-").lower()


def _describe(identity: dict[str, Any]) -> str:
    pretrained = identity.get("pretrained")
    return f"{identity.get('backbone')}" + (f" ({pretrained})" if pretrained else "")
