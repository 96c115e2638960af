"""The shipped world CLIP: loads offline through open_clip's local-dir path, and is good enough that
negprompt's quality effects are measurable (things random weights could not pass)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from conftest import TEST_DEVICE

from negprompt_cli import world
from negprompt_cli.features.backbone import BackboneRequest, load_backbone

MIN_CATEGORY_ACCURACY = 0.6  # measured: 0.65 on this sample (TRAINING.json: 0.63 on 1,380 renders)


@pytest.fixture(scope="module")
def toy():
    return load_backbone(BackboneRequest("toy", device=TEST_DEVICE))


def test_checkpoint_is_small_and_loads_through_open_clip_local_dir():
    directory = world.checkpoint_dir()
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert size <= 20 * 1024 * 1024
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    assert model.positional_embedding.shape[0] == 24 and model.token_embedding.weight.shape[1] == 128


def test_zero_shot_accuracy_on_named_categories(toy):
    """Zero-shot over the 46 named categories ("a photo of a {}."), on PNG-round-tripped images through the
    CLI's preprocessing: far above chance (2 %), as TRAINING.json records for the shipped weights (a small
    seeded sample keeps the test fast)."""
    from PIL import Image

    rng = np.random.default_rng(2024)
    items = world.sample_items(460, rng)
    images = world.render(items, rng)
    batch = torch.stack([toy.preprocess(Image.fromarray(img)) for img in images])
    with torch.no_grad():
        text = toy.model.encode_text(toy.tokenizer([f"a photo of a {c}." for c in world.NAMED]), normalize=True)
        colours = toy.model.encode_text(toy.tokenizer([f"a photo of a {c} thing." for c in world.COLOUR_NAMES]),
                                        normalize=True)
        feats = toy.model.encode_image(batch, normalize=True)
    truth = torch.tensor([world.NAMED.index(it.shape) for it in items])
    assert ((feats @ text.t()).argmax(1) == truth).float().mean() >= MIN_CATEGORY_ACCURACY
    colour_truth = torch.tensor([world.COLOUR_NAMES.index(it.colour) for it in items])
    assert ((feats @ colours.t()).argmax(1) == colour_truth).float().mean() >= 0.9


def test_toy_defaults_to_the_world_lexicon(toy):
    from negprompt_cli.scoring.lexicon import load_lexicon

    lexicon = load_lexicon(None, toy.default_lexicon)
    assert lexicon.source.startswith("backbone default") and "circle" in lexicon.nouns
    assert load_lexicon(None).source == "default"  # other backbones: the shipped WordNet lists


def test_toy_is_registered_like_any_backbone(toy):
    assert toy.name == "toy" and toy.pretrained is None and toy.image_size == 32
    assert toy.logit_scale > 15
