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

import negprompt_cli


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


@negprompt_cli.hookimpl
def register_scorers(register: Callable[..., None]) -> None:
    register("negprompt", negprompt_score, description="NegPrompt Eq. 3 (MCM with negative prompts)")
    register("mcm", mcm_score, description="Maximum concept matching: softmax over class prompts, τ")
    register("energy", energy_score, description="Energy score on classifier logits")
    register("maxlogit", maxlogit_score, description="Largest classifier logit")
    register("msp", msp_score, description="Maximum softmax probability of the classifier")
