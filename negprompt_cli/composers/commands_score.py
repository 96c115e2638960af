"""``negprompt transfer``, ``score`` and ``report``: re-target, score and measure."""


from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import emit_json, info, write_data
from ..presets import negatives_note
from ..report.images import DEFAULT_PER_GALLERY
from .app import (
    EPILOG,
    _prompts_path,
    app,
    check_paths,
    finish,
    note_is_new,
    print_report,
    reports_errors,
)
from .cli_options import (
    CacheOpt,
    CalibrateOpt,
    ConfidenceOpt,
    DeviceOpt,
    Flags,
    ImagesArg,
    JsonOpt,
    KeepOpt,
    OfflineOpt,
    PerClassOpt,
    PrecisionOpt,
    PretrainedOpt,
    QuietOpt,
    StrictOpt,
    TextChunkOpt,
    TrustBackboneOpt,
    WeightsCacheOpt,
    WorkersOpt,
    adaptive_options,
    image_command_options,
    negative_label_options,
    option_group,
    score_options,
)
from .records import (
    adaptive_record,
    backbone_request,
    check_at_least,
    encode_options,
    image_encoding,
    label_request,
    runtime_record,
    score_record,
)


@app.command("transfer", epilog=EPILOG, short_help="Re-target prompts to new class names.")
@reports_errors
def transfer_command(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Learned prompts (fit-pos or fit-neg artifact), "
                                         "or hf://ORG/NAME[@REVISION].")],
    names: Annotated[Path, typer.Option("--names", help="New class names, one per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the re-targeted prompts.")],
    calibrate: CalibrateOpt = None,
    keep: KeepOpt = 0.95,
    confidence: ConfidenceOpt = None,
    per_class: PerClassOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    weights_cache: WeightsCacheOpt = None,
    offline: OfflineOpt = False,
    text_chunk: TextChunkOpt = "auto",
    cache_dir: CacheOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch (--calibrate).")] = 64,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
    trust_backbone: TrustBackboneOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-target learned prompts to new class names, without training.

    The stored ID threshold belongs to the old class list: it is kept only for the same list,
    recalibrated with --calibrate, and otherwise dropped (score then makes no OOD decision)."""
    check_paths(("--prompts", prompts), ("--names", names), ("--calibrate", calibrate))
    from ..scoring.calibration import KeepRequest, class_thresholds, threshold_words
    from ..stages.transfer import transfer

    runtime = {"device": device, "weights_cache": weights_cache, "offline": offline}
    summary = transfer(_prompts_path(prompts, offline), names, out,
                       runtime_record(runtime, text_chunk=text_chunk, trust_backbone=trust_backbone),
                       calibrate_on=calibrate, keep=KeepRequest(keep, confidence, per_class),
                       encoding=encode_options({"precision": precision}, quiet or json_out, cache_dir=cache_dir,
                                               workers=workers, strict=strict, batch_size=batch_size))
    threshold = summary["threshold"]
    finish(f"Wrote {out}: {summary['classes']} classes ({summary['new_classes']} not in the training list); "
           "text features precomputed; "
           + (f"ID {threshold_words(threshold['value'], class_thresholds(threshold))} ({threshold['source']})."
              if threshold else "no ID threshold."),
           summary, json_out)


@app.command("score", epilog=EPILOG, short_help="OOD scores for images, as CSV or JSONL.")
@reports_errors
@option_group("adaptive", adaptive_options())
@option_group("labels", negative_label_options())
@option_group("scoring", score_options())
@image_command_options()
def score_command(
    images: ImagesArg = None,
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="Prompts artifact to score with, or "
                                                "hf://ORG/NAME[@REVISION].")] = None,
    names: Annotated[Path | None, typer.Option("--names", help="Class names (required with --zero-shot; with "
                                               "--prompts, re-targets on the fly).")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="No learned prompts: the class names under the "
                                            "scorer's own ID prompts (csp: CSP's 8 templates; neglabel: 'the nice "
                                            "{}'; mcm and the others: 'a photo of a {}.').")] = False,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone for --zero-shot (default "
                                                 "ViT-B/16); with --prompts it must match the artifact.")] = None,
    pretrained: PretrainedOpt = None,
    calibrate: CalibrateOpt = None,
    keep: KeepOpt = 0.95,
    confidence: ConfidenceOpt = None,
    per_class: PerClassOpt = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
    text_chunk: TextChunkOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (images scored, "
                                           "encoded vs from the cache, skipped, threshold); needs --out.")] = False,
    trust_backbone: TrustBackboneOpt = False,
    quiet: QuietOpt = False,
    *,
    flags: Flags,
) -> None:
    """OOD scores (higher = more in-distribution) for every image, as CSV or JSONL."""
    check_paths(*(("IMAGES", image) for image in images or []), ("--prompts", prompts), ("--names", names),
                ("--calibrate", calibrate), ("--lexicon", flags.labels["lexicon"]),
                ("--negatives", flags.labels["negatives"]),
                ("--features", flags.scoring["features"]))
    from ..distributed import process_group
    from ..errors import UsageError
    from ..presets import DEFAULT_BACKBONE
    from ..scoring.calibration import KeepRequest
    from ..stages.score import ScoreOptions, score

    if json_out and out is None:
        raise UsageError("--json needs --out FILE: without it stdout carries the scores themselves")
    encoding = image_encoding(flags.runtime, flags.images, quiet)
    with process_group(flags.images["distributed"], flags.runtime["device"]) as (ranks, device):
        request = (backbone_request(backbone or DEFAULT_BACKBONE, pretrained, flags.runtime, device)
                   if zero_shot or backbone is not None else None)
        options = score_record(ScoreOptions(
            images=images or [],  # none: the stage says "no images given" (exit 2)
            prompts=_prompts_path(prompts, flags.runtime["offline"]) if prompts else None, names=names,
            zero_shot=zero_shot, backbone=request, calibrate=calibrate,
            keep=KeepRequest(keep, confidence, per_class), out=out,
            encode=encoding, ranks=ranks,
            runtime=runtime_record(flags.runtime, text_chunk=text_chunk, trust_backbone=trust_backbone, device=device),
            labels=label_request(flags.labels), adaptive=adaptive_record(flags.adaptive, encoding.batch_size),
            return_rows=False), flags.scoring)  # memory bounded: rows go out as they come
        summary = score(options, stream=write_data)
    if summary is None:  # a rank other than 0 of a torchrun job: rank 0 reports and writes
        return
    info(score_message(summary, out))
    negatives = summary["negative_prompts"]
    if negatives is not None and not negatives["used"] and not quiet \
            and note_is_new(flags.images["cache_dir"], summary["prompts_id"], summary["scorer"]):
        info("Note: " + negatives_note(summary["scorer"], by_default=summary["scorer_source"] != "--scorer") + ".")
    if json_out:
        emit_json(summary)


def score_message(summary: dict[str, Any], out: Path | None) -> str:
    """score's closing line: what was scored, how, the negatives it used and the decision."""
    from ..scoring.calibration import threshold_words

    flagged = summary["flagged_ood"]
    promise = f"; it {summary['threshold_promise']}" if summary.get("threshold_promise") else ""
    decision = (f"; {flagged} flagged OOD at {threshold_words(summary['threshold'], summary['class_thresholds'])} "
                f"({summary['threshold_source']})"
                f"{promise}"
                if flagged is not None else "; no OOD decision (no threshold for this class list and scorer: "
                + ("--threshold)" if summary["adaptive"] else "--calibrate ID_IMAGES or --threshold)"))
    labels = summary["negative_labels"]
    listed = bool(labels) and labels.get("source") == "list"
    origin = "from the --negatives list of {}" if listed else "mined from {} candidates"
    mined = (f"; {labels['labels']} negative labels {origin.format(labels['candidates'])}"
             + (f" ({labels['dropped_id_names']} {'list' if listed else 'lexicon'} entries equal to ID class names "
                "never kept)"
                if labels["dropped_id_names"] and labels.get("id_names", "drop") == "drop" else "")
             + (f" ({labels['mined_id_names']} of them ID class names: --keep-id-names)"
                if labels.get("id_names") == "keep" else "")
             + (f" ({labels['near_duplicates']} closer than cosine 0.95 to an ID class never kept)"
                if labels.get("near_duplicates") else "") if labels else "")
    memory_note = ""
    if summary["adaptive"]:
        record = summary["adaptive"]
        memory_note = (f"; adaptive memory: {record['id_writes']} ID and {record['ood_writes']} OOD writes over "
                       f"{record['id_labels_with_memory']} ID and {record['negative_labels_with_memory']} negative "
                       "labels")
    source = (f"from the embeddings in {summary['features_from']}" if summary.get("features_from") else
              f"{summary['encoded']} encoded, {summary['cached']} from the feature cache")
    saved = f"; embeddings saved in {summary['features_saved']}" if summary.get("features_saved") else ""
    return (f"Scored {summary['images']} image(s) with {summary['scorer']} ({source}){mined}{memory_note}{decision}"
            + (f"; wrote {out}" if out else "") + saved + ".")


@app.command("report", epilog=EPILOG, short_help="Metrics table, JSON and an HTML report.")
@reports_errors
def report_command(
    id_file: Annotated[Path | None, typer.Option("--id", help="Score file of the ID test images.")] = None,
    ood: Annotated[list[str] | None, typer.Option("--ood", metavar="NAME=FILE", help="Score file of an OOD set "
                                                  "(repeatable; far-OOD unless given with --near).")] = None,
    near: Annotated[list[str] | None, typer.Option("--near", metavar="NAME=FILE", help="Score file of a near-OOD "
                                                   "set (repeatable): near and far sets are also averaged apart, "
                                                   "as OpenOOD reports them.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for report.html / .md / .json and "
                                             "plots.")] = None,
    fpr_convention: Annotated[str, typer.Option("--fpr-convention", help="id-positive (paper, MCM) or "
                                                "ood-positive (OpenOOD v1.5).")] = "id-positive",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="--out may hold other files: write the report's "
                                            "files beside them (only the report's own files are replaced; "
                                            "without it such a folder is refused).")] = False,
    threshold: Annotated[float | None, typer.Option("--threshold", help="The decision threshold to draw and "
                                                    "judge (default: the one the score files were written "
                                                    "with).")] = None,
    images: Annotated[int, typer.Option("--images", help="Thumbnails per gallery in report.html (misses, false "
                                        "alarms, clearly OOD).")] = DEFAULT_PER_GALLERY,
    no_images: Annotated[bool, typer.Option("--no-images", help="No images in the report (for reports that must "
                                            "not contain the data).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """AUROC, FPR@95, AUPR and ID accuracy per OOD set, as the paper's table, JSON and an HTML report with the
    decision threshold, the classes it hurts and the images behind the numbers."""
    import shlex

    from ..stages.report import ReportOptions, build_report, parse_ood_args

    check_at_least("--images", images, 0)
    near_sets = parse_ood_args(near or [], "--near")
    sets = near_sets + parse_ood_args(ood or [])
    command = ["negprompt", "report", "--id", str(id_file)] + [f"--near={n}={f}" for n, f in near_sets] \
        + [f"--ood={n}={f}" for n, f in sets[len(near_sets):]] + (["--out", str(out)] if out else [])
    report = build_report(ReportOptions(id_file, sets, out, fpr_convention, overwrite=overwrite,
                                        near=tuple(n for n, _ in near_sets), threshold=threshold,
                                        images=0 if no_images else images,
                                        command=shlex.join(command)))
    print_report(report, out)
    if json_out:
        emit_json(report)
