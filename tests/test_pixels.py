"""Tensor JPEG decoding + preprocessing (the GPU score path) against open_clip's PIL preprocessing.

On CPU the same code runs with torchvision's CPU decoder (NEGPROMPT_DECODE=tensor), so the
agreement, the cache separation and the fallbacks are tested without a GPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from negprompt_cli.errors import NegPromptWarning, UsageError
from negprompt_cli.features import image_features as features_module
from negprompt_cli.features.backbone import BackboneRequest, load_backbone
from negprompt_cli.features.image_features import View, encode_images, tensor_decoding
from negprompt_cli.inputs.image_folders import find_images
from negprompt_cli.inputs.pixels import decode_jpegs, tensor_preprocess_for


def natural_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields plus edges and fine texture: what resampling differences show up on."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    image[height // 3: height // 2, :, :] = rng.integers(0, 256, size=3)  # a hard-edged band
    image += rng.integers(-12, 13, size=image.shape, dtype=np.int16)  # sensor-like noise
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """ImageNet-like JPEGs (500×375 and 375×500, quality 90), a small one, greyscale and CMYK JPEGs, a PNG."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k in range(6):
        size = (500, 375) if k % 2 == 0 else (375, 500)
        natural_image(rng, *size).save(root / f"photo{k}.jpg", quality=90)
    natural_image(rng, 40, 30).save(root / "small.jpg", quality=90)
    natural_image(rng, 320, 240).convert("L").save(root / "grey.jpg", quality=90)
    natural_image(rng, 320, 240).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    natural_image(rng, 320, 240).save(root / "lossless.png")
    return root


@pytest.fixture(scope="module")
def toy():
    return load_backbone(BackboneRequest("toy", device="cpu"))


def test_open_clip_eval_transform_is_recognised(toy, tiny_backbone):
    for backbone in (toy, tiny_backbone):
        spec = tensor_preprocess_for(backbone.preprocess)
        assert spec is not None and spec.crop == (backbone.image_size, backbone.image_size)
    import open_clip

    _, train_transform, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    assert tensor_preprocess_for(train_transform) is None  # random crops: PIL path
    assert tensor_preprocess_for(lambda image: image) is None


def test_pixels_and_features_agree_with_pil(toy, photos, tmp_path):
    paths = find_images(photos)
    spec = tensor_preprocess_for(toy.preprocess)
    for path in paths:
        if path.suffix != ".jpg":
            continue
        with Image.open(path) as img:
            reference = toy.preprocess(img.convert("RGB"))
        decoded = decode_jpegs([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)],
                               torch.device("cpu"))[0]
        ours = spec([decoded])[0]
        assert ours.shape == reference.shape
        # normalised units (1/255 of a pixel is ~0.015): decoders and resamplers differ by a few levels at most
        assert (ours - reference).abs().mean() < 0.03, path.name
    pil, keep_pil, _ = encode_images(toy, paths, cache_dir=tmp_path / "c", decode="pil", quiet=True)
    ours, keep_ours, stats = encode_images(toy, paths, cache_dir=tmp_path / "c", decode="tensor", quiet=True)
    assert keep_pil == keep_ours == list(range(len(paths)))
    assert stats.encoded == len(paths)  # a separate cache key: the two paths never mix
    cosine = (pil * ours).sum(-1)
    assert cosine.min() >= 0.999, dict(zip([p.name for p in paths], cosine.tolist(), strict=True))
    again, _, stats = encode_images(toy, paths, cache_dir=tmp_path / "c", decode="tensor", quiet=True)
    assert stats.encoded == 0 and torch.equal(again, ours)


def test_batches_with_a_corrupt_jpeg_lose_only_that_file(toy, photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(photos.glob("photo*.jpg")):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg body")
    paths = find_images(folder)
    with pytest.warns(NegPromptWarning, match=r"skipped 1 unreadable image\(s\)"):
        feats, keep, stats = encode_images(toy, paths, use_cache=False, decode="tensor", batch_size=4, quiet=True)
    assert [p.name for p in stats.skipped] == ["broken.jpg"] and len(keep) == len(paths) - 1
    reference, _, _ = encode_images(toy, [paths[i] for i in keep], use_cache=False, decode="tensor", quiet=True)
    torch.testing.assert_close(feats, reference, atol=1e-6, rtol=0)
    with pytest.raises(UsageError, match="1 unreadable"):
        encode_images(toy, paths, use_cache=False, decode="tensor", strict=True, quiet=True)


def test_jpegs_the_decoder_refuses_go_through_pil(toy, photos, monkeypatch):
    paths = sorted(photos.glob("photo*.jpg"))[:3]
    original = features_module.decode_jpegs

    def refuse_the_second(encoded, device, orientations=None):
        decoded = original(encoded, device, orientations)
        return [None if k == 1 else image for k, image in enumerate(decoded)]

    monkeypatch.setattr(features_module, "decode_jpegs", refuse_the_second)
    mixed, keep, stats = encode_images(toy, paths, use_cache=False, decode="tensor", quiet=True)
    assert keep == [0, 1, 2] and not stats.skipped
    pil, _, _ = encode_images(toy, paths[1:2], use_cache=False, decode="pil", quiet=True)
    torch.testing.assert_close(mixed[1:2], pil, atol=1e-6, rtol=0)


def test_decoder_choice(toy, tmp_path, monkeypatch):
    assert tensor_decoding(toy, View(), "auto") is None  # CPU: PIL unless asked
    assert tensor_decoding(toy, View(), "tensor") is not None
    assert tensor_decoding(toy, View(0, seed=1), "tensor") is None  # augmented views stay on PIL
    monkeypatch.setenv("NEGPROMPT_DECODE", "tensor")
    assert tensor_decoding(toy, View(), None) is not None
    monkeypatch.setenv("NEGPROMPT_DECODE", "nvjpeg")
    with pytest.raises(UsageError, match="unknown decoder"):
        tensor_decoding(toy, View(), None)


def test_encoded_bytes_round_trip():
    """decode_jpegs returns RGB uint8 CHW for colour and greyscale input alike."""
    rng = np.random.default_rng(1)
    blobs = []
    for mode in ("RGB", "L"):
        buffer = io.BytesIO()
        natural_image(rng, 64, 48).convert(mode).save(buffer, format="JPEG", quality=95)
        blobs.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    decoded = decode_jpegs(blobs, torch.device("cpu"))
    assert all(image.shape == (3, 48, 64) and image.dtype == torch.uint8 for image in decoded)
