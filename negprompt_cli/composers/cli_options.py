"""Option groups the training and scoring commands share, declared once.

Typer reads a command's options from its signature, so options several commands share would be
restated in each. :func:`option_group` instead adds a group's parameters to a command's signature
and hands their values to the command as one dict. Group options default to "unset" (``None``)
and override the presets (``presets.py``) and the options dataclasses' own defaults, which the
help text quotes, so no default is written twice.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..presets import ADAPTIVE_SLOTS, ADAPTIVE_WEIGHT, EXPLAIN_TOP, OptimConfig

F = TypeVar("F", bound=Callable[..., Any])

WORKERS_HELP = "Image-decoding workers (default: up to 4 when 64 or more images are encoded, else 0)."


def option(name: str, kind: Any, *flags: str, help: str, default: Any = None, **extra: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, typer.Option(*flags, help=help, **extra)])


class Flags:
    """The values of a command's option groups, one dict a group (``flags.runtime["device"]``), filled by
    :func:`option_group`. A command that takes groups declares this once, as its last parameter: ``*, flags:
    Flags``."""

    runtime: dict[str, Any]  # device, precision, weights cache, offline, QuickGELU
    images: dict[str, Any]  # score / cache build: batch size, feature cache, workers, strictness, torchrun
    scoring: dict[str, Any]  # score: scorer, temperature, threshold, format, labels, explain, excel-safe
    labels: dict[str, Any]  # the negative-label scorers' lexicon and mining
    adaptive: dict[str, Any]  # score --adaptive
    optim: dict[str, Any]  # fit-*: the optimiser recipe
    data: dict[str, Any]  # fit-*: classes, shots, validation, augmented views, feature cache
    run: dict[str, Any]  # fit-*: resume, gradient checkpointing, --json, --quiet
    shortcuts: dict[str, Any]  # fit-neg: the NegPrompt learner's own flags
    subset: dict[str, Any]  # fit-neg: the classes the negatives are trained on
    pos_stage: dict[str, Any]  # fit-neg without --pos: the positive stage's settings


def option_group(group: str, params: list[inspect.Parameter]) -> Callable[[F], F]:
    """Add ``params`` to the command's options; the command receives their values as ``flags.<group>``."""

    def decorate(func: F) -> F:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "flags"]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = kwargs.pop("flags", None) or Flags()
            setattr(flags, group, {p.name: kwargs.pop(p.name) for p in params})
            return func(*args, **kwargs, flags=flags)

        wrapper.__signature__ = inspect.Signature(own + params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + params}
        return wrapper  # type: ignore[return-value]

    return decorate


def training_options(preset: OptimConfig, *, warmup_lr: bool = True) -> Callable[[F], F]:
    """The option groups of fit-pos and fit-neg: optim (from ``preset``), data_opts, runtime and run."""

    def decorate(func: F) -> F:
        for group, params in (("run", run_options()), ("runtime", runtime_options()), ("data", data_options()),
                              ("optim", optim_options(preset, warmup_lr=warmup_lr))):
            func = option_group(group, params)(func)
        return func

    return decorate


# Every flag several commands share, declared once, as a type alias (``DeviceOpt``: what cli.py's commands
# annotate a parameter with; a command's own default is its signature's, as Typer reads it) and as the
# parameter of the option groups below (``DEVICE``), built from that alias.
DeviceOpt = Annotated[str, typer.Option("--device", envvar="NEGPROMPT_DEVICE",
                                        help="auto (CUDA when present), cpu, cuda, cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast; CUDA only).")]
WeightsCacheOpt = Annotated[str | None, typer.Option("--weights-cache", help="Where open_clip caches downloaded "
                                                      "weights (default: the Hugging Face cache).")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network: use only what is already "
                                          "cached (model weights, files pulled from the Hub).")]
QuickGeluOpt = Annotated[bool | None, typer.Option("--quick-gelu/--no-quick-gelu", help="Override QuickGELU "
                                                   "(default: from the pretrained tag).")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", envvar="NEGPROMPT_CACHE",
                                               help="Image-feature cache (default ~/.cache/negprompt).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help=WORKERS_HELP)]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Unreadable images are an error, not skipped.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
AugViewsOpt = Annotated[int | None, typer.Option("--aug-views", help="Cache K augmented views per image (random "
                                                 "crop + flip); 0 = no augmentation (default). Epoch e trains on "
                                                 "view e mod K.")]
AugmentOpt = Annotated[str | None, typer.Option("--augment", help="How --aug-views views are made: pad-crop "
                                                "(NegPrompt's release: a random crop of the padded image; default) "
                                                "or resized-crop (CoOp's and LoCoOp's: a random 8-100% of the "
                                                "image, resized).")]
TextChunkOpt = Annotated[str, typer.Option("--text-chunk", help="Classes per text-encoder chunk: N, 0 (never "
                                           "chunk) or auto. fit-neg: above the chunk, gradient caching keeps memory "
                                           "bounded at one extra no-grad pass, and auto chunks only when the whole "
                                           "graph would not fit (80% of free GPU memory, 3 GiB on CPU; "
                                           "docs/performance.md). fit-pos, score and transfer: auto is one pass.")]


LearnerOptionOpt = Annotated[list[str] | None, typer.Option(
    "--learner-option", metavar="KEY=VALUE", help="One of the learner's own options (repeatable), checked against "
    "its Options: e.g. --learner-option n_neg=4. `negprompt plugins` names each learner; a misspelt key is exit 2.")]
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="ViT-B/16 (default), ViT-B/32, RN50, RN101, "
                                          "SigLIP-B/16, SigLIP2-B/16, DFN-B/16, MetaCLIP-B/16, EVA02-B/16, "
                                          "toy (the offline world's CLIP, ships with negprompt), any open_clip "
                                          "model, hf-hub:org/repo or local-dir:PATH.")]
PretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip pretrained tag, local checkpoint file, or 'none' (random). "
    "Default: the backbone's paper weights (ViT-B/16: laion2b_s34b_b88k).")]
ImagesArg = Annotated[list[Path] | None, typer.Argument(metavar="IMAGES", show_default=False, help="Image files and/or "
                                                "folders (searched recursively), WebDataset .tar shards (brace "
                                                "patterns, or a .txt list of shards), Parquet files, "
                                                "datasets.save_to_disk folders, hf://datasets/ORG/NAME (local "
                                                "cache), taken in the order given.")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="ImageFolder root: DATA/<class>/<image>.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the few-shot subset, initialisation and shuffling.")]
WorldSeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the rendered world: which images, colours and "
                                           "sizes are drawn (the same seed renders the same files).")]
CalibrateOpt = Annotated[Path | None, typer.Option("--calibrate", help="A folder of in-distribution images for "
                                                   "this class list: store/use the threshold that keeps --keep "
                                                   "(95%) of new ID images like them (no labels needed).")]
KeepOpt = Annotated[float, typer.Option("--keep", help="The share of new in-distribution images the calibrated "
                                        "threshold keeps: in expectation (split conformal), or with probability "
                                        "--confidence. Too few calibration images for it: exit 2 with the count "
                                        "needed.")]
ConfidenceOpt = Annotated[float | None, typer.Option("--confidence", help="Keep at least --keep of new ID images "
                                                     "with this probability (e.g. 0.9; a Beta bound), not only in "
                                                     "expectation: a lower threshold, more images needed.")]
PerClassOpt = Annotated[bool, typer.Option("--per-class", help="One threshold per ID class (the class an image is "
                                           "predicted as), each keeping --keep of the new images predicted as it: "
                                           "for classes that differ in difficulty. Fewer images per class: wider "
                                           "intervals; a class with too few uses the pooled threshold (warned).")]
TrustBackboneOpt = Annotated[bool, typer.Option("--trust-backbone", help="Accept a Hub-hosted backbone "
                                                "(hf-hub:ORG/NAME) that the prompts name although you did not (e.g. "
                                                "prompts pulled from the Hub); only its config and safetensors "
                                                "weights are fetched. Naming it with --backbone does the same.")]


def shared(name: str, alias: Any, default: Any = None) -> inspect.Parameter:
    """An option group's parameter for a flag declared once as ``alias``."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=alias)


DEVICE = shared("device", DeviceOpt, "auto")
PRECISION = shared("precision", PrecisionOpt, "fp32")
WEIGHTS_CACHE = shared("weights_cache", WeightsCacheOpt)
OFFLINE = shared("offline", OfflineOpt, False)
QUICK_GELU = shared("quick_gelu", QuickGeluOpt)
CACHE_DIR = shared("cache_dir", CacheOpt)
WORKERS = shared("workers", WorkersOpt)
STRICT = shared("strict", StrictOpt, False)
QUIET = shared("quiet", QuietOpt, False)
JSON = shared("json_out", JsonOpt, False)
AUG_VIEWS = shared("aug_views", AugViewsOpt)
AUGMENT = shared("augment", AugmentOpt)


def runtime_options() -> list[inspect.Parameter]:
    return [DEVICE, PRECISION, WEIGHTS_CACHE, OFFLINE, QUICK_GELU]


def image_options() -> list[inspect.Parameter]:
    """How the commands that read image folders (score, cache build) encode them."""
    return [
        option("batch_size", int, "--batch-size", default=64, help="Images per encoder batch."),
        CACHE_DIR, WORKERS, STRICT,
        option("distributed", bool | None, "--distributed/--no-distributed", help="Split the work over the "
               "processes of a torchrun job (default: on when launched by torchrun). See docs/scale.md."),
    ]


def negative_label_options() -> list[inspect.Parameter]:
    """Settings of the negative-label scorers (neglabel, csp); defaults belong to the lexicon (its manifest.json;
    NegLabel's for WordNet and for a lexicon without one; docs/method.md)."""
    return [
        option("lexicon", Path | None, "--lexicon", help="Words to mine negative labels from: a text file (one "
               "per line), a folder of noun.*.txt / adj.*.txt, or a registered lexicon's name (wordnet, world; "
               "negprompt plugins lists them). Default: the backbone's own (the world lexicon for toy), else the "
               "shipped WordNet lists."),
        option("negatives", Path | None, "--negatives", help="A list of negative labels to use as given, one per "
               "line (yours or an LLM's, EOE-style), instead of mining them from a lexicon; or a folder of such "
               "lists, adjective phrases in files named adj* (NegRefine's release reads as it is); or a registered "
               "list's name (negrefine-imagenet1k: fetched once, then read from the cache; negprompt plugins lists "
               "them). ID class names are left out, one group unless --groups."),
        option("mine_percentile", float | None, "--mine-percentile", help="A candidate's closeness to the ID "
               "classes: this percentile of its similarities to them. Default: the lexicon's (0.95)."),
        option("mine_fraction", float | None, "--mine-fraction", help="Keep this fraction of the nouns and of the "
               "adjectives, the farthest from the ID classes. Default: the lexicon's (WordNet: 0.15, NegLabel's; "
               "the world lexicon: 0.5, chosen on validation; a lexicon without a manifest.json: 0.15)."),
        option("negative_labels", int | None, "--negative-labels", help="Keep this many negative labels instead "
               "of --mine-fraction."),
        option("keep_id_names", bool, "--keep-id-names", default=False, help="Let lexicon entries equal to an ID "
               "class name be mined like any other candidate, as NegLabel's and CSP's released code does. Default: "
               "never kept (an image would be scored against its own class name; docs/method.md)."),
        option("groups", int | None, "--groups", help="Average the score over this many random groups of the "
               "negative labels (1 = no grouping). Default: the lexicon's (WordNet: 100; the world lexicon: 1)."),
        option("seed", int, "--seed", default=0, help="Seed of the grouping, CSP's superclass words and TANL's "
               "noise images and memory orders."),
    ]


def score_options() -> list[inspect.Parameter]:
    """How score turns features into rows: named as ``ScoreOptions``' fields (``records.score_record``)."""
    return [
        option("scorer", str | None, "--scorer", help="Default: the one the prompts' threshold was calibrated for "
               "(fit-neg's: negprompt, Eq. 3, on real backbones, after the NegPrompt paper's Table 2; energy on toy, "
               "the winner on the world's validation), else energy (learned prompts; negprompt for negative prompts "
               "on real backbones) or csp (--zero-shot). "
               "Also negprompt (Eq. 3), mcm, maxlogit, msp, neglabel, the hybrids negprompt+neglabel / "
               "negprompt+csp, negprompt-sum, negprompt-maxlogit, or a plugin's."),
        option("scorer_options", list[str] | None, "--scorer-option", metavar="KEY=VALUE", help="A setting of "
               "the scorer's own (repeatable), checked against its Options: negprompt plugins lists them (tanl: "
               "labels, step, history, gap, memory, score_memory)."),
        option("temperature", float | None, "--temperature", help="The scorer's temperature: τ on cosines for "
               "negprompt and mcm, T on the logits s·cos for energy and msp; maxlogit has none. Default: the "
               "artifact's τ for the scorer it was calibrated with, the training τ for negprompt, else the scorer's "
               "own (1; 0.01 for the negative-label scorers)."),
        option("threshold", float | None, "--threshold", help="ID threshold to use (score < threshold -> OOD) "
               "instead of the stored one."),
        option("fmt", str, "--format", default="csv", help="csv, jsonl or parquet (needs --out; written in row "
               "groups)."),
        option("save_features", Path | None, "--save-features", help="Also write the image embeddings to this new "
               "folder (clip-retrieval's layout: img_emb/*.npy, metadata/*.parquet, plus negprompt.json), so a crawl "
               "is encoded once."),
        option("features", Path | None, "--features", help="Score embeddings saved with --save-features (or "
               "clip-retrieval's output) instead of images."),
        option("labeled", bool, "--labeled", default=False, help="Record each image's true class (for report's ID "
               "accuracy): a file's from its folder (IMAGES/<class>/...), a shard or table sample's from its "
               "WebDataset cls field or its table's label column (a class name, or its position in the class list)."),
        option("explain", bool, "--explain", default=False, help="Add, per image, the closest classes and (for "
               "scorers that read negative prompts or mined labels) the closest negatives, with cosines: JSONL "
               "lists, CSV a JSON array of [name, cos] pairs."),
        option("explain_top", int | None, "--explain-top", help="How many classes and negatives --explain lists. "
               f"Default: {EXPLAIN_TOP}."),
        option("resume", bool, "--resume", default=False, help="Commit rows to a part file beside --out as they "
               "go; a run killed at any point (kill -9, a node lost) and rerun with --resume and the same settings "
               "goes on where it stopped and writes the bytes of an uninterrupted run."),
        option("excel_safe", bool, "--excel-safe", default=False, help="CSV for spreadsheets: a path or name cell "
               "starting with = + - @ gets a leading ' so it is not run as a formula (the cell is then not the "
               "exact name; JSONL keeps names exact)."),
    ]


def adaptive_options() -> list[inspect.Parameter]:
    """score --adaptive and its memory (``records.adaptive_record``)."""
    return [
        option("adaptive", bool, "--adaptive", default=False, help="Test-time negatives (AdaNeg): a memory of "
               "confidently ID / OOD images, updated per --batch-size batch in the order images are given (each "
               "folder sorted), sharpens the negatives. Scorers neglabel, csp, negprompt+neglabel, negprompt+csp, "
               "negprompt-sum."),
        option("adaptive_slots", int | None, "--adaptive-slots", help="Images remembered per label with --adaptive "
               f"(AdaNeg's released ImageNet script holds 9: --adaptive-slots 9). Default: {ADAPTIVE_SLOTS}."),
        option("adaptive_weight", float | None, "--adaptive-weight", help="λ in adaptive + λ·static score, with "
               f"--adaptive. Default: {ADAPTIVE_WEIGHT}."),
    ]


def image_command_options() -> Callable[[F], F]:
    """The option groups of score and cache build: runtime (device, precision, weights) and images."""

    def decorate(func: F) -> F:
        for group, params in (("runtime", runtime_options()), ("images", image_options())):
            func = option_group(group, params)(func)
        return func

    return decorate


def data_options() -> list[inspect.Parameter]:
    return [
        option("classes", Path | None, "--classes", help="Class names: one per line in sorted-folder order, or "
               "folder<TAB>name. Default: folder names, _ -> space."),
        option("shots", int | None, "--shots", help="Images per class (seeded; same subset in fit-pos and fit-neg "
               "for the same seed). Default: 16."),
        option("all_images", bool, "--all-images", default=False, help="Use every image (ignore --shots)."),
        option("val_fraction", float | None, "--val-fraction", help="Hold out this fraction of each class's images "
               "(outside the shots) for model selection / calibration. Default: 0."),
        AUG_VIEWS, AUGMENT, CACHE_DIR, WORKERS, STRICT,
    ]


def optim_options(preset: OptimConfig, *, warmup_lr: bool = True) -> list[inspect.Parameter]:
    """The optimiser options, documenting ``preset``'s values as the defaults."""
    params = [
        option("optimizer", str | None, "--optimizer", help=f"sgd or adamw. Default: {preset.optimizer}."),
        option("epochs", int | None, "--epochs", help=f"Default: {preset.epochs}."),
        option("batch_size", int | None, "--batch-size", help=f"Default: {preset.batch_size}."),
        option("lr", float | None, "--lr", help=f"Default: {preset.lr}."),
        option("momentum", float | None, "--momentum", help=f"Default: {preset.momentum}."),
        option("weight_decay", float | None, "--weight-decay", help=f"Default: {preset.weight_decay}."),
        option("warmup_epochs", int | None, "--warmup-epochs", help=f"Default: {preset.warmup_epochs}."),
    ]
    if warmup_lr:
        params.append(option("warmup_lr", float | None, "--warmup-lr", help=f"Default: {preset.warmup_lr}."))
    params.append(option("seed", int | None, "--seed", help="Seed for the few-shot subset, initialisation and "
                         f"shuffling. Default: {preset.seed}."))
    return params


def negprompt_learner_options() -> list[inspect.Parameter]:
    """The built-in NegPrompt learner's own settings as flags: shortcuts for ``--learner-option KEY=VALUE`` with the
    same keys (``records.learner_options``); its Options dataclass holds the defaults the help quotes."""
    return [
        option("n_neg", int | None, "--n-neg", help="Negative prompts per class (paper: 2, the default)."),
        option("neg_csc", bool, "--neg-csc", default=False, help="Class-specific negative contexts (cannot transfer "
               "to new class names)."),
        option("loss_variant", str | None, "--loss-variant", help="official (released code, default) or paper "
               "(Eqs. 4-6). See docs/method.md."),
        option("beta", float | None, "--beta", help="NPD weight (default 0.1)."),
        option("gamma", float | None, "--gamma", help="NND weight (default 0.05)."),
        option("init_noise", float | None, "--init-noise", help="Uniform symmetry-breaking noise added to the "
               "positive context to start each negative (fp32; default 1e-3)."),
    ]


def class_subset_options() -> list[inspect.Parameter]:
    """Which classes fit-neg trains the negatives on (the open-vocabulary setup): named as FitNegOptions' fields."""
    return [
        option("train_classes", Path | None, "--train-classes", help="Train the negatives on these classes only "
               "(names or folders, one per line)."),
        option("train_fraction", float | None, "--train-fraction", help="Train the negatives on this fraction of "
               "the classes (open-vocabulary setup)."),
        option("train_subset", str | None, "--train-subset", help="first (paper, the default) or random (seeded) "
               "classes for --train-fraction."),
    ]


def positive_stage_options(preset: OptimConfig) -> list[inspect.Parameter]:
    """fit-neg without --pos trains the positives first: their own settings (``preset``: fit-pos's recipe)."""
    return [
        option("pos_epochs", int | None, "--pos-epochs", help="Positive stage epochs (without --pos). Default: "
               f"{preset.epochs}."),
        option("pos_lr", float | None, "--pos-lr", help=f"Positive stage learning rate. Default: {preset.lr}."),
        option("pos_optimizer", str | None, "--pos-optimizer", help="Positive stage optimizer. Default: "
               f"{preset.optimizer}."),
        option("n_ctx", int | None, "--n-ctx", help="Positive stage context tokens (default 16)."),
        option("ctx_init", str | None, "--ctx-init", help="Positive stage context initialisation."),
    ]


def run_options() -> list[inspect.Parameter]:
    return [
        option("resume", bool, "--resume", default=False, help="Continue from the checkpoint OUT.ckpt that an "
               "interruption left (without one: start fresh, with a notice)."),
        option("grad_checkpoint", bool, "--grad-checkpoint", default=False, help="Recompute text-tower "
               "activations in backward: less memory, more compute."),
        JSON, QUIET,
    ]
