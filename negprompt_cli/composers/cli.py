"""The ``negprompt`` command line (Typer). Commands stay thin: parse, call the library, report."""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .. import __version__
from ..console import cell, emit_json, err, info, say, show_progress, write_data
from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    NegPromptError,
    Terminated,
)
from ..presets import DEFAULT_BACKBONE, EXPLAIN_TOP, NEGATIVE_OPTIM, POSITIVE_OPTIM, negatives_note, override
from ..report_images import DEFAULT_PER_GALLERY
from .cli_options import (
    AugViewsOpt,
    CacheOpt,
    DeviceOpt,
    JsonOpt,
    OfflineOpt,
    PrecisionOpt,
    QuietOpt,
    StrictOpt,
    TextChunkOpt,
    WeightsCacheOpt,
    WorkersOpt,
    image_command_options,
    label_request,
    negative_label_options,
    option_group,
    runtime_options,
    training_options,
)

EPILOG = ("Exit codes: 0 ok, 1 runtime error, 2 usage or invalid input, 3 not found, "
          "4 hub/network, 5 incompatible artifact, 130 interrupted, 141 stdout closed, 143 terminated. "
          "Set NEGPROMPT_DEBUG=1 for tracebacks.")

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="negprompt",
    help="Learn negative prompts so CLIP flags out-of-distribution images (NegPrompt, CVPR 2024).",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings=HELP_OPTIONS,
)

F = TypeVar("F", bound=Callable[..., Any])
RANK_EXIT_GRACE_SECONDS = 3.0


def reports_errors(func: F) -> F:
    """Turn every failure into one line on stderr and its documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = os.environ.get("NEGPROMPT_DEBUG", "") not in ("", "0")
        show_progress(True)  # the front end draws the library's progress (--quiet still hides it)
        previous = _terminate_like_interrupt()
        _signals["sigint"] = False
        previous_int = _note_ctrl_c()
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
            rank = _other_rank()
            if rank is not None and not exc.rank_specific and exc.exit_code != EXIT_RUNTIME:
                # Every rank met it alike: rank 0 says it once. Leave rank 0 time to say it before torchrun,
                # seeing this rank exit, stops the others (a SIGTERM now just ends this process quietly).
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(RANK_EXIT_GRACE_SECONDS)
                raise typer.Exit(exc.exit_code) from None
            info(f"Error{_rank_tag()}: {exc.message}")
            if exc.hint:
                info(f"Hint: {exc.hint}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            for note in getattr(exc, "__notes__", []):  # e.g. where the checkpoint was saved
                info(note)
            terminated = isinstance(exc, Terminated)
            err.print("Terminated." if terminated else "Interrupted.", markup=False)
            raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # the reader of stdout went away (`| head`, `| true`): stop quietly, as command-line tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:
            if debug:
                traceback.print_exc()
            where = f" ({exc.filename})" if exc.filename else ""
            info(f"Error: {exc.strerror or exc}{where}")
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                err.print("Hint: free some space (or point --out / --cache-dir elsewhere); nothing half-written "
                          "was left behind", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_RUNTIME) from None
        except Exception as exc:  # unexpected: still one line unless debugging
            if debug:
                traceback.print_exc()
            if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's is no MemoryError
                err.print("Error: out of memory", markup=False)
                err.print("Hint: use a smaller --batch-size (or --text-chunk)", markup=False)
                raise typer.Exit(EXIT_RUNTIME) from None
            info(f"Error: unexpected {type(exc).__name__}: {exc}")
            err.print("Hint: set NEGPROMPT_DEBUG=1 for the traceback and report it", markup=False)
            raise typer.Exit(EXIT_RUNTIME) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)

    return wrapper  # type: ignore[return-value]


# Whether the last command was stopped by a real Ctrl-C (SIGINT), not by code raising KeyboardInterrupt. The command
# ends in exit 130 either way (Typer turns KeyboardInterrupt into it); a program that runs commands in-process (the
# test suite's CliRunner, see tests/conftest.py) reads this to let the user's Ctrl-C stop it too.
_signals = {"sigint": False}


def interrupted_by_user() -> bool:
    return _signals["sigint"]


def _note_ctrl_c():
    """Ctrl-C raises KeyboardInterrupt as always, and is noted as a real signal."""
    def handler(signum, frame):
        _signals["sigint"] = True
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _terminate_like_interrupt():
    """SIGTERM raises Terminated (a KeyboardInterrupt), so checkpoints are saved as on Ctrl-C."""
    def handler(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. embedded): leave signals alone
        return None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from ..errors import NegPromptNotice

    label = "Note" if issubclass(category, NegPromptNotice) else "Warning"
    info(f"{label}{_rank_tag()}: {message}")


def _other_rank() -> int | None:
    """This process's rank in a torchrun job of several processes, when it is not rank 0."""
    if "RANK" not in os.environ:  # not torchrun: answer without importing torch (errors print at once)
        return None
    from ..distributed import launched_by_torchrun

    if not launched_by_torchrun() or os.environ.get("WORLD_SIZE") == "1" or os.environ.get("RANK") == "0":
        return None
    return int(os.environ["RANK"]) if os.environ["RANK"].isdigit() else None


def _rank_tag() -> str:
    rank = _other_rank()
    return f" (rank {rank})" if rank is not None else ""


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
LearnerOptionOpt = Annotated[list[str] | None, typer.Option(
    "--learner-option", metavar="KEY=VALUE", help="One of the learner's own options (repeatable), checked against "
    "its Options: e.g. --learner-option n_neg=4. `negprompt plugins` names each learner; a misspelt key is exit 2.")]
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="ViT-B/16 (default), ViT-B/32, RN50, RN101, "
                                          "toy (the offline world's CLIP, ships with negprompt), any open_clip "
                                          "model, hf-hub:org/repo or local-dir:PATH.")]
PretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip pretrained tag, local checkpoint file, or 'none' (random). "
    "Default: the backbone's paper weights (ViT-B/16: laion2b_s34b_b88k).")]
ImagesArg = Annotated[list[Path] | None, typer.Argument(metavar="IMAGES", show_default=False, help="Image files and/or "
                                                "folders (searched recursively), taken in the order given.")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="ImageFolder root: DATA/<class>/<image>.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the few-shot subset, initialisation and shuffling.")]
WorldSeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the rendered world: which images, colours and "
                                           "sizes are drawn (the same seed renders the same files).")]
CalibrateOpt = Annotated[Path | None, typer.Option("--calibrate", help="A folder of in-distribution images for "
                                                   "this class list: store/use the threshold that keeps 95% of "
                                                   "them (no labels needed).")]
TrustBackboneOpt = Annotated[bool, typer.Option("--trust-backbone", help="Accept a Hub-hosted backbone "
                                                "(hf-hub:ORG/NAME) that the prompts name although you did not (e.g. "
                                                "prompts pulled from the Hub); only its config and safetensors "
                                                "weights are fetched. Naming it with --backbone does the same.")]


@app.command("fit-pos", epilog=EPILOG, short_help="Learn CoOp positive prompts.")
@reports_errors
@training_options(POSITIVE_OPTIM)
def fit_pos_command(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the prompts (.safetensors).")],
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    pretrained: PretrainedOpt = None,
    learner: Annotated[str, typer.Option("--learner", help="Prompt learner plugin.")] = "coop",
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Context tokens (paper appendix: 16).")] = None,
    ctx_init: Annotated[str | None, typer.Option("--ctx-init", help="Initialise the context from these words, "
                                                 "e.g. 'a photo of a' (sets --n-ctx to its token count).")] = None,
    csc: Annotated[bool, typer.Option("--csc", help="Class-specific contexts instead of one shared.")] = False,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Text after the class name (CoOp: '.', the "
                                               "default; released NegPrompt code: '').")] = None,
    text_chunk: TextChunkOpt = "auto",
    learner_option: LearnerOptionOpt = None,
    *,
    optim: dict[str, Any],
    data_opts: dict[str, Any],
    runtime: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """Learn CoOp positive prompts (the first NegPrompt stage)."""
    check_paths(("--data", data), ("--classes", data_opts["classes"]))
    from ..learners import PromptSettings, parse_option_pairs
    from ..memory import parse_text_chunk
    from ..stages.fit_pos import FitPosOptions, fit_pos

    options = FitPosOptions(
        backbone=backbone_request(backbone, pretrained, runtime),
        data=training_data(data, data_opts),
        out=out,
        prompt=override(PromptSettings(), n_ctx=n_ctx, ctx_init=ctx_init, csc=csc, suffix=suffix),
        optim=optim_config(POSITIVE_OPTIM, optim, runtime),
        learner=learner,
        learner_options=parse_option_pairs(learner_option or []),
        text_chunk=parse_text_chunk(text_chunk),
        quiet=run["quiet"] or run["json_out"],
        resume=run["resume"],
        grad_checkpoint=run["grad_checkpoint"],
    )
    summary = fit_pos(options)
    finish(f"Wrote {out}: {summary['classes']} classes, {summary['train_images']} images; train accuracy "
           f"{summary['initial_train_accuracy']:.3f} -> {summary['final_train_accuracy']:.3f} "
           f"(zero-shot {summary['zero_shot_accuracy']:.3f}).", summary, run["json_out"])


MISSING = {"--data": "data directory not found", "--pos": "prompts file not found",
           "--prompts": "prompts file not found", "--classes": "class-names file not found",
           "--names": "class-names file not found", "--train-classes": "class-names file not found",
           "--calibrate": "calibration images not found", "IMAGES": "not found", "--lexicon": "lexicon not found"}


def check_paths(*given: tuple[str, Any]) -> None:
    """A mistyped path fails here, in a fraction of a second, before the stage (and torch) is imported."""
    from ..errors import NotFoundError

    for flag, value in given:
        if value is None or str(value).startswith("hf://"):
            continue
        if not Path(value).exists():
            raise NotFoundError(f"{MISSING[flag]}: {value}")


def finish(message: str, summary: dict[str, Any], as_json: bool) -> None:
    """A command's closing line on stderr, and its summary on stdout with --json."""
    info(message)
    if as_json:
        emit_json(summary)


def backbone_request(name: str, pretrained: str | None, runtime: dict[str, Any]):
    from ..backbone import BackboneRequest

    return BackboneRequest(name, pretrained, runtime["device"], runtime["weights_cache"], runtime["quick_gelu"],
                           runtime["offline"])


def training_data(root: Path, given: dict[str, Any]):
    """DataOptions from the data option group; --all-images means no shot limit."""
    from ..training_data import DataOptions

    data = override(DataOptions(root), classes_file=given["classes"], shots=given["shots"],
                    val_fraction=given["val_fraction"], aug_views=given["aug_views"], cache_dir=given["cache_dir"],
                    strict=given["strict"], num_workers=given["workers"])
    if given["all_images"]:
        data = replace(data, shots=None)
    check_at_least("--aug-views", data.aug_views, 0)
    return data


def optim_config(preset, given: dict[str, Any], runtime: dict[str, Any]):
    config = override(preset, **given, precision=runtime["precision"])
    check_at_least("--epochs", config.epochs, 1)
    check_at_least("--batch-size", config.batch_size, 1)
    return config


def check_at_least(flag: str, value: int, least: int) -> None:
    from ..errors import UsageError

    if value < least:
        raise UsageError(f"{flag} must be at least {least} (got {value})")


@app.command("fit-neg", epilog=EPILOG, short_help="Learn NegPrompt negative prompts.")
@reports_errors
@training_options(NEGATIVE_OPTIM, warmup_lr=False)
def fit_neg_command(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the NegPrompt prompts (.safetensors).")],
    pos: Annotated[str | None, typer.Option("--pos", help="fit-pos artifact (or hf://ORG/NAME[@REV]). Without it, "
                                            "fit-pos runs first and saves OUT-stem.pos.safetensors.")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Default: the --pos artifact's backbone "
                                                 "(or ViT-B/16 without --pos).")] = None,
    pretrained: PretrainedOpt = None,
    learner: Annotated[str | None, typer.Option("--learner", help="Negative-prompt learner plugin (default: "
                                                "negprompt).")] = None,
    n_neg: Annotated[int | None, typer.Option("--n-neg", help="Negative prompts per class (paper: 2, the "
                                              "default).")] = None,
    neg_csc: Annotated[bool, typer.Option("--neg-csc", help="Class-specific negative contexts (cannot transfer "
                                          "to new class names).")] = False,
    loss_variant: Annotated[str | None, typer.Option("--loss-variant", help="official (released code, default) or "
                                                     "paper (Eqs. 4-6). See docs/method.md.")] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="NPD weight (default 0.1).")] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", help="NND weight (default 0.05).")] = None,
    init_noise: Annotated[float | None, typer.Option("--init-noise", help="Uniform symmetry-breaking noise added "
                                                     "to the positive context to start each negative (fp32; "
                                                     "default 1e-3).")] = None,
    learner_option: LearnerOptionOpt = None,
    train_classes: Annotated[Path | None, typer.Option("--train-classes", help="Train the negatives on these "
                                                       "classes only (names or folders, one per line).")] = None,
    train_fraction: Annotated[float | None, typer.Option("--train-fraction", help="Train the negatives on this "
                                                         "fraction of the classes (open-vocabulary setup).")] = None,
    train_subset: Annotated[str | None, typer.Option("--train-subset", help="first (paper, the default) or random "
                                                     "(seeded) classes for --train-fraction.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="τ of the NegPrompt score (Eq. 3, on "
                                                      "cosines) and of the training loss; score uses it for the "
                                                      "negprompt scorer. Default 1.")] = None,
    pos_epochs: Annotated[int | None, typer.Option("--pos-epochs", help="Positive stage epochs (without --pos). "
                                                   f"Default: {POSITIVE_OPTIM.epochs}.")] = None,
    pos_lr: Annotated[float | None, typer.Option("--pos-lr", help="Positive stage learning rate. Default: "
                                                 f"{POSITIVE_OPTIM.lr}.")] = None,
    pos_optimizer: Annotated[str | None, typer.Option("--pos-optimizer", help="Positive stage optimizer. Default: "
                                                      f"{POSITIVE_OPTIM.optimizer}.")] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Positive stage context tokens (default 16).")] = None,
    ctx_init: Annotated[str | None, typer.Option("--ctx-init", help="Positive stage context initialisation.")] = None,
    text_chunk: TextChunkOpt = "auto",
    distributed: Annotated[bool | None, typer.Option(
        "--distributed/--no-distributed", help="Under torchrun (the default there): the processes split the "
        "classes of the text graph (for very large class lists; needs --pos). See docs/scale.md.")] = None,
    trust_backbone: TrustBackboneOpt = False,
    *,
    optim: dict[str, Any],
    data_opts: dict[str, Any],
    runtime: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """Learn NegPrompt negative prompts (runs fit-pos first when --pos is not given)."""
    check_paths(("--data", data), ("--pos", pos), ("--classes", data_opts["classes"]),
                ("--train-classes", train_classes))
    from ..backbone import RuntimeOptions
    from ..distributed import launched_by_torchrun, process_group
    from ..errors import UsageError
    from ..learners import PromptSettings, parse_option_pairs
    from ..memory import no_grad_text_chunk, parse_text_chunk
    from ..stages.fit_neg import FitNegOptions, fit_neg
    from .pipeline import fit_pos_then_neg, pos_stage_options

    chunk = parse_text_chunk(text_chunk)
    optim_settings = optim_config(NEGATIVE_OPTIM, optim, runtime)
    request = None
    if backbone is not None or pretrained is not None or pos is None:
        request = backbone_request(backbone or DEFAULT_BACKBONE, pretrained, runtime)
    given = {"n_neg": n_neg, "neg_csc": neg_csc or None, "loss_variant": loss_variant, "beta": beta, "gamma": gamma,
             "init_noise": init_noise}  # the negprompt learner's own flags: shortcuts for --learner-option
    pairs = parse_option_pairs(learner_option or [])
    both = sorted(k for k in pairs if given.get(k) is not None)
    if both:
        raise UsageError(f"--{both[0].replace('_', '-')} and --learner-option {both[0]}=... are both given",
                         hint="give one of them")
    options = override(
        FitNegOptions(data=training_data(data, data_opts), out=out, optim=optim_settings),
        pos=_prompts_path(pos, runtime["offline"]) if pos else None, backbone=request, learner=learner,
        learner_options={**{k: v for k, v in given.items() if v is not None}, **pairs},
        train_classes=train_classes, train_fraction=train_fraction, train_subset=train_subset,
        temperature=temperature, text_chunk=chunk, quiet=run["quiet"] or run["json_out"], resume=run["resume"],
        grad_checkpoint=run["grad_checkpoint"],
        runtime=RuntimeOptions(runtime["device"], runtime["weights_cache"], runtime["offline"],
                               no_grad_text_chunk(text_chunk), trust_backbone))
    if chunk is None:  # --text-chunk 0: never chunk (None is "not given" to override)
        options = replace(options, text_chunk=None)
    if pos is not None:
        with process_group(distributed, runtime["device"]) as (ranks, device):
            ranked = replace(options, ranks=ranks, runtime=replace(options.runtime, device=device),
                             backbone=replace(request, device=device) if request is not None else None)
            summary = fit_neg(ranked)
        if summary is None:  # a rank other than 0 of a torchrun job
            return
    else:
        if distributed or (distributed is None and launched_by_torchrun() and os.environ.get("WORLD_SIZE") != "1"):
            raise UsageError("fit-neg under torchrun needs --pos (the positive stage runs in one process)",
                             hint="run fit-pos first, then torchrun ... fit-neg --pos POS.safetensors")
        assert request is not None
        info("No --pos given: training the positive prompts first (fit-pos).")
        positive_optim = override(POSITIVE_OPTIM, optimizer=pos_optimizer, epochs=pos_epochs, lr=pos_lr)
        summary = fit_pos_then_neg(
            pos_stage_options(options, request, override(PromptSettings(), n_ctx=n_ctx, ctx_init=ctx_init),
                              positive_optim), options)
    settings = ", ".join(f"{k} {v}" for k, v in summary["learner_options"].items())
    message = (f"Wrote {out}: {summary['classes']} classes ({summary['train_classes']} trained on), learner "
               f"{summary['learner']} ({settings}); ID threshold {summary['threshold']['value']:.4f} "
               f"({summary['threshold']['scorer']}) keeps 95% of {summary['threshold']['source']} images.")
    if not summary["scorer_uses_negative_prompts"]:
        message += " Note: " + negatives_note(summary["threshold"]["scorer"], by_default=True) + "."
    finish(message, summary, run["json_out"])


def _prompts_path(value: str, offline: bool = False) -> Path:
    """A prompts file, or an hf://ORG/NAME[@REVISION] reference resolved through the Hub cache."""
    from ..stages.hub import hub_options, resolve_prompts

    return resolve_prompts(value, hub_options(offline))


@app.command("transfer", epilog=EPILOG, short_help="Re-target prompts to new class names.")
@reports_errors
def transfer_command(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Learned prompts (fit-pos or fit-neg artifact), "
                                         "or hf://ORG/NAME[@REVISION].")],
    names: Annotated[Path, typer.Option("--names", help="New class names, one per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the re-targeted prompts.")],
    calibrate: CalibrateOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    weights_cache: WeightsCacheOpt = None,
    offline: OfflineOpt = False,
    text_chunk: TextChunkOpt = "auto",
    cache_dir: CacheOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch (--calibrate).")] = 64,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
    trust_backbone: TrustBackboneOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-target learned prompts to new class names, without training.

    The stored ID threshold belongs to the old class list: it is kept only for the same list,
    recalibrated with --calibrate, and otherwise dropped (score then makes no OOD decision)."""
    check_paths(("--prompts", prompts), ("--names", names), ("--calibrate", calibrate))
    from ..backbone import RuntimeOptions
    from ..image_features import EncodeOptions
    from ..memory import no_grad_text_chunk
    from ..stages.transfer import transfer

    summary = transfer(_prompts_path(prompts, offline), names, out,
                       RuntimeOptions(device, weights_cache, offline, no_grad_text_chunk(text_chunk), trust_backbone),
                       calibrate_on=calibrate,
                       encoding=EncodeOptions(cache_dir, batch_size, workers, precision, strict, quiet or json_out))
    threshold = summary["threshold"]
    finish(f"Wrote {out}: {summary['classes']} classes ({summary['new_classes']} not in the training list); "
           "text features precomputed; "
           + (f"ID threshold {threshold['value']:.4g} ({threshold['source']})." if threshold else "no ID threshold."),
           summary, json_out)


@app.command("score", epilog=EPILOG, short_help="OOD scores for images, as CSV or JSONL.")
@reports_errors
@option_group("label_opts", negative_label_options())
@image_command_options()
def score_command(
    images: ImagesArg = None,
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="Prompts artifact to score with, or "
                                                "hf://ORG/NAME[@REVISION].")] = None,
    names: Annotated[Path | None, typer.Option("--names", help="Class names (required with --zero-shot; with "
                                               "--prompts, re-targets on the fly).")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="No learned prompts: 'a photo of a {}.'")] = False,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone for --zero-shot (default "
                                                 "ViT-B/16); with --prompts it must match the artifact.")] = None,
    pretrained: PretrainedOpt = None,
    scorer: Annotated[str | None, typer.Option("--scorer", help="Default: the one the prompts' threshold was "
                                               "calibrated for, else energy (learned prompts) or csp (--zero-shot), "
                                               "the winners on validation (docs/quality.md). Also negprompt "
                                               "(Eq. 3), mcm, maxlogit, msp, neglabel, the hybrids "
                                               "negprompt+neglabel / negprompt+csp, negprompt-sum, "
                                               "negprompt-maxlogit, or a plugin's.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="The scorer's temperature: τ on "
                                                      "cosines for negprompt and mcm, T on the logits s·cos for "
                                                      "energy and msp; maxlogit has none. Default: the artifact's "
                                                      "τ for the scorer it was calibrated with, the training τ for "
                                                      "negprompt, else the scorer's own (1; 0.01 for the "
                                                      "negative-label scorers).")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="ID threshold to use (score < threshold "
                                                    "-> OOD) instead of the stored one.")] = None,
    calibrate: CalibrateOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
    labeled: Annotated[bool, typer.Option("--labeled", help="Images are IMAGES/<class>/...: record true labels "
                                          "(for report's ID accuracy).")] = False,
    text_chunk: TextChunkOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (images scored, "
                                           "encoded vs from the cache, skipped, threshold); needs --out.")] = False,
    adaptive: Annotated[bool, typer.Option("--adaptive", help="Test-time negatives (AdaNeg): a memory of "
                                           "confidently ID / OOD images, updated per --batch-size batch in the "
                                           "order images are given (each folder sorted), sharpens the negatives. "
                                           "Scorers neglabel, csp, "
                                           "negprompt+neglabel, negprompt+csp, negprompt-sum.")] = False,
    adaptive_slots: Annotated[int, typer.Option("--adaptive-slots", help="Images remembered per label (AdaNeg's "
                                                "released ImageNet script holds 9: --adaptive-slots 9).")] = 10,
    adaptive_weight: Annotated[float, typer.Option("--adaptive-weight", help="λ in adaptive + λ·static "
                                                   "score.")] = 0.1,
    trust_backbone: TrustBackboneOpt = False,
    explain: Annotated[bool, typer.Option("--explain", help="Add, per image, the closest classes and (for scorers "
                                          "that read negative prompts or mined labels) the closest negatives, "
                                          "with cosines: JSONL lists, CSV a JSON array of [name, cos] "
                                          "pairs.")] = False,
    explain_top: Annotated[int, typer.Option("--explain-top", help="How many classes and negatives --explain "
                                             "lists.")] = EXPLAIN_TOP,
    excel_safe: Annotated[bool, typer.Option("--excel-safe", help="CSV for spreadsheets: a path or name cell "
                                             "starting with = + - @ gets a leading ' so it is not run as a "
                                             "formula (the cell is then not the exact name; JSONL keeps names "
                                             "exact).")] = False,
    quiet: QuietOpt = False,
    *,
    runtime: dict[str, Any],
    images_opts: dict[str, Any],
    label_opts: dict[str, Any],
) -> None:
    """OOD scores (higher = more in-distribution) for every image, as CSV or JSONL."""
    images = images or []  # none: the stage says "no images given" (exit 2)
    check_paths(*(("IMAGES", image) for image in images), ("--prompts", prompts), ("--names", names),
                ("--calibrate", calibrate), ("--lexicon", label_opts["lexicon"]))
    from ..backbone import DEFAULT_BACKBONE, RuntimeOptions
    from ..distributed import process_group
    from ..memory import no_grad_text_chunk
    from ..scoring.adaptive import AdaptiveOptions
    from ..stages.score import ScoreOptions, score

    if json_out and out is None:
        from ..errors import UsageError

        raise UsageError("--json needs --out FILE: without it stdout carries the scores themselves")
    given = images_opts
    check_at_least("--batch-size", given["batch_size"], 1)
    check_at_least("--explain-top", explain_top, 1)
    memory = (AdaptiveOptions(slots=adaptive_slots, weight=adaptive_weight, batch=given["batch_size"])
              if adaptive else None)
    with process_group(given["distributed"], runtime["device"]) as (ranks, device):
        placed = {**runtime, "device": device}
        request = None
        if zero_shot or backbone is not None:
            request = backbone_request(backbone or DEFAULT_BACKBONE, pretrained, placed)
        summary = score(ScoreOptions(
            images=images, prompts=_prompts_path(prompts, runtime["offline"]) if prompts else None, names=names,
            zero_shot=zero_shot, backbone=request,
            runtime=RuntimeOptions(device, runtime["weights_cache"], runtime["offline"], no_grad_text_chunk(text_chunk),
                                   trust_backbone),
            scorer=scorer, temperature=temperature, threshold=threshold, fmt=fmt, out=out, labeled=labeled,
            cache_dir=given["cache_dir"], batch_size=given["batch_size"], num_workers=given["workers"],
            strict=given["strict"], precision=runtime["precision"], quiet=quiet, calibrate=calibrate, ranks=ranks,
            labels=label_request(label_opts), adaptive=memory, excel_safe=excel_safe,
            explain=explain_top if explain else 0,
        ))
    if summary is None:  # a rank other than 0 of a torchrun job: rank 0 reports and writes
        return
    del summary["rows"]  # the rows go to --out or stdout; --json is the summary only
    if out is None:
        write_data(summary.pop("rendered"))
    flagged = summary["flagged_ood"]
    decision = (f"; {flagged} flagged OOD at threshold {summary['threshold']:.4f} ({summary['threshold_source']})"
                if flagged is not None else "; no OOD decision (no threshold for this class list and scorer: "
                + ("--threshold)" if summary["adaptive"] else "--calibrate ID_IMAGES or --threshold)"))
    labels = summary["negative_labels"]
    mined = (f"; {labels['labels']} negative labels mined from {labels['candidates']} candidates"
             + (f" ({labels['dropped_id_names']} lexicon entries equal to ID class names never kept)"
                if labels["dropped_id_names"] else "")
             + (f" ({labels['near_duplicates']} closer than cosine 0.95 to an ID class never kept)"
                if labels.get("near_duplicates") else "") if labels else "")
    memory_note = ""
    if summary["adaptive"]:
        record = summary["adaptive"]
        memory_note = (f"; adaptive memory: {record['id_writes']} ID and {record['ood_writes']} OOD writes over "
                       f"{record['id_labels_with_memory']} ID and {record['negative_labels_with_memory']} negative "
                       "labels")
    info(f"Scored {summary['images']} image(s) with {summary['scorer']} ({summary['encoded']} encoded, "
         f"{summary['cached']} from the feature cache){mined}{memory_note}{decision}"
         + (f"; wrote {out}" if out else "") + ".")
    negatives = summary["negative_prompts"]
    if negatives is not None and not negatives["used"]:
        info("Note: " + negatives_note(summary["scorer"], by_default=summary["scorer_source"] != "--scorer") + ".")
    if json_out:
        emit_json(summary)


@app.command("report", epilog=EPILOG, short_help="Metrics table, JSON and an HTML report.")
@reports_errors
def report_command(
    id_file: Annotated[Path | None, typer.Option("--id", help="Score file of the ID test images.")] = None,
    ood: Annotated[list[str] | None, typer.Option("--ood", metavar="NAME=FILE", help="Score file of an OOD set "
                                                  "(repeatable; far-OOD unless given with --near).")] = None,
    near: Annotated[list[str] | None, typer.Option("--near", metavar="NAME=FILE", help="Score file of a near-OOD "
                                                   "set (repeatable): near and far sets are also averaged apart, "
                                                   "as OpenOOD reports them.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for report.html / .md / .json and "
                                             "plots.")] = None,
    fpr_convention: Annotated[str, typer.Option("--fpr-convention", help="id-positive (paper, MCM) or "
                                                "ood-positive (OpenOOD v1.5).")] = "id-positive",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="--out may hold other files: write the report's "
                                            "files beside them (only the report's own files are replaced; "
                                            "without it such a folder is refused).")] = False,
    threshold: Annotated[float | None, typer.Option("--threshold", help="The decision threshold to draw and "
                                                    "judge (default: the one the score files were written "
                                                    "with).")] = None,
    images: Annotated[int, typer.Option("--images", help="Thumbnails per gallery in report.html (misses, false "
                                        "alarms, clearly OOD).")] = DEFAULT_PER_GALLERY,
    no_images: Annotated[bool, typer.Option("--no-images", help="No images in the report (for reports that must "
                                            "not contain the data).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """AUROC, FPR@95, AUPR and ID accuracy per OOD set, as the paper's table, JSON and an HTML report with the
    decision threshold, the classes it hurts and the images behind the numbers."""
    import shlex

    from ..stages.report import ReportOptions, build_report, parse_ood_args

    check_at_least("--images", images, 0)
    near_sets = parse_ood_args(near or [], "--near")
    sets = near_sets + parse_ood_args(ood or [])
    command = ["negprompt", "report", "--id", str(id_file)] + [f"--near={n}={f}" for n, f in near_sets] \
        + [f"--ood={n}={f}" for n, f in sets[len(near_sets):]] + (["--out", str(out)] if out else [])
    report = build_report(ReportOptions(id_file, sets, out, fpr_convention, overwrite=overwrite,
                                        near=tuple(n for n, _ in near_sets), threshold=threshold,
                                        images=0 if no_images else images,
                                        command=shlex.join(command)))
    print_report(report, out)
    if json_out:
        emit_json(report)


def print_report(report: dict[str, Any], out: Path | None) -> None:
    """The paper-style table on stderr."""
    from rich.table import Table

    from ..report_table import TABLE_HEADER, table_rows

    table = Table(*TABLE_HEADER, title=cell(f"negprompt OOD report ({report['scorer']})"),
                  caption=cell(f"FPR convention: {report['fpr_convention']} — {report['fpr_definition']}"))
    for row in table_rows(report):
        table.add_row(*(cell(value) for value in row))
    err.print(table)
    if report["id"]["accuracy"] is not None:
        info(f"ID accuracy: {100 * report['id']['accuracy']:.2f}% on {report['id']['n']} images")
    from ..report_page import threshold_sentence

    info(threshold_sentence(report))
    if out is not None:
        info(f"Report: {out / 'report.html'}")


world_app = typer.Typer(help="The procedural offline world (54 object categories, colours, textures, noise).",
                        no_args_is_help=True, context_settings=HELP_OPTIONS)
app.add_typer(world_app, name="world", short_help="The procedural offline world.")


@world_app.command("export", epilog=EPILOG)
@reports_errors
def world_export_command(
    out: Annotated[Path, typer.Argument(help="Directory to write train/, test/, calib/, ood_near/, ood_unnamed/, "
                                        "ood_far/ into.")],
    id_shapes: Annotated[str | None, typer.Option("--id", help="Comma-separated ID categories (default: 6 named "
                                                  "ones chosen by --seed).")] = None,
    ood_shapes: Annotated[str | None, typer.Option("--ood", help="Comma-separated near-OOD categories (default: 6 "
                                                   "other named ones chosen by --seed).")] = None,
    unnamed: Annotated[bool, typer.Option("--unnamed/--no-unnamed", help="Write ood_unnamed/: the 8 categories the "
                                          "world CLIP never saw and its lexicon does not name.")] = True,
    train_classes: Annotated[int | None, typer.Option("--train-classes", help="Only the first K ID categories get "
                                                      "training images (open-vocabulary setups).")] = None,
    shots: Annotated[int, typer.Option("--shots", help="Training images per class.")] = 16,
    test_per_class: Annotated[int, typer.Option("--test-per-class", help="Test images per class.")] = 50,
    far: Annotated[int, typer.Option("--far", help="Far-OOD images (noise, stripes, checkerboards).")] = 300,
    calib: Annotated[int, typer.Option("--calib-per-class", help="Held-out ID images per class in calib/ (for "
                                       "--calibrate); 0 = none.")] = 20,
    seed: WorldSeedOpt = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export in OUT (its split "
                                            "folders and name files; nothing else).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Render the world as ImageFolder trees so every CLI path can run on real files."""
    from ..atomic import check_writable
    from ..errors import NotFoundError, UsageError
    from ..world import CATEGORIES, UNNAMED, WorldSpec, default_spec, export_world_into

    if not out.parent.exists():
        raise NotFoundError(f"output directory's parent does not exist: {out.parent}")
    spec = default_spec(seed)

    def categories(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        if value is None:
            return default
        chosen = tuple(" ".join(v.split()) for v in value.split(",") if v.strip())
        unknown = [v for v in chosen if v not in CATEGORIES]
        if unknown or not chosen:
            raise UsageError(f"unknown shape {unknown[0] if unknown else value!r}",
                             hint=f"categories: {', '.join(CATEGORIES)}")
        return chosen

    ids = categories(id_shapes, spec.id_shapes)
    oods = categories(ood_shapes, tuple(s for s in spec.ood_shapes if s not in ids))
    if set(ids) & set(oods):
        raise UsageError(f"categories both ID and OOD: {', '.join(sorted(set(ids) & set(oods)))}")
    for flag, value, least in (("--shots", shots, 1), ("--test-per-class", test_per_class, 1), ("--far", far, 0),
                               ("--calib-per-class", calib, 0)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least} (got {value})")
    k = train_classes if train_classes is not None else len(ids)
    if not 1 <= k <= len(ids):
        raise UsageError(f"--train-classes must be between 1 and {len(ids)} (got {k})")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; the world is written into a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty: an export there would mix with what it holds",
                         hint="choose an empty or new folder, or pass --overwrite to replace an earlier export")
    check_writable(out.parent)  # the export is rendered beside OUT, then moved in
    if out.exists():
        check_writable(out)
    hidden = tuple(c for c in UNNAMED if c not in ids and c not in oods) if unnamed else ()
    paths = export_world_into(out, WorldSpec(ids, oods, ids[:k], shots, test_per_class, far, seed, calib, hidden))
    info(f"Wrote the world to {out}: train/ ({k} classes x {shots}), test/ ({len(ids)} x {test_per_class}), "
         + (f"calib/ ({len(ids)} x {calib}), " if calib else "")
         + f"ood_near/ ({len(oods)} x {test_per_class}), "
         + (f"ood_unnamed/ ({len(hidden)} categories), " if hidden else "")
         + f"ood_far/ ({far}), id_names.txt, train_names.txt")
    if json_out:
        emit_json({k: str(v) for k, v in paths.items() if v.exists()})


cache_app = typer.Typer(help="The image-feature cache: fill it ahead of time (also under torchrun), check it, "
                        "compact it. Many processes may share one cache; see docs/scale.md.", no_args_is_help=True,
                        context_settings=HELP_OPTIONS)
app.add_typer(cache_app, name="cache", short_help="Fill, check and compact the feature cache.")


@cache_app.command("build", epilog=EPILOG)
@reports_errors
@image_command_options()
def cache_build_command(
    images: ImagesArg = None,
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    pretrained: PretrainedOpt = None,
    aug_views: AugViewsOpt = 0,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the augmented views: the fit-* --seed that "
                                             f"will read them. Default: {POSITIVE_OPTIM.seed}, as fit-*.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    runtime: dict[str, Any],
    images_opts: dict[str, Any],
) -> None:
    """Encode every image into the feature cache, so later fit-*/score runs only read it."""
    images = images or []  # none: the stage says "no images given" (exit 2)
    from ..distributed import process_group
    from ..stages.cache import CacheBuildOptions, build

    given = images_opts
    check_at_least("--batch-size", given["batch_size"], 1)
    aug_views = aug_views or 0
    check_at_least("--aug-views", aug_views, 0)
    with process_group(given["distributed"], runtime["device"]) as (ranks, device):
        summary = build(CacheBuildOptions(
            images=images, backbone=backbone_request(backbone, pretrained, {**runtime, "device": device}),
            cache_dir=given["cache_dir"], aug_views=aug_views,
            seed=POSITIVE_OPTIM.seed if seed is None else seed, batch_size=given["batch_size"],
            num_workers=given["workers"], precision=runtime["precision"], strict=given["strict"],
            quiet=quiet or json_out, ranks=ranks))
    if summary is None:
        return
    finish(f"Cached {summary['images']} image(s) x {len(summary['views'])} view(s) in {summary['cache_dir']}: "
           f"{summary['encoded']} encoded, {summary['cached']} already cached"
           + (f", {summary['skipped']} unreadable skipped" if summary["skipped"] else "")
           + (f"; {summary['processes']} processes" if summary["processes"] > 1 else "") + ".",
           summary, json_out)


@cache_app.command("verify", epilog=EPILOG)
@reports_errors
def cache_verify_command(cache_dir: CacheOpt = None, json_out: JsonOpt = False) -> None:
    """Read every shard and check its checksum; exit 1 if any is damaged (`cache gc` removes them)."""
    from ..errors import NegPromptError
    from ..stages.cache import verify_cache

    report = verify_cache(cache_dir)
    for key in report["keys"]:
        info(f"{key['key']}: {key['backbone']} ({key['pretrained']}): {key['unique_rows']} row(s) in "
             f"{key['shards']} shard(s), {key['bytes'] / 2**20:.1f} MiB"
             + (f"; {len(key['damaged'])} damaged" if key["damaged"] else "")
             + (f"; {len(key['stale_temp_files'])} abandoned temporary file(s)" if key["stale_temp_files"] else ""))
    if json_out:
        emit_json(report)
    if report["damaged"]:
        raise NegPromptError(f"{report['damaged']} damaged shard(s) in {report['cache_dir']} (readers skip and "
                             "re-encode them)", hint="negprompt cache gc removes them")
    info(f"{report['cache_dir']}: {report['rows']} row(s) in {report['shards']} shard(s), all verified.")


@cache_app.command("gc", epilog=EPILOG)
@reports_errors
def cache_gc_command(cache_dir: CacheOpt = None, json_out: JsonOpt = False) -> None:
    """Compact the cache: merge shards, drop duplicate rows, damaged shards and abandoned temporary files.
    Safe while other processes read and write it."""
    from ..stages.cache import gc_cache

    report = gc_cache(cache_dir)
    finish(f"{report['cache_dir']}: {report['rows']} row(s) in {report['shards']} shard(s) after compaction; "
           f"{report['removed']} file(s) removed.", report, json_out)


ImgListOpt = Annotated[list[str] | None, typer.Option("--imglist", metavar="NAME=FILE", help="Take OOD set NAME from "
                                                      "an image list (e.g. OpenOOD's benchmark_imglist/imagenet/"
                                                      "test_ssb_hard.txt) instead of its folder; repeatable.")]
ImgListRootOpt = Annotated[Path | None, typer.Option("--imglist-root", help="What the listed paths are relative to "
                                                     "(OpenOOD: its images_largescale/; default: --root).")]
benchmark_app = typer.Typer(help="Published benchmark protocols on your own copies of the datasets "
                            "(docs/benchmarks.md). We never download data.", no_args_is_help=True,
                            context_settings=HELP_OPTIONS)
app.add_typer(benchmark_app, name="benchmark", short_help="Published protocols on your data.")


@benchmark_app.command("list", epilog=EPILOG)
@reports_errors
def benchmark_list_command(json_out: JsonOpt = False) -> None:
    """The shipped protocols: ID classes, OOD sets, seeds, published numbers."""
    from ..stages.benchmark import list_protocols

    rows = list_protocols()
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        say(f"{row['name']}: {row['title']}")
        say(f"    {row['id_classes']} ID classes; OOD: {', '.join(row['ood_sets'])}; seeds {row['seeds']}"
            + (f"; published: {'; '.join(row['published'])}" if row["published"] else ""))


@benchmark_app.command("check", epilog=EPILOG)
@reports_errors
def benchmark_check_command(
    protocol: Annotated[str, typer.Argument(help="A protocol name (negprompt benchmark list) or a protocol .json.")],
    root: Annotated[Path, typer.Option("--root", help="The folder holding the datasets in the layout of "
                                       "docs/benchmarks.md.")],
    imglist: ImgListOpt = None,
    imglist_root: ImgListRootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check that ROOT holds every dataset PROTOCOL needs; list every problem at once (exit 2 if any)."""
    from ..errors import UsageError
    from ..stages.benchmark import check, image_lists

    report = check(protocol, root, image_lists(imglist or [], imglist_root, root))
    for row in report.datasets:
        status = "ok" if row.ok else "PROBLEM"
        info(f"[{status}] {row.role}: {row.name} at {row.path}: expected {row.expected}"
             + (f"; found {row.found}" if row.found else ""))
        for problem in row.problems:
            info(f"    - {problem}")
        if row.problems and row.source:
            info(f"    source: {row.source}")
    if json_out:
        emit_json(report.as_dict())
    if report.problems:
        raise UsageError(f"{report.problems} problem(s) in the layout under {root} for {report.protocol} (listed "
                         "above)", hint="docs/benchmarks.md gives the expected layout and where each dataset comes "
                         "from")
    info(f"{root} holds everything {report.protocol} needs.")


@benchmark_app.command("run", epilog=EPILOG)
@reports_errors
@option_group("runtime", runtime_options())
def benchmark_run_command(
    protocol: Annotated[str, typer.Argument(help="A protocol name (negprompt benchmark list) or a protocol .json.")],
    root: Annotated[Path, typer.Option("--root", help="The folder holding the datasets (docs/benchmarks.md).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: artifacts, score files, report.{json,md,"
                                      "html}; rerun with the same --out to continue.")],
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    pretrained: PretrainedOpt = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds (default: the protocol's, "
                                              "1,2,3).")] = None,
    shots: Annotated[int | None, typer.Option("--shots", help="Training images per class (default: the "
                                              "protocol's, 16).")] = None,
    scorers: Annotated[str, typer.Option("--scorers", help="Scorers run with the trained prompts.")] =
        "negprompt,mcm,energy",
    zero_shot_scorers: Annotated[str, typer.Option("--zero-shot-scorers", help="Scorers run zero-shot with the hand "
                                                   "template ('' for none).")] = "mcm,neglabel,csp",
    lexicon: Annotated[Path | None, typer.Option("--lexicon", help="Lexicon of the negative-label scorers (default: "
                                                 "the shipped WordNet lists).")] = None,
    imglist: ImgListOpt = None,
    imglist_root: ImgListRootOpt = None,
    pos_epochs: Annotated[int | None, typer.Option("--pos-epochs", help=f"Default: {POSITIVE_OPTIM.epochs}.")] = None,
    neg_epochs: Annotated[int | None, typer.Option("--neg-epochs", help=f"Default: {NEGATIVE_OPTIM.epochs}.")] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Positive stage context tokens (default 16, the "
                                              "paper's; the released code: 4).")] = None,
    ctx_init: Annotated[str | None, typer.Option("--ctx-init", help="Positive stage context initialisation (the "
                                                 "released code: 'a photo of a').")] = None,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Text after the class name (default '.'; the "
                                               "released code: '').")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")] = 64,
    cache_dir: CacheOpt = None,
    workers: WorkersOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    runtime: dict[str, Any],
) -> None:
    """Run PROTOCOL end to end (train per seed, score every set, report with the published numbers)."""
    from ..errors import UsageError
    from ..learners import PromptSettings
    from ..stages.benchmark import image_lists
    from .benchmark_run import BenchmarkOptions, run_benchmark, table

    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else None
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated whole numbers (got {seeds!r})") from None
    report = run_benchmark(BenchmarkOptions(
        protocol=protocol, root=root, out=out,
        backbone=backbone_request(backbone, pretrained, runtime),
        seeds=seed_list, shots=shots, learned_scorers=tuple(s for s in scorers.split(",") if s),
        zero_shot_scorers=tuple(s for s in zero_shot_scorers.split(",") if s),
        pos_optim=override(POSITIVE_OPTIM, epochs=pos_epochs), neg_optim=override(NEGATIVE_OPTIM, epochs=neg_epochs),
        prompt=override(PromptSettings(), n_ctx=n_ctx, ctx_init=ctx_init, suffix=suffix), cache_dir=cache_dir,
        batch_size=batch_size, num_workers=workers, precision=runtime["precision"],
        quiet=quiet or json_out, lexicon=lexicon, image_lists=image_lists(imglist or [], imglist_root, root)))
    for line in table(report):
        info(" | ".join(line))
    finish(f"Wrote {out / 'report.html'}, report.md and report.json ({len(report['rows'])} rows).", report, json_out)


@app.command("demo", epilog=EPILOG, short_help="The whole method offline on the built-in world.")
@reports_errors
def demo_command(
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Where to put data, prompts and the report "
                                                 "(default: a new temporary directory).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Run the whole method offline on the built-in world and its shipped toy CLIP."""
    from .demo import run_demo

    if workdir is not None and not workdir.parent.exists():
        from ..errors import NotFoundError

        raise NotFoundError(f"--workdir parent does not exist: {workdir.parent}")
    report = run_demo(workdir, seed=seed, device=device, quiet=json_out)
    print_report(report, Path(report["demo"]["workdir"]) / "report")
    info(f"Done in {report['demo']['seconds']:.0f} s. Everything is in {report['demo']['workdir']}.")
    if json_out:
        emit_json(report)


TokenOpt = Annotated[str | None, typer.Option("--token", help="Hub token (default: HF_TOKEN or the saved login).")]


@app.command("push", epilog=EPILOG, short_help="Publish prompts to the Hugging Face Hub.")
@reports_errors
def push_command(
    artifact: Annotated[Path, typer.Argument(help="A prompts .safetensors artifact.")],
    repo_id: Annotated[str, typer.Argument(help="ORG/NAME on the Hub (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    branch: Annotated[str | None, typer.Option("--branch", "--revision", help="Push to this branch "
                                               "(created from main if missing).")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Tag the new commit (e.g. v1).")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="A negprompt report (report.json or its "
                                                "folder): its table goes into the model card.")] = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Publish prompts to the Hugging Face Hub with a model card; prints the commit id."""
    from ..stages.hub import hub_options, push

    result = push(artifact, repo_id, hub_options(token=token), private=private, branch=branch, tag=tag,
                  message=message, report=report)
    info(f"Pushed {artifact} to {result['repo_id']} ({result['branch']}"
         + (f", tag {result['tag']}" if result["tag"] else "") + f"): commit {result['commit']}")
    if json_out:
        emit_json(result)
    else:
        sys.stdout.write(result["commit"] + "\n")


@app.command("pull", epilog=EPILOG, short_help="Download prompts from the Hugging Face Hub.")
@reports_errors
def pull_command(
    ref: Annotated[str, typer.Argument(help="ORG/NAME[@REVISION] (a branch, tag or commit id).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Copy the files here (default: only the "
                                             "Hugging Face cache).")] = None,
    offline: OfflineOpt = False,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Refuse the prompts unless they were "
                                                 "trained on this backbone.")] = None,
    pretrained: PretrainedOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download prompts from the Hub into the cache (or --out), pinned to the resolved commit."""
    from ..artifact import load_prompts
    from ..stages.hub import hub_options, pull

    pulled = pull(ref, hub_options(offline, token), out)
    artifact = load_prompts(pulled.prompts)
    if backbone is not None:
        artifact.check_backbone({"backbone": backbone, "pretrained": pretrained}, f"hf://{pulled.repo_id}")
    result = {"repo_id": pulled.repo_id, "revision": pulled.revision, "commit": pulled.commit,
              "path": str(pulled.prompts), "kind": artifact.kind, "backbone": artifact.backbone,
              "classes": len(artifact.class_names)}
    info(f"{pulled.repo_id}@{pulled.commit[:12]}: {artifact.kind} prompts for {artifact.backbone.get('backbone')}, "
         f"{len(artifact.class_names)} classes -> {pulled.prompts}")
    if json_out:
        emit_json(result)
    else:
        sys.stdout.write(f"{pulled.commit}\t{pulled.prompts}\n")


@app.command("plugins", epilog=EPILOG)
@reports_errors
def plugins_command(json_out: JsonOpt = False) -> None:
    """List loaded plugins and what each registers."""
    from ..registry import get_host

    rows = get_host().describe()
    if json_out:
        emit_json(rows)
        return
    for row in rows:  # a block per plugin: names are never cut or split, whatever the terminal's width
        say(f"{row['name']} {row['version'] or ''}".rstrip() + (f"  FAILED: {row['error']}" if row["error"] else ""))
        for kind, names in row["registers"].items():
            say(f"  {kind}: {', '.join(names)}")
        say(f"  hooks: {', '.join(row['hooks'])}")


@app.command("env", epilog=EPILOG, short_help="Versions, devices and caches, for a bug report.")
@reports_errors
def env_command(json_out: JsonOpt = False) -> None:
    """Versions, CUDA devices, cache locations and settings from the environment: paste it into a bug report."""
    from ..environment import describe_environment

    facts = describe_environment()
    if json_out:
        emit_json(facts)
        return
    gpu = facts["torch"]
    say(f"negprompt {facts['negprompt']}, python {facts['python']} ({facts['executable']}), {facts['platform']}")
    say("packages: " + ", ".join(f"{k} {v or 'missing'}" for k, v in facts["packages"].items()))
    say(f"torch {gpu['version']}: " + (f"CUDA {gpu['cuda_build']} build" if gpu["cuda_build"] else "CPU-only build")
         + f", CUDA available: {'yes' if gpu['cuda_available'] else 'no'}, {gpu['cpu_threads']} CPU threads")
    for device in gpu["devices"]:
        say(f"  cuda:{device['index']}: {device['name']}, compute {device['capability']}, "
             f"{device['memory_gib']} GiB, bf16 {'yes' if device['bf16'] else 'no'}")
    cache = facts["feature_cache"]
    say(f"feature cache: {cache['path']}" + ("" if cache["exists"] else " (not created yet)"))
    say(f"Hugging Face cache: {facts['hub']['cache']}, offline: {'yes' if facts['hub']['offline'] else 'no'}")
    say("plugins: " + ", ".join(f"{p['name']} {p['version'] or ''}".strip()
                                 + (f" (failed: {p['error']})" if p["error"] else "") for p in facts["plugins"]))
    if facts["environment"]:
        say("environment: " + ", ".join(f"{name}={value}" for name, value in facts["environment"].items()))


@app.command("inspect", epilog=EPILOG, short_help="What a prompts file holds.")
@reports_errors
def inspect_command(
    prompts: Annotated[Path, typer.Argument(help="A prompts .safetensors file.")],
    json_out: JsonOpt = False,
) -> None:
    """Show what a prompts artifact holds: backbone, layout, classes, training settings."""
    from ..artifact import load_prompts

    artifact = load_prompts(prompts)
    meta = artifact.metadata()
    meta["tensors"] = {k: list(v.shape) for k, v in artifact.tensors.items()}
    if json_out:
        emit_json(meta)
        return
    for line in describe_artifact(prompts, artifact):
        say(line)


def describe_artifact(path: Path, artifact: Any) -> list[str]:
    """``inspect``'s human-readable lines: what a user asks of a prompts file, with no Python reprs."""
    backbone = artifact.backbone
    prompt, training, extra = artifact.prompt, artifact.training, artifact.extra
    names = artifact.class_names
    learner = training.get("learner") or prompt.get("learner") or "?"
    weights = backbone.get("pretrained") or "weights bundled with the backbone"
    lines = [f"{path}: {artifact.kind} prompts ({training.get('stage', '?')}, learner {learner}), "
             f"schema {artifact.schema_version}",
             f"  backbone:  {backbone.get('backbone')} ({weights})"
             + (", QuickGELU" if backbone.get("quick_gelu") else "")]
    layout = [f"{prompt.get('n_ctx')} context tokens", "class-specific" if prompt.get("csc") else "shared",
              f"suffix {prompt.get('suffix', '.')!r}"]
    if prompt.get("ctx_init"):
        layout.append(f"initialised from {prompt['ctx_init']!r}")
    if artifact.kind == "negative":
        layout.append(f"{prompt.get('n_neg', '?')} negative prompt(s) per class"
                      + (" (class-specific)" if prompt.get("neg_csc") else ""))
    lines.append("  prompt:    " + ", ".join(layout))
    lines.append("  tensors:   " + ", ".join(f"{k} {'x'.join(map(str, v.shape))}"
                                             for k, v in sorted(artifact.tensors.items())))
    lines.append(f"  classes:   {len(names)} ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
    optim = training.get("optim", {})
    if optim:
        lines.append(f"  training:  {optim.get('epochs')} epochs, {optim.get('optimizer')} lr {optim.get('lr')}, "
                     f"batch {optim.get('batch_size')}, seed {optim.get('seed')}"
                     + (f", {len(training['train_classes'])} class(es) trained on"
                        if isinstance(training.get("train_classes"), list) else ""))
    accuracies = {k: v for k, v in extra.items() if k.endswith("accuracy") and isinstance(v, (int, float))}
    if accuracies:
        lines.append("  accuracy:  " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in accuracies.items()))
    threshold = extra.get("threshold")
    if isinstance(threshold, dict) and "value" in threshold:
        lines.append(f"  threshold: {threshold['value']:.6g} for the {threshold.get('scorer', 'negprompt')} scorer "
                     f"(keeps {threshold.get('id_kept', 0.95):.0%} of {threshold.get('n_images', '?')} "
                     f"{threshold.get('source', '?')} image(s); valid for these {len(names)} class names)")
    else:
        lines.append("  threshold: none stored (score gives no OOD decision without --calibrate or --threshold)")
    transfer = extra.get("transfer")
    if isinstance(transfer, dict):
        source = transfer.get("source_classes")
        lines.append(f"  transfer:  re-targeted from {len(source) if isinstance(source, list) else '?'} trained "
                     "class(es)")
    return lines


def main() -> None:
    app()
