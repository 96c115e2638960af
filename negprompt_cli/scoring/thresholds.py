"""ID thresholds that are only used where they mean what they say.

A threshold "keeps 95 % of ID images" only for the class list, scorer and τ it was calibrated
with: Eq. 3 is a softmax over C·(1+P) prompts, so its scale falls roughly as 1/C and a threshold
calibrated on 6 classes rejects every image scored against 60. Every stored threshold therefore
records what it was calibrated for, and :func:`applicable` refuses it anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import NegPromptError
from ..registry import ScorerSpec
from .calibration import KEEP, KeepRequest, ThresholdWarning, calibrate_request, describe

# Artifacts written before thresholds recorded their scorer were calibrated with Eq. 3, at the training τ.
OLD_FORMAT_SCORER = "negprompt"


@dataclass(frozen=True)
class ThresholdRecord:
    """A stored threshold and what it is valid for, read in one place: records written before a field existed
    get what it meant then (scorer: Eq. 3; τ: the training τ, ``extra["temperature"]``, else 1; no labels)."""

    value: float
    scorer: str
    temperature: float
    settings: dict[str, Any] | None

    @classmethod
    def read(cls, record: dict[str, Any], extra: dict[str, Any] | None = None) -> ThresholdRecord:
        extra = extra or {}
        return cls(value=float(record["value"]), scorer=str(record.get("scorer", OLD_FORMAT_SCORER)),
                   temperature=float(record.get("temperature", extra.get("temperature", 1.0))),
                   settings=record.get("settings"))


def calibrated_on(record: dict[str, Any]) -> str:
    """Which ID images a stored threshold keeps ``id_kept`` of, in words, saying so where that is optimistic: a
    threshold calibrated on the very images the prompts were fitted on keeps fewer of new images."""
    source, n = str(record.get("source", "?")), record.get("n_images")
    count = f"{n} " if isinstance(n, int) else ""
    if source == "training":
        return (f"the {count}training images the prompts were fitted on, an optimistic measure: it keeps fewer of "
                "new ID images, and --val-fraction holds some out to calibrate on")
    if source == "validation":
        return f"{count}held-out validation images"
    if source.startswith("calibration images "):
        return f"{count}calibration images in {source.removeprefix('calibration images ')}"
    return f"{count}{source} images"


def stated(record: dict[str, Any]) -> str:
    """What a stored threshold promises and what it was calibrated on, in one phrase for inspect, fit-neg, score and
    the model card: the guarantee (``calibration.describe``) holds for images like the calibration images, so a
    threshold set on the training images promises nothing for new ones."""
    if str(record.get("source")) == "training":
        return (f"keeps {float(record.get('id_kept', KEEP)):.0%} of {calibrated_on(record)}; no guarantee for new "
                "images")
    return f"{describe(record)}; calibrated on {calibrated_on(record)}"


def class_list_id(names: Sequence[str]) -> dict[str, Any]:
    """Count and content hash of an ordered class list (order matters: predictions are indices)."""
    digest = hashlib.sha256(json.dumps(list(names), ensure_ascii=False).encode()).hexdigest()[:16]
    return {"count": len(names), "sha256": digest}


def threshold_record(scores: torch.Tensor, *, names: Sequence[str], scorer: str, temperature: float, source: str,
                     request: KeepRequest = KeepRequest(), predictions: torch.Tensor | None = None,
                     best_effort: bool = False, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The threshold that keeps ``request.keep`` of new ID images like these ``scores`` (in expectation, or with
    probability ``request.confidence``; per predicted class with ``request.per_class``, which needs
    ``predictions``: ``calibration``), recorded with its guarantee and what it is valid for: the class list,
    scorer, τ and (``settings``, ``negative_labels.settings_fingerprint``) the negative-label lexicon, mining
    and grouping. Only the scores (and predicted classes) are needed, so a streamed calibration keeps two numbers
    an image."""
    if not torch.isfinite(scores).all():
        raise NegPromptError(f"non-finite scores while calibrating on {source}",
                             hint="the prompts or the feature cache may be damaged")
    record = calibrate_request(scores.numpy(), predictions.numpy() if predictions is not None else None, request,
                               names=list(names), source=source, best_effort=best_effort)
    record.update({"source": source, "scorer": scorer, "temperature": float(temperature),
                   "classes": class_list_id(names)})
    if settings is not None:
        record["settings"] = settings
    return record


def calibrated_classes(record: dict[str, Any], artifact_names: Sequence[str]) -> dict[str, Any] | None:
    """The class list a stored threshold belongs to; None if unknown.

    Artifacts written before thresholds recorded their class list: a fit-neg threshold was
    calibrated on the artifact's own names, a transferred one on names that are no longer known.
    """
    if "classes" in record:
        return record["classes"]
    if record.get("transferred"):
        return None
    return class_list_id(artifact_names)


def applicable(record: dict[str, Any] | None, artifact_names: Sequence[str], *, names: Sequence[str], scorer: str,
               temperature: float, settings: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> tuple[float | None, str | None]:
    """(value, None) when ``record`` was calibrated for exactly these names, scorer, τ and negative-label
    settings; else (None, why). ``extra``: the artifact's metadata (an old record's τ is its training τ)."""
    if not record:
        return None, None
    stored = ThresholdRecord.read(record, extra)
    if stored.scorer != scorer:
        return None, f"it was calibrated for the {stored.scorer} scorer, not {scorer}"
    if stored.temperature != float(temperature):
        return None, f"it was calibrated at temperature {stored.temperature}, not {temperature}"
    if stored.settings != settings:
        return None, ("it was calibrated with other negative-label settings (lexicon, mining or groups)"
                      if stored.settings else "it was calibrated without negative labels")
    calibrated = calibrated_classes(record, artifact_names)
    if calibrated is None or calibrated != class_list_id(names):
        return None, _other_list(calibrated, artifact_names, names)
    return stored.value, None


def _other_list(calibrated: dict[str, Any] | None, artifact_names: Sequence[str], names: Sequence[str]) -> str:
    """Why a class list is not the calibrated one, in the words a user can act on."""
    if calibrated is None:
        return f"it was calibrated for another class list, not these {len(names)} classes"
    known = calibrated == class_list_id(artifact_names)  # then the calibrated names are the artifact's own
    if known and sorted(artifact_names) == sorted(names):
        return (f"it was calibrated for the same {len(names)} classes in another order (predictions and the "
                "threshold's class list are by position)")
    if calibrated["count"] == len(names):
        differing = sum(a != b for a, b in zip(artifact_names, names, strict=False)) if known else None
        return (f"it was calibrated for another list of {len(names)} classes"
                + (f" ({differing} of the names differ)" if differing else ""))
    return f"it was calibrated for {calibrated['count']} classes, not these {len(names)}"


def warn_no_threshold(zero_shot: bool) -> None:
    """Scores without a decision because there is no threshold at all (not one that does not apply)."""
    what = "zero-shot scoring has no stored ID threshold" if zero_shot else "these prompts carry no ID threshold " \
        "(fit-pos prompts, or a transfer without --calibrate)"
    warnings.warn(f"{what}, so scores carry no OOD decision; get one with --calibrate ID_IMAGES (a folder of "
                  "in-distribution images) or --threshold VALUE", ThresholdWarning, stacklevel=2)


def _threshold_record(extra: dict[str, Any]) -> dict[str, Any]:
    """An artifact's threshold record, or the one it was transferred from (kept across transfer)."""
    return extra.get("threshold") or extra.get("transfer", {}).get("source_threshold") or {}


def calibrated_scorer(extra: dict[str, Any]) -> str | None:
    """The scorer an artifact's threshold was calibrated with (its τ is the record's)."""
    record = _threshold_record(extra)
    return ThresholdRecord.read(record, extra).scorer if record else None


def calibrated_temperature(extra: dict[str, Any]) -> float:
    """The τ that scorer ran at: the threshold record's (older artifacts: the training τ, which it equalled)."""
    record = _threshold_record(extra)
    return ThresholdRecord.read(record, extra).temperature if record else float(extra.get("temperature", 1.0))


def scoring_temperature(spec: ScorerSpec, extra: dict[str, Any]) -> float:
    """The τ the scorer runs at on prompts with this metadata unless ``--temperature`` says otherwise: the
    threshold record's for the scorer it was calibrated with; the training τ for a scorer registered with
    ``trained_temperature`` (Eq. 3 at the τ the negatives were trained with); else the scorer's own default
    (0.01 for the negative-label scorers)."""
    if spec.name == calibrated_scorer(extra):
        return calibrated_temperature(extra)
    if spec.trained_temperature and "temperature" in extra:
        return float(extra["temperature"])
    return float(spec.default_temperature)


def warn_no_decision(reason: str) -> None:
    warnings.warn(f"the stored ID threshold does not apply ({reason}), so scores carry no OOD decision; "
                  "get one with --calibrate ID_IMAGES (a folder of in-distribution images) or --threshold VALUE",
                  ThresholdWarning, stacklevel=2)
