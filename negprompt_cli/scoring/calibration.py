"""A threshold with a stated guarantee: which order statistic of n calibration scores to use so that new ID
images from the same distribution are kept at the rate asked for.

The threshold is the k-th lowest calibration score; a new image is kept when it scores at least that. For
exchangeable scores the share of new images it keeps is 1 − U, where U ~ Beta(k, n + 1 − k) (the coverage of
the k-th order statistic), so:

* **in expectation** (split conformal prediction): E[keep] = 1 − k/(n + 1) ≥ ``keep`` for k = ⌊(n + 1)(1 − keep)⌋;
  the threshold the project used before, the (⌊(1 − keep)·n⌋ + 1)-th lowest, keeps 1 − (⌊0.05n⌋ + 1)/(n + 1) on
  average, e.g. 94.2 % for n = 120 at a stated 95 %;
* **with confidence C**: P(keep ≥ ``keep``) = P(U ≤ 1 − keep) = I_{1−keep}(k, n + 1 − k) ≥ C for the largest such
  k (the highest threshold that still promises it);
* the 90 % interval of the true keep-rate is that of 1 − U.

Too few images for the request (k would be 0: no score can be the threshold) is one error naming the smallest
sufficient count. And m new ID images like the calibration images keep a Beta-binomial number of images: outside
its 99 % interval, :func:`warn_if_shifted` says the images differ from the calibration images. The distributions
are scipy's (imported when used: this module is also the report's, which imports no torch).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NegPromptWarning, UsageError

KEEP = 0.95  # the ID share a threshold keeps unless told otherwise
INTERVAL = 0.90  # the interval of the true keep-rate that records and messages state


@dataclass(frozen=True)
class KeepRequest:
    """What a threshold must promise: keep ``keep`` of new ID images, in expectation (``confidence`` None) or with
    probability ``confidence`` (``--keep``, ``--confidence``)."""

    keep: float = KEEP
    confidence: float | None = None

    def __post_init__(self) -> None:
        check_request(self.keep, self.confidence)


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it promises: the ``rank``-th lowest of ``n`` scores keeps at least ``keep`` of new
    ID images in expectation (``confidence`` None) or with probability ``confidence``; ``interval`` is the 90 %
    interval of the share it truly keeps."""

    value: float
    n: int
    rank: int
    keep: float
    confidence: float | None
    interval: tuple[float, float]
    requested: float | None = None  # the keep-rate asked for, when too few images gave less (best effort)

    def record(self) -> dict[str, Any]:
        record = {"value": self.value, "id_kept": self.keep, "n_images": self.n, "rank": self.rank,
                  "confidence": self.confidence, "keep_interval": [round(v, 6) for v in self.interval]}
        if self.requested is not None:
            record["requested_keep"] = self.requested
        return record


def check_request(keep: float, confidence: float | None) -> None:
    if not 0.0 < keep < 1.0:
        raise UsageError(f"--keep must be between 0 and 1 (got {keep})", hint="e.g. --keep 0.95")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise UsageError(f"--confidence must be between 0 and 1 (got {confidence})", hint="e.g. --confidence 0.9")


def rank_for(n: int, keep: float, confidence: float | None = None) -> int:
    """The rank k (1-based; 0 = none works) of the threshold among n sorted scores, as the module docstring says."""
    if confidence is None:
        return min(n, math.floor((n + 1) * (1.0 - keep) + 1e-9))
    from scipy.stats import beta  # noqa: PLC0415 (scipy costs a second to import; only calibration needs it)

    ranks = np.arange(1, n + 1)
    promised = beta.cdf(1.0 - keep, ranks, n + 1 - ranks) >= confidence  # falls as the rank rises
    return int(ranks[promised].max()) if promised.any() else 0


def smallest_count(keep: float, confidence: float | None = None) -> int:
    """The fewest calibration images for which the request can be met (rank 1 suffices)."""
    if confidence is None:
        return math.ceil(1.0 / (1.0 - keep) - 1 - 1e-9)
    # rank 1: P(U_(1) <= 1 - keep) = 1 - keep^n >= confidence
    return math.ceil(math.log(1.0 - confidence) / math.log(keep) - 1e-9)


def keep_interval(n: int, rank: int, level: float = INTERVAL) -> tuple[float, float]:
    """The ``level`` central interval of the share of new ID images the ``rank``-th lowest of ``n`` keeps."""
    from scipy.stats import beta  # noqa: PLC0415 (see rank_for)

    tail = (1.0 - level) / 2
    return float(1.0 - beta.ppf(1.0 - tail, rank, n + 1 - rank)), float(1.0 - beta.ppf(tail, rank, n + 1 - rank))


def calibrate(scores: np.ndarray, keep: float = KEEP, confidence: float | None = None, *,
              source: str = "the calibration images", best_effort: bool = False) -> Calibration:
    """The threshold that keeps ``keep`` of new ID images like these (see the module docstring).

    Too few scores for the request: an error, or with ``best_effort`` (a threshold set on the way, as fit-neg's)
    the lowest score, recorded with what it does promise (``keep`` becomes its expected keep-rate)."""
    check_request(keep, confidence)
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    if n == 0:
        raise UsageError(f"no ID scores to calibrate a threshold on ({source})")
    rank = rank_for(n, keep, confidence)
    if rank < 1 and best_effort:
        return Calibration(float(scores[0]), n, 1, 1.0 - 1.0 / (n + 1), None, keep_interval(n, 1),
                           requested=keep)
    if rank < 1:
        wanted = f"{keep:.0%}" + (f" with probability {confidence:g}" if confidence is not None else
                                  " in expectation")
        raise UsageError(f"{n} image(s) in {source} are too few for a threshold that keeps {wanted}: at least "
                         f"{smallest_count(keep, confidence)} are needed",
                         hint="calibrate on more ID images, or ask for less (--keep, --confidence)")
    return Calibration(float(scores[rank - 1]), n, rank, keep, confidence, keep_interval(n, rank))


def promises(record: dict[str, Any] | None) -> bool:
    """Whether a threshold record carries a guarantee for new images: its rank is recorded (calibrated since
    guarantees were), and it was not set on the images the prompts were fitted on (those are not exchangeable
    with new ones)."""
    return record is not None and "rank" in record and str(record.get("source")) != "training"


def describe(record: dict[str, Any]) -> str:
    """What a stored threshold promises, in one phrase ("keeps >= 95% of new ID images in expectation (90%
    interval 91.8-97.6%)"); records written before guarantees were recorded say so."""
    keep = float(record.get("id_kept", KEEP))
    if "rank" not in record:
        return f"keeps {keep:.0%} of its calibration images (guarantee unknown: calibrated before they were stated)"
    low, high = record["keep_interval"]
    confidence = record.get("confidence")
    promise = f"with probability {confidence:g}" if confidence is not None else "in expectation"
    said = f"keeps >= {100 * keep:.1f}% of new ID images {promise} (90% interval {100 * low:.1f}-{100 * high:.1f}%)"
    if record.get("requested_keep") is not None:
        wanted = float(record["requested_keep"])
        said += (f", less than the {wanted:.0%} asked for: {record['n_images']} images are too few (at least "
                 f"{smallest_count(wanted)} are needed)")
    return said


SHIFT_LEVEL = 0.99  # a keep-rate outside this predictive interval is a shift, not bad luck, 99 times in 100


def expected_kept(record: dict[str, Any], m: int, level: float = SHIFT_LEVEL) -> tuple[int, int] | None:
    """The ``level`` interval of how many of ``m`` new ID images like the calibration images the threshold of
    ``record`` keeps: Beta-binomial (the true keep-rate's Beta, then m draws). None without a recorded rank."""
    if "rank" not in record or "n_images" not in record:
        return None
    from scipy.stats import betabinom  # noqa: PLC0415 (see rank_for)

    n, k = int(record["n_images"]), int(record["rank"])
    kept = betabinom(m, n + 1 - k, k)
    tail = (1.0 - level) / 2
    return int(kept.ppf(tail)), int(kept.ppf(1.0 - tail))


class ThresholdWarning(NegPromptWarning):
    """A threshold that cannot decide (scores are written without an OOD decision), or whose promise new ID images
    break."""


def warn_if_shifted(record: dict[str, Any], kept: int, images: int, what: str = "labelled ID images") -> None:
    """One warning when labelled ID images keep a share the threshold's calibration makes very unlikely (outside
    the 99 % interval for that many images): they differ from the calibration images."""
    if not promises(record):
        return  # nothing promised to compare with
    expected = expected_kept(record, images)
    if expected is None or expected[0] <= kept <= expected[1]:
        return
    low, high = expected
    warnings.warn(f"the threshold kept {kept} of these {images} {what} ({100 * kept / images:.1f}%); "
                  f"images like its {record.get('n_images')} calibration images would keep {low}-{high} "
                  f"({100 * low / images:.1f}-{100 * high / images:.1f}%, 99% of the time): these images differ "
                  "from the calibration images; recalibrate on images like them (--calibrate)", ThresholdWarning,
                  stacklevel=3)
