"""Built-in scorers against hand computations; all must rank ID above OOD (higher = ID)."""

from __future__ import annotations

import math

import torch

from negprompt_cli.registry import get_host


def test_negprompt_eq3_by_hand():
    pos = torch.tensor([[0.30, 0.10]])
    neg = torch.tensor([[[0.05, 0.20], [0.00, -0.10]]])
    expected = math.exp(0.30) / (math.exp(0.30) + math.exp(0.10) + math.exp(0.05) + math.exp(0.20)
                                 + math.exp(0.00) + math.exp(-0.10))
    score = get_host().scorer("negprompt")(pos, neg, temperature=1.0)
    assert score.item() == pytest_approx(expected)
    tau = 0.5
    expected_tau = math.exp(0.6) / sum(math.exp(v / tau) for v in (0.30, 0.10, 0.05, 0.20, 0.00, -0.10))
    assert get_host().scorer("negprompt")(pos, neg, temperature=tau).item() == pytest_approx(expected_tau)


def test_mcm_energy_maxlogit_msp_by_hand():
    pos = torch.tensor([[0.30, 0.10, 0.20]])
    host = get_host()
    mcm = math.exp(0.30) / sum(math.exp(v) for v in (0.30, 0.10, 0.20))
    assert host.scorer("mcm")(pos, None).item() == pytest_approx(mcm)
    energy = math.log(sum(math.exp(100 * v) for v in (0.30, 0.10, 0.20)))
    assert host.scorer("energy")(pos, None, logit_scale=100.0).item() == pytest_approx(energy)
    assert host.scorer("maxlogit")(pos, None, logit_scale=100.0).item() == pytest_approx(30.0)
    msp = 1 / sum(math.exp(100 * (v - 0.30)) for v in (0.30, 0.10, 0.20))
    assert host.scorer("msp")(pos, None, logit_scale=100.0).item() == pytest_approx(msp)


def test_negatives_lower_the_score_of_images_close_to_them():
    pos = torch.tensor([[0.3, 0.1], [0.3, 0.1]])
    neg = torch.tensor([[[0.0], [0.0]], [[0.5], [0.5]]])  # second image is close to the negatives
    scores = get_host().scorer("negprompt")(pos, neg)
    assert scores[0] > scores[1]


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, rel=1e-6)
