"""``negprompt fit-pos`` and ``fit-neg``: train positive and negative prompts."""


from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import info
from ..presets import DEFAULT_BACKBONE, NEGATIVE_OPTIM, POSITIVE_OPTIM, from_cli, negatives_note
from .app import (
    EPILOG,
    BackboneOpt,
    DataOpt,
    LearnerOptionOpt,
    PretrainedOpt,
    TrustBackboneOpt,
    _prompts_path,
    app,
    backbone_request,
    check_paths,
    encode_options,
    finish,
    optim_config,
    reports_errors,
    training_data,
)
from .cli_options import (
    TextChunkOpt,
    training_options,
)


def training_encoding(runtime: dict[str, Any], data_opts: dict[str, Any], run: dict[str, Any]):
    return encode_options(runtime, run["quiet"] or run["json_out"], cache_dir=data_opts["cache_dir"],
                          workers=data_opts["workers"], strict=data_opts["strict"])


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
    from ..stages.fit_pos import FitPosOptions, fit_pos
    from ..training.learners import PromptSettings, parse_option_pairs
    from ..training.memory import parse_text_chunk

    options = FitPosOptions(
        backbone=backbone_request(backbone, pretrained, runtime),
        data=training_data(data, data_opts),
        out=out,
        encode=training_encoding(runtime, data_opts, run),
        prompt=from_cli(PromptSettings(), n_ctx=n_ctx, ctx_init=ctx_init, csc=csc, suffix=suffix),
        optim=optim_config(POSITIVE_OPTIM, optim),
        learner=learner,
        learner_options=parse_option_pairs(learner_option or []),
        text_chunk=parse_text_chunk(text_chunk),
        resume=run["resume"],
        grad_checkpoint=run["grad_checkpoint"],
    )
    summary = fit_pos(options)
    finish(f"Wrote {out}: {summary['classes']} classes, {summary['train_images']} images; train accuracy "
           f"{summary['initial_train_accuracy']:.3f} -> {summary['final_train_accuracy']:.3f} "
           f"(zero-shot {summary['zero_shot_accuracy']:.3f}).", summary, run["json_out"])


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
    from ..distributed import launched_by_torchrun, process_group
    from ..errors import UsageError
    from ..features.backbone import RuntimeOptions
    from ..stages.fit_neg import FitNegOptions, fit_neg
    from ..training.learners import PromptSettings, parse_option_pairs
    from ..training.memory import no_grad_text_chunk, parse_text_chunk
    from .pipeline import fit_pos_then_neg, pos_stage_options

    chunk = parse_text_chunk(text_chunk)
    optim_settings = optim_config(NEGATIVE_OPTIM, optim)
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
    options = from_cli(
        FitNegOptions(data=training_data(data, data_opts), out=out, optim=optim_settings, text_chunk=chunk,
                      encode=training_encoding(runtime, data_opts, run)),
        pos=_prompts_path(pos, runtime["offline"]) if pos else None, backbone=request, learner=learner,
        learner_options={**{k: v for k, v in given.items() if v is not None}, **pairs},
        train_classes=train_classes, train_fraction=train_fraction, train_subset=train_subset,
        temperature=temperature, resume=run["resume"],
        grad_checkpoint=run["grad_checkpoint"],
        runtime=RuntimeOptions(runtime["device"], runtime["weights_cache"], runtime["offline"],
                               no_grad_text_chunk(text_chunk), trust_backbone))
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
        positive_optim = from_cli(POSITIVE_OPTIM, optimizer=pos_optimizer, epochs=pos_epochs, lr=pos_lr)
        summary = fit_pos_then_neg(
            pos_stage_options(options, request, from_cli(PromptSettings(), n_ctx=n_ctx, ctx_init=ctx_init),
                              positive_optim), options)
    settings = ", ".join(f"{k} {v}" for k, v in summary["learner_options"].items())
    message = (f"Wrote {out}: {summary['classes']} classes ({summary['train_classes']} trained on), learner "
               f"{summary['learner']} ({settings}); ID threshold {summary['threshold']['value']:.4f} "
               f"({summary['threshold']['scorer']}) keeps 95% of {summary['threshold']['source']} images.")
    if not summary["scorer_uses_negative_prompts"]:
        message += " Note: " + negatives_note(summary["threshold"]["scorer"], by_default=True) + "."
    finish(message, summary, run["json_out"])
