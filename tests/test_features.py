"""Image features are computed once and reused; unreadable images are skipped or refused."""

from __future__ import annotations

import pytest
import torch

from negprompt_cli.errors import NegPromptWarning, UsageError
from negprompt_cli.features.image_features import View, encode_images
from negprompt_cli.inputs.image_folders import find_images


def test_second_run_encodes_nothing_and_matches(tiny_backbone, image_folder, tmp_path):
    paths = find_images(image_folder)
    first, keep1, stats1 = encode_images(tiny_backbone, paths, cache_dir=tmp_path / "c", batch_size=5, quiet=True)
    assert stats1.encoded == len(paths) and stats1.encoder_calls == 5
    second, keep2, stats2 = encode_images(tiny_backbone, paths, cache_dir=tmp_path / "c", quiet=True)
    assert stats2.encoded == 0 and stats2.encoder_calls == 0 and stats2.cached == len(paths)
    assert keep1 == keep2
    assert torch.equal(first, second)
    # and they are the model's own unit-norm features
    from PIL import Image

    with Image.open(paths[3]) as img:
        pixels = tiny_backbone.preprocess(img.convert("RGB"))[None].to(tiny_backbone.device)
        direct = tiny_backbone.model.encode_image(pixels, normalize=True).cpu()
    torch.testing.assert_close(first[3:4], direct, atol=1e-5, rtol=0)


def test_cache_is_keyed_by_content_not_path(tiny_backbone, image_folder, tmp_path):
    paths = find_images(image_folder)[:4]
    encode_images(tiny_backbone, paths, cache_dir=tmp_path / "c", quiet=True)
    copies = []
    for i, p in enumerate(paths):
        copy = tmp_path / f"copy{i}.png"
        copy.write_bytes(p.read_bytes())
        copies.append(copy)
    _, _, stats = encode_images(tiny_backbone, copies, cache_dir=tmp_path / "c", quiet=True)
    assert stats.encoded == 0


def test_corrupt_images_are_skipped_with_a_warning(tiny_backbone, image_folder, tmp_path):
    paths = find_images(image_folder)
    bad = image_folder / "blue_dots" / "broken.png"
    bad.write_bytes(paths[0].read_bytes()[:60])  # truncated PNG
    paths = find_images(image_folder)
    with pytest.warns(NegPromptWarning, match=r"skipped 1 unreadable image\(s\)"):
        feats, keep, stats = encode_images(tiny_backbone, paths, cache_dir=tmp_path / "c", quiet=True)
    assert stats.skipped == [bad]
    assert len(keep) == len(paths) - 1 and paths.index(bad) not in keep
    assert feats.shape[0] == len(paths) - 1
    with pytest.raises(UsageError, match="1 unreadable image"):
        encode_images(tiny_backbone, paths, cache_dir=tmp_path / "c2", strict=True, quiet=True)


def test_augmented_views_are_deterministic_and_distinct(tiny_backbone, image_folder, tmp_path):
    paths = find_images(image_folder)[:6]
    eval_feats, _, _ = encode_images(tiny_backbone, paths, cache_dir=tmp_path / "a", quiet=True)
    v0, _, _ = encode_images(tiny_backbone, paths, cache_dir=tmp_path / "a", view=View(0, seed=1), quiet=True)
    v0_again, _, st = encode_images(tiny_backbone, paths, cache_dir=tmp_path / "b", view=View(0, seed=1), quiet=True)
    v1, _, _ = encode_images(tiny_backbone, paths, cache_dir=tmp_path / "a", view=View(1, seed=1), quiet=True)
    assert st.encoded == len(paths)  # a fresh cache really recomputed ...
    torch.testing.assert_close(v0, v0_again, atol=1e-6, rtol=0)  # ... the same view
    assert not torch.allclose(v0, v1) and not torch.allclose(v0, eval_feats)


def test_a_resized_crop_is_drawn_as_torchvision_draws_it():
    """The box of --augment resized-crop: inside the image, 8-100 % of its area at aspect 3/4 to 4/3 (the draws that
    fit), the same for the same seed; an image too thin for any draw gets torchvision's fallback, the centre crop at
    the nearest allowed ratio."""
    import numpy as np

    from negprompt_cli.features.image_features import View, resized_crop_box

    boxes = [resized_crop_box(320, 240, np.random.default_rng(seed)) for seed in range(2000)]
    assert boxes[:5] == [resized_crop_box(320, 240, np.random.default_rng(seed)) for seed in range(5)]
    for left, top, w, h in boxes:
        assert 0 <= left and left + w <= 320 and 0 <= top and top + h <= 240
    areas = np.array([w * h for _, _, w, h in boxes]) / (320 * 240)
    ratios = np.array([w / h for _, _, w, h in boxes])
    assert areas.min() >= 0.07 and areas.max() <= 1.0 and 0.3 < np.median(areas) < 0.7
    assert ratios.min() >= 0.74 and ratios.max() <= 1.35
    assert len(set(boxes)) > 1900  # random, not a few boxes
    assert resized_crop_box(1000, 10, np.random.default_rng(0)) == (493, 0, 13, 10)  # 4/3 of the height, centred
    assert View(0, seed=1).tag() == "aug0-s1-p4" and View(0, seed=1, recipe="resized-crop").tag() == "rrc0-s1"
