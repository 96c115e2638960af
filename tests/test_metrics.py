"""Metrics against sklearn-independent computations and the Hendrycks FPR95 used by MCM/NegPrompt."""

from __future__ import annotations

import numpy as np
import pytest

from negprompt_cli.errors import UsageError
from negprompt_cli.scoring.metrics import ood_metrics


def hendrycks_fpr_at_recall(id_scores, ood_scores, recall_level=0.95):
    """fpr_and_fdr_at_recall as in the OE / MCM / NegPrompt code (ID positive, nearest recall)."""
    y_true = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    y_score = np.concatenate([id_scores, ood_scores])
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    distinct = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / np.sum(np.logical_not(y_true))


def brute_auroc(id_scores, ood_scores):
    wins = sum((i > o) + 0.5 * (i == o) for i in id_scores for o in ood_scores)
    return wins / (len(id_scores) * len(ood_scores))


def test_agrees_with_hendrycks_and_pairwise_auroc():
    """Where 95 % ID recall is reached at a single threshold, both FPR95 definitions must agree."""
    rng = np.random.default_rng(0)
    id_scores = 1.0 + rng.permutation(400) / 400.0  # 95 % recall: the 380th best ID image, score 1.05
    ood_scores = rng.normal(1.4, 0.4, 300)
    ood_scores = ood_scores[(ood_scores < 1.0475) | (ood_scores > 1.05)]  # nothing between 380th and 381st
    m = ood_metrics(id_scores, ood_scores)
    assert m["fpr"] == pytest.approx(hendrycks_fpr_at_recall(id_scores, ood_scores))
    assert m["auroc"] == pytest.approx(brute_auroc(id_scores, ood_scores))
    assert m["threshold"] == pytest.approx(1.05)
    assert np.mean(id_scores >= m["threshold"]) == 0.95
    assert m["fpr"] == pytest.approx(np.mean(ood_scores >= m["threshold"]))


def test_first_threshold_reaching_95_never_exceeds_hendrycks():
    """With OOD images between ID ranks, Hendrycks' nearest-recall picks the lowest such threshold."""
    rng = np.random.default_rng(3)
    id_scores, ood_scores = rng.normal(1, 1, 400), rng.normal(0, 2, 300)
    assert ood_metrics(id_scores, ood_scores)["fpr"] <= hendrycks_fpr_at_recall(id_scores, ood_scores)


def test_conventions_differ_but_auroc_does_not():
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(1, 1, 5000), rng.normal(0, 2, 3000)
    a = ood_metrics(id_scores, ood_scores)
    b = ood_metrics(id_scores, ood_scores, fpr_convention="ood-positive")
    assert a["auroc"] == b["auroc"]
    assert a["fpr"] == pytest.approx(0.634, abs=0.02) and b["fpr"] == pytest.approx(0.99, abs=0.01)
    # ood-positive FPR is the fraction of ID images rejected (score <= threshold) when 95 % of OOD is caught
    assert np.mean(ood_scores <= b["threshold"]) >= 0.95
    assert b["fpr"] == pytest.approx(np.mean(id_scores <= b["threshold"]))


def test_perfect_separation_and_aupr():
    m = ood_metrics([0.9, 0.8, 0.95], [0.1, 0.2])
    assert m["auroc"] == 1.0 and m["fpr"] == 0.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0


def test_needs_both_sides():
    with pytest.raises(UsageError):
        ood_metrics([], [0.1])


def openood_fpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr_th: float = 0.95) -> float:
    """OpenOOD v1.5's FPR (evaluators/metrics.py, auc_and_fpr_recall), written from its release: OOD is the positive
    class, ID images carry label >= 0 and OOD images -1, ``conf`` higher = more ID."""
    from sklearn import metrics

    conf = np.concatenate([id_scores, ood_scores])
    label = np.concatenate([np.zeros(len(id_scores)), -np.ones(len(ood_scores))])
    ood_indicator = np.zeros_like(label)
    ood_indicator[label == -1] = 1
    fpr_list, tpr_list, _ = metrics.roc_curve(ood_indicator, -conf)
    return float(fpr_list[np.argmax(tpr_list >= tpr_th)])


def test_ood_positive_fpr_is_openoods_on_tie_heavy_sets():
    """The case that used to differ (ID [3, 2]; OOD mostly 0/1 plus a 2 and a 3: OpenOOD says 1.0), then 1,000
    random sets of that shape (a few ID scores; OOD scores mostly lower, some equal to ID ones): ties everywhere,
    and about one set in eight where OpenOOD's answer is not the FPR of the first threshold at 95 %."""
    id_scores, ood_scores = np.array([3.0, 2.0]), np.array([0.0] * 11 + [1.0] * 10 + [2.0, 3.0])
    assert ood_metrics(id_scores, ood_scores, fpr_convention="ood-positive")["fpr"] == 1.0 == openood_fpr(
        id_scores, ood_scores)
    rng = np.random.default_rng(7)
    differs_from_every_threshold = 0
    for _ in range(1000):
        id_scores = rng.integers(2, 6, int(rng.integers(1, 5))).astype(float)
        tied = rng.permutation(id_scores)[:int(rng.integers(1, len(id_scores) + 1))]
        ood_scores = np.concatenate([rng.integers(0, 2, int(rng.integers(10, 41))).astype(float), tied])
        ours = ood_metrics(id_scores, ood_scores, fpr_convention="ood-positive")["fpr"]
        assert ours == openood_fpr(id_scores, ood_scores)
        exact = ood_metrics(-ood_scores, -id_scores)["fpr"]  # every threshold: what drop_intermediate skips
        differs_from_every_threshold += ours != exact
    assert differs_from_every_threshold > 50  # the sets do exercise the ties
