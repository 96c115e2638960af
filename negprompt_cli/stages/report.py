"""``negprompt report``: the paper-style table, JSON, and an HTML/Markdown report with plots."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_folder, check_name_fits, check_writable, files_into_folder
from ..errors import NegPromptWarning, NotFoundError, UsageError
from ..metrics import AUPR_ESTIMATOR, ood_metrics
from ..report_table import TABLE_HEADER, markdown_table, table_rows
from ..score_file import read_score_file


@dataclass
class ReportOptions:
    id_file: Path | None
    ood: list[tuple[str, Path]]
    out_dir: Path | None = None
    fpr_convention: str = "id-positive"
    tpr_level: float = 0.95
    overwrite: bool = False  # --out holds other files: write the report's files beside them (never delete them)


# Every file a report folder can hold; only these are ever replaced or removed in an existing --out folder.
REPORT_FILES = ("report.html", "report.md", "report.json", "roc.png", "histogram.png", "similarity.png")


def parse_ood_args(values: list[str]) -> list[tuple[str, Path]]:
    """``NAME=FILE`` pairs (a bare FILE is named by its stem)."""
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        name = text_from_argv(name)
        if not name or not path:
            raise UsageError(f"--ood {value!r}: expected NAME=FILE")
        pairs.append((name, Path(path)))
    names = [n for n, _ in pairs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UsageError(f"--ood name {duplicate!r} given twice")
    return pairs


def text_from_argv(value: str) -> str:
    """A name typed on the command line as text: in a C/POSIX locale Python hands non-ASCII arguments over as
    escaped bytes (``B\\udcc3\\udca4ume``); they are the UTF-8 the user typed (undecodable bytes: U+FFFD)."""
    try:
        return os.fsencode(value).decode("utf-8", errors="replace")
    except UnicodeError:
        return value


def build_report(options: ReportOptions) -> dict[str, Any]:
    if options.id_file is None:
        raise UsageError("report needs the ID scores (--id FILE): OOD metrics are undefined without them")
    if not options.ood:
        raise UsageError("report needs at least one OOD score file (--ood NAME=FILE): metrics are undefined "
                         "without OOD scores")
    if options.out_dir is not None:
        check_report_folder(options.out_dir, options.overwrite)
    id_rows = read_score_file(options.id_file)
    ood_rows = {name: read_score_file(path) for name, path in options.ood}
    _check_compatible(options.id_file, id_rows, {name: path for name, path in options.ood}, ood_rows)
    _warn_shared_images(id_rows, ood_rows)
    id_scores = np.array([r["score"] for r in id_rows])
    results: dict[str, Any] = {}
    for name, rows in ood_rows.items():
        results[name] = ood_metrics(id_scores, [r["score"] for r in rows], tpr_level=options.tpr_level,
                                    fpr_convention=options.fpr_convention)
    keys = ("auroc", "fpr", "aupr_in", "aupr_out")
    average = {k: float(np.mean([m[k] for m in results.values()])) for k in keys}
    report: dict[str, Any] = {
        "fpr_convention": options.fpr_convention,
        "fpr_definition": ("fraction of OOD images accepted as ID at the threshold keeping "
                           f"{options.tpr_level:.0%} of ID images (ID = positive class)")
        if options.fpr_convention == "id-positive" else
        (f"fraction of ID images rejected at the threshold that catches {options.tpr_level:.0%} of OOD images "
         "(OOD = positive class, OpenOOD v1.5)"),
        "aupr_estimator": AUPR_ESTIMATOR,
        "scorer": id_rows[0].get("scorer"),
        "prompts_id": id_rows[0].get("prompts_id"),
        "id": {"file": str(options.id_file), "n": len(id_rows), "accuracy": id_accuracy(id_rows)},
        "ood": {name: {"file": str(path), **results[name]} for name, path in options.ood},
        "average": average,
        "similarity": similarity_view(id_rows, ood_rows),
    }
    if options.out_dir is not None:
        ood_scores = {n: np.array([r["score"] for r in rows]) for n, rows in ood_rows.items()}
        existing = options.out_dir.is_dir() and any(options.out_dir.iterdir())
        # a new folder: all files or none (never a folder with only roc.png); an existing one: only the report's
        # own files are replaced, each whole, and whatever else the folder holds stays
        staging_area = files_into_folder(options.out_dir, REPORT_FILES) if existing else atomic_folder(options.out_dir)
        with staging_area as staging:
            write_report_files(report, id_scores, ood_scores, staging)
        report["files"] = {kind: str(options.out_dir / f"report.{kind}") for kind in ("html", "md", "json")}
    return report


def check_report_folder(out: Path, overwrite: bool) -> None:
    """Before any work: --out may be new, empty or a previous report; a folder with other files in it is refused
    unless --overwrite (and even then only the report's own files are replaced)."""
    if not out.parent.exists():
        raise NotFoundError(f"output directory's parent does not exist: {out.parent}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder", hint="name a folder for the report")
    check_name_fits(out / "report.html")
    check_writable(out if out.is_dir() else out.parent)
    if out.is_dir() and not overwrite:
        others = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES and not p.name.startswith("."))
        if others:
            raise UsageError(f"--out {out} holds files a report does not write ({', '.join(others[:3])}"
                             + (" ..." if len(others) > 3 else "") + ")",
                             hint="name a new or empty folder, or pass --overwrite to replace only the report's "
                                  "own files (yours are kept)")


def _check_compatible(id_file: Path, id_rows, ood_files, ood_rows) -> None:  # type: ignore[no-untyped-def]
    """Scores from different scorers or prompts are on different scales: refuse to mix them."""
    ref = (id_rows[0].get("scorer"), id_rows[0].get("prompts_id"))
    for name, rows in ood_rows.items():
        other = (rows[0].get("scorer"), rows[0].get("prompts_id"))
        if other != ref:
            raise UsageError(f"score files disagree: {id_file} has scorer/prompts {ref}, {ood_files[name]} has {other}",
                             hint="score every set with the same --prompts and --scorer")


def _warn_shared_images(id_rows, ood_rows) -> None:  # type: ignore[no-untyped-def]
    """An OOD set that holds ID images (a wrong --ood file, the ID file given twice) still gives plausible
    numbers, so say so; the metrics are computed as asked."""
    id_paths = {r["path"] for r in id_rows}
    for name, rows in ood_rows.items():
        shared = sum(r["path"] in id_paths for r in rows)
        if shared:
            warnings.warn(f"OOD set {name!r} shares {shared} of its {len(rows)} image(s) with the ID set (same "
                          "paths); its metrics count those images as both ID and OOD", NegPromptWarning, stacklevel=2)


def id_accuracy(rows: list[dict[str, Any]]) -> float | None:
    labelled = [r for r in rows if isinstance(r.get("label_index"), int) and r["label_index"] >= 0]
    if not labelled:
        return None
    return float(np.mean([r["prediction_index"] == r["label_index"] for r in labelled]))


def similarity_view(id_rows, ood_rows) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The paper's Fig. 3: mean max cosine of ID / OOD images to the positive vs the negative prompts."""
    def means(rows):  # type: ignore[no-untyped-def]
        pos = [r["max_pos_cos"] for r in rows if r.get("max_pos_cos") is not None]
        neg = [r["max_neg_cos"] for r in rows if r.get("max_neg_cos") is not None]
        return {"max_pos_cos": float(np.mean(pos)) if pos else None,
                "max_neg_cos": float(np.mean(neg)) if neg else None}

    return {"id": means(id_rows), **{name: means(rows) for name, rows in ood_rows.items()}}


def write_report_files(report: dict[str, Any], id_scores: np.ndarray, ood_scores: dict[str, np.ndarray],
                       out_dir: Path) -> None:
    figures = make_figures(report, id_scores, ood_scores)
    for name, png in figures.items():
        (out_dir / f"{name}.png").write_bytes(png)
    conv = report["fpr_convention"]
    accuracy = report["id"]["accuracy"]
    summary = (f"Scorer: `{report['scorer']}`. ID images: {report['id']['n']}"
               + (f", ID accuracy {100 * accuracy:.2f} %" if accuracy is not None else "")
               + f". FPR convention: **{conv}** — {report['fpr_definition']}. AUPR: {report['aupr_estimator']}.")
    md = ["# negprompt OOD report", "", summary, "", markdown_table(report), ""]
    md += [f"![{name}]({name}.png)" for name in figures]
    (out_dir / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8", errors="surrogateescape")
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(report))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
    images = "".join(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">' for name, png in figures.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>negprompt OOD report</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>negprompt OOD report</h1><p>{html.escape(summary).replace('**', '')}</p>"
            f"<table><tr>{head}</tr>{rows}</table>{images}</body></html>")
    (out_dir / "report.html").write_text(page, encoding="utf-8", errors="surrogateescape")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def make_figures(report: dict[str, Any], id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    # names come from users: plain text in plots, never mathtext (an OOD set named `$\foo$` would not parse)
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _figures(report, id_scores, ood_scores)


def _figures(report: dict[str, Any], id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> dict[str, bytes]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figures: dict[str, bytes] = {}

    def save(fig) -> bytes:  # type: ignore[no-untyped-def]
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buffer.getvalue()

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, scores in ood_scores.items():
        labels = np.r_[np.ones(len(id_scores)), np.zeros(len(scores))]
        fpr, tpr, _ = roc_curve(labels, np.r_[id_scores, scores])
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * report['ood'][name]['auroc']:.1f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="OOD accepted as ID (FPR)", ylabel="ID kept (TPR)", title="ROC, ID = positive")
    ax.legend(loc="lower right")
    figures["roc"] = save(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    everything = np.concatenate([id_scores, *ood_scores.values()])
    bins = np.linspace(everything.min(), everything.max(), 40) if np.ptp(everything) > 0 else 10
    ax.hist(id_scores, bins=bins, alpha=0.6, density=True, label="ID")
    for name, scores in ood_scores.items():
        ax.hist(scores, bins=bins, alpha=0.5, density=True, label=name)
    ax.set(xlabel="score (higher = more in-distribution)", ylabel="density", title="Score distributions")
    ax.legend()
    figures["histogram"] = save(fig)

    view = report["similarity"]
    if all(v.get("max_neg_cos") is not None for v in view.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        sets = list(view)
        x = np.arange(len(sets))
        ax.bar(x - 0.2, [view[s]["max_pos_cos"] for s in sets], 0.4, label="max cos to positive prompts")
        ax.bar(x + 0.2, [view[s]["max_neg_cos"] for s in sets], 0.4, label="max cos to negative prompts")
        ax.set_xticks(x, sets)
        ax.set(ylabel="mean over images", title="Similarity to positive vs negative prompts (paper Fig. 3)")
        ax.legend()
        figures["similarity"] = save(fig)
    return figures
