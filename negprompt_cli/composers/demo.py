"""``negprompt demo``: the whole pipeline offline on the procedural world, in a couple of minutes.

export world → fit-pos (on 4 of 6 ID categories) → fit-neg → transfer to all 6 ID category names
(2 never trained on; the threshold recalibrated on held-out ID images) → score ID / near-OOD (named
categories, and categories the CLIP never saw) / far-OOD → report.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..console import info
from ..features.backbone import BackboneRequest, RuntimeOptions
from ..features.image_features import EncodeOptions
from ..presets import NEGATIVE_OPTIM
from ..stages.fit_neg import FitNegOptions, fit_neg
from ..stages.fit_pos import FitPosOptions, fit_pos
from ..stages.report import ReportOptions, build_report
from ..stages.score import ScoreOptions, score
from ..stages.transfer import transfer
from ..training.data import DataOptions
from ..training.learners import PromptSettings
from ..training.loop import OptimConfig
from ..world import default_spec, export_world

DEMO_BACKBONE = "toy"


def run_demo(workdir: Path | None = None, seed: int = 0, device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    started = time.time()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="negprompt-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    # 50 held-out images a category (300): enough for the threshold's 90 % interval to be about ±2 points
    spec = default_spec(seed, n_id=6, n_train=4, shots=16, test_per_class=50, far=300, calib_per_class=50)
    info(f"[1/6] Rendering the world into {root}: ID categories {', '.join(spec.id_shapes)} "
         f"(training images for {', '.join(spec.train_shapes)}), near-OOD {', '.join(spec.ood_shapes)}, "
         f"near-OOD the CLIP never saw ({', '.join(spec.unnamed_shapes)}), far-OOD noise/textures")
    paths = export_world(root, spec)
    cache = root / "cache"
    backbone = BackboneRequest(DEMO_BACKBONE, device=device)
    data = DataOptions(paths["train"], shots=16)
    encode = EncodeOptions(cache_dir=cache, quiet=quiet)  # every stage reads the same feature cache
    info("[2/6] fit-pos: positive (CoOp) prompts")
    pos = fit_pos(FitPosOptions(backbone=backbone, data=data, out=root / "pos.safetensors",
                                encode=encode, prompt=PromptSettings(n_ctx=16),
                                optim=OptimConfig(seed=seed, epochs=50)))
    info(f"      train accuracy {pos['initial_train_accuracy']:.2f} -> {pos['final_train_accuracy']:.2f} "
         f"(zero-shot {pos['zero_shot_accuracy']:.2f})")
    info("[3/6] fit-neg: negative prompts")
    neg = fit_neg(FitNegOptions(data=data, out=root / "negprompt.safetensors", pos=root / "pos.safetensors",
                                runtime=RuntimeOptions(device=device), encode=encode, optim=_neg_optim(seed)))
    assert neg is not None  # one process
    info("[4/6] transfer: re-target to all ID category names (two never trained on), threshold recalibrated on "
         "held-out ID images")
    moved = transfer(root / "negprompt.safetensors", paths["id_names"], root / "negprompt_all.safetensors",
                     RuntimeOptions(device=device), calibrate_on=paths["calib"], encoding=encode)
    info("[5/6] score: ID test, near-OOD categories (named, unnamed), far-OOD noise")
    prompts = root / "negprompt_all.safetensors"
    for split, out in (("test", "id.csv"), ("ood_near", "ood_near.csv"), ("ood_unnamed", "ood_unnamed.csv"),
                       ("ood_far", "ood_far.csv")):
        score(ScoreOptions(images=paths[split], prompts=prompts, out=root / out, labeled=split == "test",
                           encode=encode, runtime=RuntimeOptions(device=device), return_rows=False))
    info("[6/6] report")
    report = build_report(ReportOptions(root / "id.csv", [("near (other categories)", root / "ood_near.csv"),
                                                          ("near (never seen)", root / "ood_unnamed.csv"),
                                                          ("far (noise)", root / "ood_far.csv")], root / "report",
                                        near=("near (other categories)", "near (never seen)")))
    report["demo"] = {"workdir": str(root), "seconds": round(time.time() - started, 1), "fit_pos": pos,
                      "fit_neg": {k: neg[k] for k in ("learner_options", "threshold", "train_classes", "classes")},
                      "threshold": moved["threshold"]}
    return report


def _neg_optim(seed: int) -> OptimConfig:
    return replace(NEGATIVE_OPTIM, seed=seed)
