"""Quality benchmark on the offline world: zero-shot MCM vs CoOp vs NegPrompt (both loss variants).

One command: ``python benchmarks/quality.py`` (it prints and stores its own runtime; ``--quick``
is the ~4-minute path on 2 CPU cores; the full run took 54 min). It

1. evaluates a small *joint* grid of fit-neg settings per loss variant on 10 *validation*
   protocols (closed set, class partitions seeded 100-109, never used for testing) and keeps the
   combination with the best mean of near- and far-OOD AUROC, reporting mean ± standard error
   over partitions (so differences are resolvable), the runners-up and the CLI defaults;
2. runs every method once on 5 *test* protocols (partitions seeded 0-4): closed set (ID = 6
   shapes) and open vocabulary (60 colour–shape ID classes; positives trained on all of them,
   negatives on 10 %, as the paper; transferred to all 60 names, held-out pairs included). NegPrompt
   appears twice: with the CLI defaults (what ``negprompt fit-neg`` gives) and with the tuned setting;
3. writes ``benchmarks/results/quality.json``, ``docs/quality.md`` and the marginal sensitivity
   plot ``docs/quality_sensitivity.png``.

Everything runs through the library functions the CLI uses (fit_pos, fit_neg, the feature
cache, text_features_for, score_features, ood_metrics) on the shipped ``toy`` backbone.
"""

from __future__ import annotations

import argparse
import itertools
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
from negprompt_cli.backbone import BackboneRequest, RuntimeOptions, load_backbone
from negprompt_cli.console import progress
from negprompt_cli.data import find_images, load_image_folder
from negprompt_cli.image_features import encode_images
from negprompt_cli.learners import PromptSettings
from negprompt_cli.metrics import ood_metrics
from negprompt_cli.ood_scores import score_features
from negprompt_cli.presets import NEGATIVE_OPTIM
from negprompt_cli.registry import get_host
from negprompt_cli.stages.fit_neg import FitNegOptions, fit_neg
from negprompt_cli.stages.fit_pos import FitPosOptions, fit_pos
from negprompt_cli.text_encoder import SoftPromptTextEncoder
from negprompt_cli.text_features import hand_template_features, text_features_for
from negprompt_cli.training import OptimConfig
from negprompt_cli.training_data import DataOptions
from negprompt_cli.world import (
    COLOUR_NAMES,
    SHAPES,
    export_folder,
    export_images,
    render_far_ood,
    sample_items,
)

VALIDATION_SEEDS = tuple(range(100, 110))
TEST_SEEDS = tuple(range(5))
QUICK_VALIDATION_SEEDS, QUICK_TEST_SEEDS = (100, 101, 102), (0, 1)


@dataclass(frozen=True)
class NegSettings:
    variant: str
    lr: float
    epochs: int
    n_neg: int
    beta: float
    gamma: float
    temperature: float
    batch_size: int
    init_noise: float


def cli_defaults(variant: str) -> NegSettings:
    """What ``negprompt fit-neg`` runs when no option is given (read from the library, not restated)."""
    optim = NEGATIVE_OPTIM
    base = FitNegOptions(data=DataOptions(Path(".")), out=Path("x"))
    learner = get_host().learner(base.learner).Options()
    return NegSettings(variant=variant, lr=optim.lr, epochs=optim.epochs, n_neg=learner.n_neg, beta=learner.beta,
                       gamma=learner.gamma, temperature=base.temperature, batch_size=optim.batch_size,
                       init_noise=learner.init_noise)


# The joint grids: every combination is validated as a combination. "weights" is (β, γ).
GRID = {
    "official": {"lr": (0.1, 0.3), "epochs": (10, 40), "n_neg": (1, 2), "weights": ((0.0, 0.0), (0.1, 0.05)),
                 "batch_size": (16, 64)},
    "paper": {"lr": (0.01, 0.1), "epochs": (5, 10), "temperature": (1.0, 0.1), "weights": ((0.1, 0.05), (1.0, 0.5)),
              "batch_size": (16, 64)},
}
QUICK_GRID = {"official": {"lr": (0.1, 0.3), "n_neg": (1, 2)}, "paper": {"lr": (0.01, 0.1), "temperature": (1.0, 0.1)}}


def combinations(variant: str, grid: dict[str, tuple]) -> list[tuple[dict[str, Any], NegSettings]]:
    out = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        changes = {k: v for k, v in point.items() if k != "weights"}
        if "weights" in point:
            changes["beta"], changes["gamma"] = point["weights"]
        out.append((point, replace(cli_defaults(variant), **changes)))
    return out


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
    # positives see every ID class; the negatives are trained on ``train_classes`` only (the paper's setting)
    export_folder(root / "train", {c: items(c, 16, rng) for c in classes}, rng)
    export_folder(root / "test", {c: items(c, per_test, rng) for c in classes}, rng)
    export_folder(root / "ood_near", {s: sample_items(50, rng, pairs=[(c, s) for c in COLOUR_NAMES])
                                      for s in ood_shapes}, rng)
    export_images(root / "ood_far", render_far_ood(300, rng))
    names = sorted(classes)
    (root / "negative_classes.txt").write_text("".join(f"{c}\n" for c in train_classes))
    return {"root": root, "names": [n.replace("_", " ") for n in names], "train_classes": train_classes,
            "negative_classes": root / "negative_classes.txt" if kind == "open" else None,
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
    scores = {name: score_features(getattr(feats, name), text_pos, text_neg, scorer=get_host().scorer(scorer),
                                   temperature=temperature,
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
        optim = replace(NEGATIVE_OPTIM, lr=s.lr, epochs=s.epochs, seed=self.seed, batch_size=s.batch_size)

        fit_neg(FitNegOptions(data=self.data(), out=out, pos=self.pos_path, runtime=RuntimeOptions(device="cpu"),
                              learner_options={"n_neg": s.n_neg, "loss_variant": s.variant, "beta": s.beta,
                                               "gamma": s.gamma, "init_noise": s.init_noise},
                              optim=optim, temperature=s.temperature,
                              train_classes=self.protocol["negative_classes"], quiet=True))
        text_pos, text_neg = text_features_for(self.encoder, load_prompts(out), self.protocol["names"])
        return evaluate(self.features, text_pos, text_neg, "negprompt", s.temperature, self.backbone.logit_scale)


def mean_se(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    """Mean and standard error of the mean over partitions, per metric (plus the selection criterion)."""
    rows = [{**r, "criterion": (r["near_auroc"] + r["far_auroc"]) / 2} for r in rows]
    n = len(rows)
    return {k: [float(np.mean([r[k] for r in rows])),
                float(np.std([r[k] for r in rows], ddof=1) / np.sqrt(n)) if n > 1 else 0.0] for k in rows[0]}


# -- stages -----------------------------------------------------------------------------------------------------
def validation(runs: list[ProtocolRun], grid: dict[str, dict[str, tuple]]) -> dict[str, Any]:
    """Every combination of each variant's grid on every validation partition; the best mean criterion wins."""
    table: dict[str, list[dict[str, Any]]] = {}
    chosen: dict[str, NegSettings] = {}
    with progress() as bar:
        total = sum(len(combinations(v, g)) for v, g in grid.items()) * len(runs)
        task = bar.add_task("validation grid", total=total, status="")
        for variant, variant_grid in grid.items():
            entries = []
            for point, settings in combinations(variant, variant_grid):
                rows = []
                for run in runs:
                    rows.append(run.negprompt(settings))
                    bar.advance(task)
                entries.append({"point": point, "settings": settings.__dict__, "per_partition": rows,
                                "metrics": mean_se(rows)})
            entries.sort(key=lambda e: -e["metrics"]["criterion"][0])
            table[variant] = entries
            chosen[variant] = NegSettings(**entries[0]["settings"])
    defaults = {v: mean_se([run.negprompt(cli_defaults(v)) for run in runs]) for v in grid}
    return {"grid": {v: {k: list(vals) for k, vals in g.items()} for v, g in grid.items()}, "table": table,
            "chosen": {k: v.__dict__ for k, v in chosen.items()}, "cli_defaults": defaults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--docs-only", action="store_true",
                        help="re-render docs/quality.md and the plot from the results file (--out), no runs")
    parser.add_argument("--quick", action="store_true",
                        help="3 validation and 2 test partitions, a 4-point grid per variant (~4 min on 2 cores); "
                             "writes results but not the docs")
    args = parser.parse_args()
    if args.docs_only:
        write_docs(json.loads(args.out.read_text()), args.docs)
        return
    torch.manual_seed(0)
    started = time.time()
    backbone = load_backbone(BackboneRequest("toy", device="cpu"))
    val_seeds = QUICK_VALIDATION_SEEDS if args.quick else VALIDATION_SEEDS
    test_seeds = QUICK_TEST_SEEDS if args.quick else TEST_SEEDS
    with tempfile.TemporaryDirectory(prefix="negprompt-quality-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        val_runs = [ProtocolRun(work / f"val-{s}", "closed", s, backbone, cache) for s in val_seeds]
        val = validation(val_runs, QUICK_GRID if args.quick else GRID)
        tuned = {v: NegSettings(**d) for v, d in val["chosen"].items()}
        # the default loss variant: the better tuned validation criterion
        default_variant = max(tuned, key=lambda v: val["table"][v][0]["metrics"]["criterion"][0])
        methods = {f"NegPrompt, CLI defaults ({v} loss)": cli_defaults(v) for v in tuned}
        methods |= {f"NegPrompt, tuned on validation ({v} loss)": s for v, s in tuned.items()}
        results: dict[str, Any] = {}
        for kind in ("closed", "open"):
            per_method: dict[str, list[dict[str, float]]] = {}
            for seed in test_seeds:
                run = ProtocolRun(work / f"test-{kind}-{seed}", kind, seed, backbone, cache)
                for name, metrics in run.baselines().items():
                    per_method.setdefault(name, []).append(metrics)
                for name, settings in methods.items():
                    per_method.setdefault(name, []).append(run.negprompt(settings))
            results[kind] = {name: mean_se(rows) for name, rows in per_method.items()}
    seconds = round(time.time() - started)
    payload = {
        "commit": current_commit(), "seconds": seconds, "quick": args.quick, "backbone": "toy",
        "validation_seeds": list(val_seeds), "test_seeds": list(test_seeds), "validation": val,
        "default_variant": default_variant, "methods": {k: v.__dict__ for k, v in methods.items()},
        "test": results, "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.quick:
        write_docs(payload, args.docs)
    print(markdown_tables(payload))
    print(f"quality benchmark finished in {seconds} s ({'quick' if args.quick else 'full'} run)")


def fmt(pair: list[float], percent: bool = True) -> str:
    scale = 100 if percent else 1
    return f"{scale * pair[0]:.1f} ± {scale * pair[1]:.1f}"


def markdown_tables(payload: dict[str, Any]) -> str:
    lines = []
    titles = {"closed": "Closed set (ID = 6 shapes in any colour)",
              "open": "Open vocabulary (60 colour–shape ID classes; positives trained on all, negatives on 10 %, "
                      "scored against all 60 names)"}
    for kind, table in payload["test"].items():
        lines += [f"### {titles[kind]}", "",
                  "| method | near AUROC % ↑ | near FPR95 % ↓ | far AUROC % ↑ | far FPR95 % ↓ | ID acc % ↑ |",
                  "|---|---|---|---|---|---|"]
        for name, m in table.items():
            lines.append(f"| {name} | {fmt(m['near_auroc'])} | {fmt(m['near_fpr95'])} | {fmt(m['far_auroc'])} | "
                         f"{fmt(m['far_fpr95'])} | {fmt(m['id_accuracy'])} |")
        lines.append("")
    return "\n".join(lines)


def settings_row(name: str, s: dict[str, Any]) -> str:
    return (f"| {name} | {s['variant']} | {s['lr']} | {s['epochs']} | {s['temperature']} | {s['n_neg']} | "
            f"{s['beta']} | {s['gamma']} | {s['batch_size']} | {s['init_noise']} |")


def write_docs(payload: dict[str, Any], docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = payload["validation"]
    variants = list(val["grid"])
    width = max(len(g) for g in val["grid"].values())
    fig, axes = plt.subplots(len(variants), width, figsize=(3.6 * width, 3.2 * len(variants)), squeeze=False)
    for row, variant in enumerate(variants):
        entries = val["table"][variant]
        factors = list(val["grid"][variant])
        for ax in axes[row][len(factors):]:
            ax.axis("off")
        for ax, factor in zip(axes[row], factors, strict=False):
            values = val["grid"][variant][factor]
            # marginal effect: per partition, the mean over every grid point with this value; then mean ± SE
            means, errors = [], []
            for value in values:
                picked = [e["per_partition"] for e in entries if e["point"][factor] == value]
                per_partition = np.mean([[(r["near_auroc"] + r["far_auroc"]) / 2 for r in rows] for rows in picked],
                                        axis=0)
                means.append(100 * per_partition.mean())
                errors.append(100 * per_partition.std(ddof=1) / np.sqrt(len(per_partition)))
            ax.errorbar(range(len(values)), means, yerr=errors, marker="o", capsize=3,
                        color="C0" if variant == "official" else "C1")
            ax.set_xticks(range(len(values)), [str(v) for v in values])
            ax.set_xlim(-0.5, len(values) - 0.5)
            ax.set(title=f"{variant} loss: {factor}", ylabel="(near+far)/2 AUROC %")
    fig.tight_layout()
    fig.savefig(docs / "quality_sensitivity.png", dpi=90)
    plt.close(fig)
    n_val = len(payload["validation_seeds"])
    text = [
        "# Quality on the offline world",
        "",
        f"Produced by `python benchmarks/quality.py` at commit `{payload['commit']}`; the run took "
        f"{payload['seconds']} s ({payload['seconds'] / 60:.0f} min) on 2 CPU cores (torch "
        f"{payload['versions']['torch']}), as measured by the script itself. `--quick` (3 validation and 2 test "
        "partitions, a 4-point grid) takes about 4 minutes. Backbone: the shipped `toy` CLIP. Every number is "
        f"mean ± standard error over partitions: {n_val} validation partitions (class partitions seeded "
        f"{payload['validation_seeds'][0]}–{payload['validation_seeds'][-1]}) and {len(payload['test_seeds'])} test "
        f"partitions (seeded {payload['test_seeds'][0]}–{payload['test_seeds'][-1]}, never used for tuning). "
        "FPR95: fraction of OOD accepted at 95 % ID TPR (ID positive). Raw numbers: "
        "`benchmarks/results/quality.json`.",
        "",
        "## Settings",
        "",
        "The tuned settings are the best *combination* of a small joint grid per loss variant, validated as a "
        "combination on the closed-set validation partitions by the mean of near- and far-OOD AUROC:",
        "",
    ]
    for variant, grid in val["grid"].items():
        text.append(f"- {variant}: " + "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in grid.items())
                    + " (weights = (β, γ))")
    text += ["", "| setting | loss | lr | epochs | τ | n_neg | β | γ | batch | init noise |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in payload["methods"].items():
        text.append(settings_row(name.replace("NegPrompt, ", ""), s))
    text += ["", "Validation (closed set), the best five combinations per variant and the CLI defaults:", "",
             "| variant | setting | (near+far)/2 AUROC % | near AUROC % | far AUROC % | near FPR95 % |",
             "|---|---|---|---|---|---|"]
    for variant, entries in val["table"].items():
        for e in entries[:5]:
            m = e["metrics"]
            text.append(f"| {variant} | {e['point']} | {fmt(m['criterion'])} | {fmt(m['near_auroc'])} | "
                        f"{fmt(m['far_auroc'])} | {fmt(m['near_fpr95'])} |")
        m = val["cli_defaults"][variant]
        text.append(f"| {variant} | CLI defaults | {fmt(m['criterion'])} | {fmt(m['near_auroc'])} | "
                    f"{fmt(m['far_auroc'])} | {fmt(m['near_fpr95'])} |")
    text += ["", f"Default loss variant (the better tuned validation criterion): **{payload['default_variant']}**.",
             "", "## Test", "", markdown_tables(payload),
             "## Marginal sensitivity (validation)", "",
             "Each point: the criterion averaged over every grid combination with that value, mean ± SE over "
             "partitions.", "", "![sensitivity](quality_sensitivity.png)", ""]
    (docs / "quality.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
