"""One-command NegPrompt: fit-pos then fit-neg, with the backbone loaded once for both stages.

The stages never call each other; this module (like the CLI and the demo) composes them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .backbones import BackboneRequest, load_backbone
from .fit_neg import FitNegOptions, fit_neg, plan_fit_neg
from .fit_pos import FitPosOptions, fit_pos
from .learners import PromptSettings
from .memory import AUTO
from .training import OptimConfig


def fit_pos_then_neg(pos_stage: FitPosOptions, negative: FitNegOptions) -> dict[str, Any]:
    """Train positives into ``pos_stage.out``, then negatives on them; every cheap check of both comes first."""
    plan = plan_fit_neg(negative)
    backbone = load_backbone(pos_stage.backbone)
    positive_summary = fit_pos(pos_stage, backbone=backbone)
    return {"positive_stage": positive_summary,
            **fit_neg(replace(negative, pos=pos_stage.out), backbone=backbone, plan=plan)}


def default_pos_out(out: Path) -> Path:
    return out.with_name(out.stem + ".pos.safetensors")


def pos_stage_options(options: FitNegOptions, backbone: BackboneRequest, prompt: PromptSettings, optim: OptimConfig,
                      out: Path | None = None) -> FitPosOptions:
    """fit-pos settings for the one-command path: same data, seed and backbone as the negative stage."""
    optim = replace(optim, seed=options.optim.seed, precision=options.optim.precision)
    return FitPosOptions(backbone=backbone, data=options.data, out=out or default_pos_out(options.out),
                         prompt=prompt, optim=optim,
                         text_chunk=None if options.text_chunk == AUTO else options.text_chunk,
                         quiet=options.quiet, resume=options.resume,
                         grad_checkpoint=options.grad_checkpoint)
