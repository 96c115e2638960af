"""Everything a score needs besides the images, set up once: the backbone, the class names and their text
features, the scorer and its τ, mined negative labels, and the stored threshold's verdict.

``score`` (the stage) and :class:`~negprompt_cli.detector.Detector` (the Python object) both start here, so an
image scores the same through either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..environment import default_cache_dir, offline_requested
from ..errors import IncompatibleArtifactError, NegPromptError, UsageError
from ..features.backbone import Backbone, BackboneRequest, RuntimeOptions, artifact_backbone, load_backbone
from ..features.backbone_facts import remembered_backbone
from ..features.image_features import EncodeOptions
from ..features.local_features import split_rows
from ..features.text_encoder import SoftPromptTextEncoder
from ..features.text_features import HAND_TEMPLATE, hand_template_features, template_features, text_features_for
from ..outputs.artifact import PromptArtifact, artifact_id, check_fits_backbone, load_prompts
from ..presets import default_scorer
from ..registry import ScorerSpec, get_host, plugin_options
from .calibration import Decision, KeepRequest
from .composed_texts import ComposedTexts
from .negative_labels import LabelRequest, NegativeLabels, prepare, settings_fingerprint, zero_shot_templates
from .scores import ScorerContractError, Scores, score_features
from .thresholds import applicable, calibrated_scorer, scoring_temperature, threshold_record


@dataclass(frozen=True)
class ScoringRequest:
    """What to score with: learned prompts (``prompts``) or ``zero_shot`` class names, and how."""

    prompts: Path | None = None
    names: list[str] | None = None  # re-target the prompts to these names (required with zero_shot)
    zero_shot: bool = False
    backbone: BackboneRequest | None = None  # zero-shot: which backbone; with prompts: must match theirs
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    scorer: str | None = None  # None: what the prompts' threshold was calibrated for, else the default
    scorer_options: dict[str, Any] = field(default_factory=dict)  # its own Options' values (--scorer-option)
    temperature: float | None = None
    labels: LabelRequest = field(default_factory=LabelRequest)
    encode: EncodeOptions = EncodeOptions()  # its cache_dir holds the mined labels' features; quiet: no bars
    # build the model only when something needs it (an image or text to encode), when the feature cache remembers
    # the backbone's facts (``backbone_facts``): a run whose images are all cached loads no model
    defer_model: bool = False

    @property
    def offline(self) -> bool:
        """Nothing may be fetched (a named remote list of negatives included): --offline, or HF_HUB_OFFLINE."""
        return offline_requested(self.runtime.offline or (self.backbone is not None and self.backbone.offline))

    def __post_init__(self) -> None:  # the cheap checks, at once
        if self.zero_shot == (self.prompts is not None):
            raise UsageError("give --prompts P, or --zero-shot with --names FILE")
        if self.zero_shot and self.names is None:
            raise UsageError("--zero-shot needs --names FILE (the class names)")


@dataclass
class ScoringSetup:
    backbone: Backbone
    names: list[str]
    text_pos: torch.Tensor  # [C, E]
    text_neg: torch.Tensor | None  # [C, P, E]
    scorer: str
    spec: ScorerSpec  # the scorer as registered: its function and properties
    scorer_source: str  # "--scorer", "stored threshold" or "default"
    temperature: float
    prompts_id: str
    labels: NegativeLabels | None = None
    scorer_options: dict[str, Any] | None = None
    stored_threshold: dict[str, Any] | None = None
    artifact_names: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    artifact: PromptArtifact | None = None
    own_options: Any = None  # the scorer's own Options (``--scorer-option``), passed to it as keywords
    _composed: ComposedTexts | None = field(default=None, repr=False)  # composed_texts, once made

    @property
    def dim(self) -> int:
        return int(self.text_pos.shape[1])

    @property
    def scorer_fn(self) -> Any:
        return self.spec.fn

    @property
    def mined(self) -> torch.Tensor | None:
        return self.labels.features if self.labels is not None else None

    @property
    def settings(self) -> dict[str, Any] | None:
        """What a threshold for this setup is valid for besides scorer, τ and names: the label settings and the
        scorer's own options (a GL-MCM threshold at one local weight says nothing at another)."""
        settings = settings_fingerprint(self.labels, self.scorer_options)
        if self.own_options is not None:
            settings = {**(settings or {}), "scorer_options": asdict(self.own_options)}
        return settings

    @property
    def reads_negative_prompts(self) -> bool:
        return self.spec.needs_negative_prompts

    @property
    def scorer_keywords(self) -> dict[str, Any]:
        """What the scorer is called with besides cosines, τ and s: its label options (groups, seed), and the
        backbone's logit bias for a scorer registered to take it (0 for a model trained without one)."""
        keywords = dict(self.scorer_options or {})
        if self.own_options is not None and not self.spec.test_time:  # a test-time scorer gets them at start
            keywords |= asdict(self.own_options)
        if self.spec.logit_bias:
            keywords["logit_bias"] = self.backbone.logit_bias or 0.0
        return keywords

    @property
    def composed_texts(self) -> ComposedTexts | None:
        """What a scorer that writes texts per image encodes them with (one per setup: its texts are kept)."""
        if not self.spec.composes_texts or self.labels is None:
            return None
        if self._composed is None:
            templates = zero_shot_templates(self.spec.pool) or (HAND_TEMPLATE,)
            self._composed = ComposedTexts(self.backbone, self.names, self.labels.words, templates)
        return self._composed

    def mine(self, request: LabelRequest, *, cache_dir: Path | None = None, quiet: bool = False,
             offline: bool = False) -> ScoringSetup:
        """A negative-label scorer's labels for these class names (the slow part the first time: the lexicon is
        encoded once per backbone and cached); nothing for any other scorer."""
        mining = request.mining
        if self.spec.whole_pool and mining.fraction is None and mining.count is None and request.negatives is None:
            # every candidate a label (a --negatives list is used whole as it is)
            request = replace(request, mining=replace(mining, fraction=1.0))
        self._composed = None  # its texts name the labels mined before
        self.labels, self.scorer_options = prepare(self.backbone, self.spec.pool, self.names, self.text_pos, request,
                                                   cache_dir=cache_dir or default_cache_dir(), quiet=quiet,
                                                   offline=offline)
        return self

    def scores(self, features: torch.Tensor) -> Scores:
        """Unit image ``features`` [N, E] scored with exactly this scorer, τ, text features and mined labels.

        A scorer plugin that breaks its contract (cannot be called as documented, returns something else than one
        finite score per image for finite features) is named, with its plugin, in one error. A test-time scorer
        scores streams, not batches: its rows get the class and cosines here and NaN scores, which the stream fills
        (``score``'s in-order pass)."""
        features, local = split_rows(features, self.dim)  # rows with patch features: a local scorer's
        if self.spec.test_time:
            return score_features(features, self.text_pos, self.text_neg, scorer=_stream_pending,
                                  logit_scale=self.backbone.logit_scale, mined=self.mined)
        if self.spec.local and local is None:
            raise UsageError(f"the {self.scorer} scorer reads patch features, and these features have none",
                             hint="score images (encoded with their patch features), not saved global embeddings")
        try:
            result = score_features(features, self.text_pos, self.text_neg, scorer=self.scorer_fn,
                                    temperature=self.temperature, logit_scale=self.backbone.logit_scale,
                                    mined=self.mined, scorer_options=self.scorer_keywords,
                                    local=local if self.spec.local else None, texts=self.composed_texts)
        except ScorerContractError as exc:
            raise self.broken(str(exc)) from None
        except (TypeError, ValueError, RuntimeError, IndexError) as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # the device's, not the scorer's
                raise
            raise self.broken(f"failed: {type(exc).__name__}: {exc}") from exc
        if not bool(torch.isfinite(result.score).all()) and bool(torch.isfinite(features).all()):
            bad = int((~torch.isfinite(result.score)).sum())
            raise self.broken(f"returned non-finite scores for {bad} of {len(result.score)} image(s) whose "
                               "features are finite")
        return result

    def broken(self, what: str) -> NegPromptError:
        entry = get_host().scorers.get(self.scorer)
        plugin = f" (plugin {entry.plugin!r})" if entry is not None else ""
        return NegPromptError(f"scorer {self.scorer!r}{plugin} {what}",
                              hint="a scorer is called as scorer(pos [B, C], neg [B, C, P] or None, *, temperature, "
                                   "logit_scale, ...) and returns one finite score per image, a Tensor[B] "
                                   "(docs/plugins.md); report it to the plugin's authors")

    def threshold_record(self, scores: torch.Tensor, *, source: str, request: KeepRequest = KeepRequest(),
                         predictions: torch.Tensor | None = None, best_effort: bool = False) -> dict[str, Any]:
        """The threshold record that keeps ``request.keep`` (95 %) of new ID images like these ``scores``, in
        expectation or with probability ``request.confidence``, per predicted class (``predictions``) with
        ``request.per_class`` (``calibration``), for exactly this scorer, τ, class list and label settings."""
        return threshold_record(scores, names=self.names, scorer=self.scorer, temperature=self.temperature,
                                source=source, request=request, predictions=predictions, best_effort=best_effort,
                                settings=self.settings)

    def calibrate(self, features: torch.Tensor, *, source: str, request: KeepRequest = KeepRequest(),
                  best_effort: bool = False) -> tuple[dict[str, Any], torch.Tensor]:
        """(the threshold record for these ID ``features``, as :meth:`threshold_record`, their predicted classes)."""
        result = self.scores(features)
        return self.threshold_record(result.score, source=source, request=request, predictions=result.prediction,
                                     best_effort=best_effort), result.prediction

    def stored(self) -> tuple[float | None, str | None]:
        """(the stored threshold, None) when it was calibrated for exactly these names, scorer, τ and label
        settings; (None, why not) otherwise; (None, None) when the prompts carry none."""
        return applicable(self.stored_threshold, self.artifact_names, names=self.names, scorer=self.scorer,
                          temperature=self.temperature, settings=self.settings, extra=self.extra)


def _stream_pending(pos: torch.Tensor, neg: torch.Tensor | None, **_: Any) -> torch.Tensor:
    """A test-time scorer's per-batch stand-in: no score yet (NaN), its stream gives them."""
    return torch.full((pos.shape[0],), float("nan"), device=pos.device)


def zero_shot_prompts(scorer: str) -> tuple[str, ...]:
    """The ID class prompts zero-shot ``scorer`` uses, as its paper did: a negative-label scorer's own
    (NegLabel's "the nice {}", CSP's 8-template ensemble), else MCM's hand template "a photo of a {}."."""
    return zero_shot_templates(get_host().scorer_spec(scorer).pool) or (HAND_TEMPLATE,)


def zero_shot_features(backbone: Backbone, names: list[str], scorer: str) -> torch.Tensor:
    """Unit ID class features of :func:`zero_shot_prompts` (an ensemble averages its raw outputs)."""
    encoder = SoftPromptTextEncoder(backbone)
    templates = zero_shot_prompts(scorer)
    if templates == (HAND_TEMPLATE,):
        return hand_template_features(encoder, names)
    return template_features(encoder, names, templates)


def setup_scoring(request: ScoringRequest) -> ScoringSetup:
    """Load and check everything but the mined labels (:func:`mine_labels`), before any image is encoded."""
    names = list(request.names) if request.names is not None else None
    artifact = None
    if request.zero_shot:
        assert names is not None
        backbone = _backbone(request, request.backbone or BackboneRequest())
        # the ID prompts depend on the scorer (each scorer's paper's own), so it is chosen first here
        scorer_first = _chosen_scorer(request, None, False, backbone.name)
        text_pos, text_neg = zero_shot_features(backbone, names, scorer_first), None
        prompts_id = f"zero-shot:{backbone.name}:{backbone.pretrained}"
        stored, extra, artifact_names, tau_scorer = None, {}, names, None
    else:
        assert request.prompts is not None
        artifact = load_prompts(request.prompts)
        runtime = request.runtime
        if request.backbone is not None:  # named on the command line: the user chose it
            artifact.check_backbone({"backbone": request.backbone.name, "pretrained": request.backbone.pretrained},
                                    request.prompts)
            runtime = replace(runtime, trust_backbone=True)
        backbone = _backbone(request, artifact_backbone(artifact, runtime, request.prompts))
        check_fits_backbone(artifact, backbone.text_width, backbone.context_length, backbone.embed_dim,
                            request.prompts)
        names = names or list(artifact.class_names)
        text_pos, text_neg = text_features_for(backbone, artifact, names, request.runtime.text_chunk)
        prompts_id = artifact_id(request.prompts)
        stored, extra = artifact.extra.get("threshold"), artifact.extra
        tau_scorer = calibrated_scorer(artifact.extra)
        artifact_names = list(artifact.class_names)
    scorer = _chosen_scorer(request, tau_scorer, text_neg is not None, backbone.name)
    scorer_source = "--scorer" if request.scorer else "stored threshold" if tau_scorer else "default"
    spec = get_host().scorer_spec(scorer)  # unknown names fail before any image is encoded
    if spec.needs_negative_prompts and text_neg is None:
        raise IncompatibleArtifactError(
            f"the {scorer} scorer needs negative prompts, and these prompts have none (a fit-pos artifact or "
            "--zero-shot)", hint="pass a fit-neg artifact, or use --scorer mcm (or neglabel / csp)")
    # The artifact's τ is the one its threshold was calibrated with: only that scorer inherits it.
    temperature = (request.temperature if request.temperature is not None
                   else scoring_temperature(spec, extra))
    return ScoringSetup(backbone=backbone, names=names, text_pos=text_pos, text_neg=text_neg, scorer=scorer,
                        spec=spec, scorer_source=scorer_source, temperature=temperature,
                        prompts_id=prompts_id, stored_threshold=stored, artifact_names=artifact_names, extra=extra,
                        artifact=artifact,
                        own_options=plugin_options("scorer", scorer, spec.fn, request.scorer_options))


def _backbone(request: ScoringRequest, wanted: BackboneRequest) -> Backbone:
    if request.defer_model:
        return remembered_backbone(wanted, request.encode.cache_dir or default_cache_dir())
    return load_backbone(wanted)


def _chosen_scorer(request: ScoringRequest, calibrated_for: str | None, has_negatives: bool, backbone: str) -> str:
    """--scorer; else what the prompts recommend (the scorer their threshold was calibrated for); else the
    default for what the user scores with, on this backbone (``presets.default_scorer``)."""
    return request.scorer or calibrated_for or default_scorer(has_negatives, zero_shot=request.zero_shot,
                                                              backbone=backbone)


def check_labels_apply(setup: ScoringSetup, labels: LabelRequest) -> None:
    """Negative-label settings given to a scorer that reads no negative labels would silently do nothing: refused
    (before any image is encoded), naming the scorers that read them."""
    given = labels.given()
    if setup.spec.pool is None and given:
        readers = [spec.name for spec in get_host().scorer_specs() if spec.pool is not None]
        source = {"default": " (the default here)", "stored threshold": " (the one the stored threshold is for)"}.get(
            setup.scorer_source, "")
        verb = "sets" if len(given) == 1 else "set"
        raise UsageError(f"{' and '.join(given)} {verb} the negative labels, and the {setup.scorer} scorer{source} "
                         "reads none", hint=f"drop {'them' if len(given) > 1 else 'it'}, or choose a scorer that "
                                            f"reads them: --scorer {', '.join(readers)}")


def mine_labels(setup: ScoringSetup, request: ScoringRequest) -> ScoringSetup:
    """:meth:`ScoringSetup.mine` with the request's label settings. Only the process that scores mines."""
    return setup.mine(request.labels, cache_dir=request.encode.cache_dir, quiet=request.encode.quiet,
                      offline=request.offline)


def setup_for_features(backbone: Backbone, names: list[str], text_pos: torch.Tensor, text_neg: torch.Tensor | None,
                       scorer: str, extra: dict[str, Any], *, stored: dict[str, Any] | None = None,
                       artifact_names: list[str] | None = None) -> ScoringSetup:
    """The scoring setup for text features a stage already holds (fit-neg's new prompts, transfer's re-targeted
    ones): the same scorer, τ and threshold rules as ``score``, resolved in one place. ``extra`` is the
    artifact metadata τ comes from; ``stored`` a threshold record to judge with :meth:`ScoringSetup.stored`."""
    spec = get_host().scorer_spec(scorer)
    return ScoringSetup(backbone=backbone, names=list(names), text_pos=text_pos, text_neg=text_neg, scorer=scorer,
                        spec=spec, scorer_source="stage", temperature=scoring_temperature(spec, extra),
                        prompts_id="", stored_threshold=stored, artifact_names=list(artifact_names or names),
                        extra=extra, own_options=plugin_options("scorer", scorer, spec.fn, {}))


def decision_rows(result: Scores, names: list[str], decision: Decision) -> list[dict[str, Any]]:
    """Per image: score, predicted class and index, the OOD decision (None without a threshold; per class, by the
    predicted class's threshold) and the max cosines to the class prompts and the negatives: what ``score`` writes
    and the ``Detector`` returns."""
    rows = []
    for i in range(len(result.score)):
        value, pred = float(result.score[i]), int(result.prediction[i])
        threshold = decision.threshold_for(pred)
        rows.append({"score": value, "prediction": names[pred], "prediction_index": pred,
                     "ood": (value < threshold) if threshold is not None else None,
                     "max_pos_cos": float(result.max_pos_cos[i]),
                     "max_neg_cos": float(result.max_neg_cos[i]) if result.max_neg_cos is not None else None})
    return rows
