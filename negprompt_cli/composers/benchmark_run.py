"""``negprompt benchmark run``: a protocol end to end on the user's data — a composer, like ``pipeline``.

For every seed: fit-pos and fit-neg on the protocol's few-shot training images (the open-vocabulary
protocol trains the negatives on its fraction of the classes), then every requested scorer on the ID
test images and every OOD set; plus seed-independent zero-shot rows (MCM, NegLabel, CSP with the hand
template). Everything lands under ``--out`` and is reused on a rerun: artifacts and score files that
exist are not recomputed, training resumes from the checkpoint an interruption left, and image
features come from the shared feature cache. The report (JSON, Markdown, HTML) gives per OOD set and
on average AUROC, FPR95 in both conventions and ID accuracy, mean ± std over seeds, with the
published numbers beside the rows whose protocol, method and weights match.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..benchmark.layout import ImageList, check_layout
from ..benchmark.protocol import Protocol, imagenet_wnids, load_protocol
from ..environment import default_cache_dir, offline_requested
from ..errors import IncompatibleArtifactError, NotFoundError, UsageError
from ..features.backbone import BackboneRequest, RuntimeOptions
from ..features.image_features import EncodeOptions
from ..outputs.artifact import load_prompts, package_versions
from ..outputs.atomic import check_output_folder, write_text_atomic
from ..outputs.score_file import read_score_file
from ..presets import NEGATIVE_OPTIM, POSITIVE_OPTIM, OptimConfig
from ..registry import get_host
from ..scoring.lexicon import load_lexicon
from ..scoring.metrics import ood_metrics
from ..scoring.negative_labels import LabelRequest, list_digest, read_negatives
from ..scoring.negative_lists import negatives_path
from ..scoring.setup import zero_shot_prompts
from ..scoring.thresholds import ThresholdWarning
from ..stages.fit_neg import FitNegOptions, fit_neg
from ..stages.fit_pos import FitPosOptions, fit_pos
from ..stages.score import ScoreOptions, score
from ..training.checkpoint import checkpoint_path
from ..training.data import DataOptions
from ..training.learners import PromptSettings

LEARNED_SCORERS = ("negprompt", "mcm", "energy")  # with the fit-neg artifact (mcm/energy use its positives only)
ZERO_SHOT_SCORERS = ("mcm", "neglabel", "csp")  # hand template, no training
CONVENTIONS = ("id-positive", "ood-positive")


@dataclass
class BenchmarkOptions:
    protocol: str
    root: Path
    out: Path
    backbone: BackboneRequest = field(default_factory=BackboneRequest)
    seeds: tuple[int, ...] | None = None  # None: the protocol's
    shots: int | None = None  # None: the protocol's
    learned_scorers: tuple[str, ...] = LEARNED_SCORERS
    zero_shot_scorers: tuple[str, ...] = ZERO_SHOT_SCORERS
    pos_optim: OptimConfig = POSITIVE_OPTIM
    neg_optim: OptimConfig = NEGATIVE_OPTIM
    prompt: PromptSettings = field(default_factory=PromptSettings)  # the positive stage's context layout
    encode: EncodeOptions = EncodeOptions()  # how every stage of the run encodes images here
    lexicon: Path | None = None  # for the negative-label scorers (default: the backbone's, else WordNet)
    negatives: Path | None = None  # or a list of negative labels used as given (a file, folder or registered name)
    image_lists: dict[str, ImageList] = field(default_factory=dict)  # OOD sets given as list files


def _class_names(wnids: tuple[str, ...]) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    index = {w: i for i, w in enumerate(imagenet_wnids())}
    return [IMAGENET_CLASSNAMES[index[w]] for w in wnids]


def _link(target: Path, link: Path) -> None:
    if not link.is_symlink() and not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.resolve(), link)


def prepare_views(protocol: Protocol, root: Path, out: Path, by_wnid: dict[str, list[Path]],
                  image_lists: dict[str, ImageList] | None = None) -> dict[str, Any]:
    """Folders of symlinks in the shapes the stages read: train/<wnid>, id/<wnid>/..., a names file."""
    data = out / "data"
    for wnid in protocol.wnids:
        _link(root / protocol.train_path / wnid, data / "train" / wnid)
    names = _class_names(protocol.wnids)
    classes = data / "classes.tsv"
    write_text_atomic(classes, "".join(f"{w}\t{n}\n" for w, n in zip(protocol.wnids, names, strict=True)))
    write_text_atomic(data / "names.txt", "".join(f"{n}\n" for n in names))
    for wnid in protocol.wnids:
        for image in by_wnid.get(wnid, []):
            _link(image, data / "id" / wnid / image.name)
    sets: dict[str, Path] = {}
    for k, ood in enumerate(protocol.ood):
        if image_lists and ood.name in image_lists:
            folder = data / f"ood{k}"
            for listed, image in image_lists[ood.name].paths():
                _link(image, folder / listed.lstrip("/"))
            sets[ood.name] = folder
        elif ood.classes:
            folder = data / f"ood{k}"
            for wnid in ood.classes:
                for image in by_wnid.get(wnid, []):
                    _link(image, folder / wnid / image.name)
            sets[ood.name] = folder
        else:
            sets[ood.name] = root / (ood.path or ood.name)
    return {"train": data / "train", "classes": classes, "names": data / "names.txt", "id": data / "id",
            "ood": sets, "class_names": names}


def _weights_record(request: BackboneRequest) -> dict[str, Any]:
    record: dict[str, Any] = {"backbone": request.name, "pretrained": request.pretrained}
    if request.pretrained and Path(request.pretrained).is_file():
        digest = hashlib.sha256()
        with open(request.pretrained, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        record["file_sha256"] = digest.hexdigest()
    return record


def _train(options: BenchmarkOptions, protocol: Protocol, views: dict[str, Any], seed: int, folder: Path) -> Path:
    """fit-pos then fit-neg for one seed, unless their artifacts exist; an interrupted stage resumes."""
    data = DataOptions(views["train"], classes_file=views["classes"], shots=options.shots or protocol.shots)
    pos, neg = folder / "pos.safetensors", folder / "neg.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    if not pos.exists():
        fit_pos(FitPosOptions(backbone=options.backbone, data=data, out=pos, prompt=options.prompt,
                              encode=options.encode, optim=replace(options.pos_optim, seed=seed),
                              resume=checkpoint_path(pos).exists()))
    if not neg.exists():
        fraction = (protocol.open_vocabulary or {}).get("train_fraction")
        fit_neg(FitNegOptions(data=data, out=neg, pos=pos, backbone=options.backbone,
                              runtime=_runtime(options), train_fraction=fraction,
                              encode=options.encode, optim=replace(options.neg_optim, seed=seed),
                              resume=checkpoint_path(neg).exists()))
    return neg


def _runtime(options: BenchmarkOptions) -> RuntimeOptions:
    """How the run's own artifacts are used: on the backbone the user named for the run (so a Hub-hosted one is
    trusted: the user chose it, the artifacts only repeat it)."""
    return RuntimeOptions(options.backbone.device, options.backbone.weights_cache, options.backbone.offline,
                          trust_backbone=True)


def _score(options: BenchmarkOptions, views: dict[str, Any], folder: Path, scorer: str,
           prompts: Path | None) -> dict[str, Path]:
    """Score files of the ID test set and every OOD set (existing ones are reused)."""
    files = {}
    for name, images in [("ID", views["id"]), *views["ood"].items()]:
        path = folder / scorer / f"{name.replace('/', '_').replace(' ', '_')}.csv"
        files[name] = path
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # metrics need scores, not the stored threshold's OOD decision
            warnings.simplefilter("ignore", ThresholdWarning)
            score(ScoreOptions(images=images, prompts=prompts, zero_shot=prompts is None,
                               names=views["names"] if prompts is None else None,
                               backbone=options.backbone if prompts is None else None,
                               runtime=_runtime(options), scorer=scorer, out=path, labeled=name == "ID",
                               encode=options.encode, return_rows=False,  # read back from the file
                               labels=_labels(options) if _mines(scorer) else LabelRequest()))
    return files


def _labels(options: BenchmarkOptions) -> LabelRequest:
    """The negative labels of the run's label scorers: mined from --lexicon, or the --negatives list as given."""
    return LabelRequest(lexicon=options.lexicon, negatives=options.negatives)


def _labels_record(options: BenchmarkOptions) -> dict[str, str | None]:
    """What the run's negative labels are, by content, for the run folder: score files made with other labels are
    never reused for these (a changed lexicon file under the same name included). Read once at the start, so a
    missing file, or a named list that cannot be fetched, stops the run before any training."""
    lexicon = load_lexicon(options.lexicon).digest() if options.lexicon is not None else None
    negatives = None
    if options.negatives is not None:
        path = negatives_path(options.negatives, options.encode.cache_dir or default_cache_dir(),
                              offline=offline_requested(options.backbone.offline))
        negatives = list_digest(*read_negatives(path))
    return {"lexicon": lexicon, "negatives": negatives}


def _mines(scorer: str) -> bool:
    """The scorer reads negative labels (the run's --lexicon or --negatives applies to it)."""
    return get_host().scorer_spec(scorer).pool is not None


def _metrics(files: dict[str, Path], ood_names: list[str], wnids: tuple[str, ...]) -> dict[str, Any]:
    id_rows = read_score_file(files["ID"])
    index = {w: i for i, w in enumerate(wnids)}  # the ID test folders are wnids, in class order
    folder = "label_folder" if id_rows and "label_folder" in id_rows[0] else "label"  # older files: the folder
    labelled = [r for r in id_rows if r.get(folder) in index]
    id_scores = np.array([r["score"] for r in id_rows])
    sets = {}
    for name in ood_names:
        ood_scores = [r["score"] for r in read_score_file(files[name])]
        by_convention = {c: ood_metrics(id_scores, ood_scores, fpr_convention=c) for c in CONVENTIONS}
        sets[name] = {"auroc": by_convention["id-positive"]["auroc"],
                      "fpr95": by_convention["id-positive"]["fpr"],
                      "fpr95_ood_positive": by_convention["ood-positive"]["fpr"]}
    average = {k: float(np.mean([m[k] for m in sets.values()])) for k in ("auroc", "fpr95", "fpr95_ood_positive")}
    accuracy = float(np.mean([r["prediction_index"] == index[r[folder]] for r in labelled])) if labelled else None
    return {"sets": sets, "average": average, "id_accuracy": accuracy}


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(present)), "std": float(np.std(present, ddof=1)) if len(present) > 1 else 0.0}


def _aggregate(per_seed: list[dict[str, Any]], ood_names: list[str]) -> dict[str, Any]:
    keys = ("auroc", "fpr95", "fpr95_ood_positive")
    return {"sets": {n: {k: _mean_std([s["sets"][n][k] for s in per_seed]) for k in keys} for n in ood_names},
            "average": {k: _mean_std([s["average"][k] for s in per_seed]) for k in keys},
            "id_accuracy": _mean_std([s["id_accuracy"] for s in per_seed])}


def _holds_results(out: Path) -> bool:
    """Whether a run folder has anything a setup produced: prompts, checkpoints or score files."""
    return any(p.is_file() for pattern in ("seed-*/**/*", "zero-shot/**/*") for p in out.glob(pattern))


def _claim_run_folder(options: BenchmarkOptions, protocol: Protocol, labels: dict[str, str | None]) -> None:
    """A run folder holds one setup: reusing its artifacts for other weights, protocol or training settings
    would report numbers that belong to something else. A folder whose run stopped before producing anything
    (a bad --n-ctx, a name too long for the text tower) takes the corrected settings of the same protocol."""
    setup: dict[str, Any] = {"protocol": protocol.name, "weights": _weights_record(options.backbone),
             "shots": options.shots or protocol.shots, "open_vocabulary": protocol.open_vocabulary,
             "positive": options.pos_optim.as_dict(), "negative": options.neg_optim.as_dict(),
             "prompt": options.prompt.as_dict(), "labels": labels}
    setup["positive"].pop("seed", None)
    setup["negative"].pop("seed", None)
    marker = options.out / "run.json"
    if marker.exists():
        held = json.loads(marker.read_text())
        held.setdefault("prompt", PromptSettings().as_dict())  # run folders from before the prompt was recorded
        held.setdefault("labels", {"lexicon": None, "negatives": None})  # ... and before the labels were
        different = sorted(k for k in setup if held.get(k) != json.loads(json.dumps(setup[k])))
        if different and "protocol" not in different and not _holds_results(options.out):
            different = []
            write_text_atomic(marker, json.dumps(setup, indent=2) + "\n")
        if different:
            raise IncompatibleArtifactError(
                f"{options.out} holds a run with other {', '.join(different)} (see {marker})",
                hint="use another --out for this setup, or the same options to continue that run")
        return
    write_text_atomic(marker, json.dumps(setup, indent=2) + "\n")


def published_for(protocol: Protocol, request: BackboneRequest, mode: str, scorer: str) -> list[dict[str, Any]]:
    """Published numbers for this protocol whose method (scorer, zero-shot or not) and weights match the run.

    A row whose paper does not state the weights (``"pretrained_stated": false``) matches the backbone
    with any weights; the report says so beside it."""
    return [p for p in protocol.published
            if p.get("scorer") == scorer and (p.get("training") == "zero-shot") == (mode == "zero-shot")
            and p.get("backbone") == request.name
            and (p.get("pretrained") == request.pretrained or p.get("pretrained_stated") is False)]


def run_benchmark(options: BenchmarkOptions) -> dict[str, Any]:
    protocol = load_protocol(options.protocol)
    requested = (*options.learned_scorers, *options.zero_shot_scorers)
    streamed = [s for s in requested if get_host().scorer_spec(s).test_time]
    if streamed:  # the runner scores the ID set and each OOD set on their own; a test-time score needs them mixed
        raise UsageError(f"benchmark run scores the ID and OOD sets one by one, and {streamed[0]} is a test-time "
                         "scorer whose scores depend on the stream (its papers mix ID and OOD images in one shuffled "
                         "stream)", hint="score one shuffled folder of ID + OOD images with `negprompt score "
                                         f"--scorer {streamed[0]}` and `negprompt report`")
    labels: dict[str, str | None] = {"lexicon": None, "negatives": None}
    if options.lexicon is not None or options.negatives is not None:
        given = _labels(options).given()  # --lexicon with --negatives: refused here
        if not any(_mines(s) for s in requested):
            raise UsageError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} the negative labels, and "
                             "no requested scorer reads them", hint="add one that does to --scorers or "
                                                                    "--zero-shot-scorers (neglabel, csp, ...)")
        labels = _labels_record(options)
    if options.shots:  # the layout needs as many training images as the run will take, not the protocol's
        protocol = replace(protocol, shots=options.shots)
    if not Path(options.root).is_dir():
        raise NotFoundError(f"benchmark root not found: {options.root}")
    # the first run opens every image; a continued one (its run folder exists) only counts them again
    layout = check_layout(protocol, Path(options.root), read_images=not (options.out / "run.json").exists(),
                          image_lists=options.image_lists)
    if layout.problems:
        raise UsageError(f"{layout.problems} problem(s) in the layout under {options.root} for {protocol.name}",
                         hint=f"negprompt benchmark check {options.protocol} --root {options.root} lists them")
    if not options.out.parent.exists():
        raise NotFoundError(f"output directory's parent does not exist: {options.out.parent}")
    check_output_folder(options.out)
    options.out.mkdir(exist_ok=True)
    _claim_run_folder(options, protocol, labels)
    views = prepare_views(protocol, Path(options.root), options.out, layout.val_images, options.image_lists)
    ood_names = list(views["ood"])
    seeds = options.seeds or protocol.seeds
    rows: list[dict[str, Any]] = []
    per_seed: dict[str, list[dict[str, Any]]] = {}
    weights = options.backbone  # the weights as resolved by the backbone plugin (default tag filled in) once known
    for seed in seeds if options.learned_scorers else ():  # zero-shot rows alone need no training
        folder = options.out / f"seed-{seed}"
        prompts = _train(options, protocol, views, seed, folder)
        trained = load_prompts(prompts).backbone
        weights = replace(options.backbone, name=trained["backbone"], pretrained=trained.get("pretrained"))
        for scorer in options.learned_scorers:
            files = _score(options, views, folder / "scores", scorer, prompts)
            per_seed.setdefault(f"negprompt/{scorer}", []).append(_metrics(files, ood_names, protocol.wnids))
    for scorer in options.zero_shot_scorers:
        files = _score(options, views, options.out / "zero-shot", scorer, None)
        per_seed[f"zero-shot/{scorer}"] = [_metrics(files, ood_names, protocol.wnids)]
    for row_name, results in per_seed.items():
        mode, scorer = row_name.split("/")
        rows.append({"row": row_name, "mode": mode, "scorer": scorer, "seeds": len(results),
                     **_aggregate(results, ood_names), "per_seed": results,
                     "published": published_for(protocol, weights, mode, scorer)})
    report = {"protocol": protocol.name, "title": protocol.title, "root": str(options.root),
              "weights": _weights_record(weights), "seeds": list(seeds),
              "shots": options.shots or protocol.shots, "open_vocabulary": protocol.open_vocabulary,
              "class_names": "open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES (standard sorted-wnid order)",
              "zero_shot_templates": {s: list(zero_shot_prompts(s)) for s in options.zero_shot_scorers},
              "ood_sets": ood_names,
              "fpr_conventions": {"fpr95": "ID positive (the paper, MCM): OOD accepted at 95 % ID kept",
                                  "fpr95_ood_positive": "OOD positive (OpenOOD v1.5): ID rejected at 95 % OOD "
                                                        "caught"},
              "optim": {"positive": options.pos_optim.as_dict(), "negative": options.neg_optim.as_dict()},
              "prompt": options.prompt.as_dict(),
              "versions": package_versions(), "rows": rows, "published": list(protocol.published)}
    write_text_atomic(options.out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(options.out / "report.md", markdown(report))
    write_text_atomic(options.out / "report.html", to_html(report))
    return report


def _pct(stat: dict[str, float | None]) -> str:
    if stat["mean"] is None:
        return "—"
    std = stat.get("std") or 0.0
    return f"{100 * stat['mean']:.2f} ± {100 * std:.2f}"


def _published_cell(published: dict[str, Any], name: str) -> str:
    fpr, auroc = published.get("fpr95", {}).get(name), published.get("auroc", {}).get(name)
    if fpr is None and auroc is None:
        return ""
    return f"{'' if fpr is None else f'{fpr:.2f}'} / {'' if auroc is None else f'{auroc:.2f}'}"


def stated_average_slips(published: dict[str, Any], ood_sets: list[str]) -> dict[str, float]:
    """Metric -> the mean of the per-set numbers, where a paper's stated average is not that mean (beyond
    rounding): the paper's slip is shown beside its number, never corrected silently."""
    slips = {}
    for metric in ("fpr95", "auroc"):
        values = published.get(metric, {})
        sets = [values[n] for n in ood_sets if n in values]
        if "average" in values and len(sets) == len(ood_sets) > 1:
            mean = sum(sets) / len(sets)
            if abs(mean - values["average"]) > 0.015:
                slips[metric] = mean
    return slips


def _weights(published: dict[str, Any]) -> str:
    if published.get("pretrained_stated") is False:
        return f"{published['backbone']}, weights not stated"
    return f"{published['backbone']}, {published.get('pretrained')}"


def _published_line(published: dict[str, Any], ood_sets: list[str]) -> list[str]:
    """A paper's row in the run table's columns: per set and average FPR95 / AUROC, then where it is from."""
    cells = [f"↳ published: {published['method']}"]
    cells += [_published_cell(published, n) for n in ood_sets]
    average = _published_cell(published, "average")
    slips = stated_average_slips(published, ood_sets)
    if slips:
        average += " (mean of the sets: " + " / ".join(
            f"{slips[m]:.2f}" if m in slips else "=" for m in ("fpr95", "auroc")) + ")"
    source = published["source"] + (f", taken from {published['taken_from']}" if published.get("taken_from") else "")
    return [*cells, average, "", "", f"{_weights(published)}; {source}"]


def table(report: dict[str, Any]) -> list[list[str]]:
    """The run's rows, each followed by the published rows with the same protocol, method and weights."""
    header = ["row", *(f"{n} FPR95 / AUROC" for n in report["ood_sets"]), "average FPR95 / AUROC",
              "average FPR95 (OOD+)", "ID acc", "published avg FPR95 / AUROC"]
    lines = [header]
    for row in report["rows"]:
        cells = [row["row"]]
        for name in report["ood_sets"]:
            cells.append(f"{_pct(row['sets'][name]['fpr95'])} / {_pct(row['sets'][name]['auroc'])}")
        cells.append(f"{_pct(row['average']['fpr95'])} / {_pct(row['average']['auroc'])}")
        cells.append(_pct(row["average"]["fpr95_ood_positive"]))
        cells.append(_pct(row["id_accuracy"]))
        first = row["published"][0] if row["published"] else {}
        cell = _published_cell(first, "average")
        cells.append(f"{cell} ({first['source']})" if cell else "")
        lines.append(cells)
        lines += [_published_line(p, report["ood_sets"]) for p in row["published"]]
    return lines


def published_table(report: dict[str, Any]) -> list[list[str]]:
    """Every number the protocol's papers published, whether or not this run has a matching row."""
    sets = report["ood_sets"]
    header = ["method", "setting", *(f"{n} FPR95 / AUROC" for n in sets), "average FPR95 / AUROC", "weights",
              "source", "note"]
    lines = [header]
    for p in report.get("published", []):
        line = _published_line(p, sets)
        average = line[1 + len(sets)]
        source = p["source"] + (f", taken from {p['taken_from']}" if p.get("taken_from") else "")
        lines.append([p["method"], p.get("setting", p.get("training", "")), *line[1:1 + len(sets)], average,
                      _weights(p), source, p.get("note", "")])
    return lines


def _markdown_table(rows: list[list[str]]) -> list[str]:
    cell = lambda c: c.replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(map(cell, rows[0])) + " |", "|" + "---|" * len(rows[0]),
            *("| " + " | ".join(map(cell, r)) + " |" for r in rows[1:])]


def markdown(report: dict[str, Any]) -> str:
    text = [f"# {report['protocol']}: {report['title']}", "",
            f"Weights: {report['weights']}; seeds {report['seeds']}; {report['shots']} shots; mean ± std over "
            "seeds (zero-shot rows: one run). Percentages. FPR95 with ID as the positive class unless marked "
            "OOD+ (OpenOOD v1.5). Published numbers appear only beside rows with the same protocol, method and "
            "weights (↳ lines).", "", *_markdown_table(table(report))]
    published = published_table(report)
    if len(published) > 1:
        text += ["", "## Published for this protocol", "",
                 "As the papers printed them: rows copied from other papers say so, and an average that is not "
                 "the mean of its sets is shown with that mean.", "", *_markdown_table(published)]
    return "\n".join(text) + "\n"


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table border='1' cellpadding='4'><tr>{head}</tr>{body}</table>"


def to_html(report: dict[str, Any]) -> str:
    published = published_table(report)
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(report['protocol'])}</title>"
            f"<h1>{html.escape(report['protocol'])}</h1><p>{html.escape(report['title'])}</p>"
            f"<p>Weights: {html.escape(json.dumps(report['weights']))}; seeds {report['seeds']}.</p>"
            + _html_table(table(report))
            + (f"<h2>Published for this protocol</h2>{_html_table(published)}" if len(published) > 1 else "")
            + "\n")
