"""The ``negprompt`` command line (Typer). Commands stay thin: parse, call the library, report."""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import __version__
from .console import emit_json, err, info
from .errors import EXIT_INTERRUPTED, EXIT_RUNTIME, NegPromptError

EPILOG = ("Exit codes: 0 ok, 1 runtime error, 2 usage or invalid input, 3 not found, "
          "4 hub/network, 5 incompatible artifact, 130 interrupted. "
          "Set NEGPROMPT_DEBUG=1 for tracebacks.")

app = typer.Typer(
    name="negprompt",
    help="Learn negative prompts so CLIP flags out-of-distribution images (NegPrompt, CVPR 2024).",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn every failure into one line on stderr and its documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = os.environ.get("NEGPROMPT_DEBUG", "") not in ("", "0")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except typer.Exit:
            raise
        except NegPromptError as exc:
            if debug:
                traceback.print_exc()
            err.print(f"Error: {exc.message}", markup=False, soft_wrap=True)
            if exc.hint:
                err.print(f"Hint: {exc.hint}", markup=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("Interrupted.", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # unexpected: still one line unless debugging
            if debug:
                traceback.print_exc()
            err.print(f"Error: unexpected {type(exc).__name__}: {exc}", markup=False, soft_wrap=True)
            err.print("Hint: set NEGPROMPT_DEBUG=1 for the traceback and report it", markup=False)
            raise typer.Exit(EXIT_RUNTIME) from None

    return wrapper  # type: ignore[return-value]


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    err.print(f"Warning: {message}", markup=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"negprompt {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """negprompt command line."""


# Shared option types ---------------------------------------------------------------------
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="ViT-B/16 (default), ViT-B/32, RN50, RN101, "
                                          "any open_clip model, hf-hub:org/repo or local-dir:PATH.")]
PretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip pretrained tag, local checkpoint file, or 'none' (random). "
    "Default: the backbone's paper weights (ViT-B/16: laion2b_s34b_b88k).")]
DeviceOpt = Annotated[str, typer.Option("--device", envvar="NEGPROMPT_DEVICE",
                                        help="auto (CUDA when present), cpu, cuda, cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast; CUDA only).")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", envvar="NEGPROMPT_CACHE",
                                               help="Image-feature cache (default ~/.cache/negprompt).")]
WeightsCacheOpt = Annotated[str | None, typer.Option("--weights-cache", help="Where open_clip caches downloaded "
                                                      "weights (default: the Hugging Face cache).")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; use cached weights only.")]
QuickGeluOpt = Annotated[bool | None, typer.Option("--quick-gelu/--no-quick-gelu",
                                                   help="Override QuickGELU (default: from the pretrained tag).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


@app.command("fit-pos", epilog=EPILOG)
@reports_errors
def fit_pos_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="ImageFolder root: DATA/<class>/<image>.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the prompts (.safetensors).")],
    classes: Annotated[Path | None, typer.Option("--classes", help="Class names: one per line in sorted-folder "
                                                 "order, or folder<TAB>name. Default: folder names, _ -> space.")]
    = None,
    backbone: BackboneOpt = "ViT-B/16",
    pretrained: PretrainedOpt = None,
    learner: Annotated[str, typer.Option("--learner", help="Prompt learner plugin.")] = "coop",
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context tokens (paper appendix: 16).")] = 16,
    ctx_init: Annotated[str | None, typer.Option("--ctx-init", help="Initialise the context from these words, "
                                                 "e.g. 'a photo of a' (sets --n-ctx to its token count).")] = None,
    csc: Annotated[bool, typer.Option("--csc", help="Class-specific contexts instead of one shared.")] = False,
    suffix: Annotated[str, typer.Option("--suffix", help="Text after the class name (CoOp: '.'; released "
                                        "NegPrompt code: '').")] = ".",
    shots: Annotated[int, typer.Option("--shots", help="Images per class (seeded).")] = 16,
    all_images: Annotated[bool, typer.Option("--all-images", help="Use every image (ignore --shots).")] = False,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Hold out this fraction of each class's "
                                                "images (outside the shots) and keep the best epoch.")] = 0.0,
    aug_views: Annotated[int, typer.Option("--aug-views", help="Cache K augmented views per image (random "
                                           "crop + flip); 0 = no augmentation.")] = 0,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (CoOp) or adamw.")] = "sgd",
    epochs: Annotated[int, typer.Option("--epochs")] = 50,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    lr: Annotated[float, typer.Option("--lr")] = 0.002,
    momentum: Annotated[float, typer.Option("--momentum")] = 0.9,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 5e-4,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs")] = 1,
    warmup_lr: Annotated[float, typer.Option("--warmup-lr")] = 1e-5,
    seed: Annotated[int, typer.Option("--seed")] = 1,
    text_chunk: Annotated[int | None, typer.Option("--text-chunk", help="Encode prompts in chunks of this many "
                                                   "rows (bounds memory).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    cache_dir: CacheOpt = None,
    weights_cache: WeightsCacheOpt = None,
    offline: OfflineOpt = False,
    quick_gelu: QuickGeluOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Image-decoding workers.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Unreadable images are an error, not skipped.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn CoOp positive prompts (the first NegPrompt stage)."""
    from .backbones import BackboneRequest
    from .errors import UsageError
    from .fit_pos import DataOptions, FitPosOptions, fit_pos
    from .learners import PromptSettings
    from .training import OptimConfig

    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1 (got {value})")
    if aug_views < 0:
        raise UsageError(f"--aug-views must be 0 or more (got {aug_views})")
    options = FitPosOptions(
        backbone=BackboneRequest(backbone, pretrained, device, weights_cache, quick_gelu, offline),
        data=DataOptions(data, classes, None if all_images else shots, val_fraction, aug_views, cache_dir, strict,
                         num_workers=workers),
        out=out,
        prompt=PromptSettings(n_ctx=n_ctx, ctx_init=ctx_init, csc=csc, suffix=suffix),
        optim=OptimConfig(optimizer=optimizer, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                          weight_decay=weight_decay, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, seed=seed,
                          precision=precision),
        learner=learner,
        text_chunk=text_chunk,
        quiet=quiet or json_out,
    )
    summary = fit_pos(options)
    info(f"Wrote {out}: {summary['classes']} classes, {summary['train_images']} images; train accuracy "
         f"{summary['initial_train_accuracy']:.3f} -> {summary['final_train_accuracy']:.3f} "
         f"(zero-shot {summary['zero_shot_accuracy']:.3f}).")
    if json_out:
        emit_json(summary)


@app.command("plugins", epilog=EPILOG)
@reports_errors
def plugins_command(json_out: JsonOpt = False) -> None:
    """List loaded plugins and what each registers."""
    from rich.table import Table

    from .registry import get_host

    rows = get_host().describe()
    if json_out:
        emit_json(rows)
        return
    table = Table("plugin", "version", "hooks", "registers", "error")
    for row in rows:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items())
        table.add_row(row["name"], row["version"] or "", ", ".join(row["hooks"]), registers, row["error"] or "")
    err.print(table)


@app.command("inspect", epilog=EPILOG)
@reports_errors
def inspect_command(
    prompts: Annotated[Path, typer.Argument(help="A prompts .safetensors file.")],
    json_out: JsonOpt = False,
) -> None:
    """Show what a prompts artifact holds: backbone, layout, classes, training settings."""
    from .artifact import load_prompts

    artifact = load_prompts(prompts)
    meta = artifact.metadata()
    meta["tensors"] = {k: list(v.shape) for k, v in artifact.tensors.items()}
    if json_out:
        emit_json(meta)
        return
    names = artifact.class_names
    info(f"{prompts}: {artifact.kind} prompts, schema {artifact.schema_version}")
    info(f"  backbone: {meta['backbone']}")
    info(f"  prompt:   {meta['prompt']}")
    info(f"  tensors:  {meta['tensors']}")
    info(f"  classes:  {len(names)} ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
    optim = artifact.training.get("optim", {})
    if optim:
        info(f"  training: {optim}")


def main() -> None:
    app()
