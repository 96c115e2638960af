"""One-command NegPrompt: fit-pos then fit-neg, with the backbone loaded once for both stages.

The stages never call each other; this module (like the CLI and the demo) composes them.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import NegPromptError, NegPromptWarning
from ..features.backbone import BackboneRequest, load_backbone
from ..inputs.image_folders import ImageFolder, folder_fingerprint
from ..outputs.artifact import load_prompts
from ..stages.fit_neg import FitNegOptions, fit_neg, plan_fit_neg
from ..stages.fit_pos import FitPosOptions, fit_pos
from ..training.checkpoint import checkpoint_path
from ..training.learners import PromptSettings
from ..training.loop import OptimConfig


def fit_pos_then_neg(pos_stage: FitPosOptions, negative: FitNegOptions) -> dict[str, Any]:
    """Train positives into ``pos_stage.out``, then negatives on them; every cheap check of both comes first.

    With ``resume`` the pipeline knows which stage was interrupted: a positive stage with a checkpoint
    resumes; one that finished (its artifact exists, from the same settings) is reused; the negative stage
    resumes from its own checkpoint, or starts fresh when it never wrote one.
    """
    plan = plan_fit_neg(negative)
    backbone = load_backbone(pos_stage.backbone)
    if pos_stage.resume and finished_positive_stage(pos_stage, plan.folder):
        warnings.warn(f"reusing the positive prompts {pos_stage.out} that the interrupted run finished",
                      NegPromptWarning, stacklevel=2)
        positive_summary: dict[str, Any] = {"out": str(pos_stage.out), "reused": True}
    else:
        positive_summary = fit_pos(pos_stage, backbone=backbone)
    negative_summary = fit_neg(replace(negative, pos=pos_stage.out), backbone=backbone, plan=plan)
    assert negative_summary is not None  # one process: the positive stage does not run under torchrun
    return {"positive_stage": positive_summary, **negative_summary}


def finished_positive_stage(pos_stage: FitPosOptions, folder: ImageFolder) -> bool:
    """The positive artifact exists, has no pending checkpoint, and was trained with these settings on exactly
    these classes (names and folders) and images (``folder``, as the negative stage reads it)."""
    if not pos_stage.out.is_file() or checkpoint_path(pos_stage.out).exists():
        return False
    try:
        artifact = load_prompts(pos_stage.out, kind="positive")
    except NegPromptError:
        return False
    data = artifact.training.get("data", {})

    def optim(settings: dict[str, Any]) -> dict[str, Any]:  # the recipe alone: artifacts written before
        return {k: v for k, v in settings.items() if k != "precision"}  # 2026-11-30 recorded the precision in it

    prompt = pos_stage.prompt
    same_context = (artifact.prompt.get("ctx_init") == prompt.ctx_init
                    and (prompt.ctx_init is not None or artifact.prompt.get("n_ctx") == prompt.n_ctx))
    same_data = (data.get("class_dirs") == folder.class_dirs and artifact.class_names == folder.class_names
                 and data.get("listing_sha256") == folder_fingerprint(folder))
    return (optim(artifact.training.get("optim", {})) == optim(pos_stage.optim.as_dict()) and same_context
            and data.get("root") == str(pos_stage.data.root) and data.get("shots") == pos_stage.data.shots
            and same_data)


def default_pos_out(out: Path) -> Path:
    return out.with_name(out.stem + ".pos.safetensors")


def pos_stage_options(options: FitNegOptions, backbone: BackboneRequest, prompt: PromptSettings, optim: OptimConfig,
                      out: Path | None = None) -> FitPosOptions:
    """fit-pos settings for the one-command path: same data, seed and backbone as the negative stage."""
    optim = replace(optim, seed=options.optim.seed)
    return FitPosOptions(backbone=backbone, data=options.data, out=out or default_pos_out(options.out),
                         encode=options.encode, prompt=prompt, optim=optim,
                         text_chunk=options.text_chunk,
                         resume=options.resume,
                         grad_checkpoint=options.grad_checkpoint)
