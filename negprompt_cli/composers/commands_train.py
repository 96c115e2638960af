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
    _prompts_path,
    app,
    check_paths,
    finish,
    note_is_new,
    reports_errors,
)
from .cli_options import (
    BackboneOpt,
    ConfidenceOpt,
    DataOpt,
    Flags,
    KeepOpt,
    LearnerOptionOpt,
    PerClassOpt,
    PretrainedOpt,
    TextChunkOpt,
    TrustBackboneOpt,
    class_subset_options,
    negprompt_learner_options,
    option_group,
    positive_stage_options,
    training_options,
)
from .records import (
    backbone_request,
    learner_options,
    optim_config,
    runtime_record,
    training_data,
    training_encoding,
)


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
    flags: Flags,
) -> None:
    """Learn CoOp positive prompts (the first NegPrompt stage)."""
    check_paths(("--data", data), ("--classes", flags.data["classes"]))
    from ..stages.fit_pos import FitPosOptions, fit_pos
    from ..training.learners import PromptSettings
    from ..training.memory import parse_text_chunk

    options = FitPosOptions(
        backbone=backbone_request(backbone, pretrained, flags.runtime),
        data=training_data(data, flags.data),
        out=out,
        encode=training_encoding(flags.runtime, flags.data, flags.run),
        prompt=from_cli(PromptSettings(), n_ctx=n_ctx, ctx_init=ctx_init, csc=csc, suffix=suffix),
        optim=optim_config(POSITIVE_OPTIM, flags.optim),
        learner=learner,
        learner_options=learner_options({}, learner_option),
        text_chunk=parse_text_chunk(text_chunk),
        resume=flags.run["resume"],
        grad_checkpoint=flags.run["grad_checkpoint"],
    )
    summary = fit_pos(options)
    finish(f"Wrote {out}: {summary['classes']} classes, {summary['train_images']} images; train accuracy "
           f"{summary['initial_train_accuracy']:.3f} -> {summary['final_train_accuracy']:.3f} "
           f"(zero-shot {summary['zero_shot_accuracy']:.3f}).", summary, flags.run["json_out"])


@app.command("fit-neg", epilog=EPILOG, short_help="Learn NegPrompt negative prompts.")
@reports_errors
@option_group("pos_stage", positive_stage_options(POSITIVE_OPTIM))
@option_group("subset", class_subset_options())
@option_group("shortcuts", negprompt_learner_options())
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
    learner_option: LearnerOptionOpt = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="τ of the NegPrompt score (Eq. 3, on "
                                                      "cosines) and of the training loss; score uses it for the "
                                                      "negprompt scorer. Default 1.")] = None,
    keep: KeepOpt = 0.95,
    confidence: ConfidenceOpt = None,
    per_class: PerClassOpt = False,
    text_chunk: TextChunkOpt = "auto",
    distributed: Annotated[bool | None, typer.Option(
        "--distributed/--no-distributed", help="Under torchrun (the default there): the processes split the "
        "classes of the text graph (for very large class lists; needs --pos). See docs/scale.md.")] = None,
    trust_backbone: TrustBackboneOpt = False,
    *,
    flags: Flags,
) -> None:
    """Learn NegPrompt negative prompts (runs fit-pos first when --pos is not given)."""
    check_paths(("--data", data), ("--pos", pos), ("--classes", flags.data["classes"]),
                ("--train-classes", flags.subset["train_classes"]))
    from ..scoring.calibration import KeepRequest
    from ..stages.fit_neg import FitNegOptions
    from ..training.memory import parse_text_chunk

    request = None
    if backbone is not None or pretrained is not None or pos is None:
        request = backbone_request(backbone or DEFAULT_BACKBONE, pretrained, flags.runtime)
    options = from_cli(
        FitNegOptions(data=training_data(data, flags.data), out=out, optim=optim_config(NEGATIVE_OPTIM, flags.optim),
                      text_chunk=parse_text_chunk(text_chunk),
                      encode=training_encoding(flags.runtime, flags.data, flags.run),
                      runtime=runtime_record(flags.runtime, text_chunk=text_chunk, trust_backbone=trust_backbone)),
        pos=_prompts_path(pos, flags.runtime["offline"]) if pos else None, backbone=request, learner=learner,
        learner_options=learner_options(flags.shortcuts, learner_option), temperature=temperature,
        keep=KeepRequest(keep, confidence, per_class),
        resume=flags.run["resume"], grad_checkpoint=flags.run["grad_checkpoint"], **flags.subset)
    summary = (_fit_neg_across(options, distributed) if pos is not None
               else _fit_pos_then_neg(options, distributed, flags.pos_stage))
    if summary is None:  # a rank other than 0 of a torchrun job
        return
    from ..outputs.artifact import artifact_id

    note = (not summary["scorer_uses_negative_prompts"] and not flags.run["quiet"]
            and note_is_new(flags.data["cache_dir"], artifact_id(out), summary["threshold"]["scorer"]))
    finish(fit_neg_message(summary, out, note=note), summary, flags.run["json_out"])


def _fit_neg_across(options: Any, distributed: bool | None) -> dict[str, Any] | None:
    """fit-neg from given positives, in one process or over the ranks of a torchrun job."""
    from ..distributed import process_group
    from ..stages.fit_neg import fit_neg

    with process_group(distributed, options.runtime.device) as (ranks, device):
        return fit_neg(replace(options, ranks=ranks, runtime=replace(options.runtime, device=device),
                               backbone=replace(options.backbone, device=device) if options.backbone else None))


def _fit_pos_then_neg(options: Any, distributed: bool | None, pos_stage: dict[str, Any]) -> dict[str, Any]:
    """No --pos: the positive stage first, in this one process."""
    from ..distributed import launched_by_torchrun
    from ..errors import UsageError
    from ..training.learners import PromptSettings
    from .pipeline import fit_pos_then_neg, pos_stage_options

    if distributed or (distributed is None and launched_by_torchrun() and os.environ.get("WORLD_SIZE") != "1"):
        raise UsageError("fit-neg under torchrun needs --pos (the positive stage runs in one process)",
                         hint="run fit-pos first, then torchrun ... fit-neg --pos POS.safetensors")
    info("No --pos given: training the positive prompts first (fit-pos).")
    positive_optim = from_cli(POSITIVE_OPTIM, optimizer=pos_stage["pos_optimizer"], epochs=pos_stage["pos_epochs"],
                              lr=pos_stage["pos_lr"])
    prompt = from_cli(PromptSettings(), n_ctx=pos_stage["n_ctx"], ctx_init=pos_stage["ctx_init"])
    return fit_pos_then_neg(pos_stage_options(options, options.backbone, prompt, positive_optim), options)


def fit_neg_message(summary: dict[str, Any], out: Path, *, note: bool) -> str:
    from ..scoring.calibration import class_thresholds, threshold_words
    from ..scoring.thresholds import stated

    settings = ", ".join(f"{k} {v}" for k, v in summary["learner_options"].items())
    threshold = summary["threshold"]
    message = (f"Wrote {out}: {summary['classes']} classes ({summary['train_classes']} trained on), learner "
               f"{summary['learner']} ({settings}); ID "
               f"{threshold_words(threshold['value'], class_thresholds(threshold))} ({threshold['scorer']}): "
               f"{stated(threshold)}.")
    if note:  # the scorer the threshold is for ignores the negatives: said once per prompts file (note_is_new)
        message += " Note: " + negatives_note(summary["threshold"]["scorer"], by_default=True) + "."
    return message
