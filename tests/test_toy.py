"""The shipped world CLIP: loads offline through open_clip's local-dir path, and is good enough that
negprompt's quality effects are measurable (things random weights could not pass)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from conftest import TEST_DEVICE

from negprompt_cli import world
from negprompt_cli.backbone import BackboneRequest, load_backbone


@pytest.fixture(scope="module")
def toy():
    return load_backbone(BackboneRequest("toy", device=TEST_DEVICE))


def test_checkpoint_is_small_and_loads_through_open_clip_local_dir():
    directory = world.checkpoint_dir()
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert size <= 20 * 1024 * 1024
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    assert model.positional_embedding.shape[0] == 24 and model.token_embedding.weight.shape[1] == 128


def test_zero_shot_accuracy_on_seen_pairs(toy):
    """>= 85 % zero-shot over all 120 colour-shape prompts, on PNG-round-tripped images through the CLI's
    preprocessing (a small seeded sample keeps the test fast)."""
    from PIL import Image

    rng = np.random.default_rng(2024)
    pairs = world.all_pairs()
    items = world.sample_items(240, rng)
    images = world.render(items, rng)
    batch = torch.stack([toy.preprocess(Image.fromarray(img)) for img in images])
    with torch.no_grad():
        text = toy.model.encode_text(toy.tokenizer([f"a photo of a {c} {s}." for c, s in pairs]), normalize=True)
        feats = toy.model.encode_image(batch, normalize=True)
    predicted = (feats @ text.t()).argmax(1)
    truth = torch.tensor([pairs.index(it.pair) for it in items])
    assert (predicted == truth).float().mean() >= 0.85


def test_toy_is_registered_like_any_backbone(toy):
    assert toy.name == "toy" and toy.pretrained is None and toy.image_size == 32
    assert toy.logit_scale > 15
