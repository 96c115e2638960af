"""Training data for the prompt stages: which images, their cached features, and a run's fingerprint.

Shared by fit-pos and fit-neg (the same seed picks the same few-shot images in both), so that
neither stage has to import the other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..distributed import SINGLE, Ranks
from ..errors import UsageError
from ..features.image_features import AUGMENTS, EncodeOptions, EncodeStats, View, augmented_views, encode_images_across
from ..inputs.image_folders import ImageFolder, few_shot_split, load_image_folder


@dataclass
class DataOptions:
    """What a prompt stage trains on; how its images are encoded here is the stage's ``EncodeOptions``."""

    root: Path
    classes_file: Path | None = None
    shots: int | None = 16  # None: every image
    val_fraction: float = 0.0
    aug_views: int = 0
    augment: str = AUGMENTS[0]  # how the views are made (``--augment``)


@dataclass
class TrainingSet:
    """What a prompt stage trains and selects on: the folder, few-shot features [N, V, E] (V augmented views)
    with their labels, the held-out validation features and labels (or None), and what encoding them cost."""

    folder: ImageFolder
    features: torch.Tensor
    labels: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    stats: list[EncodeStats]

    @property
    def encoded(self) -> int:
        return sum(s.encoded for s in self.stats)

    @property
    def cached(self) -> int:
        return sum(s.cached for s in self.stats)

    @property
    def skipped(self) -> int:
        return sum(len(s.skipped) for s in self.stats)


def run_fingerprint(**parts: Any) -> str:
    """Identifies a training run's settings and data, so a checkpoint is only resumed by the same run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def recipe_run(optim: Any, precision: str) -> dict[str, Any]:
    """The recipe with the precision it runs under, as checkpoint fingerprints have always read them (so a
    checkpoint from before precision left the recipe still resumes, and one from another precision does not)."""
    return {**optim.as_dict(), "precision": precision}


def kept_in_every_view(kept_per_view: list[list[int]]) -> list[int]:
    """The images every view could read, in the first view's order; linear in the number of images (an image
    skipped in one view leaves them all)."""
    keep = list(kept_per_view[0]) if kept_per_view else []
    for kept in kept_per_view[1:]:
        present = set(kept)
        keep = [k for k in keep if k in present]
    return keep


def labelled_features(backbone: Any, data: DataOptions, encoding: EncodeOptions, seed: int,
                      folder: ImageFolder | None = None, ranks: Ranks = SINGLE) -> TrainingSet:
    """Few-shot training features ([N, V, E]) and labels, plus validation features, all from the cache.
    In a torchrun job the ranks encode shares and every rank gets all features."""
    folder = folder or load_image_folder(data.root, data.classes_file, strict=encoding.strict)
    split = few_shot_split(folder, data.shots, seed, data.val_fraction)
    train_paths = [split.paths[i] for i in split.train]
    train_labels = torch.tensor([split.labels[i] for i in split.train])
    views = augmented_views(data.aug_views, seed, data.augment) or [View()]
    per_view = []
    stats = []
    for view in views:
        encoded = encode_images_across(ranks, backbone, train_paths, encoding, view=view, gather="all",
                                       description="Encoding training images")
        assert encoded is not None  # gather="all": every rank gets the result
        feats, kept, st = encoded
        stats.append(st)
        per_view.append((feats, kept))
    keep = kept_in_every_view([kept for _, kept in per_view])
    if not keep:
        raise UsageError("no readable training images")
    stacked = []
    for feats, kept in per_view:
        pos = {k: i for i, k in enumerate(kept)}
        stacked.append(feats[[pos[k] for k in keep]])
    features = torch.stack(stacked, dim=1)
    labels = train_labels[keep]
    val = None
    if split.val:
        encoded = encode_images_across(ranks, backbone, [split.paths[i] for i in split.val], encoding,
                                       gather="all", description="Encoding validation images")
        assert encoded is not None
        vfeats, vkept, vst = encoded
        stats.append(vst)
        val = (vfeats, torch.tensor([split.labels[split.val[i]] for i in vkept]))
    return TrainingSet(folder, features, labels, val, stats)
