"""``negprompt score``: OOD scores for every image given (files, folders), as CSV or JSONL rows."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..devices import check_precision
from ..distributed import SINGLE, Ranks, batch_shard, check_enough_items, from_main, gather_to_all, gather_to_main
from ..errors import NegPromptError, NegPromptWarning, NotFoundError, UsageError
from ..features import saved_features
from ..features.backbone import Backbone, BackboneRequest, RuntimeOptions
from ..features.image_features import (
    WINDOW_BATCHES,
    EncodeOptions,
    EncodeStats,
    ImageStream,
    Window,
    agree_on_list,
    encode_pixels,
    list_samples_across,
    ranks_agree,
)
from ..features.local_features import split_rows
from ..features.saved_features import FeatureSaver, FeatureStream, SavedFeatures, check_features_target
from ..inputs.containers import Member, Samples
from ..inputs.image_folders import find_images, image_inputs, read_names_file, warn_foreign_calibration_classes
from ..inputs.image_list import is_image_file
from ..outputs.atomic import check_not_input, check_output_path, is_stream_target
from ..outputs.score_file import FORMATS, render_rows, score_columns, text_format
from ..outputs.score_output import (
    FileOutput,
    PartOutput,
    PipeOutput,
    ResumablePart,
    RowOutput,
    StreamOutput,
    TextOutput,
    join_parts,
    part_path,
    remove_parts,
    stale_parts,
)
from ..outputs.score_parquet import ParquetOutput
from ..registry import ScorerSpec, get_host
from ..scoring.adaptive import AdaptiveOptions, AdaptiveScorer
from ..scoring.calibration import Decision, KeepRequest, check_calibrating, kept_counts, warn_if_shifted
from ..scoring.explain import explain
from ..scoring.negative_labels import LabelRequest
from ..scoring.scores import Scores
from ..scoring.setup import ScoringRequest, ScoringSetup, check_labels_apply, decision_rows, mine_labels, setup_scoring
from ..scoring.test_time import ScoreStream, StreamContext
from ..scoring.thresholds import ThresholdWarning, stated, warn_no_decision, warn_no_threshold
from ..scoring.true_labels import TrueLabels, warn_unknown_labels

Inputs = Samples | SavedFeatures  # what a score run reads: images (files, containers) or saved embeddings


@dataclass
class ScoreOptions:
    images: Path | Sequence[Path]  # image files and/or folders (searched recursively), in this order
    prompts: Path | None = None
    names: Path | None = None
    zero_shot: bool = False
    backbone: BackboneRequest | None = None  # zero-shot only; prompts carry their backbone
    runtime: RuntimeOptions = RuntimeOptions()
    scorer: str | None = None
    scorer_options: dict[str, Any] = field(default_factory=dict)  # the scorer's own Options (--scorer-option)
    temperature: float | None = None
    threshold: float | None = None
    fmt: str = "csv"
    out: Path | None = None
    labeled: bool = False
    encode: EncodeOptions = EncodeOptions()  # how images are encoded here: cache, batch, precision, quiet
    calibrate: Path | None = None  # ID images to calibrate the threshold on, for exactly this scoring setup
    keep: KeepRequest = KeepRequest()  # what that threshold promises (--keep, --confidence)
    ranks: Ranks = SINGLE  # a torchrun job: every rank encodes its share, rank 0 scores and writes
    labels: LabelRequest = LabelRequest()  # negative-label scorers: lexicon, mining, groups
    adaptive: AdaptiveOptions | None = None  # test-time negatives (AdaNeg-style memory), in scoring order
    return_rows: bool = True  # the Python API: every row as a dict in the summary (one process); False: bounded memory
    excel_safe: bool = False  # CSV: quote text cells a spreadsheet would run as formulas (score_file.excel_safe)
    explain: int = 0  # --explain: per image the N closest classes and negatives with their cosines (0: off)
    save_features: Path | None = None  # also write the image embeddings here (clip-retrieval's layout)
    features: Path | None = None  # score saved embeddings instead of images (--save-features' folder)
    resume: bool = False  # commit rows as they go; a rerun with the same settings goes on where a killed run stopped


def score(options: ScoreOptions, *, stream: Callable[[str], object] | None = None) -> dict[str, Any] | None:
    """Score every image, window by window (``image_features.ImageStream``), so that memory does not grow with
    the number of images beyond a float per image where a threshold is calibrated.

    Rows are written as they are produced: to ``out`` (a temporary file renamed into place once complete),
    else to ``stream`` (the CLI: stdout), else kept as ``rendered`` text in the summary. With ``return_rows``
    (the default; one process) the summary also carries them as dicts under ``rows``, which holds every row:
    set it False for inputs too large for that.

    In a torchrun job every rank scores its own contiguous run of whole batches and writes its own part file;
    rank 0 joins the parts in order (the bytes one process writes) and returns the summary, the others None.
    ``--calibrate``: the ranks exchange scores, not features. ``--adaptive`` is sequential: the ranks fill the
    feature cache with their shares, then rank 0 scores the whole stream in order. Who does what in a job is
    decided in one place, :class:`Shares`; the steps below are the same for one process."""
    shares = Shares(options, stream)
    plan = _plan(options, shares)
    writer = _RowWriter(options, plan.setup, _decision(plan), plan.threshold_source, plan.paths, shares.ranks)
    output = shares.open_output(_resume_fingerprint(plan, shares) if options.resume else None)
    resumed = output.resumed if isinstance(output, ResumablePart) else None
    if resumed is not None:  # the rows before this position are in the part already, and counted
        writer.tally = _tally_from(resumed["tally"])
        writer.header_due = writer.header_due and not writer.tally.images
    if options.save_features is not None:
        writer.saver = FeatureSaver(options.save_features, shares.run_id(), resumable=options.resume)
        if options.resume:  # this process's parts after its last commit are written again
            share = batch_shard(len(plan.paths), options.encode.batch_size, shares.ranks)
            writer.saver.drop_from(share.start + (int(resumed["position"]) if resumed is not None else 0),
                                   share.stop)
    started = time.perf_counter()

    def check(tally: Tally) -> None:  # before an output is published: one process's, or the joined one
        _check_scored(tally, options, plan.paths)

    try:
        stats, adaptive_record = _encode_and_score(plan, shares, writer, output,
                                                   int(resumed["position"]) if resumed is not None else 0)
        shares.seal(writer, output, check)
        if writer.saver is not None:
            writer.saver.finish()
        joined = shares.join(writer.tally, output, stats, check)
        if joined is not None and options.save_features is not None:  # every rank's parts are in: publish
            saved_features.publish(options.save_features, shares.run_id(), plan.setup.backbone,
                                   plan.setup.backbone.preprocess_repr(), joined.tally.images)
    except BaseException:
        output.discard()
        if options.save_features is not None and shares.ranks.is_main and not options.resume:
            saved_features.discard(options.save_features, shares.run_id())  # resumable: kept for the rerun
        raise
    if joined is None:  # a rank other than 0
        return None
    if options.labeled:
        warn_unknown_labels(joined.tally.unknown_labels, joined.tally.unknown_sample_labels, plan.setup.names)
        warn_if_shifted(kept_counts(_promised(plan), joined.tally.id_by_class))
    summary = _summary(plan, joined, adaptive_record, seconds=time.perf_counter() - started)
    if writer.kept is not None:
        summary["rows"] = writer.kept
    return summary


@dataclass
class _Plan:
    """What scoring needs besides the images' features, settled before the first image is encoded."""

    options: ScoreOptions
    setup: ScoringSetup
    paths: Inputs
    encoding: EncodeOptions  # the precision this device runs
    threshold: float | None
    threshold_source: str | None
    calibration: dict[str, Any] | None

    @property
    def in_order(self) -> bool:
        """Scores depend on the stream (--adaptive, a test-time scorer): one pass, in order, on rank 0."""
        return self.options.adaptive is not None or self.setup.spec.test_time


def _plan(options: ScoreOptions, shares: Shares) -> _Plan:
    """Check the request, list the images, set up the scorer (labels mined once, shared with the ranks) and the
    threshold: every refusal comes before any image is encoded."""
    if options.fmt not in FORMATS:
        raise UsageError(f"unknown format {options.fmt!r}", hint=f"choose {', '.join(FORMATS)}")
    if options.excel_safe and options.fmt != "csv":
        raise UsageError(f"--excel-safe is for CSV output; {options.fmt} is never run as formulas")
    if options.resume and (options.out is None or is_stream_target(options.out)):
        raise UsageError("--resume commits rows to a file as they go: give --out FILE (a regular file)")
    if options.resume and options.adaptive is not None:
        raise UsageError("--resume cannot be combined with --adaptive: adaptive scores depend on the whole stream "
                         "before them")
    if options.scorer_options and options.scorer is None:
        raise UsageError("--scorer-option sets a setting of the scorer named by --scorer: give --scorer too")
    if options.fmt == "parquet" and (options.out is None or is_stream_target(options.out)):
        raise UsageError("--format parquet writes a file: give --out FILE.parquet (a regular file, not stdout or a "
                         "pipe)", hint="or --format jsonl for a stream")
    shares.check_output()
    names_given = read_names_file(options.names, strict=options.encode.strict) if options.names else None
    request = ScoringRequest(prompts=options.prompts, names=names_given,
                             zero_shot=options.zero_shot, backbone=options.backbone, runtime=options.runtime,
                             scorer=options.scorer, scorer_options=options.scorer_options,
                             temperature=options.temperature, labels=options.labels,
                             encode=options.encode, defer_model=True)
    paths: Inputs
    if options.features is not None:
        if options.images:
            raise UsageError("give images or --features DIR (embeddings saved with --save-features), not both")
        paths = SavedFeatures(options.features)
        if options.labeled:
            raise UsageError("--labeled reads each image's class from its folder, and saved embeddings have none")
    else:
        paths = list_samples_across(shares.ranks, image_inputs(options.images), strict=options.encode.strict)
    if options.save_features is not None:
        check_features_target(options.save_features)
    if shares.ranks.is_main:
        check_not_input(options.out, [("--prompts", options.prompts), ("--names", options.names),
                                      ("--lexicon", options.labels.lexicon)])
        if options.out is not None and is_image_file(options.out) and options.out.exists():  # only then can it be
            check_not_input(options.out, (("image", p) for p in paths if isinstance(p, Path)))  # one of the images
    check_calibrating(options.keep, options.calibrate, options.threshold)
    if options.calibrate is not None and not options.calibrate.exists():
        raise NotFoundError(f"calibration images not found: {options.calibrate}")
    setup = setup_scoring(request)
    if setup.spec.test_time:
        _check_test_time(setup.spec, options)
    if setup.spec.local and (options.features is not None or options.save_features is not None):
        flag = "--features" if options.features is not None else "--save-features"
        raise UsageError(f"{flag} holds global embeddings only, and the {setup.scorer} scorer reads patch features",
                         hint="score the images themselves (their patch features go to the feature cache)")
    if isinstance(paths, SavedFeatures):
        paths.check(setup.backbone)
    shares.check_list(paths, setup.backbone)
    if options.adaptive is not None:
        _check_adaptive(setup.spec, options)
    check_labels_apply(setup, options.labels)
    shares.mine_labels(setup, request)
    encoding = replace(options.encode, precision=check_precision(setup.backbone.device, options.encode.precision),
                       local=setup.spec.local)
    threshold, source, calibration = _threshold(options, setup, encoding, shares)
    return _Plan(options, setup, paths, encoding, threshold, source, calibration)


def _encode_and_score(plan: _Plan, shares: Shares, writer: _RowWriter, output: RowOutput,
                      resume_at: int = 0) -> tuple[EncodeStats, dict[str, Any] | None]:
    """Encode this process's share of the images as a stream and write each encoder batch's rows as it comes;
    ``resume_at``: the position in the share a resumed run goes on from (``--resume``: committed per window)."""
    setup, encoding = plan.setup, plan.encoding
    if plan.in_order:
        return _score_in_order(plan, shares, writer, output)
    stream, offset = shares.stream(setup.backbone, plan.paths, encoding, "Scoring images", skip=resume_at)
    try:
        for window in stream:
            for indices, feats in _batches_of(window, offset, encoding.batch_size):
                writer.write(indices, feats, setup.scores(feats), output)
            saver = writer.saver
            if isinstance(output, ResumablePart) and not writer.tally.broken and (
                    saver is None or saver.pending >= saved_features.PART_ROWS):  # with embeddings: a part a commit
                if saver is not None:
                    saver.flush()
                output.checkpoint(resume_at + window.end, asdict(writer.tally))
    except NegPromptError as exc:  # about this rank's share: the other ranks cannot say it
        exc.rank_specific = shares.ranks.distributed
        raise
    return stream.stats, None


def _resume_fingerprint(plan: _Plan, shares: Shares) -> str:
    """What a resumed run must share with the run it goes on from: the inputs and every setting that changes a
    row's bytes (the scorer, τ, text and label settings, the decision, the format, the batches and the ranks)."""
    options, setup = plan.options, plan.setup
    listing = plan.paths.fingerprint()
    payload = {"inputs": listing, "count": len(plan.paths), "prompts": setup.prompts_id, "names": setup.names,
               "scorer": setup.scorer, "temperature": setup.temperature, "settings": setup.settings,
               "threshold": plan.threshold, "source": plan.threshold_source, "per_class": _decision(plan).per_class,
               "format": options.fmt, "explain": options.explain, "excel_safe": options.excel_safe,
               "labeled": options.labeled, "batch_size": options.encode.batch_size,
               "save_features": str(options.save_features) if options.save_features else None,
               "world_size": shares.ranks.world_size, "negprompt": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _tally_from(state: dict[str, Any]) -> Tally:
    """A committed tally read back (JSON keys are text: the class indices become numbers again)."""
    return Tally(**{**state, "id_by_class": {int(k): list(v) for k, v in state["id_by_class"].items()}})


def _promised(plan: _Plan) -> dict[str, Any] | None:
    """The record of the threshold in use (None for --threshold or no threshold)."""
    if plan.threshold_source == "--calibrate":
        return plan.calibration
    return plan.setup.stored_threshold if plan.threshold_source == "stored" else None


def _decision(plan: _Plan) -> Decision:
    """The rule the rows are decided by: the threshold in use, per class where its record is."""
    return Decision(plan.threshold, _promised(plan))


def _promise(plan: _Plan) -> str | None:
    """What the threshold in use promises, in words."""
    record = _promised(plan)
    return stated(record) if record else None


def _summary(plan: _Plan, joined: Joined, adaptive_record: dict[str, Any] | None, *,
             seconds: float) -> dict[str, Any]:
    setup, tally = plan.setup, joined.tally
    labels, text_neg, scorer_options = setup.labels, setup.text_neg, setup.scorer_options
    summary = {"images": tally.images, "skipped": len(joined.stats.skipped), "encoded": joined.stats.encoded,
               "cached": joined.stats.cached, "scorer": setup.scorer, "temperature": setup.temperature,
               "threshold": plan.threshold, "threshold_source": plan.threshold_source,
               "class_thresholds": _decision(plan).per_class,  # --per-class: by class index, else None
               "calibration": plan.calibration, "threshold_promise": _promise(plan),
               "flagged_ood": tally.flagged if plan.threshold is not None else None,
               "out": str(plan.options.out or "-"),
               "negative_labels": ({**labels.record(), "groups": scorer_options["groups"]}
                                   if labels is not None and scorer_options is not None else None),
               "adaptive": adaptive_record if plan.options.adaptive is not None else None,
               "test_time": adaptive_record if setup.spec.test_time else None,
               "features_saved": str(plan.options.save_features) if plan.options.save_features else None,
               "features_from": str(plan.options.features) if plan.options.features else None,
               "scorer_source": setup.scorer_source, "prompts_id": setup.prompts_id,
               # learned negative prompts: how many per class, and whether this scorer reads them
               "negative_prompts": None if text_neg is None else {
                   "per_class": int(text_neg.shape[1]),
                   "used": setup.reads_negative_prompts},
               "seconds": round(seconds, 3)}
    if joined.processes is not None:
        summary["processes"] = joined.processes
    if isinstance(joined.output, TextOutput):
        summary["rendered"] = joined.output.text  # the caller decides where it goes
    return summary


def _check_scored(tally: Tally, options: ScoreOptions, paths: Sequence[Any]) -> None:
    """No output for a run that scored no image, or gave one a non-finite score."""
    if tally.broken:  # NaN is never an in-distribution score: damaged prompts or features, not an image verdict
        raise NegPromptError(f"non-finite scores for {tally.broken} image(s), e.g. {', '.join(tally.broken_paths)}",
                             hint="the prompts file or the feature cache may be damaged: rerun with a fresh "
                                  "--cache-dir, or re-download / retrain the prompts")
    if tally.images == 0:
        where = ", ".join(str(p) for p in image_inputs(options.images))
        raise UsageError(f"none of the {len(paths)} image(s) under {where} could be read",
                         hint="see the warning above for the files and why")


@dataclass
class Tally:
    """What the summary counts, instead of holding the rows."""

    images: int = 0
    flagged: int = 0
    broken: int = 0
    broken_paths: list[str] = field(default_factory=list)  # the first three
    unknown_labels: dict[str, int] = field(default_factory=dict)  # --labeled folders that name no class
    unknown_sample_labels: dict[str, int] = field(default_factory=dict)  # container samples' labels that name none
    # --labeled images of an ID class, per predicted class: [images, kept by the threshold]
    id_by_class: dict[int, list[int]] = field(default_factory=dict)

    def count_id(self, prediction: int, kept: bool) -> None:
        seen = self.id_by_class.setdefault(prediction, [0, 0])
        seen[0] += 1
        seen[1] += kept


def _merge_tallies(tallies: list[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.images += t.images
        total.flagged += t.flagged
        total.broken += t.broken
        total.broken_paths = (total.broken_paths + t.broken_paths)[:3]
        for prediction, (images, kept) in t.id_by_class.items():
            seen = total.id_by_class.setdefault(prediction, [0, 0])
            seen[0] += images
            seen[1] += kept
        for unknown, known in ((t.unknown_labels, total.unknown_labels),
                               (t.unknown_sample_labels, total.unknown_sample_labels)):
            for said, count in unknown.items():
                known[said] = known.get(said, 0) + count
    return total


class _RowWriter:
    """Turns scored batches into score-file rows, writes them, and keeps the tally (and, for the Python API on
    small inputs, the rows)."""

    def __init__(self, options: ScoreOptions, setup: ScoringSetup, decision: Decision,
                 threshold_source: str | None, paths: Inputs, ranks: Ranks) -> None:
        self.options, self.setup, self.paths = options, setup, paths
        self.decision, self.threshold_source = decision, threshold_source
        self.labels = TrueLabels(setup.names, setup.artifact, paths) if options.labeled else None
        self.columns = score_columns(explain=options.explain > 0)
        self.saver: FeatureSaver | None = None  # --save-features
        self.tally = Tally()
        self.header_due = options.fmt == "csv" and ranks.is_main  # written with the first rows
        self.kept: list[dict[str, Any]] | None = [] if options.return_rows and not ranks.distributed else None

    def header(self, output: RowOutput) -> None:
        if self.header_due:
            output.write(render_rows([], "csv", columns=self.columns))
            self.header_due = False

    def write(self, indices: list[int], feats: torch.Tensor, result: Scores, output: RowOutput) -> None:
        """Rows of the images at ``indices`` (positions in the whole list) with their features and scores."""
        setup, options = self.setup, self.options
        feats, _ = split_rows(feats, setup.dim)  # rows with patch features: their global part is the embedding
        explanations = None
        if options.explain > 0:  # the negatives this scorer reads: its negative prompts and/or its mined labels
            explanations = explain(feats, setup.text_pos, setup.names,
                                   text_neg=setup.text_neg if setup.reads_negative_prompts else None,
                                   mined=setup.mined,
                                   mined_names=list(setup.labels.words) if setup.labels is not None else None,
                                   top=options.explain)
        finite = torch.isfinite(result.score)
        if not bool(finite.all()):
            bad = [str(self.paths[indices[i]]) for i in torch.nonzero(~finite).flatten().tolist()]
            self.tally.broken += len(bad)
            self.tally.broken_paths = (self.tally.broken_paths + bad)[:3]
        rows = []
        for k, decided in enumerate(decision_rows(result, setup.names, self.decision)):
            path = self.paths[indices[k]]
            pred = decided["prediction_index"]
            calibrated_n, calibrated_rank = self.decision.calibrated_for(pred)
            row: dict[str, Any] = {
                "path": str(path), **decided,
                "label": None, "label_index": None, "label_folder": None, "scorer": setup.scorer,
                "prompts_id": setup.prompts_id,
                # the rule, for report: the threshold this row was judged by (per class: its predicted class's),
                # and how it was calibrated (the rank-th lowest of n), for report's check of its promise
                "threshold": self.decision.threshold_for(pred), "threshold_source": self.threshold_source,
                "threshold_n": calibrated_n, "threshold_rank": calibrated_rank,
            }
            if self.labels is not None:  # images only (_plan): a file's class folder, a sample's carried label
                assert not isinstance(self.paths, SavedFeatures) and isinstance(path, Path | Member)
                true = (self.labels.of_sample(path) if isinstance(path, Member) else
                        self.labels.of_file(path, self.paths.root(indices[k])))
                row["label_folder"], row["label_index"] = true.folder, true.index
                row["label"] = setup.names[true.index] if true.index >= 0 else None
                if true.unknown is not None:
                    unknown = self.tally.unknown_labels if true.folder is not None else self.tally.unknown_sample_labels
                    unknown[true.unknown] = unknown.get(true.unknown, 0) + 1
                elif row["ood"] is not None:
                    self.tally.count_id(pred, not row["ood"])
            if explanations is not None:
                row.update(explanations[k])
            rows.append(row)
            self.tally.flagged += bool(row["ood"])
        self.tally.images += len(rows)
        if not self.tally.broken and rows:  # a run with a non-finite score writes nothing (the error says why)
            self.header(output)
            output.write(render_rows(rows, text_format(options.fmt), spreadsheet_safe=options.excel_safe,
                                     columns=self.columns,
                                     header=False))
        if self.kept is not None:
            self.kept.extend(rows)
        if self.saver is not None and not self.tally.broken:
            self.saver.add(indices, [r["path"] for r in rows], feats)


@dataclass
class Joined:
    """A run's outcome on rank 0 (one process: its own)."""

    tally: Tally
    stats: EncodeStats
    output: RowOutput  # where the rows ended up (a TextOutput: the summary carries them)
    processes: dict[str, Any] | None  # a torchrun job: each rank's part and the time the join took


class Shares:
    """The torchrun logic of ``score``, in one place: who encodes which batches (each rank a contiguous run of
    whole batches, so a row's score does not depend on the number of processes), who writes which part (each
    rank its own part file beside --out, rank 0 joins them in order), and what is exchanged (rank 0's mined
    labels and run id to all; calibration scores to all; tallies and parts to rank 0). One process is a job of
    one rank, for which every step is the plain one."""

    def __init__(self, options: ScoreOptions, stream: Callable[[str], object] | None) -> None:
        self.options, self.rows_to = options, stream
        self.ranks, self.batch_size = options.ranks, options.encode.batch_size
        self._run_id: str | None = None

    def check_output(self) -> None:
        if self.options.out is None:
            return
        try:
            check_output_path(self.options.out, stream_ok=True)  # every rank: each writes its part next to it
        except NegPromptError as exc:  # on another node the folder may differ: this rank says so itself
            exc.rank_specific = self.ranks.distributed and not self.ranks.is_main
            raise

    def check_list(self, paths: Sequence[Any], backbone: Backbone) -> None:
        """Enough images for every process; every rank loaded the same backbone and sees the same list."""
        check_enough_items(len(paths), self.ranks)
        ranks_agree(self.ranks, backbone, paths)

    def check_calibration_list(self, paths: Sequence[Path]) -> None:
        check_enough_items(len(paths), self.ranks, "calibration image(s)")
        agree_on_list(self.ranks, paths, "the calibration images")

    def mine_labels(self, setup: ScoringSetup, request: ScoringRequest) -> None:
        """A negative-label scorer's labels: rank 0 mines them (the lexicon's features are cached), the other
        ranks receive them, so every rank scores with the very same labels."""
        if self.ranks.is_main:
            mine_labels(setup, request)
        setup.labels, setup.scorer_options = from_main((setup.labels, setup.scorer_options), self.ranks,
                                                       "sharing the negative labels")

    def stream(self, backbone: Backbone, paths: Sequence[Any], encoding: EncodeOptions,
               description: str, skip: int = 0) -> tuple[ImageStream | FeatureStream, int]:
        """This rank's share of ``paths`` as an image stream (without its first ``skip`` images: a resumed run),
        and where the stream starts in the whole list."""
        share = batch_shard(len(paths), self.batch_size, self.ranks)
        start = share.start + skip
        return _stream(backbone, paths, start, share.stop, encoding, description,
                       quiet=encoding.quiet or not self.ranks.is_main), start

    def run_id(self, fixed: str | None = None) -> str:
        """This run's id, the same on every rank (rank 0's): names its part files and temporary folders; ``fixed``
        (a resumable run: its fingerprint) instead of a random one, so that a rerun finds its parts."""
        if self._run_id is None:
            self._run_id = from_main(fixed or uuid.uuid4().hex[:12], self.ranks, "starting the run")
        return self._run_id

    def exchange(self, scores: torch.Tensor, what: str) -> torch.Tensor:
        """Every rank's scores, in rank order, on every rank."""
        return torch.cat(gather_to_all(scores, self.ranks, what))

    def wait_for_all(self, what: str) -> None:
        gather_to_main(None, self.ranks, what)

    def open_output(self, resumable: str | None = None) -> RowOutput:
        """Where this process writes its rows: the final output (one process), or its part file; ``resumable``
        (--resume: the run's fingerprint): a part with a fixed name and its progress, also for one process."""
        run_id = self.run_id(resumable[:12] if resumable else None)
        if not self.ranks.distributed and resumable is None:
            return _final_output(self.options, self.rows_to)
        folder, target = _part_folder(self.options), (self.options.out.name if self.options.out else "negprompt-score")
        if self.ranks.is_main:
            left = stale_parts(folder, target, run_id)
            if left:
                warnings.warn(f"{len(left)} part file(s) of an earlier interrupted run lie in {folder} "
                              f"({left[0].name}{' ...' if len(left) > 1 else ''}); they are not used (another run "
                              "or other settings): delete them", NegPromptWarning, stacklevel=3)
        path = part_path(folder, target, run_id, self.ranks.rank)
        if resumable is not None:
            return ResumablePart(path, self.ranks.rank, resumable)
        return PartOutput(path, self.ranks.rank)

    def seal(self, writer: _RowWriter, output: RowOutput, check: Callable[[Tally], None]) -> None:
        """This process's rows are all written: one process checks the run before its output is published."""
        if self.ranks.distributed:  # rank 0's part starts the file even when none of its own images was readable
            writer.header(output)
        else:
            check(writer.tally)
        output.finish()

    def join(self, tally: Tally, output: RowOutput, stats: EncodeStats,
             check: Callable[[Tally], None]) -> Joined | None:
        """Rank 0 gathers the tallies and joins the parts into the final output (None on the other ranks)."""
        if not self.ranks.distributed and not isinstance(output, ResumablePart):
            return Joined(tally, stats, output, None)
        part = (output.path, output.size) if isinstance(output, PartOutput) else None
        try:
            gathered = gather_to_main((part, tally, stats), self.ranks, "joining the parts of the scores")
        except BaseException:  # another rank is gone: this rank's part will never be joined
            output.discard()
            raise
        if gathered is None:
            return None
        tally, stats = _merge_tallies([t for _, t, _ in gathered]), EncodeStats.total(st for _, _, st in gathered)
        started = time.perf_counter()
        parts = [p for p, _, _ in gathered if p is not None]
        if tally.broken or not tally.images:  # the error below; nothing is written
            remove_parts([path for path, _ in parts])
        else:
            final = _final_output(self.options, self.rows_to)
            try:
                join_parts(parts, final)
                final.finish()
            except BaseException:
                final.discard()
                remove_parts([path for path, _ in parts])
                raise
            if isinstance(final, TextOutput):
                output = final
        processes = ({"parts": [{"rank": r, "images": g[1].images, "bytes": g[0][1] if g[0] else 0}
                                for r, g in enumerate(gathered)],
                      "join_seconds": round(time.perf_counter() - started, 3)} if self.ranks.distributed else None)
        check(tally)
        return Joined(tally, stats, output, processes)


def _stream(backbone: Backbone, paths: Sequence[Any], start: int, stop: int, encoding: EncodeOptions,
            description: str, quiet: bool | None = None) -> ImageStream | FeatureStream:
    """Features of ``paths[start:stop]`` window by window: encoded (or from the feature cache), or saved ones."""
    if isinstance(paths, SavedFeatures):
        return FeatureStream(paths, start, stop, encoding.batch_size * WINDOW_BATCHES)
    return ImageStream.encoding(backbone, paths[start:stop], encoding, description=description, quiet=quiet)


def _batches_of(window: Window, offset: int, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """A window's rows split by encoder batch (global positions, features): each batch is scored on its own, so
    a row's score does not depend on how the list was shared out between processes."""
    start = 0
    while start < len(window.indices):
        batch = (offset + window.indices[start]) // batch_size
        stop = start
        while stop < len(window.indices) and (offset + window.indices[stop]) // batch_size == batch:
            stop += 1
        yield [offset + i for i in window.indices[start:stop]], window.features[start:stop]
        start = stop


def _open_stream(plan: _Plan) -> ScoreStream:
    """The stream the scores come from: AdaNeg's memory over the chosen scorer (--adaptive), or the test-time
    scorer's own."""
    options, setup = plan.options, plan.setup
    if options.adaptive is not None:
        return AdaptiveScorer(setup.text_pos, setup.text_neg, setup.mined, scorer=setup.scorer_fn,
                              temperature=setup.temperature, logit_scale=setup.backbone.logit_scale,
                              options=options.adaptive, scorer_options=setup.scorer_keywords,
                              device=setup.backbone.device)
    backbone, device = setup.backbone, setup.backbone.device
    mined, text_neg = setup.mined, setup.text_neg
    context = StreamContext(text_pos=setup.text_pos.to(device), labels=None if mined is None else mined.to(device),
                            text_neg=None if text_neg is None else text_neg.to(device),
                            temperature=setup.temperature, logit_scale=backbone.logit_scale,
                            batch=plan.encoding.batch_size, seed=options.labels.mining.seed, device=device,
                            image_size=backbone.image_size,
                            encode_pixels=partial(encode_pixels, backbone, precision=plan.encoding.precision),
                            options=setup.own_options)
    try:
        stream: ScoreStream = setup.spec.fn.start(context)  # type: ignore[attr-defined]  # test_time: checked
        return stream
    except NegPromptError:
        raise
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise setup.broken(f"could not start its stream: {type(exc).__name__}: {exc}") from exc


def _score_in_order(plan: _Plan, shares: Shares, writer: _RowWriter,
                    output: RowOutput) -> tuple[EncodeStats, dict[str, Any]]:
    """--adaptive or a test-time scorer: one stream over every image, in order. In a torchrun job the ranks first
    encode their shares into the feature cache; then rank 0 reads the stream from it and scores it alone."""
    setup, encoding, paths = plan.setup, plan.encoding, plan.paths
    filling, ranks = None, shares.ranks
    if ranks.distributed:
        filling, _ = shares.stream(setup.backbone, paths, encoding, "Encoding images (scored in order)")
        for _ in filling:
            pass
        shares.wait_for_all("encoding the shares of an in-order run")
        if not ranks.is_main:
            return filling.stats, {}
    adaptive = _open_stream(plan)
    waiting: deque[tuple[list[int], torch.Tensor, Scores]] = deque()  # scored, short of their adaptive scores

    def release(adapted: torch.Tensor) -> None:
        """Adaptive scores come per memory batch of readable images (AdaNeg's), which need not end where a
        scored batch ends: a batch is written as far as its scores have come, the rest waits."""
        while adapted.numel():
            indices, feats, result = waiting.popleft()
            n = min(len(indices), adapted.numel())
            if n < len(indices):
                waiting.appendleft((indices[n:], feats[n:], _slice(result, n, len(indices))))
                indices, feats, result = indices[:n], feats[:n], _slice(result, 0, n)
            result.score = adapted[:n]
            writer.write(indices, feats, result, output)
            adapted = adapted[n:]

    stream = _stream(setup.backbone, paths, 0, len(paths), encoding, "Scoring images")
    with warnings.catch_warnings():
        if ranks.distributed:  # what the ranks' encoding found (skipped images, the cache) was said then
            warnings.simplefilter("ignore", NegPromptWarning)
        for window in stream:
            for indices, feats in _batches_of(window, 0, encoding.batch_size):
                waiting.append((indices, feats, setup.scores(feats)))  # the score itself: the memory's
                release(adaptive.feed(feats))
    release(adaptive.finish())
    # a torchrun job counts what the ranks encoded (rank 0's pass read their rows back from the cache)
    return filling.stats if filling is not None else stream.stats, adaptive.record()


def _slice(result: Scores, start: int, stop: int) -> Scores:
    return Scores(result.score[start:stop], result.prediction[start:stop], result.max_pos_cos[start:stop],
                  result.max_neg_cos[start:stop] if result.max_neg_cos is not None else None)


def _threshold(options: ScoreOptions, setup: ScoringSetup, encoding: EncodeOptions,
               shares: Shares) -> tuple[float | None, str | None, dict[str, Any] | None]:
    """(threshold, where it comes from, the calibration record): --threshold, --calibrate (the ranks score their
    shares of the calibration images and exchange the scores), or the stored one if it applies."""
    ranks = shares.ranks
    if options.threshold is not None:
        return options.threshold, "--threshold", None
    if options.adaptive is not None or setup.spec.test_time:
        if ranks.is_main:
            method = "adaptive" if options.adaptive is not None else setup.scorer
            warnings.warn(f"{method} scores depend on the test stream: no stored or calibrated threshold applies, "
                          "so scores carry no OOD decision; give --threshold VALUE for one", ThresholdWarning,
                          stacklevel=3)
        return None, None, None
    if options.calibrate is not None:
        paths = find_images(options.calibrate, strict=encoding.strict)
        if not paths:
            raise UsageError(f"no images found under {options.calibrate}")
        shares.check_calibration_list(paths)
        if shares.ranks.is_main:
            warn_foreign_calibration_classes(options.calibrate, setup.names)
        stream, offset = shares.stream(setup.backbone, paths, encoding, "Encoding calibration images")
        scores, predictions = [], []
        for window in stream:
            for _, feats in _batches_of(window, offset, encoding.batch_size):
                result = setup.scores(feats)
                scores.append(result.score)
                predictions.append(result.prediction)
        mine = torch.cat(scores) if scores else torch.empty(0)
        every = shares.exchange(mine, "exchanging the calibration scores")
        if not every.numel():
            raise UsageError(f"no readable images under {options.calibrate}")
        classes = (shares.exchange(torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long),
                                   "exchanging the calibration images' classes") if options.keep.per_class else None)
        record = setup.threshold_record(every, source=f"calibration images {options.calibrate}",
                                        request=options.keep, predictions=classes)
        return record["value"], "--calibrate", record
    threshold, reason = setup.stored()
    if ranks.is_main and reason is not None:
        warn_no_decision(reason)
    elif ranks.is_main and threshold is None:
        warn_no_threshold(options.zero_shot)
    return threshold, "stored" if threshold is not None else None, None


def _part_folder(options: ScoreOptions) -> Path:
    """Where a torchrun job's ranks write their parts: next to --out (stdout, a pipe or a device: the temporary
    folder, which only ranks on rank 0's node share)."""
    if options.out is None or is_stream_target(options.out):
        return Path(tempfile.gettempdir())
    return options.out.parent


def _final_output(options: ScoreOptions, stream: Callable[[str], object] | None) -> RowOutput:
    if options.fmt == "parquet":
        assert options.out is not None  # refused in _plan
        return ParquetOutput(options.out, score_columns(explain=options.explain > 0))
    if options.out is not None:
        return PipeOutput(options.out) if is_stream_target(options.out) else FileOutput(options.out)
    return StreamOutput(stream) if stream is not None else TextOutput()


def _check_adaptive(spec: ScorerSpec, options: ScoreOptions) -> None:
    """Bad --adaptive requests fail before any image is encoded."""
    if not spec.probability:
        eligible = ", ".join(s.name for s in get_host().scorer_specs() if s.probability)
        raise UsageError(f"--adaptive needs a scorer whose score is an ID probability among negatives; {spec.name} "
                         "is not one", hint=f"use --scorer with one of: {eligible}")
    if options.calibrate is not None:
        raise UsageError("--adaptive cannot be combined with --calibrate: adaptive scores depend on the test stream",
                         hint="give --threshold, or leave the decision to `negprompt report`")


def _check_test_time(spec: ScorerSpec, options: ScoreOptions) -> None:
    """A test-time scorer scores a stream: requests that need a score per image on its own fail at once."""
    if options.adaptive is not None:
        raise UsageError(f"{spec.name} adapts to the test stream itself; --adaptive (AdaNeg's memory) is for a "
                         "static scorer", hint="drop --adaptive")
    if options.calibrate is not None:
        raise UsageError(f"--calibrate cannot be combined with --scorer {spec.name}: its scores depend on the test "
                         "stream", hint="give --threshold, or leave the decision to `negprompt report`")
    if options.resume:
        raise UsageError(f"--resume cannot be combined with --scorer {spec.name}: its scores depend on the whole "
                         "stream before them")


