"""Quality benchmark on the offline world: zero-shot MCM vs CoOp vs NegPrompt (both loss variants).

One command: ``python benchmarks/quality.py`` (about 10-15 min on 2 CPU cores). It

1. sweeps the fit-neg settings one factor at a time on *validation* protocols (class
   partitions seeded 100-102, never used for testing) and picks, per loss variant, the
   learning rate, epochs and score temperature with the best mean near-OOD AUROC;
2. fixes those settings and runs every method once on the *test* protocols (partitions seeded
   0-2): closed-set (ID = 6 shapes) and open-vocabulary (prompts trained on 10 % of the 60
   colour–shape ID classes, transferred to all 60 names, held-out pairs included);
3. writes ``benchmarks/results/quality.json``, ``docs/quality.md`` and sensitivity plots in ``docs/``.

Everything runs through the library functions the CLI uses (fit_pos, fit_neg, the feature
cache, text_features_for, score_features, ood_metrics) on the shipped ``toy`` backbone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import ROOT, current_commit  # noqa: E402  (benchmarks/ is run as scripts)

from negprompt_cli.artifact import load_prompts
from negprompt_cli.backbones import BackboneRequest, RuntimeOptions, load_backbone
from negprompt_cli.console import progress
from negprompt_cli.data import find_images, load_image_folder
from negprompt_cli.features import encode_images
from negprompt_cli.fit_neg import FitNegOptions, fit_neg, negative_stage_defaults
from negprompt_cli.fit_pos import DataOptions, FitPosOptions, fit_pos
from negprompt_cli.learners import PromptSettings
from negprompt_cli.metrics import ood_metrics
from negprompt_cli.prompt_features import hand_template_features, text_features_for
from negprompt_cli.scoring import score_features
from negprompt_cli.text_encoder import SoftPromptTextEncoder
from negprompt_cli.training import OptimConfig
from negprompt_cli.world import (
    COLOUR_NAMES,
    SHAPES,
    export_folder,
    export_images,
    render_far_ood,
    sample_items,
)

VALIDATION_SEEDS = (100, 101, 102)
TEST_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class NegSettings:
    variant: str = "official"
    lr: float = 0.1
    epochs: int = 10
    n_neg: int = 2
    beta: float = 0.1
    gamma: float = 0.05
    temperature: float = 1.0
    batch_size: int = 64
    init_noise: float = 1e-3


# -- data -------------------------------------------------------------------------------------------
def build_protocol(root: Path, kind: str, seed: int) -> dict[str, Any]:
    """Export one protocol's ImageFolder trees; returns paths, class names and the ID test labels."""
    order = [SHAPES[i] for i in np.random.default_rng(seed).permutation(len(SHAPES))]
    id_shapes, ood_shapes = sorted(order[:6]), sorted(order[6:])
    rng = np.random.default_rng([seed, 7])
    if kind == "closed":
        classes = {s: [s] for s in id_shapes}
        train_classes = list(classes)
    else:  # open-vocabulary: ID classes are colour-shape pairs; train on 10 % of them
        classes = {f"{c}_{s}": [(c, s)] for s in id_shapes for c in COLOUR_NAMES}
        names = sorted(classes)
        train_classes = sorted(names[i] for i in rng.permutation(len(names))[: len(names) // 10])

    def items(cls: str, n: int, r: np.random.Generator):  # type: ignore[no-untyped-def]
        if kind == "closed":
            return sample_items(n, r, pairs=[(c, cls) for c in COLOUR_NAMES])
        c, s = cls.split("_")
        return sample_items(n, r, pairs=[(c, s)])

    per_test = 50 if kind == "closed" else 6
    export_folder(root / "train", {c: items(c, 16, rng) for c in train_classes}, rng)
    export_folder(root / "test", {c: items(c, per_test, rng) for c in classes}, rng)
    export_folder(root / "ood_near", {s: sample_items(50, rng, pairs=[(c, s) for c in COLOUR_NAMES])
                                      for s in ood_shapes}, rng)
    export_images(root / "ood_far", render_far_ood(300, rng))
    names = sorted(classes)
    return {"root": root, "names": [n.replace("_", " ") for n in names], "train_classes": train_classes,
            "id_shapes": id_shapes, "ood_shapes": ood_shapes}


class Features:
    """Cached unit image features for a protocol's test splits."""

    def __init__(self, backbone, protocol: dict[str, Any], cache: Path) -> None:  # type: ignore[no-untyped-def]
        root = protocol["root"]
        folder = load_image_folder(root / "test")
        paths = [p for files in folder.files for p in files]
        self.id_labels = torch.tensor([i for i, files in enumerate(folder.files) for _ in files])
        self.id, _, _ = encode_images(backbone, paths, cache_dir=cache, quiet=True)
        self.near, _, _ = encode_images(backbone, find_images(root / "ood_near"), cache_dir=cache, quiet=True)
        self.far, _, _ = encode_images(backbone, find_images(root / "ood_far"), cache_dir=cache, quiet=True)


def evaluate(feats: Features, text_pos, text_neg, scorer: str, temperature: float, scale: float) -> dict[str, float]:
    scores = {name: score_features(getattr(feats, name), text_pos, text_neg, scorer=scorer, temperature=temperature,
                                   logit_scale=scale) for name in ("id", "near", "far")}
    out = {"id_accuracy": float((scores["id"].prediction == feats.id_labels).float().mean())}
    for name in ("near", "far"):
        m = ood_metrics(scores["id"].score.numpy(), scores[name].score.numpy())
        out[f"{name}_auroc"], out[f"{name}_fpr95"] = m["auroc"], m["fpr"]
    return out


# -- one protocol run -------------------------------------------------------------------------------------
class ProtocolRun:
    def __init__(self, work: Path, kind: str, seed: int, backbone, cache: Path) -> None:  # type: ignore[no-untyped-def]
        self.work, self.kind, self.seed, self.cache = work, kind, seed, cache
        self.protocol = build_protocol(work, kind, seed)
        self.backbone = backbone
        self.encoder = SoftPromptTextEncoder(backbone)
        self.features = Features(backbone, self.protocol, cache)
        self.pos_path = work / "pos.safetensors"
        self.pos_summary = fit_pos(FitPosOptions(
            backbone=BackboneRequest("toy", device="cpu"), data=self.data(), out=self.pos_path,
            prompt=PromptSettings(n_ctx=16), optim=OptimConfig(seed=seed), quiet=True))

    def data(self) -> DataOptions:
        return DataOptions(self.work / "train", shots=16, cache_dir=self.cache)

    def baselines(self) -> dict[str, dict[str, float]]:
        names, scale = self.protocol["names"], self.backbone.logit_scale
        zero = hand_template_features(self.encoder, names)
        coop_pos, _ = text_features_for(self.encoder, load_prompts(self.pos_path), names)
        return {
            "zero-shot MCM": evaluate(self.features, zero, None, "mcm", 1.0, scale),
            "CoOp + MCM": evaluate(self.features, coop_pos, None, "mcm", 1.0, scale),
            "CoOp + energy": evaluate(self.features, coop_pos, None, "energy", 1.0, scale),
            "CoOp + maxlogit": evaluate(self.features, coop_pos, None, "maxlogit", 1.0, scale),
        }

    def negprompt(self, s: NegSettings) -> dict[str, float]:
        out = self.work / "neg.safetensors"
        optim = replace(negative_stage_defaults(), lr=s.lr, epochs=s.epochs, seed=self.seed, batch_size=s.batch_size)
        from negprompt_cli.losses import LossWeights

        fit_neg(FitNegOptions(data=self.data(), out=out, pos=self.pos_path, runtime=RuntimeOptions(device="cpu"),
                              n_neg=s.n_neg, loss_variant=s.variant, weights=LossWeights(s.beta, s.gamma),
                              optim=optim, temperature=s.temperature, init_noise=s.init_noise, quiet=True))
        text_pos, text_neg = text_features_for(self.encoder, load_prompts(out), self.protocol["names"])
        return evaluate(self.features, text_pos, text_neg, "negprompt", s.temperature, self.backbone.logit_scale)


def mean_std(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))] for k in rows[0]}


# -- stages -----------------------------------------------------------------------------------------------------
SWEEP = {
    "lr": [0.01, 0.03, 0.1, 0.3, 1.0],
    "epochs": [5, 10, 20, 40],
    "temperature": [1.0, 0.1, 0.01],
    "n_neg": [1, 2, 4],
    "beta": [0.0, 0.1, 1.0],
    "gamma": [0.0, 0.05, 0.5],
    "batch_size": [16, 32, 64, 128],
    "init_noise": [1e-5, 1e-3, 1e-2],
}


def validation(runs: list[ProtocolRun]) -> dict[str, Any]:
    """One factor at a time around the defaults, per variant; each factor's best value is kept."""
    curves: dict[str, dict[str, list[tuple[float, list[float]]]]] = {}
    chosen: dict[str, NegSettings] = {}
    with progress() as bar:
        total = 2 * sum(len(v) for v in SWEEP.values()) * len(runs)
        task = bar.add_task("validation sweep", total=total, status="")
        for variant in ("official", "paper"):
            base = NegSettings(variant=variant)
            curves[variant] = {}
            for factor, values in SWEEP.items():
                curve = []
                for value in values:
                    settings = replace(base, **{factor: value})
                    rows = []
                    for run in runs:
                        rows.append(run.negprompt(settings))
                        bar.advance(task)
                    curve.append((value, mean_std(rows)["near_auroc"]))
                curves[variant][factor] = curve
            best = {f: max(curves[variant][f], key=lambda point: point[1][0])[0] for f in SWEEP}
            chosen[variant] = replace(base, **best)
    return {"curves": curves, "chosen": {k: v.__dict__ for k, v in chosen.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--quick", action="store_true", help="one seed each, no sweep (smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.time()
    backbone = load_backbone(BackboneRequest("toy", device="cpu"))
    with tempfile.TemporaryDirectory(prefix="negprompt-quality-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        val_seeds = VALIDATION_SEEDS[:1] if args.quick else VALIDATION_SEEDS
        test_seeds = TEST_SEEDS[:1] if args.quick else TEST_SEEDS
        val_runs = [ProtocolRun(work / f"val-{s}", "closed", s, backbone, cache) for s in val_seeds]
        if args.quick:
            val = {"curves": {}, "chosen": {v: NegSettings(variant=v).__dict__ for v in ("official", "paper")}}
        else:
            val = validation(val_runs)
        val_chosen = {v: NegSettings(**d) for v, d in val["chosen"].items()}
        # the default variant: better mean of near- and far-OOD validation AUROC at its chosen settings
        val_scores = {v: mean_std([r.negprompt(s) for r in val_runs]) for v, s in val_chosen.items()}
        default_variant = max(val_scores, key=lambda v: val_scores[v]["near_auroc"][0] + val_scores[v]["far_auroc"][0])
        results: dict[str, Any] = {}
        for kind in ("closed", "open"):
            per_method: dict[str, list[dict[str, float]]] = {}
            for seed in test_seeds:
                run = ProtocolRun(work / f"test-{kind}-{seed}", kind, seed, backbone, cache)
                for name, metrics in run.baselines().items():
                    per_method.setdefault(name, []).append(metrics)
                for variant, settings in val_chosen.items():
                    per_method.setdefault(f"NegPrompt ({variant})", []).append(run.negprompt(settings))
            results[kind] = {name: mean_std(rows) for name, rows in per_method.items()}
    payload = {
        "commit": current_commit(), "seconds": round(time.time() - started), "backbone": "toy",
        "validation_seeds": list(val_seeds), "test_seeds": list(test_seeds), "validation": val,
        "validation_at_chosen": val_scores, "default_variant": default_variant, "test": results,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.quick:
        write_docs(payload, args.docs)
    print(markdown_tables(payload))




def fmt(pair: list[float], percent: bool = True) -> str:
    scale = 100 if percent else 1
    return f"{scale * pair[0]:.1f} ± {scale * pair[1]:.1f}"


def markdown_tables(payload: dict[str, Any]) -> str:
    lines = []
    titles = {"closed": "Closed set (ID = 6 shapes in any colour)",
              "open": "Open vocabulary (prompts trained on 10 % of 60 colour–shape classes, transferred to all 60)"}
    for kind, table in payload["test"].items():
        lines += [f"### {titles[kind]}", "",
                  "| method | near AUROC % ↑ | near FPR95 % ↓ | far AUROC % ↑ | far FPR95 % ↓ | ID acc % ↑ |",
                  "|---|---|---|---|---|---|"]
        for name, m in table.items():
            lines.append(f"| {name} | {fmt(m['near_auroc'])} | {fmt(m['near_fpr95'])} | {fmt(m['far_auroc'])} | "
                         f"{fmt(m['far_fpr95'])} | {fmt(m['id_accuracy'])} |")
        lines.append("")
    return "\n".join(lines)


def write_docs(payload: dict[str, Any], docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = payload["validation"]["curves"]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7))
    for ax in axes.flat[len(SWEEP):]:
        ax.axis("off")
    for ax, factor in zip(axes.flat, SWEEP, strict=False):
        for variant, by_factor in curves.items():
            xs = [p[0] for p in by_factor[factor]]
            ys = np.array([p[1][0] for p in by_factor[factor]])
            es = np.array([p[1][1] for p in by_factor[factor]])
            ax.errorbar(range(len(xs)), 100 * ys, yerr=100 * es, marker="o", capsize=3, label=variant)
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set(title=factor, ylabel="near-OOD AUROC % (validation)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(docs / "quality_sensitivity.png", dpi=100)
    plt.close(fig)
    chosen = payload["validation"]["chosen"]
    text = [
        "# Quality on the offline world",
        "",
        f"Produced by `python benchmarks/quality.py` at commit `{payload['commit']}` in {payload['seconds']} s "
        f"(2 CPU cores; torch {payload['versions']['torch']}). Backbone: the shipped `toy` CLIP. "
        f"Mean ± std over test seeds {payload['test_seeds']} (class partitions never used for tuning). "
        "FPR95: fraction of OOD accepted at 95 % ID TPR (ID positive). Raw numbers: "
        "`benchmarks/results/quality.json`.",
        "",
        "Settings were chosen on validation protocols (class partitions seeded "
        f"{payload['validation_seeds']}), one factor at a time, by mean near-OOD AUROC:",
        "",
        "| variant | lr | epochs | τ | n_neg | β | γ | batch | init noise |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in chosen.items():
        text.append(f"| {variant} | {s['lr']} | {s['epochs']} | {s['temperature']} | {s['n_neg']} | {s['beta']} | "
                    f"{s['gamma']} | {s['batch_size']} | {s['init_noise']} |")
    at = payload["validation_at_chosen"]
    text += ["", "Validation at the chosen settings (mean over validation partitions):", "",
             "| variant | near AUROC % | near FPR95 % | far AUROC % | far FPR95 % |", "|---|---|---|---|---|"]
    text += [f"| {v} | {fmt(m['near_auroc'])} | {fmt(m['near_fpr95'])} | {fmt(m['far_auroc'])} | "
             f"{fmt(m['far_fpr95'])} |" for v, m in at.items()]
    text += ["", f"Default loss variant chosen on validation (mean of near and far AUROC): "
             f"**{payload['default_variant']}**.", "",
             markdown_tables(payload), "## Sensitivity (validation protocols)", "",
             "![sensitivity](quality_sensitivity.png)", ""]
    (docs / "quality.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
