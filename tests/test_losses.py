"""Each NegPrompt loss term and both variants against deliberately naive loop implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from negprompt_cli.training.losses import LossWeights, negprompt_loss


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# -- naive references: loops over images, classes and prompts, straight from the equations --------
def naive_paper(f, pos, neg, labels, s, beta, gamma):
    B, C, P = f.shape[0], pos.shape[0], neg.shape[1]
    nis = 0.0
    for b in range(B):
        logits = [s * torch.dot(f[b], neg[c, k]) for c in range(C) for k in range(P)]
        log_den = torch.logsumexp(torch.stack(logits), 0)
        nis = nis + sum(-(1.0 / (C * P)) * (z - log_den) for z in logits)
    nis = nis / B
    npd = -sum(torch.dot(neg[c, k], pos[c]) for c in range(C) for k in range(P)) / (C * P)
    pairs = [(c, k, m) for c in range(C) for k in range(P) for m in range(P) if k != m]
    nnd = sum(torch.dot(neg[c, k], neg[c, m]) for c, k, m in pairs) / len(pairs) if pairs else torch.tensor(0.0)
    return nis + beta * npd + gamma * nnd, (nis, npd, nnd)


def naive_official(f, pos, neg, labels, s, beta, gamma):
    """core/train_clip.py as the scripts run it ('MSP'), interleaved [c_pos, c_neg1, ...] columns."""
    B, C, P = f.shape[0], pos.shape[0], neg.shape[1]
    nis = 0.0
    for b in range(B):
        total = 0.0
        for c in range(C):
            for j in range(1 + P):
                t = pos[c] if j == 0 else neg[c, j - 1]
                z = s * torch.dot(f[b], t)
                y = 1.0 if c == int(labels[b]) else 0.0
                total = total - (y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z))
        nis = nis + total / (C * (1 + P))
    nis = nis / B
    all_class_dis = 0.0
    for c in range(C):
        all_class_dis = all_class_dis + sum(1 - torch.dot(pos[c], neg[c, k]) for k in range(P)) / P
    npd = -all_class_dis / C
    nnd = 0.0
    for c in range(C):
        mean_norm = torch.stack([neg[c, k] for k in range(P)]).mean(0).norm()
        nnd = nnd - (1 - mean_norm)
    nnd = nnd / C
    return nis + beta * npd + gamma * nnd, (nis, npd, nnd)


@pytest.mark.parametrize(("variant", "naive"), [("paper", naive_paper), ("official", naive_official)])
@pytest.mark.parametrize("P", [1, 2, 3])
def test_values_and_gradients_match_naive(variant, naive, P):
    B, C, E, s = 5, 4, 8, 20.0
    f, pos = unit(B, E, seed=1), unit(C, E, seed=2)
    raw = torch.randn(C, P, E, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([0, 1, 3, 3, 2])
    weights = LossWeights(beta=0.1, gamma=0.05)

    raw_a = raw.clone().requires_grad_(True)
    terms = negprompt_loss(variant, f, pos, F.normalize(raw_a, dim=-1), labels, s, weights)
    terms["loss"].backward()

    raw_b = raw.clone().requires_grad_(True)
    total, (nis, npd, nnd) = naive(f, pos, F.normalize(raw_b, dim=-1), labels, s, 0.1, 0.05)
    total.backward()

    for ours, ref in ((terms["loss"], total), (terms["nis"], nis), (terms["npd"], npd), (terms["nnd"], nnd)):
        assert ours.item() == pytest.approx(torch.as_tensor(ref).item(), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(raw_a.grad, raw_b.grad, rtol=1e-9, atol=1e-12)


def test_paper_nis_is_minimised_by_equal_negative_logits():
    """Eq. 4 only asks an image's C·P negative logits to be equal: the minimum, log(C·P), is reached
    whatever their common value, so it does not by itself push negatives away from ID images."""
    f = unit(1, 4, seed=5)
    pos = unit(1, 4, seed=6)
    for common in (f[0], -f[0]):  # negatives all at cos 1, or all at cos -1: the same minimal loss
        neg = torch.stack([common, common]).unsqueeze(0)
        nis = negprompt_loss("paper", f, pos, neg, torch.tensor([0]), 50.0)["nis"]
        assert nis.item() == pytest.approx(math.log(2), abs=1e-9)
    unequal = torch.stack([f[0], -f[0]]).unsqueeze(0)
    assert negprompt_loss("paper", f, pos, unequal, torch.tensor([0]), 50.0)["nis"].item() > math.log(2) + 1


def test_official_nnd_is_monotone_in_pairwise_cosine():
    """For P = 2, ‖mean‖ = sqrt((1 + cos)/2): the two NND forms order pairs the same way."""
    a = torch.tensor([1.0, 0.0])
    values = []
    for angle in (0.2, 0.8, 1.4):
        b = torch.tensor([math.cos(angle), math.sin(angle)])
        neg = torch.stack([a, b]).unsqueeze(0)
        official = negprompt_loss("official", a[None], a[None], neg, torch.tensor([0]), 1.0)["nnd"].item()
        assert official == pytest.approx(math.sqrt((1 + math.cos(angle)) / 2) - 1, abs=1e-6)
        values.append(official)
    assert values[0] > values[1] > values[2]
