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

from ..presets import OptimConfig

F = TypeVar("F", bound=Callable[..., Any])

WORKERS_HELP = "Image-decoding workers (default: up to 4 when 64 or more images are encoded, else 0)."


def option(name: str, kind: Any, *flags: str, help: str, default: Any = None, **extra: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, typer.Option(*flags, help=help, **extra)])


def option_group(group: str, params: list[inspect.Parameter]) -> Callable[[F], F]:
    """Add ``params`` to the command's options; the command receives their values as the dict ``group``."""

    def decorate(func: F) -> F:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != group]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in params}
            return func(*args, **kwargs, **{group: values})

        wrapper.__signature__ = inspect.Signature(own + params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + params}
        return wrapper  # type: ignore[return-value]

    return decorate


def training_options(preset: OptimConfig, *, warmup_lr: bool = True) -> Callable[[F], F]:
    """The option groups of fit-pos and fit-neg: optim (from ``preset``), data_opts, runtime and run."""

    def decorate(func: F) -> F:
        for group, params in (("run", run_options()), ("runtime", runtime_options()), ("data_opts", data_options()),
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
                                                 "crop + flip); 0 = no augmentation (default).")]
TextChunkOpt = Annotated[str, typer.Option("--text-chunk", help="Classes per text-encoder chunk: N, 0 (never "
                                           "chunk) or auto. fit-neg: above the chunk, gradient caching keeps memory "
                                           "bounded at one extra no-grad pass, and auto chunks only when the whole "
                                           "graph would not fit (80% of free GPU memory, 3 GiB on CPU; "
                                           "docs/performance.md). fit-pos, score and transfer: auto is one pass.")]


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
               "per line) or a folder of noun.*.txt / adj.*.txt. Default: the backbone's own (the world lexicon "
               "for toy), else the shipped WordNet lists."),
        option("mine_percentile", float | None, "--mine-percentile", help="A candidate's closeness to the ID "
               "classes: this percentile of its similarities to them. Default: the lexicon's (0.95)."),
        option("mine_fraction", float | None, "--mine-fraction", help="Keep this fraction of the nouns and of the "
               "adjectives, the farthest from the ID classes. Default: the lexicon's (WordNet: 0.15, NegLabel's; "
               "the world lexicon: 0.5, chosen on validation; a lexicon without a manifest.json: 0.15)."),
        option("negative_labels", int | None, "--negative-labels", help="Keep this many negative labels instead "
               "of --mine-fraction."),
        option("groups", int | None, "--groups", help="Average the score over this many random groups of the "
               "negative labels (1 = no grouping). Default: the lexicon's (WordNet: 100; the world lexicon: 1)."),
        option("seed", int, "--seed", default=0, help="Seed of the grouping and of CSP's superclass words."),
    ]


def label_request(given: dict[str, Any]) -> Any:
    """The negative-label options as the library's ``LabelRequest``."""
    from ..scoring.negative_labels import LabelRequest, MiningOptions

    return LabelRequest(lexicon=given["lexicon"], groups=given["groups"],
                        mining=MiningOptions(percentile=given["mine_percentile"], fraction=given["mine_fraction"],
                                             count=given["negative_labels"], seed=given["seed"]))


def image_command_options() -> Callable[[F], F]:
    """The option groups of score and cache build: runtime (device, precision, weights) and images."""

    def decorate(func: F) -> F:
        for group, params in (("runtime", runtime_options()), ("images_opts", image_options())):
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
        AUG_VIEWS, CACHE_DIR, WORKERS, STRICT,
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


def run_options() -> list[inspect.Parameter]:
    return [
        option("resume", bool, "--resume", default=False, help="Continue from the checkpoint OUT.ckpt that an "
               "interruption left (without one: start fresh, with a notice)."),
        option("grad_checkpoint", bool, "--grad-checkpoint", default=False, help="Recompute text-tower "
               "activations in backward: less memory, more compute."),
        JSON, QUIET,
    ]
