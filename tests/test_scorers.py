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


def test_sigmoid_scores_against_a_port_written_with_numpy():
    """The sigmoid-* scorers (#31 item 3) against numpy: SigLIP's σ(s·cos + b) per pair, max / softplus sum /
    the ID share among the same seeded groups of mined labels; sigmoid-mcm orders images as maxlogit does."""
    import numpy as np

    host = get_host()
    g = torch.Generator().manual_seed(3)
    pos = torch.rand(7, 5, generator=g) * 0.4 - 0.1
    mined = torch.rand(7, 23, generator=g) * 0.4 - 0.1
    s, b = 117.3, -12.7
    x, xm = s * pos.double().numpy() + b, s * mined.double().numpy() + b
    sig = 1 / (1 + np.exp(-x))
    mcm = host.scorer("sigmoid-mcm")(pos, None, logit_scale=s, logit_bias=b)
    np.testing.assert_allclose(mcm.numpy(), sig.max(axis=1), rtol=0, atol=1e-12)
    assert torch.equal(mcm.argsort(), host.scorer("maxlogit")(pos, None, logit_scale=s).argsort())
    energy = host.scorer("sigmoid-energy")(pos, None, logit_scale=s, logit_bias=b)
    np.testing.assert_allclose(energy.numpy(), np.log1p(np.exp(x)).sum(axis=1), rtol=1e-12, atol=1e-12)
    groups = 4
    usable = 23 - 23 % groups
    order = torch.randperm(usable, generator=torch.Generator().manual_seed(0)).numpy()
    split = xm[:, :usable][:, order].reshape(7, groups, -1)
    negatives = (1 / (1 + np.exp(-split))).sum(axis=2)
    expected = (sig.sum(axis=1, keepdims=True) / (sig.sum(axis=1, keepdims=True) + negatives)).mean(axis=1)
    for name in ("sigmoid-neglabel", "sigmoid-csp"):
        ours = host.scorer(name)(pos, None, logit_scale=s, logit_bias=b, mined=mined, groups=groups, seed=0)
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)
    # the bias changes which images the energy and the label share prefer; it cannot change sigmoid-mcm's order
    shifted = host.scorer("sigmoid-energy")(pos, None, logit_scale=s, logit_bias=b + 10)
    assert not torch.equal(shifted.argsort(), energy.argsort())


def test_a_scorer_registered_to_take_the_bias_must_accept_it():
    import pytest

    from negprompt_cli.registry import ScorerSpec, _check_scorer_signature

    def no_bias(pos, neg, *, temperature=1.0, logit_scale=100.0):
        return pos.max(1).values

    with pytest.raises(TypeError, match=r"cannot be called as scorer\(pos, neg, \*, temperature, logit_scale, "
                                        r"logit_bias\)"):
        _check_scorer_signature("mine", ScorerSpec(name="x", fn=no_bias, logit_bias=True))
    _check_scorer_signature("mine", ScorerSpec(name="x", fn=no_bias))  # without the property: fine
