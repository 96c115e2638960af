"""OOD metrics. Scores are "higher = more in-distribution" everywhere.

The default FPR convention is the paper's (and MCM's): ID is the positive class, and
FPR@95 is the fraction of OOD images accepted as ID at the threshold that keeps 95 % of ID
images. OpenOOD v1.5 uses the opposite convention (OOD positive: the fraction of ID images
rejected when 95 % of OOD images are caught); ``fpr_convention="ood-positive"`` gives that, computed as OpenOOD
computes it (the same sklearn call, so tied scores give its answer too).
The two can differ wildly for the same scores, so every output names its convention.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

CONVENTIONS = ("id-positive", "ood-positive")
AUPR_ESTIMATOR = "average_precision (sklearn)"


def _fpr_at_tpr(positive_scores: np.ndarray, negative_scores: np.ndarray, tpr_level: float, *,
                drop_intermediate: bool = False) -> tuple[float, float]:
    """FPR at the first threshold whose TPR reaches ``tpr_level`` (positives score higher).

    ``drop_intermediate`` as sklearn's ``roc_curve`` takes it: OpenOOD v1.5 calls it with the default (True), which
    drops the ROC corners that lie on a straight segment; with tied scores the first point at the TPR level can be
    one of them, and OpenOOD then reads the FPR of a later corner. Every threshold (False) is the exact answer."""
    labels = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    scores = np.concatenate([positive_scores, negative_scores])
    from sklearn.metrics import roc_curve  # noqa: PLC0415 (sklearn costs every command ~1.5 s to import)

    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    index = int(np.searchsorted(tpr, tpr_level, side="left"))
    return float(fpr[index]), float(thresholds[index])


def ood_metrics(id_scores, ood_scores, *, tpr_level: float = 0.95, fpr_convention: str = "id-positive") -> dict:
    """AUROC, FPR at ``tpr_level``, AUPR-In/Out and the deployable threshold (fractions, not %)."""
    id_scores = np.asarray(id_scores, dtype=np.float64)
    ood_scores = np.asarray(ood_scores, dtype=np.float64)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise UsageError("OOD metrics need both ID and OOD scores")
    if fpr_convention not in CONVENTIONS:
        raise UsageError(f"unknown FPR convention {fpr_convention!r}", hint=f"choose one of {', '.join(CONVENTIONS)}")
    from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: PLC0415 (see _fpr_at_tpr)

    labels = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    scores = np.concatenate([id_scores, ood_scores])
    if fpr_convention == "id-positive":
        fpr, threshold = _fpr_at_tpr(id_scores, ood_scores, tpr_level)
    else:
        # as OpenOOD v1.5 computes it (evaluators/metrics.py: roc_curve(ood_indicator, -conf), its defaults),
        # tied scores included
        fpr, neg_threshold = _fpr_at_tpr(-ood_scores, -id_scores, tpr_level, drop_intermediate=True)
        threshold = -neg_threshold
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "fpr": fpr,
        "fpr_convention": fpr_convention,
        "tpr_level": tpr_level,
        "threshold": threshold,
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
        "n_id": int(len(id_scores)),
        "n_ood": int(len(ood_scores)),
    }
