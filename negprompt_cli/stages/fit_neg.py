"""``negprompt fit-neg``: learn NegPrompt negative prompts on top of frozen positive prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import check_precision
from ..distributed import SINGLE, Ranks
from ..errors import IncompatibleArtifactError, UsageError
from ..features.backbone import (
    Backbone,
    BackboneRequest,
    RuntimeOptions,
    artifact_backbone,
    load_backbone,
    set_text_checkpointing,
)
from ..features.image_features import EncodeOptions
from ..features.text_encoder import SoftPromptTextEncoder
from ..features.text_features import context_features
from ..inputs.image_folders import ImageFolder, load_image_folder, read_names_file
from ..outputs.artifact import PromptArtifact, check_fits_backbone, load_prompts, package_versions, save_prompts
from ..outputs.atomic import check_not_input, check_output_path
from ..presets import NEGATIVE_OPTIM, default_scorer, default_source
from ..registry import get_host
from ..scoring.calibration import KeepRequest
from ..scoring.negative_labels import LabelRequest
from ..scoring.setup import ScoringSetup, setup_for_features
from ..training.checkpoint import Checkpointing, checkpoint_path
from ..training.class_parallel import ClassParallel
from ..training.data import DataOptions, TrainingSet, labelled_features, recipe_run, run_fingerprint
from ..training.learners import PromptModule, PromptSettings, exported_tensors, learner_options, options_record
from ..training.loop import OptimConfig, Selection, TrainResult, accuracy, train
from ..training.memory import AUTO, resolve_text_chunk


@dataclass
class FitNegOptions:
    data: DataOptions
    out: Path
    pos: Path | None = None  # None only in the one-command pipeline, which trains it first
    backbone: BackboneRequest | None = None  # None: the positive artifact's backbone, run with `runtime`
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    encode: EncodeOptions = EncodeOptions()  # how images are encoded here: cache, batch, precision, quiet
    learner: str = "negprompt"
    learner_options: dict[str, Any] = field(default_factory=dict)  # overrides of the learner's own Options
    train_classes: Path | None = None
    train_fraction: float | None = None
    train_subset: str = "first"
    optim: OptimConfig = NEGATIVE_OPTIM
    temperature: float = 1.0
    keep: KeepRequest = KeepRequest()  # what the stored threshold promises (--keep, --confidence)
    text_chunk: int | str | None = AUTO  # classes per chunk above which gradient caching bounds memory
    resume: bool = False
    grad_checkpoint: bool = False
    ranks: Ranks = SINGLE  # a torchrun job: the ranks share the classes of the text graph (class_parallel)


def select_train_classes(class_dirs: list[str], names: list[str], options: FitNegOptions, seed: int) -> list[int]:
    """Indices of the classes the negatives are trained on (open-vocabulary training uses a subset)."""
    if options.train_classes is not None and options.train_fraction is not None:
        raise UsageError("give --train-classes or --train-fraction, not both")
    if options.train_classes is not None:
        wanted = read_names_file(options.train_classes, strict=options.encode.strict)
        chosen: list[int] = []
        for item in wanted:
            if item in names:  # every class of that name (ImageNet's list names two classes "missile")
                chosen.extend(i for i, name in enumerate(names) if name == item)
            elif item in class_dirs:
                chosen.append(class_dirs.index(item))
            else:
                raise UsageError(f"{options.train_classes}: {item!r} is not a class of the training data")
        return sorted(set(chosen))
    if options.train_fraction is None:
        return list(range(len(names)))
    if not 0 < options.train_fraction <= 1:
        raise UsageError(f"--train-fraction must be in (0, 1] (got {options.train_fraction})")
    count = math.floor(options.train_fraction * len(names) + 1e-9)
    if count == 0:
        raise UsageError(f"--train-fraction {options.train_fraction} of {len(names)} classes is zero classes",
                         hint=f"use at least {1 / len(names):.3g}")
    if options.train_subset == "first":
        return list(range(count))
    if options.train_subset == "random":
        return sorted(int(i) for i in np.random.default_rng(seed).permutation(len(names))[:count])
    raise UsageError(f"unknown --train-subset {options.train_subset!r}", hint="choose first or random")


@dataclass(frozen=True)
class NegativePlan:
    """What fit-neg's cheap checks established, before any encoding or training."""

    builder: Any
    learner_options: Any  # the learner's Options, filled
    folder: ImageFolder
    chosen: list[int]  # indices of the classes the negatives train on
    positive: PromptArtifact | None = None  # --pos, loaded (None in the one-command pipeline: not trained yet)


def plan_fit_neg(options: FitNegOptions) -> NegativePlan:
    """Every check that needs no backbone: output path, options, learner, data folder, class names and subset."""
    check_output_path(options.out)
    check_not_input(options.out, [("--pos", options.pos), ("--classes", options.data.classes_file),
                                  ("--train-classes", options.train_classes)])
    builder = get_host().learner(options.learner)
    if getattr(builder, "kind", None) != "negative":
        raise UsageError(f"learner {options.learner!r} does not learn negative prompts")
    settings = learner_options(options.learner, builder, options.learner_options)
    folder = load_image_folder(options.data.root, options.data.classes_file, strict=options.encode.strict)
    positive = None
    if options.pos is not None:
        positive = load_prompts(options.pos, kind="positive")
        folder = names_from_positive(folder, positive, options.pos, options.data.classes_file)
    chosen = select_train_classes(folder.class_dirs, folder.class_names, options, options.optim.seed)
    return NegativePlan(builder, settings, folder, chosen, positive)


def names_from_positive(folder: ImageFolder, positive: PromptArtifact, pos_path: Path,
                        classes_file: Path | None) -> ImageFolder:
    """The class names the negatives train with: those the positive prompts were trained with, mapped to DATA's
    folders through the folders the positives recorded. A ``--classes`` file that names a class otherwise is
    refused (training on other names than the positives' silently changes the prompts and the threshold)."""
    recorded = positive.training.get("data", {}).get("class_dirs") if isinstance(positive.training, dict) else None
    names = list(positive.class_names)
    if isinstance(recorded, list) and len(recorded) == len(names) and "transfer" not in positive.extra:
        by_folder = dict(zip(recorded, names, strict=True))
        unknown = [d for d in folder.class_dirs if d not in by_folder]
        if unknown:
            if classes_file is not None:  # classes the positives never saw, named by the user: shared contexts
                return folder
            raise UsageError(f"{folder.root} has class folder(s) the positive prompts {pos_path} were not trained "
                             f"on: {', '.join(unknown[:3])}" + (" ..." if len(unknown) > 3 else ""),
                             hint="name the classes with --classes FILE, or train the positives on this data")
        wanted = [by_folder[d] for d in folder.class_dirs]
    elif len(names) == len(folder.class_dirs):
        if classes_file is not None:  # no folder record to check the file against (a transferred artifact)
            return folder
        wanted = names  # in sorted-folder order, as fit-pos takes them
    else:
        if classes_file is not None:
            return folder
        raise UsageError(f"the positive prompts {pos_path} hold {len(names)} class names but {folder.root} has "
                         f"{len(folder.class_dirs)} class folders", hint="name the classes with --classes FILE")
    if classes_file is not None and list(folder.class_names) != wanted:
        at = next(i for i, (a, b) in enumerate(zip(folder.class_names, wanted, strict=True)) if a != b)
        raise UsageError(f"--classes {classes_file} names folder {folder.class_dirs[at]!r} "
                         f"{folder.class_names[at]!r}, but the positive prompts {pos_path} were trained with "
                         f"{wanted[at]!r}", hint="drop --classes: fit-neg takes the class names stored in --pos")
    return replace(folder, class_names=wanted)


@dataclass
class TrainedNegatives:
    """What training left: the module (trained on ``names``), its record and the numbers the summary reports."""

    module: PromptModule
    result: TrainResult
    names: list[str]  # the classes the negatives were trained on
    train_features: torch.Tensor
    train_labels: torch.Tensor
    initial_loss: dict[str, float]
    final_loss: dict[str, float]
    text_chunk: int | None
    learner_record: dict[str, Any]


def fit_neg(options: FitNegOptions, *, backbone: Backbone | None = None,
            plan: NegativePlan | None = None) -> dict[str, Any] | None:
    """Train negative prompts on top of the fit-pos artifact ``options.pos``: plan → train → export → calibrate
    → write.

    ``backbone`` reuses an already loaded backbone (the one-command pipeline loads it once for both stages).
    In a torchrun job every rank trains the same prompts on its share of the classes and rank 0 alone writes
    (and returns the summary; the other ranks return None).
    """
    plan = plan or plan_fit_neg(options)
    if options.pos is None:
        raise UsageError("fit-neg needs positive prompts (--pos), or the one-command pipeline to train them first")
    pos_path = options.pos
    positive, preview = plan.positive, plan.folder
    if positive is None:  # the pipeline planned before its positive stage ran: same data and names
        positive = load_prompts(pos_path, kind="positive")
        preview = names_from_positive(preview, positive, pos_path, options.data.classes_file)
    if backbone is None:
        if options.backbone is not None:  # a named backbone that is not the positives' fails before any loading
            positive.check_backbone({"backbone": options.backbone.name, "pretrained": options.backbone.pretrained},
                                    pos_path)
        backbone = load_backbone(options.backbone or artifact_backbone(positive, options.runtime, pos_path))
    set_text_checkpointing(backbone, options.grad_checkpoint)
    positive.check_backbone(backbone.identity(), pos_path)
    encoder = SoftPromptTextEncoder(backbone)
    encoder.require_soft_prompts()  # before any image is encoded
    check_fits_backbone(positive, backbone.text_width, backbone.context_length, backbone.embed_dim, pos_path)
    encoding = replace(options.encode, precision=check_precision(backbone.device, options.encode.precision))
    data = labelled_features(backbone, options.data, encoding, options.optim.seed, folder=preview,
                             ranks=options.ranks)
    trained = train_negatives(options, plan, positive, encoder, data, encoding)
    tensors = exported_tensors(trained.module)  # the last step every rank takes part in
    if not options.ranks.is_main:
        return None
    tensors = for_every_class(tensors, positive, encoder, list(data.folder.class_names), trained)
    threshold, setup, id_accuracy = calibrate_default_scorer(options, backbone, tensors, data)
    summary = {
        "out": str(options.out),
        "pos": str(pos_path),
        "backbone": backbone.identity(),
        "classes": len(data.folder.class_names),
        "train_classes": len(plan.chosen),
        "train_images": int(len(trained.train_labels)),
        "images_encoded": data.encoded,
        "images_from_cache": data.cached,
        "learner": options.learner,
        "learner_options": trained.learner_record,
        "text_chunk": trained.text_chunk,
        "processes": options.ranks.world_size,
        "initial_loss": trained.initial_loss,
        "final_loss": trained.final_loss,
        "threshold": threshold,
        "scorer_uses_negative_prompts": setup.reads_negative_prompts,
        f"{'validation' if data.val is not None else 'training'}_accuracy": id_accuracy,
        "train_accuracy": accuracy(trained.module, trained.train_features[:, 0], trained.train_labels),
    }
    write_negatives(options, positive, backbone, data, trained, tensors, threshold, encoding)
    return summary


def train_negatives(options: FitNegOptions, plan: NegativePlan, positive: PromptArtifact,
                    encoder: SoftPromptTextEncoder, data: TrainingSet, encoding: EncodeOptions) -> TrainedNegatives:
    """Build the learner's module on the chosen classes and train it (resumable; every rank takes part)."""
    folder, chosen, ranks, backbone, optim = data.folder, plan.chosen, options.ranks, encoder.backbone, options.optim
    if positive.tensors["ctx_pos"].dim() == 3 and list(folder.class_names) != list(positive.class_names):
        raise IncompatibleArtifactError(f"{options.pos} has class-specific contexts for other classes than the data")
    if positive.tensors["ctx_pos"].dim() == 3 and len(chosen) != len(folder.class_names):
        raise UsageError("open-vocabulary training (--train-classes/--train-fraction) needs shared positive contexts")
    remap = torch.full((len(folder.class_names),), -1, dtype=torch.long)
    remap[chosen] = torch.arange(len(chosen))
    mask = remap[data.labels] >= 0
    train_features, train_labels = data.features[mask], remap[data.labels[mask]]
    train_names = [folder.class_names[i] for i in chosen]
    settings = PromptSettings(**{k: v for k, v in positive.prompt.items() if k in PromptSettings.__dataclass_fields__})
    prompts = encoder.tokenize(train_names, settings.n_ctx, settings.suffix)
    generator = torch.Generator().manual_seed(optim.seed)
    ctx_pos = positive.tensors["ctx_pos"]
    if ctx_pos.dim() == 3:
        ctx_pos = ctx_pos[chosen]
    module = plan.builder(encoder, prompts, settings, generator, ctx_pos=ctx_pos, options=plan.learner_options)
    # sized from what the module says about its text graph (auto: chunk only when it would not fit)
    text_chunk = resolve_text_chunk(options.text_chunk, backbone=backbone, prompts=prompts,
                                    prompts_per_class=module.prompts_per_class,
                                    class_specific=module.class_specific, precision=encoding.precision)
    module.text_chunk = text_chunk
    if ranks.distributed:
        if not module.supports_class_parallel:
            raise UsageError(f"learner {options.learner!r} cannot split its classes over torchrun processes",
                             hint="run it in one process")
        module.class_parallel = ClassParallel(ranks)
    learner_record = options_record(plan.learner_options)
    fingerprint = run_fingerprint(stage="fit-neg", optim=recipe_run(optim, encoding.precision), names=train_names,
                                  labels=train_labels.tolist(), features=float(train_features.sum()),
                                  learner=options.learner, learner_options=learner_record, pos=str(options.pos),
                                  ctx=float(ctx_pos.sum()))

    def loss_terms() -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in module.loss_terms(train_features[:, 0].to(backbone.device),
                                                              train_labels.to(backbone.device)).items()}

    initial_terms = loss_terms()
    selection = None
    if data.val is not None:
        val_mask = remap[data.val[1]] >= 0
        val_features = data.val[0][val_mask].to(backbone.device)
        val_labels = remap[data.val[1][val_mask]].to(backbone.device)

        def negative_val_loss(m: PromptModule) -> float:
            with torch.no_grad():
                return -float(m.loss_terms(val_features, val_labels)["loss"])

        selection = Selection("val_neg_loss", negative_val_loss)
    result = train(module, train_features, train_labels, optim, selection=selection, precision=encoding.precision,
                   quiet=encoding.quiet or not ranks.is_main,
                   checkpointing=Checkpointing(checkpoint_path(options.out), fingerprint, options.resume,
                                               writer=ranks.is_main),
                   description="Training negative prompts")
    return TrainedNegatives(module, result, train_names, train_features, train_labels, initial_terms, loss_terms(),
                            text_chunk, learner_record)


def for_every_class(tensors: dict[str, torch.Tensor], positive: PromptArtifact, encoder: SoftPromptTextEncoder,
                    names: list[str], trained: TrainedNegatives) -> dict[str, torch.Tensor]:
    """The exported tensors with text features for every class of the data, not only those trained on (the
    open-vocabulary setting: the contexts are class-agnostic)."""
    if len(trained.names) == len(names) and tensors["text_pos"].shape[0] == len(names):
        return tensors
    text_pos, text_neg = context_features(encoder, positive.tensors["ctx_pos"], tensors["ctx_neg"],
                                          positive.prompt, names, trained.text_chunk)
    assert text_neg is not None  # negative contexts give negative features
    return {"ctx_pos": positive.tensors["ctx_pos"], "ctx_neg": tensors["ctx_neg"], "text_pos": text_pos,
            "text_neg": text_neg}


def calibrate_default_scorer(options: FitNegOptions, backbone: Backbone, tensors: dict[str, torch.Tensor],
                             data: TrainingSet) -> tuple[dict[str, Any], ScoringSetup, float]:
    """(threshold record, scoring setup, ID accuracy): the threshold for the scorer ``score`` uses by default on
    these prompts (chosen on validation), on the held-out images, else the training images."""
    features, source = (data.val[0], "validation") if data.val is not None else (data.features[:, 0], "training")
    labels = data.val[1] if data.val is not None else data.labels
    setup = setup_for_features(backbone, list(data.folder.class_names), tensors["text_pos"], tensors["text_neg"],
                               default_scorer(True, backbone=backbone.name), {"temperature": options.temperature})
    setup.mine(LabelRequest(), cache_dir=options.encode.cache_dir, quiet=options.encode.quiet)
    # set on the way: with too few images it keeps what it can and says so, rather than failing the training run
    threshold, predictions = setup.calibrate(features, source=source, request=options.keep, best_effort=True)
    threshold["chosen_by"] = default_source(backbone.name)  # why this scorer is the default here
    return threshold, setup, float((predictions == labels).float().mean())


def write_negatives(options: FitNegOptions, positive: PromptArtifact, backbone: Backbone, data: TrainingSet,
                    trained: TrainedNegatives, tensors: dict[str, torch.Tensor], threshold: dict[str, Any],
                    encoding: EncodeOptions) -> None:
    folder, result = data.folder, trained.result
    artifact = PromptArtifact(
        kind="negative",
        tensors=tensors,
        backbone=backbone.identity(),
        prompt={**positive.prompt, **trained.module.artifact_prompt()},
        class_names=list(folder.class_names),
        training={
            "stage": "fit-neg",
            "learner": options.learner,
            "learner_options": trained.learner_record,
            "optim": options.optim.as_dict(),
            "precision": encoding.precision,
            "train_classes": trained.names,
            "train_subset": options.train_subset if options.train_fraction is not None else None,
            "train_fraction": options.train_fraction,
            "data": {"root": str(options.data.root), "class_dirs": folder.class_dirs, "shots": options.data.shots,
                     "val_fraction": options.data.val_fraction, "aug_views": options.data.aug_views,
                     "augment": options.data.augment},
            "history": result.history,
            "selected_epoch": result.selected_epoch,
            "selection": result.selection,
            "logit_scale": backbone.logit_scale,
            "positive": {"path": str(options.pos), "training": positive.training},
        },
        extra={"threshold": threshold, "temperature": options.temperature, "initial_loss": trained.initial_loss,
               "final_loss": trained.final_loss},
        versions=package_versions(),
    )
    save_prompts(artifact, options.out)
