"""``negprompt report``: the paper-style table, JSON, and an HTML/Markdown report with plots."""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import NegPromptWarning, NotFoundError, UsageError
from ..outputs.atomic import (
    atomic_folder,
    check_name_fits,
    check_output_folder,
    check_replaceable,
    check_writable,
    files_into_folder,
    real_target,
)
from ..outputs.score_file import read_score_file
from ..report.images import (
    DEFAULT_PER_GALLERY,
    THUMBNAIL_PIXELS,
    examples,
    per_class_kept,
    row_kept,
    row_threshold,
    threshold_label,
    thumbnail,
)
from ..report.page import render_html, render_markdown
from ..scoring.calibration import KeptCount, rank_promise, warn_if_shifted
from ..scoring.metrics import AUPR_ESTIMATOR, ood_metrics


@dataclass
class ReportOptions:
    id_file: Path | None
    ood: list[tuple[str, Path]]
    out_dir: Path | None = None
    fpr_convention: str = "id-positive"
    tpr_level: float = 0.95
    overwrite: bool = False  # --out holds other files: write the report's files beside them (never delete them)
    near: tuple[str, ...] = ()  # names of the OOD sets that are near-OOD (averaged apart from the far ones)
    threshold: float | None = None  # the decision threshold to show (default: the one the score files carry)
    images: int = DEFAULT_PER_GALLERY  # thumbnails per gallery in report.html; 0: no images at all
    command: str | None = None  # the command line that made the report (provenance; the CLI passes it)


# Every file a report folder can hold; only these are ever replaced or removed in an existing --out folder.
REPORT_FILES = ("report.html", "report.md", "report.json", "roc.png", "histogram.png", "similarity.png")


def parse_ood_args(values: list[str], flag: str = "--ood") -> list[tuple[str, Path]]:
    """``NAME=FILE`` pairs (a bare FILE is named by its stem)."""
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        name = text_from_argv(name)
        if not name or not path:
            raise UsageError(f"{flag} {value!r}: expected NAME=FILE")
        pairs.append((name, Path(path)))
    names = [n for n, _ in pairs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UsageError(f"OOD set name {duplicate!r} given twice")
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
    unknown_near = sorted(set(options.near) - set(results))
    if unknown_near:
        raise UsageError(f"--near names no OOD set: {', '.join(unknown_near)}")
    near = [n for n in results if n in options.near]
    far = [n for n in results if n not in options.near]
    threshold = decision_threshold(options, id_rows, ood_rows)
    _warn_unlikely_id(options.id_file, id_rows, id_scores, ood_rows)
    if threshold and options.threshold is None:  # its promise, against these ID images
        warn_if_shifted(promised_counts(threshold, id_rows), what=f"ID images ({options.id_file.name})")
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
        "ood": {name: {"file": str(path), "group": "near" if name in options.near else "far", **results[name]}
                for name, path in options.ood},
        "average": _average(results.values()),
        "average_near": _average([results[n] for n in near]) if near and far else None,
        "average_far": _average([results[n] for n in far]) if near and far else None,
        "similarity": similarity_view(id_rows, ood_rows),
        "threshold": threshold,
        "decision": _decision(threshold, id_rows, ood_rows) if threshold else None,
        "per_class": per_class_kept(id_rows, threshold) if threshold else None,
        "provenance": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "negprompt": __version__,
                       "command": options.command},
        "examples": None,
        "images_note": None,
    }
    if options.images > 0:
        report["examples"] = examples(id_rows, ood_rows, threshold, options.images)
        report["images_note"] = (f"Up to {options.images} thumbnails per gallery ({THUMBNAIL_PIXELS} px JPEG, "
                                 "embedded in report.html), chosen from the score files; an image that moved "
                                 "since scoring shows as a note. report --images N changes the count, "
                                 "--no-images leaves images out.")
    else:
        report["images_note"] = "No images (report --no-images)."
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


def _average(metrics: Any) -> dict[str, float]:
    chosen = list(metrics)
    return {k: float(np.mean([m[k] for m in chosen])) for k in ("auroc", "fpr", "aupr_in", "aupr_out")}


def decision_threshold(options: ReportOptions, id_rows: list[dict[str, Any]],
                       ood_rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The threshold the report draws: --threshold, else the one the ID score file was written with (stored
    with the prompts, calibrated, or given to score); None when the files carry none.

    Rows carry the threshold they were judged by: one value, or (``score --per-class``) one per predicted class,
    recorded here as ``per_class`` (class index -> threshold), each row then decided by its own."""
    if options.threshold is not None:
        return {"value": float(options.threshold), "source": "given to report (--threshold)"}
    values = {r.get("threshold") for r in id_rows}
    if None in values:
        return None
    by_class = _class_thresholds(id_rows)
    if len(values) > 1 and by_class is None:  # several thresholds, not one per class: no rule to draw
        return None
    sources = {"stored": "stored with the prompts", "--calibrate": "calibrated on ID images (score --calibrate)",
               "--threshold": "given to score (--threshold)"}
    source = id_rows[0].get("threshold_source")
    found: dict[str, Any] = {"source": sources.get(str(source), str(source))}
    if len(values) == 1:
        found["value"] = float(values.pop())  # type: ignore[arg-type]
        calibrated = {(r.get("threshold_n"), r.get("threshold_rank")) for r in id_rows}
        if len(calibrated) == 1 and None not in (pair := calibrated.pop()):  # how it was calibrated, where said
            n, rank = pair
            assert n is not None and rank is not None  # excluded above
            found["n_images"], found["rank"] = n, rank
            found["promise"] = rank_promise(int(n), int(rank))
    else:
        # classes only OOD images were predicted as take their threshold from those rows, where the files agree
        every = _class_thresholds(id_rows + [r for rows in ood_rows.values() for r in rows]) or by_class
        assert every is not None
        found["value"] = None
        found["per_class"] = {str(c): v for c, v in sorted(every.items())}
    for name, rows in ood_rows.items():
        if any(row_threshold(found, r) != r.get("threshold") for r in rows):
            said = (f"the ID set's ({found['value']:.6g})" if found["value"] is not None else
                    "the ID set's per-class thresholds")
            warnings.warn(f"OOD set {name!r} was scored with another threshold than the ID set; the report uses "
                          f"{said}", NegPromptWarning, stacklevel=3)
    return found


def _class_thresholds(rows: list[dict[str, Any]]) -> dict[int, float] | None:
    """Predicted class index -> the threshold its rows were judged by, when that is one value per class."""
    by_class: dict[int, float] = {}
    for r in rows:
        if by_class.setdefault(int(r["prediction_index"]), r["threshold"]) != r["threshold"]:
            return None
    return by_class


def promised_counts(threshold: dict[str, Any], id_rows: list[dict[str, Any]]) -> list[KeptCount]:
    """What the ID rows' thresholds promised, to check against what they kept: per threshold (one, or one per
    class) how it was calibrated (the rank-th lowest of n, where the score file says) and what it kept."""
    if "per_class" not in threshold:
        if "rank" not in threshold:
            return []
        kept = sum(row_kept(threshold, r) for r in id_rows)
        return [KeptCount(int(threshold["n_images"]), int(threshold["rank"]), len(id_rows), kept)]
    groups: dict[int, list[int]] = {}  # class -> [n, rank, images, kept]
    for r in id_rows:
        if r.get("threshold_n") is None or r.get("threshold_rank") is None:
            continue  # a class on the pooled threshold: no promise of its own
        seen = groups.setdefault(int(r["prediction_index"]), [int(r["threshold_n"]), int(r["threshold_rank"]), 0, 0])
        seen[2] += 1
        seen[3] += row_kept(threshold, r)
    return [KeptCount(*group) for _, group in sorted(groups.items())]


def _decision(threshold: dict[str, Any], id_rows: list[dict[str, Any]],
              ood_rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"id_kept": float(np.mean([row_kept(threshold, r) for r in id_rows])),
            "ood": {name: {"ood_accepted": float(np.mean([row_kept(threshold, r) for r in rows]))}
                    for name, rows in ood_rows.items()}}


def check_report_folder(out: Path, overwrite: bool) -> None:
    """Before any work: --out may be new, empty or a previous report; a folder with other files in it is refused
    unless --overwrite (and even then only the report's own files are replaced)."""
    if not out.parent.exists():
        raise NotFoundError(f"output directory's parent does not exist: {out.parent}")
    check_output_folder(out)
    for name in REPORT_FILES:  # an existing report's files are replaced: each must be a file
        check_replaceable(real_target(out / name))
    check_name_fits(out / "report.html")
    check_writable(out if out.is_dir() else out.parent)
    if out.is_dir() and not overwrite:
        others = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES and not p.name.startswith("."))
        if others:
            raise UsageError(f"--out {out} holds files a report does not write ({', '.join(others[:3])}"
                             + (" ..." if len(others) > 3 else "") + ")",
                             hint="name a new or empty folder, or pass --overwrite to replace only the report's "
                                  "own files (yours are kept)")


def _warn_unlikely_id(id_file: Path, id_rows: list[dict[str, Any]], id_scores: np.ndarray,
                      ood_rows: dict[str, list[dict[str, Any]]]) -> None:
    """The two ways a report goes wrong silently: an ID file scored without --labeled (no ID accuracy, no
    per-class view by true class), and an ID file that is really an OOD file (--id and --ood swapped)."""
    if not any(isinstance(r.get("label_index"), int) and r["label_index"] >= 0 for r in id_rows):
        warnings.warn(f"{id_file} has no labels, so the report has no ID accuracy (score the ID images with "
                      "--labeled, their class folders named as the classes)", NegPromptWarning, stacklevel=3)
    below = [name for name, rows in ood_rows.items() if np.median([r["score"] for r in rows]) > np.median(id_scores)]
    if len(below) == len(ood_rows):
        warnings.warn(f"{id_file} looks like an OOD file: its median score is below every OOD set's; are --id and "
                      "--ood the right way round?", NegPromptWarning, stacklevel=3)


def _check_compatible(id_file: Path, id_rows, ood_files, ood_rows) -> None:
    """Scores from different scorers or prompts are on different scales: refuse to mix them."""
    ref = (id_rows[0].get("scorer"), id_rows[0].get("prompts_id"))
    for name, rows in ood_rows.items():
        other = (rows[0].get("scorer"), rows[0].get("prompts_id"))
        if other != ref:
            raise UsageError(f"score files disagree: {id_file} has scorer/prompts {ref}, {ood_files[name]} has {other}",
                             hint="score every set with the same --prompts and --scorer")


def _warn_shared_images(id_rows, ood_rows) -> None:
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


def similarity_view(id_rows, ood_rows) -> dict[str, Any]:
    """The paper's Fig. 3: mean max cosine of ID / OOD images to the positive vs the negative prompts."""
    def means(rows):
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
    thumbs = {}
    if report.get("examples"):
        found = report["examples"]
        paths = [e["path"] for e in found["false_alarms"]]
        for name in report["ood"]:
            paths += [e["path"] for e in found["misses"][name] + found["clearly_ood"][name]]
        thumbs = {path: thumbnail(path) for path in dict.fromkeys(paths)}
    (out_dir / "report.md").write_text(render_markdown(report, list(figures)), encoding="utf-8",
                                       errors="surrogateescape")
    (out_dir / "report.html").write_text(render_html(report, figures, thumbs), encoding="utf-8",
                                         errors="surrogateescape")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def operating_points(report: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per OOD set, (FPR, TPR) at the report's decision threshold: the share of OOD accepted as ID and of ID kept,
    as the report's decision already counted them."""
    decision = report.get("decision")
    if not decision:
        return {}
    return {name: (d["ood_accepted"], decision["id_kept"]) for name, d in decision["ood"].items()}


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

    def save(fig) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buffer.getvalue()

    fig, ax = plt.subplots(figsize=(5, 5))
    points = operating_points(report)
    for name, scores in ood_scores.items():
        labels = np.r_[np.ones(len(id_scores)), np.zeros(len(scores))]
        fpr, tpr, _ = roc_curve(labels, np.r_[id_scores, scores])
        (line,) = ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * report['ood'][name]['auroc']:.1f})")
        if name in points:  # where the decision threshold puts this set on its curve
            ax.plot(*points[name], marker="o", markersize=7, color=line.get_color(), markeredgecolor="black",
                    linestyle="none")
    if points:
        ax.plot([], [], marker="o", color="grey", markeredgecolor="black", linestyle="none",
                label=threshold_label(report["threshold"]))
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="OOD accepted as ID (FPR)", ylabel="ID kept (TPR)", title="ROC, ID = positive")
    ax.legend(loc="lower right")
    figures["roc"] = save(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    everything = np.concatenate([id_scores, *ood_scores.values()])
    bins: Any = np.linspace(everything.min(), everything.max(), 40) if np.ptp(everything) > 0 else 10
    ax.hist(id_scores, bins=bins, alpha=0.6, density=True, label="ID")
    for name, scores in ood_scores.items():
        ax.hist(scores, bins=bins, alpha=0.5, density=True, label=name)
    threshold = report.get("threshold")
    if threshold and "per_class" in threshold:  # a band from the lowest to the highest class threshold
        values = list(threshold["per_class"].values())
        ax.axvspan(min(values), max(values), color="black", alpha=0.15,
                   label=f"{threshold_label(threshold)} ({threshold['source']})")
    elif threshold:
        ax.axvline(threshold["value"], color="black", linestyle="--", linewidth=1.2,
                   label=f"{threshold_label(threshold)} ({threshold['source']})")
    ax.set(xlabel="score (higher = more in-distribution)", ylabel="density", title="Score distributions")
    ax.legend(fontsize="small")
    figures["histogram"] = save(fig)

    view = report["similarity"]
    if all(v.get("max_neg_cos") is not None for v in view.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        sets = list(view)
        x = np.arange(len(sets))
        ax.bar(x - 0.2, [view[s]["max_pos_cos"] for s in sets], 0.4, label="max cos to positive prompts")
        ax.bar(x + 0.2, [view[s]["max_neg_cos"] for s in sets], 0.4, label="max cos to negative prompts")
        ax.set_xticks(x, sets, rotation=20, ha="right")
        ax.set(ylabel="mean over images", title="Similarity to positive vs negative prompts (paper Fig. 3)")
        ax.legend()
        figures["similarity"] = save(fig)
    return figures
