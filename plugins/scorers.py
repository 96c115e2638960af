"""Built-in OOD scorers. Every score is "higher = more in-distribution".

Inputs are cosine similarities: ``pos`` [B, C] to the class prompts and, for NegPrompt,
``neg`` [B, C, P] to the negative prompts. ``temperature`` means one thing per scorer: for
negprompt and mcm it is the τ that divides raw cosines (τ = 1, as the released code and MCM);
for energy and msp it is the T that divides the classifier logits s·cos; maxlogit has none.
``logit_scale`` is the backbone's training scale s, used by the classifier-logit baselines.

How each uses the backbone's s and its learned bias b (sigmoid-trained models: SigLIP, SigLIP 2 train
σ(s·cos + b) per image-text pair): negprompt, mcm, neglabel, csp and the hybrids read cosines at their own τ and
neither s nor b; energy, maxlogit and msp use s, and b would only shift energy and maxlogit by a constant and
cancel in msp's softmax, so it is not passed. The ``sigmoid-*`` scorers are SigLIP's own probabilities: each
class (or negative label) matches with σ(s·cos + b), independently, so b matters: it is passed to the scorers
registered with ``logit_bias=True`` (0 for models trained without one, where σ(s·cos) saturates: use them on
sigmoid-trained backbones). docs/method.md, "Scores per backbone family".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from negprompt.plugin import UsageError, hookimpl


def negprompt_score(pos: torch.Tensor, neg: torch.Tensor | None, *, temperature: float = 1.0,
                    logit_scale: float = 100.0) -> torch.Tensor:
    """NegPrompt Eq. 3: max_c e^{cos(f,t_c)/τ} / (Σ_c e^{cos(f,t_c)/τ} + Σ_{c,l} e^{cos(f,t_{c,l})/τ})."""
    if neg is None:
        return mcm_score(pos, None, temperature=temperature)
    logits = torch.cat([pos, neg.flatten(1)], dim=1) / temperature
    log_den = torch.logsumexp(logits, dim=1)
    return torch.exp(pos.max(dim=1).values / temperature - log_den)


def mcm_score(pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
              logit_scale: float = 100.0) -> torch.Tensor:
    """MCM (Ming et al. 2022): max softmax over the class prompts of cos/τ; negatives ignored."""
    return torch.softmax(pos / temperature, dim=1).max(dim=1).values


def energy_score(pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
                 logit_scale: float = 100.0) -> torch.Tensor:
    """Energy (Liu et al. 2020) on classifier logits s·cos: T·logsumexp(logits/T)."""
    return temperature * torch.logsumexp(logit_scale * pos / temperature, dim=1)


def maxlogit_score(pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
                   logit_scale: float = 100.0) -> torch.Tensor:
    """MaxLogit (Hendrycks et al. 2022): the largest classifier logit s·cos."""
    return (logit_scale * pos).max(dim=1).values


def msp_score(pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
              logit_scale: float = 100.0) -> torch.Tensor:
    """MSP (Hendrycks & Gimpel 2017): max softmax of the classifier logits s·cos, at temperature T (ODIN's)."""
    return torch.softmax(logit_scale * pos / temperature, dim=1).max(dim=1).values


def negprompt_sum_score(pos: torch.Tensor, neg: torch.Tensor | None, *, temperature: float = 1.0,
                        logit_scale: float = 100.0) -> torch.Tensor:
    """The ID probability mass Σ_c of the softmax over [class prompts, negative prompts] at τ (NegLabel's
    aggregation applied to learned negatives). Its logit, logsumexp(pos/τ) − logsumexp(neg/τ), is the
    energy of the class prompts minus that of the negatives, so this is also the energy-style variant."""
    if neg is None:
        raise ValueError("negprompt-sum needs negative prompts")
    return torch.sigmoid(torch.logsumexp(pos / temperature, dim=1) - torch.logsumexp(neg.flatten(1) / temperature,
                                                                                      dim=1))


def negprompt_maxlogit_score(pos: torch.Tensor, neg: torch.Tensor | None, *, temperature: float = 1.0,
                             logit_scale: float = 100.0) -> torch.Tensor:
    """MaxLogit-style: the largest class logit minus the largest negative-prompt logit, s·(max cos − max cos⁻)."""
    if neg is None:
        raise ValueError("negprompt-maxlogit needs negative prompts")
    return logit_scale * (pos.max(dim=1).values - neg.flatten(1).max(dim=1).values)


def _sigmoid_logits(cos: torch.Tensor, logit_scale: float, logit_bias: float) -> torch.Tensor:
    """s·cos + b in float64 (σ of a float32 logit saturates at 1 from about 17: ties among confident images)."""
    return logit_scale * cos.double() + logit_bias


def sigmoid_mcm_score(pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
                      logit_scale: float = 100.0, logit_bias: float = 0.0) -> torch.Tensor:
    """Sigmoid MCM: the largest match probability σ(s·cos_c + b) over the class prompts, as a sigmoid-trained model
    scores an image-text pair. Its order is maxlogit's (σ is monotone); its value is a probability that does not
    shrink as classes are added, as a softmax's does."""
    return torch.sigmoid(_sigmoid_logits(pos, logit_scale, logit_bias).max(dim=1).values)


def sigmoid_energy_score(pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
                         logit_scale: float = 100.0, logit_bias: float = 0.0) -> torch.Tensor:
    """Sigmoid energy: Σ_c log(1 + e^{s·cos_c + b}), the free energy of C independent sigmoid matches (a softmax's
    is logsumexp); b sets where a class starts to count."""
    logits = _sigmoid_logits(pos, logit_scale, logit_bias)
    return torch.logaddexp(logits, torch.zeros_like(logits)).sum(dim=1)  # exact (softplus is linear above 20)


class SigmoidNegativeLabelScore:
    """NegLabel's score with sigmoid matches: the share of the match probability that falls on the ID classes,
    Σ_ID σ(x) / (Σ_ID σ(x) + Σ_neg σ(x)) with x = s·cos + b, averaged over the same seeded groups of mined labels
    as :class:`NegativeLabelScore` (which it equals in form with e^{x/τ} in place of σ(x))."""

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
                 logit_scale: float = 100.0, logit_bias: float = 0.0, mined: torch.Tensor | None = None,
                 groups: int = 100, seed: int = 0) -> torch.Tensor:
        if mined is None or mined.shape[1] == 0:
            raise ValueError("the negative-label score needs mined negative labels")
        count = mined.shape[1]
        groups = max(1, min(groups, count))
        usable = count - count % groups
        order = torch.randperm(usable, generator=torch.Generator().manual_seed(seed)).to(mined.device)
        split = mined[:, :usable][:, order].reshape(mined.shape[0], groups, -1)
        negatives = torch.sigmoid(_sigmoid_logits(split, logit_scale, logit_bias)).sum(dim=2)  # [B, G]
        id_part = torch.sigmoid(_sigmoid_logits(pos, logit_scale, logit_bias)).sum(dim=1, keepdim=True)
        return (id_part / (id_part + negatives)).mean(dim=1)


class NegativeLabelScore:
    """NegLabel's score (Jiang et al., ICLR 2024) over mined negative labels: the total softmax probability of
    the ID classes among ID + negative labels, at τ on cosines (default 0.01, the paper's), averaged over
    ``groups`` seeded random groups of the negatives (grouping lowers the variance; the paper uses 100).

    Per group g the ID probability is σ(logsumexp(pos/τ) − logsumexp(neg_g/τ)): the same number as the
    softmax sum, computed stably. As in the released code the last M mod G negatives are left out and the
    rest are permuted once (seed 0) before being split. Which candidate pool the core mines the labels from
    (``negprompt_cli.scoring.negative_labels.POOLS``: NegLabel's own, or CSP's) is stated when it is registered.
    """

    def __init__(self, *, with_prompts: bool = False) -> None:
        self.with_prompts = with_prompts  # hybrid: learned negative prompts and mined labels in one softmax

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 0.01,
                 logit_scale: float = 100.0, mined: torch.Tensor | None = None, groups: int = 100,
                 seed: int = 0) -> torch.Tensor:
        if mined is None or mined.shape[1] == 0:
            raise ValueError("the negative-label score needs mined negative labels")
        if self.with_prompts and neg is None:
            raise ValueError("the hybrid score needs negative prompts")
        count = mined.shape[1]
        groups = max(1, min(groups, count))
        usable = count - count % groups
        order = torch.randperm(usable, generator=torch.Generator().manual_seed(seed)).to(mined.device)
        split = mined[:, :usable][:, order].reshape(mined.shape[0], groups, -1) / temperature
        negatives = torch.logsumexp(split, dim=2)  # [B, G]
        if self.with_prompts and neg is not None:  # the learned negatives join every group's denominator
            negatives = torch.logaddexp(negatives, torch.logsumexp(neg.flatten(1) / temperature, dim=1,
                                                                   keepdim=True))
        id_part = torch.logsumexp(pos / temperature, dim=1, keepdim=True)
        return torch.sigmoid(id_part - negatives).mean(dim=1)


@dataclass(frozen=True)
class LocalWeight:
    """GL-MCM's own setting (``--scorer-option weight=...``)."""

    weight: float = 0.5  # λ: the released ImageNet script's (its argparse default is 1.0)

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise UsageError(f"the local weight must be 0 or more (got {self.weight})")


class GlobalLocalMCM:
    """GL-MCM (Miyai et al., 2023; code AtsuMiyai/GL-MCM ``utils/detection_util.py``): MCM of the global feature
    plus λ times the largest class probability over the patches, each patch's softmax over the classes at τ:
    max_c softmax(cos/τ) + λ·max_{p,c} softmax_c(cos_p/τ). ``local_only``: L-MCM, the patch term alone."""

    Options = LocalWeight

    def __init__(self, *, local_only: bool = False) -> None:
        self.local_only = local_only

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 1.0,
                 logit_scale: float = 100.0, local: torch.Tensor | None = None, weight: float = 0.5) -> torch.Tensor:
        if local is None:
            raise ValueError("GL-MCM needs the patch features' cosines (local)")
        local_part = torch.softmax(local / temperature, dim=-1).amax(dim=(1, 2))
        if self.local_only:
            return local_part
        return torch.softmax(pos / temperature, dim=1).max(dim=1).values + weight * local_part


@dataclass(frozen=True)
class MultiMatching:
    """NegRefine's own settings (``--scorer-option``), as released (``src/clip_ood.py``)."""

    weight: float = 2.0  # of the multi-matching score beside NegLabel's (the release's final score)
    top_classes: int = 5  # the image's best ID classes paired (k_pos; fewer when there are fewer classes)
    top_labels: int = 5  # with its best negative labels (k_neg)

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise UsageError(f"the multi-matching weight must be 0 or more (got {self.weight})")
        if self.top_classes < 1 or self.top_labels < 1:
            raise UsageError(f"top_classes and top_labels must be 1 or more (got {self.top_classes}, "
                             f"{self.top_labels})")


class NegRefineScore:
    """NegRefine (Ansari et al., ICCV 2025; code ah-ansari/NegRefine ``src/clip_ood.py``): NegLabel's grouped score
    plus ``weight`` times the multi-matching score. An image that truly shows an ID class and a negative label
    at once (a dog on a sofa) matches both, and NegLabel alone calls it OOD; so for each of its ``top_classes``
    best classes p and ``top_labels`` best negative labels n the text "p and n" is written (under the ID
    prompts' templates) and compared with n alone: σ((cos(f, "p and n") − cos(f, n))/τ), the largest over the
    pairs, is high when the pair explains the image better than the negative label does.

    The release scores one image at a time with CLIP's fixed scale 100 on both terms; here τ (0.01 unless
    --temperature) divides the cosines of both, which is the same number."""

    Options = MultiMatching

    def __init__(self) -> None:
        self.labels = NegativeLabelScore()

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None, *, temperature: float = 0.01,
                 logit_scale: float = 100.0, mined: torch.Tensor | None = None, groups: int = 100, seed: int = 0,
                 features: torch.Tensor | None = None, texts: Any = None, weight: float = 2.0, top_classes: int = 5,
                 top_labels: int = 5) -> torch.Tensor:
        base = self.labels(pos, None, temperature=temperature, mined=mined, groups=groups, seed=seed)
        if features is None or texts is None or mined is None:
            raise ValueError("the multi-matching score needs the images' features and the text encoder (texts)")
        k_pos, k_neg = min(top_classes, pos.shape[1]), min(top_labels, mined.shape[1])
        best_classes = pos.topk(k_pos, dim=1).indices  # [B, k_pos]
        label_cos, best_labels = mined.topk(k_neg, dim=1)  # [B, k_neg]
        pairs = [f"{texts.class_names[p]} and {texts.label_names[n]}"
                 for ps, ns in zip(best_classes.tolist(), best_labels.tolist(), strict=True) for p in ps for n in ns]
        pair_features = texts.features(pairs).to(features.device, torch.float32)
        pair_cos = torch.einsum("be,bpne->bpn", features, pair_features.view(len(pos), k_pos, k_neg, -1))
        matching = torch.sigmoid((pair_cos - label_cos[:, None, :]) / temperature).amax(dim=(1, 2))
        return base + weight * matching


@hookimpl
def register_scorers(register: Callable[..., None]) -> None:
    # What the core needs to know about each scorer is stated here (negprompt.plugin.ScorerSpec):
    # probability: an ID probability in [0, 1], so --adaptive can run it; pool: mines negative labels from it;
    # needs_negative_prompts: a fit-neg artifact's negatives; trained_temperature: Eq. 3 at the training τ.
    labels = {"default_temperature": 0.01, "probability": True}
    register("negprompt", negprompt_score, description="NegPrompt Eq. 3 (MCM with negative prompts)",
             needs_negative_prompts=True, trained_temperature=True)
    register("mcm", mcm_score, description="Maximum concept matching: softmax over class prompts, τ")
    register("energy", energy_score, description="Energy score on classifier logits")
    register("maxlogit", maxlogit_score, description="Largest classifier logit")
    register("msp", msp_score, description="Maximum softmax probability of the classifier")
    register("neglabel", NegativeLabelScore(), description="NegLabel: ID probability among negative labels mined "
             "from a lexicon (training-free)", pool="neglabel", **labels)
    register("csp", NegativeLabelScore(), description="CSP: NegLabel's score over the conjugated semantic pool "
             "(adjective + superclass phrases, template ensembles, as released)", pool="csp", **labels)
    register("negprompt-sum", negprompt_sum_score, description="ID probability mass among class and negative "
             "prompts (energy-style NegPrompt)", needs_negative_prompts=True, probability=True)
    register("negprompt-maxlogit", negprompt_maxlogit_score, description="Largest class logit minus largest "
             "negative-prompt logit", needs_negative_prompts=True)
    register("negprompt+neglabel", NegativeLabelScore(with_prompts=True), description="Hybrid: learned negative "
             "prompts and NegLabel's mined labels in one softmax (grouped)", pool="neglabel",
             needs_negative_prompts=True, **labels)
    register("negprompt+csp", NegativeLabelScore(with_prompts=True), description="Hybrid: learned negative "
             "prompts and CSP's mined labels in one softmax (grouped)", pool="csp", needs_negative_prompts=True,
             **labels)
    # for sigmoid-trained backbones (SigLIP, SigLIP 2): the model's own σ(s·cos + b), with its learned bias b
    register("sigmoid-mcm", sigmoid_mcm_score, description="Sigmoid MCM: the largest match probability "
             "σ(s·cos + b) over the classes (SigLIP-family; orders as maxlogit)", logit_bias=True)
    register("sigmoid-energy", sigmoid_energy_score, description="Sigmoid energy: Σ_c log(1 + e^(s·cos + b)) "
             "(SigLIP-family)", logit_bias=True)
    register("sigmoid-neglabel", SigmoidNegativeLabelScore(), description="NegLabel with sigmoid matches: the "
             "ID share of Σ σ(s·cos + b) over ID and mined labels (SigLIP-family)", pool="neglabel",
             probability=True, logit_bias=True)
    # local (patch) features: the core encodes and caches them for these (ViT backbones)
    register("gl-mcm", GlobalLocalMCM(), description="GL-MCM: MCM of the image plus λ (weight, 0.5) times the best "
             "patch's MCM (patch features; ViT backbones)", local=True)
    register("l-mcm", GlobalLocalMCM(local_only=True), description="L-MCM: the best patch's MCM alone (patch "
             "features; ViT backbones)", local=True)
    # writes texts for each image from its best matches: the core passes its features and a text encoder
    register("negrefine", NegRefineScore(), description="NegRefine: CSP's score plus 2 x the multi-matching score "
             "(\"<class> and <label>\" texts against the label alone; an LLM-filtered list via --negatives)",
             pool="csp", composes_texts=True, default_temperature=0.01)
    register("sigmoid-csp", SigmoidNegativeLabelScore(), description="CSP's pool and templates, scored as "
             "sigmoid-neglabel (SigLIP-family)", pool="csp", probability=True, logit_bias=True)
