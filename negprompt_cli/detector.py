"""Score images held in memory: the object a service, a notebook or an OpenOOD evaluator keeps.

``Detector`` loads prompts (or zero-shot class names) once, then scores PIL images, arrays, preprocessed
tensors or image files in batches, with the threshold decision. It is set up by the same code as
``negprompt score`` (``scoring.setup_scoring``) and encodes through the same function, so the same image in the
same batch gets the same score as a ``score`` run.

    detector = Detector.from_prompts("neg.safetensors")
    row = detector.score(pil_image)  # one image: one row {"score", "prediction", "ood", ...}
    rows = detector.score([pil_image, "photo.jpg"])  # a list (or an N x 3 x H x W tensor): a list of rows
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .devices import check_precision
from .errors import NegPromptWarning, UsageError
from .features.backbone import BackboneRequest, RuntimeOptions
from .features.image_features import EncodeOptions, decode_rgb, encode_pixels
from .features.local_features import check_local, encode_local
from .inputs.displayed import as_displayed
from .presets import DEFAULT_BACKBONE
from .scoring.calibration import Decision, KeepRequest
from .scoring.negative_labels import LabelRequest
from .scoring.setup import ScoringRequest, ScoringSetup, check_labels_apply, decision_rows, mine_labels, setup_scoring

MAY_IMPORT = ("shared", "inputs", "outputs", "features", "scoring")  # read by tests/test_architecture.py

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | Path
Images = ImageLike | Iterable[ImageLike]


def is_one_image(images: Any) -> bool:
    """One image (a PIL image, a file path, an H x W x 3 array, a preprocessed 3 x H x W tensor), not a batch."""
    if isinstance(images, (Image.Image, str, Path)):
        return True
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3


class Detector:
    """An OOD detector ready to score: prompts or class names, backbone, scorer and threshold, loaded once.

    Attributes:
        names: the class names, in prediction order.
        scorer: the scorer's name (``"energy"``, ``"mcm"``, ...).
        threshold: the ID threshold (score below it: OOD), or None when none applies; with per-class thresholds
            the pooled one (``class_thresholds`` decide).
        class_thresholds: per-class thresholds by class index (``calibrate(per_class=True)`` or a per-class
            threshold stored with the prompts): an image is OOD below its predicted class's; else None.
        threshold_source: where the threshold came from: ``"stored"`` (with the prompts, for exactly this class
            list and scorer), ``"calibrated"`` (:meth:`calibrate`), ``"given"``, or None.
        why_no_threshold: when the prompts' stored threshold does not apply, why (else None).
        batch_size, precision: how images are encoded.
        setup: the scoring setup (backbone, text features, mined labels) shared with ``negprompt score``.
    """

    def __init__(self, setup: ScoringSetup, *, batch_size: int = 64, precision: str = "fp32",
                 threshold: float | None = None) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1 (got {batch_size})")
        self.setup = setup
        self.batch_size = batch_size
        self.precision = check_precision(setup.backbone.device, precision)
        self.threshold: float | None
        self.threshold_source: str | None
        self.why_no_threshold: str | None = None
        self.calibration: dict[str, Any] | None = None  # the threshold's record (its guarantee), where known
        self._said_no_threshold = False
        if threshold is not None:
            self.threshold, self.threshold_source = float(threshold), "given"
        else:
            stored, self.why_no_threshold = setup.stored()
            self.threshold, self.threshold_source = stored, "stored" if stored is not None else None
            self.calibration = setup.stored_threshold if stored is not None else None

    @classmethod
    def from_prompts(cls, prompts: str | Path, *, names: Sequence[str] | None = None, scorer: str | None = None,
                     temperature: float | None = None, device: str = "auto", lexicon: Path | None = None,
                     cache_dir: Path | None = None, batch_size: int = 64, precision: str = "fp32",
                     threshold: float | None = None, trust_backbone: bool = False, offline: bool = False,
                     scorer_options: dict[str, Any] | None = None, negatives: str | Path | None = None) -> Detector:
        """Learned prompts (a fit-pos, fit-neg or transfer artifact), optionally re-targeted to ``names``.
        ``negatives``: a list of negative labels used as given by a negative-label scorer (``--negatives``: a file,
        a folder, or a registered list's name such as ``negrefine-imagenet1k``) instead of mining ``lexicon``."""
        runtime = RuntimeOptions(device=device, offline=offline, trust_backbone=trust_backbone)
        request = ScoringRequest(prompts=Path(prompts), names=list(names) if names is not None else None,
                                 runtime=runtime, scorer=scorer, scorer_options=dict(scorer_options or {}),
                                 temperature=temperature, labels=_labels(lexicon, negatives),
                                 encode=EncodeOptions(cache_dir, quiet=True))
        return cls(_setup(request), batch_size=batch_size, precision=precision, threshold=threshold)

    @classmethod
    def zero_shot(cls, names: Sequence[str], *, backbone: str = DEFAULT_BACKBONE, pretrained: str | None = None,
                  scorer: str | None = None, temperature: float | None = None, device: str = "auto",
                  lexicon: Path | None = None, cache_dir: Path | None = None, batch_size: int = 64,
                  precision: str = "fp32", threshold: float | None = None, offline: bool = False,
                  scorer_options: dict[str, Any] | None = None, negatives: str | Path | None = None) -> Detector:
        """No learned prompts: ``names`` under the scorer's own ID prompts (csp by default: CSP's 8 templates;
        ``mcm``: the hand template "a photo of a {}."). ``negatives`` as for :meth:`from_prompts`."""
        request = ScoringRequest(names=list(names), zero_shot=True,
                                 backbone=BackboneRequest(backbone, pretrained, device, offline=offline),
                                 scorer=scorer, scorer_options=dict(scorer_options or {}), temperature=temperature,
                                 labels=_labels(lexicon, negatives), encode=EncodeOptions(cache_dir, quiet=True))
        return cls(_setup(request), batch_size=batch_size, precision=precision, threshold=threshold)

    @property
    def names(self) -> list[str]:
        return list(self.setup.names)

    @property
    def scorer(self) -> str:
        return self.setup.scorer

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The backbone's eval preprocessing (what a tensor passed to :meth:`score` must already have had), on the
        image as a viewer shows it (EXIF orientation, 16-bit pixels scaled)."""
        return self.setup.backbone.preprocess(as_displayed(image))

    def _pixels(self, image: ImageLike) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            if image.dim() != 3:
                raise UsageError(f"a tensor image must be one preprocessed [3, H, W] image (got {list(image.shape)})",
                                 hint="pass a batch as a list, or preprocess PIL images with detector.preprocess")
            return image
        if isinstance(image, np.ndarray):
            return self.preprocess(Image.fromarray(image))
        if isinstance(image, (str, Path)):
            try:
                data = Path(image).read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {image}: {exc.strerror or exc}") from None
            decoded = decode_rgb(data)
            if decoded is None:
                raise UsageError(f"{image} is not an image PIL can read")
            return self.setup.backbone.preprocess(decoded)
        if isinstance(image, Image.Image):
            return self.preprocess(image)
        raise UsageError(f"cannot score a {type(image).__name__}",
                         hint="pass PIL images, HxWx3 uint8 arrays, preprocessed [3, H, W] tensors or file paths")

    def __repr__(self) -> str:
        names = self.setup.names
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        backbone = self.setup.backbone
        decision = (f"threshold={self.threshold:.4g} ({self.threshold_source})" if self.threshold is not None
                    else "threshold=None")
        if self.class_thresholds is not None:
            decision = f"per-class thresholds ({len(self.class_thresholds)}, {self.threshold_source})"
        return (f"Detector(backbone={backbone.name!r}, pretrained={backbone.pretrained!r}, "
                f"classes={len(names)} [{shown}], scorer={self.scorer!r}, {decision})")

    def features(self, images: Images) -> torch.Tensor:
        """Unit image features [N, E], encoded in batches of ``batch_size`` (no cache: images in memory have no
        file to key it by); for a scorer of patch features (``gl-mcm``) rows of (1 + P)·E: the global feature,
        then the P patch features. ``images``: one image, a list of them, or a preprocessed N x 3 x H x W tensor."""
        each: Iterable[ImageLike]
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            each = list(images)
        elif is_one_image(images):
            each = [images]  # type: ignore[list-item]
        else:
            each = images  # type: ignore[assignment]
        batch: list[torch.Tensor] = []
        parts: list[torch.Tensor] = []
        encode = encode_local if self.setup.spec.local else encode_pixels  # a local scorer's rows carry patches
        for image in each:
            batch.append(self._pixels(image))
            if len(batch) == self.batch_size:
                parts.append(encode(self.setup.backbone, torch.stack(batch), self.precision))
                batch = []
        if batch:
            parts.append(encode(self.setup.backbone, torch.stack(batch), self.precision))
        if not parts:
            raise UsageError("no images given")
        return torch.cat(parts)

    @property
    def class_thresholds(self) -> list[float] | None:
        return self._decision.per_class

    @property
    def _decision(self) -> Decision:
        return Decision(self.threshold, self.calibration if self.threshold is not None else None)

    def score_features(self, features: torch.Tensor) -> list[dict[str, Any]]:
        return decision_rows(self.setup.scores(features), self.setup.names, self._decision)

    def score(self, images: Images) -> dict[str, Any] | list[dict[str, Any]]:
        """One dict per image: ``score`` (higher = more in-distribution), ``prediction`` (class name) and its
        index, ``ood`` (score below the threshold; None without one, which is warned once), the max cosines to
        the class prompts and to the negatives. One image (PIL, path, array, 3 x H x W tensor) gives one dict;
        a list of images, or an N x 3 x H x W tensor, a list of dicts in order."""
        rows = self.score_features(self.features(images))
        if self.threshold is None and not self._said_no_threshold:
            self._said_no_threshold = True
            why = f" ({self.why_no_threshold})" if self.why_no_threshold else ""
            warnings.warn(f"no threshold for this class list and scorer{why}: rows carry scores and ood None; "
                          "call detector.calibrate(id_images) or use detector.with_threshold(value)",
                          NegPromptWarning, stacklevel=2)
        return rows[0] if is_one_image(images) else rows

    __call__ = score

    def calibrate(self, id_images: Images, keep: float = 0.95, confidence: float | None = None, *,
                  per_class: bool = False) -> float:
        """Set (and return) the threshold that keeps ``keep`` of new in-distribution images like these, in
        expectation, or with probability ``confidence`` (as ``score --calibrate --keep --confidence``), for exactly
        this class list and scorer. ``calibration`` then holds its record: n, rank and the 90 % interval of the
        share of new ID images it keeps. Too few images for the request raise ``UsageError``.

        ``per_class`` (``--per-class``): one threshold per predicted class, each with that promise for the new
        images predicted as it (``class_thresholds``); the return value is then the pooled threshold, which the
        classes with too few images use (a ``ThresholdWarning`` names them)."""
        record, _ = self.setup.calibrate(self.features(id_images), source="Detector.calibrate",
                                         request=KeepRequest(keep, confidence, per_class))
        self.threshold, self.threshold_source = float(record["value"]), "calibrated"
        self.calibration = record
        return self.threshold

    def with_threshold(self, threshold: float | None) -> Detector:
        """A copy deciding at another threshold (None: scores only); the loaded model is shared."""
        other = copy.copy(self)
        other.threshold = float(threshold) if threshold is not None else None
        other.threshold_source = "given" if threshold is not None else None
        other.calibration = None  # a threshold by hand promises nothing, and is one for every class
        return other


def _labels(lexicon: Path | None, negatives: str | Path | None) -> LabelRequest:
    return LabelRequest(lexicon=lexicon, negatives=Path(negatives) if negatives is not None else None)


def _setup(request: ScoringRequest) -> ScoringSetup:
    """The scoring setup, with its labels; a test-time scorer is refused before any label is mined."""
    setup = setup_scoring(request)
    check_labels_apply(setup, request.labels)
    if setup.spec.local:
        check_local(setup.backbone)
    if setup.spec.test_time:
        raise UsageError(f"scorer {setup.scorer!r} scores a stream of images in order (its scores depend on the "
                         "images before them), and a Detector scores each call on its own",
                         hint=f"use negprompt.score(ScoreOptions(..., scorer={setup.scorer!r})) or `negprompt "
                              f"score --scorer {setup.scorer}`")
    return mine_labels(setup, request)

