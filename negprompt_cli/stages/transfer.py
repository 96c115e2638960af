"""``negprompt transfer``: re-target learned contexts to a new class list, without training.

The contexts carry over unchanged; the stored ID threshold does not (it belongs to the class
list it was calibrated on, see ``thresholds``): it is kept only for the same list, recalibrated
when ID images are given, and otherwise dropped with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..devices import check_precision
from ..errors import NotFoundError
from ..features.backbone import RuntimeOptions, artifact_backbone, load_backbone
from ..features.image_features import EncodeOptions, encode_folder
from ..features.text_features import text_features_for
from ..inputs.image_folders import read_names_file, warn_foreign_calibration_classes
from ..outputs.artifact import PromptArtifact, check_fits_backbone, load_prompts, package_versions, save_prompts
from ..outputs.atomic import check_not_input, check_output_path
from ..presets import default_scorer
from ..scoring.calibration import KeepRequest, check_calibrating
from ..scoring.negative_labels import LabelRequest
from ..scoring.setup import setup_for_features
from ..scoring.thresholds import ThresholdWarning, calibrated_scorer


def transfer(prompts: Path, names_file: Path, out: Path, runtime: RuntimeOptions = RuntimeOptions(), *,
             calibrate_on: Path | None = None, keep: KeepRequest = KeepRequest(),
             encoding: EncodeOptions = EncodeOptions()) -> dict[str, Any]:
    check_output_path(out)
    check_not_input(out, [("--prompts", prompts), ("--names", names_file)])
    check_calibrating(keep, calibrate_on)
    if calibrate_on is not None and not calibrate_on.exists():
        raise NotFoundError(f"calibration images not found: {calibrate_on}")
    source = load_prompts(prompts)
    names = read_names_file(names_file, strict=encoding.strict)
    backbone = load_backbone(artifact_backbone(source, runtime, prompts))
    source.check_backbone(backbone.identity(), prompts)
    check_fits_backbone(source, backbone.text_width, backbone.context_length, backbone.embed_dim, prompts)
    text_pos, text_neg = text_features_for(backbone, source, names, runtime.text_chunk)
    tensors = {k: v for k, v in source.tensors.items() if k.startswith("ctx_")}
    tensors["text_pos"] = text_pos
    if text_neg is not None:
        tensors["text_neg"] = text_neg
    extra = dict(source.extra)
    scorer = calibrated_scorer(extra) or default_scorer(text_neg is not None, backbone=backbone.name)
    stored = extra.pop("threshold", None)
    lineage = stored or extra.get("transfer", {}).get("source_threshold")
    setup = setup_for_features(backbone, names, text_pos, text_neg, scorer, source.extra, stored=stored,
                               artifact_names=list(source.class_names))
    calibration: dict[str, Any] | None = None
    if calibrate_on is not None or stored:  # a negative-label scorer's threshold needs its labels for these names
        setup.mine(LabelRequest(), cache_dir=encoding.cache_dir, quiet=encoding.quiet)
    if calibrate_on is not None:
        warn_foreign_calibration_classes(calibrate_on, names)
        encoding = replace(encoding, precision=check_precision(backbone.device, encoding.precision))
        encoded = encode_folder(backbone, calibrate_on, encoding, "Encoding calibration images")
        assert encoded is not None  # one process: always the result
        _, features, stats = encoded
        record, _ = setup.calibrate(features, source=f"calibration images {calibrate_on}", request=keep)
        extra["threshold"] = record
        calibration = {"images": record["n_images"], "encoded": stats.encoded, "cached": stats.cached}
    elif stored:
        value, reason = setup.stored()
        if value is not None:
            extra["threshold"] = stored
        else:
            warnings.warn(f"the stored ID threshold does not carry over ({reason}); the new prompts have no "
                          "threshold: add --calibrate ID_IMAGES here or to score", ThresholdWarning, stacklevel=2)
    extra["transfer"] = {"source": str(prompts), "source_classes": list(source.class_names),
                         **({"source_threshold": lineage} if lineage else {})}
    result = PromptArtifact(kind=source.kind, tensors=tensors, backbone=source.backbone, prompt=source.prompt,
                            class_names=names, training=source.training, extra=extra, versions=package_versions())
    save_prompts(result, out)
    new = [n for n in names if n not in source.class_names]
    return {"out": str(out), "kind": source.kind, "classes": len(names), "new_classes": len(new),
            "source_classes": len(source.class_names), "backbone": backbone.identity(),
            "threshold": extra.get("threshold"), "calibration": calibration}
