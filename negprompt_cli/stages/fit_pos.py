"""``negprompt fit-pos``: learn CoOp positive prompts on cached features of a few-shot subset."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..devices import check_precision
from ..errors import UsageError
from ..features.backbone import Backbone, BackboneRequest, load_backbone, set_text_checkpointing
from ..features.image_features import EncodeOptions
from ..features.local_features import split_rows
from ..features.text_encoder import SoftPromptTextEncoder
from ..features.text_features import hand_template_features
from ..inputs.image_folders import ImageFolder, folder_fingerprint
from ..outputs.artifact import PromptArtifact, package_versions, save_prompts
from ..outputs.atomic import check_not_input, check_output_path
from ..registry import get_host
from ..training.checkpoint import Checkpointing, checkpoint_path
from ..training.data import DataOptions, labelled_features, recipe_run, run_fingerprint
from ..training.learners import PromptModule, PromptSettings, exported_tensors, learner_options, options_record
from ..training.loop import OptimConfig, Selection, TrainResult, accuracy, train
from ..training.memory import AUTO


@dataclass
class FitPosOptions:
    backbone: BackboneRequest
    data: DataOptions
    out: Path
    encode: EncodeOptions = EncodeOptions()  # how images are encoded here: cache, batch, precision, quiet
    prompt: PromptSettings = field(default_factory=PromptSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    learner: str = "coop"
    learner_options: dict[str, Any] = field(default_factory=dict)  # the learner's own Options (--learner-option)
    text_chunk: int | str | None = AUTO  # prompts per text-encoder chunk; auto: one pass (CoOp keeps one graph)
    resume: bool = False
    grad_checkpoint: bool = False


def zero_shot_accuracy(encoder: SoftPromptTextEncoder, names: list[str], features: torch.Tensor,
                       labels: torch.Tensor) -> float:
    """Hand-template ("a photo of a {}.") accuracy through the model's own encode_text (of the global features,
    when rows also carry patch features)."""
    text = hand_template_features(encoder, names)
    features = split_rows(features, text.shape[1])[0]
    return float(((features.float() @ text.t()).argmax(1) == labels).float().mean())


def fit_pos(options: FitPosOptions, *, backbone: Backbone | None = None) -> dict[str, Any]:
    """Train positive prompts; ``backbone`` reuses an already loaded ``options.backbone``."""
    check_output_path(options.out)
    check_not_input(options.out, [("--classes", options.data.classes_file)])
    builder = get_host().learner(options.learner)
    if getattr(builder, "kind", "positive") != "positive":
        raise UsageError(f"learner {options.learner!r} learns {builder.kind} prompts; fit-pos needs a positive learner")
    own = learner_options(options.learner, builder, options.learner_options)  # checked before any work
    extra = {"options": own} if own is not None else {}  # a learner without Options need not take the keyword
    own_record = {"learner_options": options_record(own)} if own is not None else {}
    backbone = backbone or load_backbone(options.backbone)
    set_text_checkpointing(backbone, options.grad_checkpoint)
    encoder = SoftPromptTextEncoder(backbone)
    encoder.require_soft_prompts()  # before any image is encoded
    settings = _prompt_settings(encoder, options.prompt)
    optim = options.optim
    local = bool(getattr(builder, "local", False))  # a learner of patch features (LoCoOp): rows carry them
    encoding = replace(options.encode, precision=check_precision(backbone.device, options.encode.precision),
                       local=local)
    data = labelled_features(backbone, options.data, encoding, optim.seed)
    folder, features, labels, val = data.folder, data.features, data.labels, data.val
    prompts = encoder.tokenize(folder.class_names, settings.n_ctx, settings.suffix)
    generator = torch.Generator().manual_seed(optim.seed)
    # CoOp's graph spans every class whatever the chunk (no gradient caching here), so auto is one pass
    text_chunk = None if options.text_chunk == AUTO else options.text_chunk
    module = builder(encoder, prompts, settings, generator, text_chunk=text_chunk, **extra)
    clean = features[:, 0]
    zero_shot = zero_shot_accuracy(encoder, folder.class_names, clean, labels)
    initial = accuracy(module, clean, labels)
    fingerprint = run_fingerprint(stage="fit-pos", optim=recipe_run(optim, encoding.precision),
                                  prompt=settings.as_dict(), learner=options.learner, names=folder.class_names,
                                  labels=labels.tolist(),
                                  features=float(features.sum()), backbone=backbone.identity(), **own_record)
    selection = Selection("val_accuracy", lambda m: accuracy(m, *val)) if val is not None else None
    result = train(module, features, labels, optim, selection=selection, precision=encoding.precision,
                   quiet=encoding.quiet,
                   checkpointing=Checkpointing(checkpoint_path(options.out), fingerprint, options.resume),
                   description="Training positive prompts")
    final = accuracy(module, clean, labels)
    summary: dict[str, Any] = {
        "out": str(options.out),
        "backbone": backbone.identity(),
        "classes": len(folder.class_names),
        "train_images": int(len(labels)),
        "val_images": int(len(val[1])) if val else 0,
        "images_encoded": data.encoded,
        "images_from_cache": data.cached,
        "images_skipped": data.skipped,
        "zero_shot_accuracy": zero_shot,
        "initial_train_accuracy": initial,
        "final_train_accuracy": final,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "selected_epoch": result.selected_epoch,
        "selection": result.selection,
    }
    if val:
        summary["val_accuracy"] = accuracy(module, *val)
    save_prompts(_artifact(options, backbone, module, settings, folder, encoding.precision, int(len(labels)),
                           result, own_record, summary), options.out)
    return summary


def _prompt_settings(encoder: SoftPromptTextEncoder, settings: PromptSettings) -> PromptSettings:
    """``--ctx-init`` words set the context length to their token count."""
    if settings.ctx_init:
        n_tokens = encoder.word_embeddings(settings.ctx_init).shape[0]
        settings = PromptSettings(n_tokens, settings.ctx_init, settings.csc, settings.suffix,
                                  settings.class_token_position)
    if settings.n_ctx < 1:
        raise UsageError(f"--n-ctx must be at least 1 (got {settings.n_ctx})")
    return settings


def _artifact(options: FitPosOptions, backbone: Backbone, module: PromptModule, settings: PromptSettings,
              folder: ImageFolder, precision: str, train_images: int, result: TrainResult,
              own_record: dict[str, Any], summary: dict[str, Any]) -> PromptArtifact:
    """The positive prompts with what they were trained on and how (docs/architecture.md, Artifacts)."""
    return PromptArtifact(
        kind="positive",
        tensors=exported_tensors(module),
        backbone=backbone.identity(),
        prompt={**settings.as_dict(), "learner": options.learner},
        class_names=list(folder.class_names),
        training={
            "stage": "fit-pos",
            "optim": options.optim.as_dict(),
            "precision": precision,
            "data": {"root": str(options.data.root), "class_dirs": folder.class_dirs, "shots": options.data.shots,
                     "val_fraction": options.data.val_fraction, "aug_views": options.data.aug_views,
                     "augment": options.data.augment,
                     "train_images": train_images, "listing_sha256": folder_fingerprint(folder)},
            "history": result.history,
            "selected_epoch": result.selected_epoch,
            "selection": result.selection,
            "logit_scale": backbone.logit_scale,
            **own_record,
        },
        extra={k: summary[k] for k in ("zero_shot_accuracy", "initial_train_accuracy", "final_train_accuracy")},
        versions=package_versions(),
    )
