"""Write the NegPrompt paper's Tables 2, 3 and 5 into the benchmark protocol files' published rows.

    python scripts/published-rows.py [PAPER_JSON]   # default: tests/data/negprompt-published.json

The paper's tables as data (a copy of ../shared/reference/negprompt-published.json) are the only
input; rows from other papers already in a protocol file (MCM, NegLabel, CSP) are kept, the
paper's own rows are replaced. tests/test_published.py checks the protocol files against the same
data, so a hand edit that drifts from the paper fails there. Run it again after the data changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "negprompt_cli" / "benchmark" / "protocols"
PAPER = "NegPrompt (Li et al., CVPR 2024)"
LAION = "laion2b_s34b_b88k"
# the paper's method -> (our scorer, trained or zero-shot); None: a method this tool does not run
METHODS = {"MCM": ("mcm", "zero-shot"), "MSP": ("msp", "zero-shot"), "MaxLogit": ("maxlogit", "zero-shot"),
           "Energy": ("energy", "zero-shot"), "CoOp": ("mcm", "16-shot"), "NegPrompt": ("negprompt", "16-shot"),
           "CLIPN": (None, "zero-shot"), "ReAct": (None, "zero-shot"), "ODIN": (None, "zero-shot"),
           "LoCoOp": (None, "16-shot")}
BACKBONES = {"ResNet-50": "RN50", "ResNet-101": "RN101", "ViT-B-32": "ViT-B/32"}


def paper_row(row: dict, table: str, sets: dict[str, str], *, backbone: str = "ViT-B/16",
              pretrained: str | None = LAION, method: str | None = None) -> dict:
    """One protocol row from one table row: set names renamed to the protocol's, weights stated."""
    name = method or row["method"]
    scorer, training = METHODS[name.removesuffix(" (10%)")]
    note = row.get("note", "")
    copied = "taken from" in note or "taken by the paper from" in note
    out = {"method": row["method"], "scorer": scorer, "training": training, "backbone": backbone,
           "pretrained": "openai" if copied else pretrained, "source": f"{PAPER}, {table}",
           "setting": row["setting"]}
    if copied:
        out["taken_from"] = "CLIPN [47] / LoCoOp [33] (OpenAI CLIP weights; the paper copied these numbers)"
    if note:
        out["note"] = note
    for metric in ("fpr95", "auroc"):
        out[metric] = {sets[k]: v for k, v in row[metric].items() if k in sets}
    return out


def main(paper_file: Path) -> None:
    paper = json.loads(paper_file.read_text(encoding="utf-8"))
    far = {k: k for k in ("iNaturalist", "SUN", "Places", "Textures", "average")}
    rows: dict[str, list[dict]] = {p.stem: [] for p in sorted(PROTOCOLS.glob("imagenet1k-*.json"))}
    for row in paper["table2_imagenet1k_far_ood"]:
        target = "imagenet1k-mcm-open-vocabulary" if "(10%)" in row["method"] else "imagenet1k-mcm"
        rows[target].append(paper_row(row, "Table 2", far))
    for row in paper["table3_imagenet1k_hard_splits"]:
        suffix = "-open-vocabulary" if "(10%)" in row["method"] else ""
        for n in range(1, 5):
            one = paper_row(row, "Table 3", {f"Split-{n}": f"split{n} unknown"})
            one["note"] = "; ".join(filter(None, [
                one.get("note"), f"Table 3's average over the four splits: FPR95 {row['fpr95']['average']}, "
                                 f"AUROC {row['auroc']['average']}"]))
            rows[f"imagenet1k-hard-split{n}{suffix}"].append(one)
    for row in paper["table5_ablations"]:
        backbone = next((ours for theirs, ours in BACKBONES.items() if theirs in row["method"]), "ViT-B/16")
        # the paper names LAION-2B weights for ViT-B/16 only; open_clip has no LAION-2B RN50/RN101
        weights = LAION if backbone == "ViT-B/16" else None
        one = paper_row(row, "Table 5", far, backbone=backbone, pretrained=weights, method="NegPrompt (10%)")
        if weights is None:
            one["pretrained_stated"] = False
        if "ablation" not in row["setting"] or backbone == "ViT-B/16":
            one["scorer"] = None  # other training settings, or Table 2's 10 % row again: beside no run
        # Table 5's reference row equals Table 2's 10 % row: the ablations ran in the open-vocabulary setting
        rows["imagenet1k-mcm-open-vocabulary"].append(one)
    for name, paper_rows in rows.items():
        path = PROTOCOLS / f"{name}.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        kept = [p for p in spec.get("published", []) if not p.get("source", "").startswith(PAPER)]
        spec["published"] = kept + paper_rows
        path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(kept)} kept, {len(paper_rows)} from the paper")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "data" / "negprompt-published.json")
