"""``negprompt transfer``: re-target learned contexts to a new class list, without images or training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import PromptArtifact, load_prompts, package_versions, save_prompts
from .atomic import check_output_path
from .backbones import RuntimeOptions, artifact_backbone, load_backbone
from .data import read_names_file
from .prompt_features import text_features_for
from .text_encoder import SoftPromptTextEncoder


def transfer(prompts: Path, names_file: Path, out: Path, runtime: RuntimeOptions = RuntimeOptions()) -> dict[str, Any]:
    check_output_path(out)
    source = load_prompts(prompts)
    names = read_names_file(names_file)
    backbone = load_backbone(artifact_backbone(source, runtime))
    source.check_backbone(backbone.identity(), prompts)
    encoder = SoftPromptTextEncoder(backbone)
    text_pos, text_neg = text_features_for(encoder, source, names, runtime.text_chunk)
    tensors = {k: v for k, v in source.tensors.items() if k.startswith("ctx_")}
    tensors["text_pos"] = text_pos
    if text_neg is not None:
        tensors["text_neg"] = text_neg
    extra = dict(source.extra)
    if "threshold" in extra:
        extra["threshold"] = {**extra["threshold"], "transferred": True,
                              "calibrated_on_classes": len(source.class_names)}
    extra["transfer"] = {"source": str(prompts), "source_classes": list(source.class_names)}
    result = PromptArtifact(kind=source.kind, tensors=tensors, backbone=source.backbone, prompt=source.prompt,
                            class_names=names, training=source.training, extra=extra, versions=package_versions())
    save_prompts(result, out)
    new = [n for n in names if n not in source.class_names]
    return {"out": str(out), "kind": source.kind, "classes": len(names), "new_classes": len(new),
            "source_classes": len(source.class_names), "backbone": backbone.identity(),
            "threshold": extra.get("threshold")}
