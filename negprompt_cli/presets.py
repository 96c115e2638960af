"""Every default setting, once, as data.

Each stage's options dataclass carries its defaults (``DataOptions``, ``PromptSettings``,
``FitNegOptions``, ``ScoreOptions``); the two optimisation recipes live here. The CLI declares
its options as "unset" and overrides these presets only with what the user gave (``from_cli``, or
``override`` with the explicit ``UNSET``), so a default is never restated in a second place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_BACKBONE = "ViT-B/16"  # OpenCLIP ViT-B/16, LAION-2B (laion2b_s34b_b88k): the paper's backbone
EXPLAIN_TOP = 3  # score --explain: closest classes and negatives listed per image
ADAPTIVE_SLOTS = 10  # score --adaptive: image features remembered per label (AdaNeg's memleng)
ADAPTIVE_WEIGHT = 0.1  # score --adaptive: λ in adaptive + λ · static score (AdaNeg's)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings. Defaults are CoOp's published ImageNet settings (vit_b16_ep50)."""

    optimizer: str = "sgd"  # "sgd" (CoOp) or "adamw" (better conditioned on small/random models)
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    seed: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# CoOp's published ImageNet recipe (vit_b16_ep50): SGD lr 0.002, momentum 0.9, wd 5e-4, 50 epochs, batch 32,
# cosine with one warm-up epoch at 1e-5 — OptimConfig's own defaults.
POSITIVE_OPTIM = OptimConfig()

# NegPrompt's negative stage: 10 epochs (paper §4.1); SGD lr 0.1 without momentum or weight decay, batch 64
# (released scripts); cosine per epoch without warm-up (the released per-iteration cyclic schedule is not kept).
NEGATIVE_OPTIM = OptimConfig(optimizer="sgd", epochs=10, batch_size=64, lr=0.1, momentum=0.0, weight_decay=0.0,
                             warmup_epochs=0, warmup_lr=0.0)


# What `score` (and `transfer`, and fit-neg's threshold) use when --scorer is not given, by what the user
# scores with: the method with the best validation criterion (mean FPR95 over near in-lexicon, near
# outside-lexicon and far OOD, closed set and open vocabulary) among those that setting can run, on the
# validation partitions of the offline world (benchmarks/quality.py; evidence and test numbers in
# docs/quality.md). Zero-shot CSP wins overall; with learned prompts the best validated score is energy on
# the positive prompts (CoOp + energy), ahead of every NegPrompt score and hybrid.
DEFAULT_SCORERS = {"zero-shot": "csp", "positives": "energy", "negatives": "energy"}
# That evidence is the toy CLIP's, which behaves unlike real CLIPs (there energy beats MCM and every score of the
# negatives). For every other backbone the default with learned negative prompts follows published evidence on real
# data: the NegPrompt paper's Table 2 (ImageNet-1k, ViT-B/16, four far-OOD sets, FPR95): its Eq. 3 on the learned
# prompts 23.01, CoOp 38.94 (the mean of its four sets), post-hoc energy 54.8 (../shared's
# negprompt-published.json; tests/test_presets.py reads it).
WORLD_BACKBONES = ("toy", "world")
PUBLISHED_DEFAULTS = {**DEFAULT_SCORERS, "negatives": "negprompt"}
PUBLISHED_SOURCE = "the NegPrompt paper's Table 2 (ImageNet-1k, ViT-B/16: Eq. 3 23.01 FPR95, CoOp 38.94, energy 54.8)"
# SigLIP-family backbones keep these defaults: Eq. 3 and CSP read cosines at their own τ, which a sigmoid-trained
# model's logit bias does not touch, and no published table compares scores on SigLIP beyond MCM's two variants
# (docs/method.md, "Scores per backbone family").
SIGMOID_NOTE = ("; on this sigmoid-trained backbone too: Eq. 3 reads cosines at τ, which its logit bias does not "
                "touch (docs/method.md, 'Scores per backbone family')")
WORLD_SOURCE = "validation on the offline world (docs/quality.md)"


def default_scorer(has_negatives: bool, *, zero_shot: bool = False, backbone: str | None = None) -> str:
    """The scorer used when none is named, for prompts with (or without) negatives or zero-shot, on ``backbone``
    (None: the world's evidence, as before backbones were told apart)."""
    table = PUBLISHED_DEFAULTS if backbone is not None and backbone not in WORLD_BACKBONES else DEFAULT_SCORERS
    return table["zero-shot" if zero_shot else "negatives" if has_negatives else "positives"]


def default_source(backbone: str | None) -> str:
    """Which evidence chose the default for ``backbone``, in words (stored with fit-neg's threshold)."""
    if backbone is None or backbone in WORLD_BACKBONES:
        return WORLD_SOURCE
    return PUBLISHED_SOURCE + (SIGMOID_NOTE if "siglip" in backbone.lower() else "")


# Why the default for prompts *with* negatives does not use them: on validation (benchmarks/results/quality.json,
# mean FPR95 of each method at its best settings, released-code loss) energy on the positive prompts beat every
# scorer that uses the learned negative prompts. tests/test_first_hour.py checks these numbers against the file.
NEGATIVES_EVIDENCE = {"default": ("energy", 61.0), "best_using_negatives": ("negprompt+csp", 61.9),
                      "paper": ("negprompt", 86.9)}


def negatives_note(scorer: str, *, by_default: bool) -> str:
    """One sentence for a user who trained negative prompts and scores with a scorer that ignores them."""
    if not by_default:
        return (f"the {scorer} scorer does not use the negative prompts; --scorer negprompt (Eq. 3) or "
                "negprompt+csp uses them")
    (default, fpr), (best, best_fpr), (paper, paper_fpr) = (NEGATIVES_EVIDENCE[k] for k in
                                                           ("default", "best_using_negatives", "paper"))
    return (f"{scorer}, the default scorer for these prompts, does not use the negative prompts: on validation "
            f"{default} on the positive prompts (mean FPR95 {fpr}) beat every scorer that uses them (best {best} "
            f"{best_fpr}, the paper's {paper} {paper_fpr}; docs/quality.md); --scorer {best} or --scorer {paper} "
            "uses them")


class _Unset:
    """The value of a setting nobody gave (``None`` is a real value: "every image", "never chunk")."""

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


def override(preset: T, **given: Any) -> T:
    """``preset`` with the settings given; ``UNSET`` leaves one as the preset has it. A name the preset does not
    have is a ``TypeError``: a misspelt setting must fail, not vanish."""
    names = {f.name for f in fields(preset)}  # type: ignore[arg-type]
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{type(preset).__name__} has no setting {unknown[0]!r}")
    return replace(preset, **{k: v for k, v in given.items() if v is not UNSET})  # type: ignore[type-var]


def from_cli(preset: T, **values: Any) -> T:
    """``preset`` with a command line's values, where ``None`` is an option the user did not give (Typer's
    default for an unset option)."""
    return override(preset, **{k: UNSET if v is None else v for k, v in values.items()})
