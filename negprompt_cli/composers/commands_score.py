"""``negprompt transfer``, ``score`` and ``report``: re-target, score and measure."""


from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import emit_json, info, write_data
from ..presets import EXPLAIN_TOP, negatives_note
from ..report.images import DEFAULT_PER_GALLERY
from .app import (
    EPILOG,
    CalibrateOpt,
    ImagesArg,
    PretrainedOpt,
    TrustBackboneOpt,
    _prompts_path,
    app,
    backbone_request,
    check_at_least,
    check_paths,
    encode_options,
    finish,
    print_report,
    reports_errors,
)
from .cli_options import (
    CacheOpt,
    DeviceOpt,
    JsonOpt,
    OfflineOpt,
    PrecisionOpt,
    QuietOpt,
    StrictOpt,
    TextChunkOpt,
    WeightsCacheOpt,
    WorkersOpt,
    image_command_options,
    label_request,
    negative_label_options,
    option_group,
)


@app.command("transfer", epilog=EPILOG, short_help="Re-target prompts to new class names.")
@reports_errors
def transfer_command(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Learned prompts (fit-pos or fit-neg artifact), "
                                         "or hf://ORG/NAME[@REVISION].")],
    names: Annotated[Path, typer.Option("--names", help="New class names, one per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the re-targeted prompts.")],
    calibrate: CalibrateOpt = None,
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
    from ..features.backbone import RuntimeOptions
    from ..stages.transfer import transfer
    from ..training.memory import no_grad_text_chunk

    summary = transfer(_prompts_path(prompts, offline), names, out,
                       RuntimeOptions(device, weights_cache, offline, no_grad_text_chunk(text_chunk), trust_backbone),
                       calibrate_on=calibrate,
                       encoding=encode_options({"precision": precision}, quiet or json_out, cache_dir=cache_dir,
                                               workers=workers, strict=strict, batch_size=batch_size))
    threshold = summary["threshold"]
    finish(f"Wrote {out}: {summary['classes']} classes ({summary['new_classes']} not in the training list); "
           "text features precomputed; "
           + (f"ID threshold {threshold['value']:.4g} ({threshold['source']})." if threshold else "no ID threshold."),
           summary, json_out)


@app.command("score", epilog=EPILOG, short_help="OOD scores for images, as CSV or JSONL.")
@reports_errors
@option_group("label_opts", negative_label_options())
@image_command_options()
def score_command(
    images: ImagesArg = None,
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="Prompts artifact to score with, or "
                                                "hf://ORG/NAME[@REVISION].")] = None,
    names: Annotated[Path | None, typer.Option("--names", help="Class names (required with --zero-shot; with "
                                               "--prompts, re-targets on the fly).")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="No learned prompts: 'a photo of a {}.'")] = False,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone for --zero-shot (default "
                                                 "ViT-B/16); with --prompts it must match the artifact.")] = None,
    pretrained: PretrainedOpt = None,
    scorer: Annotated[str | None, typer.Option("--scorer", help="Default: the one the prompts' threshold was "
                                               "calibrated for, else energy (learned prompts) or csp (--zero-shot), "
                                               "the winners on validation (docs/quality.md). Also negprompt "
                                               "(Eq. 3), mcm, maxlogit, msp, neglabel, the hybrids "
                                               "negprompt+neglabel / negprompt+csp, negprompt-sum, "
                                               "negprompt-maxlogit, or a plugin's.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="The scorer's temperature: τ on "
                                                      "cosines for negprompt and mcm, T on the logits s·cos for "
                                                      "energy and msp; maxlogit has none. Default: the artifact's "
                                                      "τ for the scorer it was calibrated with, the training τ for "
                                                      "negprompt, else the scorer's own (1; 0.01 for the "
                                                      "negative-label scorers).")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="ID threshold to use (score < threshold "
                                                    "-> OOD) instead of the stored one.")] = None,
    calibrate: CalibrateOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
    labeled: Annotated[bool, typer.Option("--labeled", help="Images are IMAGES/<class>/...: record true labels "
                                          "(for report's ID accuracy).")] = False,
    text_chunk: TextChunkOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (images scored, "
                                           "encoded vs from the cache, skipped, threshold); needs --out.")] = False,
    adaptive: Annotated[bool, typer.Option("--adaptive", help="Test-time negatives (AdaNeg): a memory of "
                                           "confidently ID / OOD images, updated per --batch-size batch in the "
                                           "order images are given (each folder sorted), sharpens the negatives. "
                                           "Scorers neglabel, csp, "
                                           "negprompt+neglabel, negprompt+csp, negprompt-sum.")] = False,
    adaptive_slots: Annotated[int, typer.Option("--adaptive-slots", help="Images remembered per label (AdaNeg's "
                                                "released ImageNet script holds 9: --adaptive-slots 9).")] = 10,
    adaptive_weight: Annotated[float, typer.Option("--adaptive-weight", help="λ in adaptive + λ·static "
                                                   "score.")] = 0.1,
    trust_backbone: TrustBackboneOpt = False,
    explain: Annotated[bool, typer.Option("--explain", help="Add, per image, the closest classes and (for scorers "
                                          "that read negative prompts or mined labels) the closest negatives, "
                                          "with cosines: JSONL lists, CSV a JSON array of [name, cos] "
                                          "pairs.")] = False,
    explain_top: Annotated[int, typer.Option("--explain-top", help="How many classes and negatives --explain "
                                             "lists.")] = EXPLAIN_TOP,
    excel_safe: Annotated[bool, typer.Option("--excel-safe", help="CSV for spreadsheets: a path or name cell "
                                             "starting with = + - @ gets a leading ' so it is not run as a "
                                             "formula (the cell is then not the exact name; JSONL keeps names "
                                             "exact).")] = False,
    quiet: QuietOpt = False,
    *,
    runtime: dict[str, Any],
    images_opts: dict[str, Any],
    label_opts: dict[str, Any],
) -> None:
    """OOD scores (higher = more in-distribution) for every image, as CSV or JSONL."""
    images = images or []  # none: the stage says "no images given" (exit 2)
    check_paths(*(("IMAGES", image) for image in images), ("--prompts", prompts), ("--names", names),
                ("--calibrate", calibrate), ("--lexicon", label_opts["lexicon"]))
    from ..distributed import process_group
    from ..features.backbone import DEFAULT_BACKBONE, RuntimeOptions
    from ..scoring.adaptive import AdaptiveOptions
    from ..stages.score import ScoreOptions, score
    from ..training.memory import no_grad_text_chunk

    if json_out and out is None:
        from ..errors import UsageError

        raise UsageError("--json needs --out FILE: without it stdout carries the scores themselves")
    given = images_opts
    encoding = encode_options(runtime, quiet, cache_dir=given["cache_dir"], workers=given["workers"],
                              strict=given["strict"], batch_size=given["batch_size"])
    check_at_least("--explain-top", explain_top, 1)
    memory = (AdaptiveOptions(slots=adaptive_slots, weight=adaptive_weight, batch=given["batch_size"])
              if adaptive else None)
    with process_group(given["distributed"], runtime["device"]) as (ranks, device):
        placed = {**runtime, "device": device}
        request = None
        if zero_shot or backbone is not None:
            request = backbone_request(backbone or DEFAULT_BACKBONE, pretrained, placed)
        summary = score(ScoreOptions(
            images=images, prompts=_prompts_path(prompts, runtime["offline"]) if prompts else None, names=names,
            zero_shot=zero_shot, backbone=request,
            runtime=RuntimeOptions(device, runtime["weights_cache"], runtime["offline"], no_grad_text_chunk(text_chunk),
                                   trust_backbone),
            scorer=scorer, temperature=temperature, threshold=threshold, fmt=fmt, out=out, labeled=labeled,
            encode=encoding, calibrate=calibrate, ranks=ranks,
            labels=label_request(label_opts), adaptive=memory, excel_safe=excel_safe,
            explain=explain_top if explain else 0, return_rows=False,  # memory bounded: rows go out as they come
        ), stream=write_data)
    if summary is None:  # a rank other than 0 of a torchrun job: rank 0 reports and writes
        return
    flagged = summary["flagged_ood"]
    decision = (f"; {flagged} flagged OOD at threshold {summary['threshold']:.4f} ({summary['threshold_source']})"
                if flagged is not None else "; no OOD decision (no threshold for this class list and scorer: "
                + ("--threshold)" if summary["adaptive"] else "--calibrate ID_IMAGES or --threshold)"))
    labels = summary["negative_labels"]
    mined = (f"; {labels['labels']} negative labels mined from {labels['candidates']} candidates"
             + (f" ({labels['dropped_id_names']} lexicon entries equal to ID class names never kept)"
                if labels["dropped_id_names"] else "")
             + (f" ({labels['near_duplicates']} closer than cosine 0.95 to an ID class never kept)"
                if labels.get("near_duplicates") else "") if labels else "")
    memory_note = ""
    if summary["adaptive"]:
        record = summary["adaptive"]
        memory_note = (f"; adaptive memory: {record['id_writes']} ID and {record['ood_writes']} OOD writes over "
                       f"{record['id_labels_with_memory']} ID and {record['negative_labels_with_memory']} negative "
                       "labels")
    info(f"Scored {summary['images']} image(s) with {summary['scorer']} ({summary['encoded']} encoded, "
         f"{summary['cached']} from the feature cache){mined}{memory_note}{decision}"
         + (f"; wrote {out}" if out else "") + ".")
    negatives = summary["negative_prompts"]
    if negatives is not None and not negatives["used"]:
        info("Note: " + negatives_note(summary["scorer"], by_default=summary["scorer_source"] != "--scorer") + ".")
    if json_out:
        emit_json(summary)


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
