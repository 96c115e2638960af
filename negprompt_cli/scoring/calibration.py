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
sufficient count.

**Per class** (``--per-class``, Mondrian conformal prediction): the images are split by the class they are
*predicted* as (the only class known for a new image), and each class gets its own rank among its own n_c scores,
with the same promise for the new ID images predicted as it. Fewer images per class make each interval wider; a
class with fewer images than the request needs uses the pooled threshold, which promises nothing for that class
in particular (one warning names those classes).

And m new ID images like the calibration images keep a Beta-binomial number of images (per class: a sum of
independent ones): outside its 99 % interval, :func:`warn_if_shifted` says the images differ from the calibration
images. The distributions are scipy's (imported when used: this module is also the report's, which imports no torch).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
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
    per_class: bool = False  # one threshold per predicted class (--per-class), each with this promise

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


def check_calibrating(request: KeepRequest, calibrate_on: object, threshold: float | None = None) -> None:
    """--keep, --confidence and --per-class say how a threshold is calibrated here, so they need --calibrate; a
    threshold given by hand (--threshold) and one calibrated here cannot both decide."""
    if threshold is not None and calibrate_on is not None:
        raise UsageError("give --threshold VALUE or --calibrate ID_IMAGES, not both")
    if calibrate_on is None and request != KeepRequest():
        given = [flag for flag, on in (("--keep", request.keep != KEEP), ("--confidence", request.confidence is not
                                       None), ("--per-class", request.per_class)) if on]
        verb = "says" if len(given) == 1 else "say"
        raise UsageError(f"{' and '.join(given)} {verb} how a threshold is calibrated here, and there is no "
                         "--calibrate", hint="add --calibrate ID_IMAGES (a folder of in-distribution images)")


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


def calibrate_request(scores: np.ndarray, predictions: np.ndarray | None, request: KeepRequest, *,
                      names: list[str] | None = None, source: str = "the calibration images",
                      best_effort: bool = False) -> dict[str, Any]:
    """The threshold record for ``request``: the pooled threshold (:func:`calibrate`), and with ``per_class`` one
    per predicted class (``predictions``, indices into ``names``) under ``per_class`` in the record: ``values``
    (the pooled one for a class with too few images), ``n_images`` (the class's calibration images), ``rank``
    and ``keep_interval`` (None where the pooled threshold stands in)."""
    scores = np.asarray(scores, dtype=np.float64)
    pooled = calibrate(scores, request.keep, request.confidence, source=source, best_effort=best_effort)
    record = pooled.record()
    if not request.per_class:
        return record
    if predictions is None or names is None:
        raise ValueError("per-class calibration needs each image's predicted class and the class names")
    predictions = np.asarray(predictions)
    needed = smallest_count(request.keep, request.confidence)
    values: list[float] = []
    counts: list[int] = []
    ranks: list[int | None] = []
    intervals: list[list[float] | None] = []
    for c in range(len(names)):
        own = scores[predictions == c]
        counts.append(len(own))
        if len(own) < needed:
            values.append(pooled.value)
            ranks.append(None)
            intervals.append(None)
            continue
        found = calibrate(own, request.keep, request.confidence, source=source)
        values.append(found.value)
        ranks.append(found.rank)
        intervals.append([round(v, 6) for v in found.interval])
    record["per_class"] = {"values": values, "n_images": counts, "rank": ranks, "keep_interval": intervals,
                           "needed": needed}
    short = [c for c, r in enumerate(ranks) if r is None]
    if short:
        fewest = min(short, key=lambda c: (counts[c], c))
        shown = ", ".join(repr(names[c]) for c in sorted(short, key=lambda c: (counts[c], c))[:3])
        warnings.warn(f"--per-class: {len(short)} of {len(names)} class(es) have fewer than {needed} calibration "
                      f"images predicted as them ({shown}{' ...' if len(short) > 3 else ''}; fewest "
                      f"{counts[fewest]}), so they use the pooled threshold, which promises nothing for them in "
                      "particular; calibrate on more images of those classes", ThresholdWarning, stacklevel=3)
    return record


def class_thresholds(record: dict[str, Any] | None) -> list[float] | None:
    """A per-class record's thresholds, by class index (None for a single threshold)."""
    if record is None or "per_class" not in record:
        return None
    return [float(v) for v in record["per_class"]["values"]]


@dataclass(frozen=True)
class Decision:
    """How a score becomes an OOD decision: below ``value``, or with a per-class ``record`` below the threshold of
    the image's predicted class. ``record`` is the threshold's calibration record where there is one (stored or
    --calibrate; None for a threshold given by hand); ``value`` None: no decision at all."""

    value: float | None = None
    record: dict[str, Any] | None = None

    @functools.cached_property
    def per_class(self) -> list[float] | None:  # read once: every row's decision asks for it
        return class_thresholds(self.record)

    def threshold_for(self, prediction: int) -> float | None:
        per_class = self.per_class
        return per_class[prediction] if per_class is not None else self.value

    def calibrated_for(self, prediction: int) -> tuple[int | None, int | None]:
        """(n, rank) of the calibration behind the threshold an image predicted as ``prediction`` is judged by,
        where it promises something (score files carry them for report's check); (None, None) otherwise, and for
        a class on the pooled threshold of a per-class record (no promise of its own)."""
        if not promises(self.record):
            return None, None
        assert self.record is not None
        per = self.record.get("per_class")
        if per is None:
            return int(self.record["n_images"]), int(self.record["rank"])
        rank = per["rank"][prediction]
        return (int(per["n_images"][prediction]), int(rank)) if rank is not None else (None, None)


def rank_promise(n: int, rank: int) -> str:
    """What the ``rank``-th lowest of ``n`` calibration scores promises, from those two numbers alone (what a score
    file records): its expected keep-rate and the 90 % interval of the true one."""
    low, high = keep_interval(n, rank)
    return (f"calibrated at rank {rank} of {n} ID scores, it keeps {100 * (1 - rank / (n + 1)):.1f}% of new ID images "
            f"like those in expectation (90% interval {100 * low:.1f}-{100 * high:.1f}%)")


def threshold_words(value: float, per_class: list[float] | None, digits: int = 4) -> str:
    """The threshold in a message: "threshold 0.4123", or "per-class thresholds 0.3871-0.5012 over 6 classes"."""
    if per_class is None:
        return f"threshold {value:.{digits}f}"
    return f"per-class thresholds {min(per_class):.{digits}f}-{max(per_class):.{digits}f} over {len(per_class)} classes"


def promises(record: dict[str, Any] | None) -> bool:
    """Whether a threshold record carries a guarantee for new images: its rank is recorded (calibrated since
    guarantees were), and it was not set on the images the prompts were fitted on (those are not exchangeable
    with new ones)."""
    return record is not None and "rank" in record and str(record.get("source")) != "training"


def describe(record: dict[str, Any]) -> str:
    """What a stored threshold promises, in one phrase ("keeps >= 95% of new ID images in expectation (90%
    interval 91.8-97.6%)"); records written before guarantees were recorded say so."""
    keep = float(record.get("id_kept", KEEP))
    if "per_class" in record:
        return _describe_per_class(record)
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


def _describe_per_class(record: dict[str, Any]) -> str:
    """One phrase for a per-class record: how many classes have their own threshold, the widest interval among
    them (the class with fewest images), and what the others use."""
    per = record["per_class"]
    keep, confidence = float(record["id_kept"]), record.get("confidence")
    promise = f"with probability {confidence:g}" if confidence is not None else "in expectation"
    own = [c for c, r in enumerate(per["rank"]) if r is not None]
    others = len(per["rank"]) - len(own)
    pooled = ("the pooled threshold" if not others else
              f"{others} class(es) with fewer than {per['needed']} images use the pooled threshold")
    if not own:
        single = {k: v for k, v in record.items() if k != "per_class"}
        return (f"was asked per class, but no class has the {per['needed']} calibration images a threshold of its own "
                f"needs: every class uses the pooled one, which {describe(single)}")
    widest = min(own, key=lambda c: (per["n_images"][c], c))
    low, high = per["keep_interval"][widest]
    said = (f"keeps, per class, >= {100 * keep:.1f}% of the new ID images predicted as each of {len(own)} "
            f"class(es) {promise} (90% interval as wide as {100 * low:.1f}-{100 * high:.1f}% for the class with fewest "
            f"images, {per['n_images'][widest]})")
    return said + (f"; {pooled}, which promises nothing for them in particular" if others else "")


SHIFT_LEVEL = 0.99  # a keep-rate outside this predictive interval is a shift, not bad luck, 99 times in 100


@dataclass(frozen=True)
class KeptCount:
    """New ID images judged by one calibrated threshold, the ``rank``-th lowest of ``n`` calibration scores: it kept
    ``kept`` of ``images``."""

    n: int
    rank: int
    images: int
    kept: int


def kept_counts(record: dict[str, Any] | None, by_class: Mapping[int, Sequence[int]]) -> list[KeptCount]:
    """The counts to check a threshold's promise with, from its record and, per predicted class, (labelled ID
    images, kept): one count for a single threshold; per class, one for each class with a threshold of its own
    (a class on the pooled threshold has no promise of its own to check). None when the record promises nothing."""
    if not promises(record):
        return []
    assert record is not None
    per = record.get("per_class")
    if per is None:
        images, kept = sum(m for m, _ in by_class.values()), sum(k for _, k in by_class.values())
        return [KeptCount(int(record["n_images"]), int(record["rank"]), images, kept)] if images else []
    return [KeptCount(int(per["n_images"][c]), int(per["rank"][c]), m, k) for c, (m, k) in sorted(by_class.items())
            if m and 0 <= c < len(per["rank"]) and per["rank"][c] is not None]


def expected_kept(counts: list[KeptCount], level: float = SHIFT_LEVEL) -> tuple[int, int]:
    """The ``level`` interval of how many of the counts' new ID images, were they like the calibration images,
    their thresholds keep: per threshold Beta-binomial (its true keep-rate's Beta, then m draws), summed over
    independent thresholds (per class) by multiplying their characteristic functions."""
    from scipy.stats import betabinom  # noqa: PLC0415 (see rank_for)

    tail = (1.0 - level) / 2
    if len(counts) == 1:
        one = counts[0]
        kept = betabinom(one.images, one.n + 1 - one.rank, one.rank)
        return int(kept.ppf(tail)), int(kept.ppf(1.0 - tail))
    total = sum(c.images for c in counts)
    size = 1 << (total + 1).bit_length()  # no wrap-around: the sum's support is 0..total
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    alike: dict[tuple[int, int, int], int] = {}
    for c in counts:  # classes calibrated alike share one pmf: raise its transform to their number
        alike[(c.n, c.rank, c.images)] = alike.get((c.n, c.rank, c.images), 0) + 1
    for (n, k, m), times in alike.items():
        pmf = betabinom(m, n + 1 - k, k).pmf(np.arange(m + 1))
        spectrum *= np.fft.rfft(pmf, size) ** times
    cdf = np.cumsum(np.clip(np.fft.irfft(spectrum, size)[: total + 1], 0.0, None))
    cdf /= cdf[-1]
    return int(np.searchsorted(cdf, tail - 1e-12)), int(np.searchsorted(cdf, 1.0 - tail - 1e-12))


class ThresholdWarning(NegPromptWarning):
    """A threshold that cannot decide (scores are written without an OOD decision), or whose promise new ID images
    break."""


def warn_if_shifted(counts: list[KeptCount], what: str = "labelled ID images") -> None:
    """One warning when labelled ID images keep a share their thresholds' calibration makes very unlikely (outside
    the 99 % interval for that many images): they differ from the calibration images."""
    if not counts:
        return  # nothing promised to compare with
    images, kept = sum(c.images for c in counts), sum(c.kept for c in counts)
    low, high = expected_kept(counts)
    if low <= kept <= high:
        return
    like = (f"images like its {counts[0].n} calibration images" if len(counts) == 1 else
            f"images like the calibration images of these {len(counts)} classes (each class its own threshold)")
    warnings.warn(f"the threshold kept {kept} of these {images} {what} ({100 * kept / images:.1f}%); "
                  f"{like} would keep {low}-{high} ({100 * low / images:.1f}-{100 * high / images:.1f}%, 99% of the "
                  "time): these images differ from the calibration images; recalibrate on images like them "
                  "(--calibrate)", ThresholdWarning, stacklevel=3)
