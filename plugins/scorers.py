"""Built-in OOD scorers. Every score is "higher = more in-distribution".

Inputs are cosine similarities: ``pos`` [B, C] to the class prompts and, for NegPrompt,
``neg`` [B, C, P] to the negative prompts. ``temperature`` means one thing per scorer: for
negprompt and mcm it is the τ that divides raw cosines (τ = 1, as the released code and MCM);
for energy and msp it is the T that divides the classifier logits s·cos; maxlogit has none.
``logit_scale`` is the backbone's training scale s, used by the classifier-logit baselines.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from negprompt.plugin import hookimpl


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
