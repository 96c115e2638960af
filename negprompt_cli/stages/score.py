"""``negprompt score``: OOD scores for every image given (files, folders), as CSV or JSONL rows."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..artifact import PromptArtifact
from ..atomic import check_not_input, check_output_path, write_text_atomic
from ..backbone import BackboneRequest, RuntimeOptions
from ..data import find_images_in, image_inputs, read_names_file
from ..devices import check_precision
from ..distributed import SINGLE, Ranks, check_enough_items
from ..errors import NegPromptError, NegPromptWarning, NotFoundError, UsageError
from ..explain import explain
from ..image_features import EncodeOptions, encode_folder, encode_images_across
from ..registry import ScorerSpec, get_host
from ..score_file import FORMATS, render_rows
from ..scoring.adaptive import AdaptiveOptions, adaptive_scores
from ..scoring.negative_labels import LabelRequest
from ..scoring.scores import score_features
from ..scoring.setup import ScoringRequest, decision_rows, mine_labels, setup_scoring
from ..scoring.thresholds import (
    ThresholdWarning,
    calibrate,
    warn_no_decision,
    warn_no_threshold,
)


@dataclass
class ScoreOptions:
    images: Path | Sequence[Path]  # image files and/or folders (searched recursively), in this order
    prompts: Path | None = None
    names: Path | None = None
    zero_shot: bool = False
    backbone: BackboneRequest | None = None  # zero-shot only; prompts carry their backbone
    runtime: RuntimeOptions = RuntimeOptions()
    scorer: str | None = None
    temperature: float | None = None
    threshold: float | None = None
    fmt: str = "csv"
    out: Path | None = None
    labeled: bool = False
    encode: EncodeOptions = EncodeOptions()  # how images are encoded here: cache, batch, precision, quiet
    calibrate: Path | None = None  # ID images to calibrate the threshold on, for exactly this scoring setup
    ranks: Ranks = SINGLE  # a torchrun job: every rank encodes its share, rank 0 scores and writes
    labels: LabelRequest = LabelRequest()  # negative-label scorers: lexicon, mining, groups
    adaptive: AdaptiveOptions | None = None  # test-time negatives (AdaNeg-style memory), in scoring order
    excel_safe: bool = False  # CSV: quote text cells a spreadsheet would run as formulas (score_file.excel_safe)
    explain: int = 0  # --explain: per image the N closest classes and negatives with their cosines (0: off)


def score(options: ScoreOptions) -> dict[str, Any] | None:
    """Score every image; returns the summary, with the rows themselves under ``rows`` (one dict per image, the
    columns of the score file) for Python callers. With ``out`` the rows are also written there (atomically),
    otherwise the summary carries them as ``rendered`` text for the caller to print.

    In a torchrun job only rank 0 returns a summary (and writes); the other ranks return None once their
    share of the images is encoded and handed over."""
    ranks = options.ranks
    if options.fmt not in FORMATS:
        raise UsageError(f"unknown format {options.fmt!r}", hint="choose csv or jsonl")
    if options.excel_safe and options.fmt != "csv":
        raise UsageError("--excel-safe is for CSV output; JSONL keeps names exact and is never run as formulas")
    if options.out is not None and ranks.is_main:
        check_output_path(options.out)
    names_given = read_names_file(options.names) if options.names else None
    request = ScoringRequest(prompts=options.prompts, names=names_given,
                             zero_shot=options.zero_shot, backbone=options.backbone, runtime=options.runtime,
                             scorer=options.scorer, temperature=options.temperature, labels=options.labels,
                             encode=options.encode)
    paths, roots = find_images_in(options.images, strict=options.encode.strict)
    if ranks.is_main:
        check_not_input(options.out, [("--prompts", options.prompts), ("--names", options.names),
                                      ("--lexicon", options.labels.lexicon), *(("image", p) for p in paths)])
    check_enough_items(len(paths), ranks)
    if options.calibrate is not None and not options.calibrate.exists():
        raise NotFoundError(f"calibration images not found: {options.calibrate}")
    setup = setup_scoring(request)
    if options.adaptive is not None:
        _check_adaptive(setup.spec, options)
    if ranks.is_main:  # a negative-label scorer mines its labels (only rank 0 scores)
        mine_labels(setup, request)
    backbone, names, text_pos, text_neg = setup.backbone, setup.names, setup.text_pos, setup.text_neg
    scorer, scorer_fn, temperature = setup.scorer, setup.scorer_fn, setup.temperature
    labels, scorer_options, settings, mined = setup.labels, setup.scorer_options, setup.settings, setup.mined
    class_dirs = training_folders(setup.artifact, names) if setup.artifact is not None else {}
    encoding = replace(options.encode, precision=check_precision(backbone.device, options.encode.precision))
    calibration, threshold, threshold_source = None, None, None
    if options.threshold is not None:
        threshold, threshold_source = options.threshold, "--threshold"
    elif options.adaptive is not None:
        if ranks.is_main:
            warnings.warn("adaptive scores depend on the test stream: no stored or calibrated threshold applies, so "
                          "scores carry no OOD decision; give --threshold VALUE for one", ThresholdWarning,
                          stacklevel=2)
    elif options.calibrate is not None:
        encoded_calibration = encode_folder(backbone, options.calibrate, encoding, "Encoding calibration images",
                                            ranks)
        if encoded_calibration is not None:
            calibration, _ = calibrate(encoded_calibration[1], text_pos, text_neg, names=names, scorer=scorer,
                                       temperature=temperature, logit_scale=backbone.logit_scale,
                                       source=f"calibration images {options.calibrate}", mined=mined,
                                       scorer_options=scorer_options, settings=settings)
            threshold, threshold_source = calibration["value"], "--calibrate"
    else:
        threshold, reason = setup.stored()
        threshold_source = "stored" if threshold is not None else None
        if ranks.is_main and reason is not None:
            warn_no_decision(reason)
        elif ranks.is_main and threshold is None:
            warn_no_threshold(options.zero_shot)
    encoded = encode_images_across(ranks, backbone, paths, encoding, description="Scoring images")
    if encoded is None:  # another rank than 0: its share is encoded and handed over
        return None
    feats, keep, stats = encoded
    if not keep:
        where = ", ".join(str(p) for p in image_inputs(options.images))
        raise UsageError(f"none of the {len(paths)} image(s) under {where} could be read",
                         hint="see the warning above for the files and why")
    kept_paths = [paths[i] for i in keep]
    kept_roots = [roots[i] for i in keep]  # --labeled: the class is the first folder below the input's folder
    result = score_features(feats, text_pos, text_neg, scorer=scorer_fn, temperature=temperature,
                            logit_scale=backbone.logit_scale, mined=mined, scorer_options=scorer_options)
    adaptive_record = None
    if options.adaptive is not None:  # same predictions and cosines; the score comes from the memory
        result.score, adaptive_record = adaptive_scores(
            feats, text_pos, text_neg, mined, scorer=scorer_fn, temperature=temperature,
            logit_scale=backbone.logit_scale, options=options.adaptive, scorer_options=scorer_options)
    explanations = None
    if options.explain > 0:  # the negatives this scorer reads: its negative prompts and/or its mined labels
        explanations = explain(feats, text_pos, names, text_neg=text_neg if setup.reads_negative_prompts else None,
                               mined=mined,
                               mined_names=list(labels.words) if labels is not None else None,
                               top=options.explain)
    broken = [str(kept_paths[i]) for i in torch.nonzero(~torch.isfinite(result.score)).flatten().tolist()]
    if broken:  # NaN is never an in-distribution score: damaged prompts or features, not an image verdict
        raise NegPromptError(f"non-finite scores for {len(broken)} image(s), e.g. {', '.join(broken[:3])}",
                             hint="the prompts file or the feature cache may be damaged: rerun with a fresh "
                                  "--cache-dir, or re-download / retrain the prompts")
    rows = []
    lookup = _label_lookup(names, class_dirs) if options.labeled else {}
    for i, (path, decided) in enumerate(zip(kept_paths, decision_rows(result, names, threshold), strict=True)):
        row: dict[str, Any] = {
            "path": str(path), **decided,
            "label": None, "label_index": None, "scorer": scorer, "prompts_id": setup.prompts_id,
            "threshold": threshold, "threshold_source": threshold_source,  # the decision's rule, for report
        }
        if options.labeled:
            relative = path.relative_to(kept_roots[i]).parts
            folder = relative[0] if len(relative) > 1 else ""
            row["label"] = folder
            row["label_index"] = lookup.get(folder, -1)
        if explanations is not None:
            row.update(explanations[i])
        rows.append(row)
    if options.labeled:
        _warn_unknown_labels(rows, names)
    text = render_rows(rows, options.fmt, spreadsheet_safe=options.excel_safe)
    if options.out is not None:
        write_text_atomic(options.out, text)
    flagged = sum(1 for r in rows if r["ood"])
    summary = {"images": len(rows), "skipped": len(stats.skipped), "encoded": stats.encoded, "cached": stats.cached,
               "scorer": scorer, "temperature": temperature, "threshold": threshold,
               "threshold_source": threshold_source, "calibration": calibration,
               "flagged_ood": flagged if threshold is not None else None, "out": str(options.out or "-"),
               "negative_labels": ({**labels.record(), "groups": scorer_options["groups"]}
                                   if labels is not None and scorer_options is not None else None),
               "adaptive": adaptive_record,
               "scorer_source": setup.scorer_source,
               # learned negative prompts: how many per class, and whether this scorer reads them
               "negative_prompts": None if text_neg is None else {
                   "per_class": int(text_neg.shape[1]),
                   "used": setup.reads_negative_prompts}}
    if options.out is None:
        summary["rendered"] = text  # the caller decides where it goes (the CLI: stdout)
    summary["rows"] = rows
    return summary


def _check_adaptive(spec: ScorerSpec, options: ScoreOptions) -> None:
    """Bad --adaptive requests fail before any image is encoded."""
    if not spec.probability:
        eligible = ", ".join(s.name for s in get_host().scorer_specs() if s.probability)
        raise UsageError(f"--adaptive needs a scorer whose score is an ID probability among negatives; {spec.name} "
                         "is not one", hint=f"use --scorer with one of: {eligible}")
    if options.calibrate is not None:
        raise UsageError("--adaptive cannot be combined with --calibrate: adaptive scores depend on the test stream",
                         hint="give --threshold, or leave the decision to `negprompt report`")


def _warn_unknown_labels(rows: list[dict[str, Any]], names: list[str]) -> None:
    """--labeled reads the class from the first folder below each input; a folder that names no class gets
    label -1, which report leaves out of the ID accuracy: say which folders, not nothing."""
    unknown: dict[str, int] = {}
    for row in rows:
        if row["label_index"] == -1:
            unknown[row["label"]] = unknown.get(row["label"], 0) + 1
    if not unknown:
        return
    shown = ", ".join(repr(f) if f else "(images directly in an input folder)" for f in list(unknown)[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    warnings.warn(f"--labeled: {sum(unknown.values())} image(s) are in folders that name no class ({shown}{more}), "
                  f"so their label is -1 and report leaves them out of the ID accuracy; class folders are the "
                  f"class names (spaces or _) or the training folders, e.g. {names[0]!r}", NegPromptWarning,
                  stacklevel=3)


def training_folders(artifact: PromptArtifact, names: list[str]) -> dict[str, int]:
    """Training folder -> index in ``names``, through the class names the artifact was trained with."""
    dirs = artifact.training.get("data", {}).get("class_dirs", [])
    trained_names = artifact.extra.get("transfer", {}).get("source_classes", artifact.class_names)
    if len(dirs) != len(trained_names):
        return {}
    if list(names) == list(trained_names):  # by position: right even where two classes share a name
        return {d: i for i, d in enumerate(dirs)}
    where: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        where.setdefault(name, []).append(i)
    # a name given to several classes of the new list says nothing about which one the folder is
    return {d: where[n][0] for d, n in zip(dirs, trained_names, strict=True) if len(where.get(n, ())) == 1}


def _label_lookup(names: list[str], folders: dict[str, int]) -> dict[str, int]:
    """Folder name -> class index: the artifact's training folders, else the name (with _ for space)."""
    lookup = dict(folders)
    for i, name in enumerate(names):
        lookup.setdefault(name, i)
        lookup.setdefault(name.replace(" ", "_"), i)
    return lookup
