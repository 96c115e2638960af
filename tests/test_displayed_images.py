"""Images are scored as a viewer shows them (#30 item 2): a phone photo's EXIF orientation is applied and 16-bit or
float pixels are scaled to 8 bits, not clipped; on the PIL path, the tensor (GPU) decode path, the Detector and the
report's thumbnails. The reference is what PIL displays: ``ImageOps.exif_transpose`` and linear scaling."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from negprompt_cli.features.backbone import BackboneRequest, load_backbone
from negprompt_cli.features.image_features import decode_rgb, encode_images
from negprompt_cli.inputs.pixels import DECODE_RULE, as_displayed, decode_jpegs, exif_orientation
from negprompt_cli.report.images import thumbnail

ORIENTATIONS = range(1, 9)


def scene(width: int = 96, height: int = 64) -> Image.Image:
    """No symmetry at all: a colour ramp, a red block near the top-left corner, a blue bar on the right."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)
    image[4:20, 6:30] = (230, 20, 20)
    image[:, width - 10:width - 4] = (20, 20, 230)
    return Image.fromarray(image)


def rotated_jpeg(orientation: int) -> bytes:
    """What a camera writes: the sensor's pixels, stored turned, with the EXIF tag that says how to turn them back.
    Saved losslessly enough (quality 95) that the decoders compare pixel for pixel."""
    stored = {1: scene(), 2: scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              3: scene().transpose(Image.Transpose.ROTATE_180), 4: scene().transpose(Image.Transpose.FLIP_TOP_BOTTOM),
              5: scene().transpose(Image.Transpose.TRANSPOSE), 6: scene().transpose(Image.Transpose.ROTATE_90),
              7: scene().transpose(Image.Transpose.TRANSVERSE), 8: scene().transpose(Image.Transpose.ROTATE_270)}
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored[orientation].save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def displayed(data: bytes) -> np.ndarray:
    """The pixels PIL displays for an image file: its EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_every_exif_orientation_is_applied_on_both_decode_paths(orientation):
    data = rotated_jpeg(orientation)
    assert exif_orientation(data) == orientation
    want = displayed(data)
    assert want.shape == (64, 96, 3)  # upright again, whatever the orientation it was stored in
    np.testing.assert_array_equal(np.asarray(decode_rgb(data)), want)  # the PIL path: exactly PIL's display
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    # the tensor path, turned by us (on CUDA with NEGPROMPT_TEST_DEVICE=cuda: nvJPEG cannot turn images itself)
    (tensor,) = decode_jpegs([raw], torch.device(TEST_DEVICE), [orientation])
    tensor = tensor.cpu()
    if TEST_DEVICE == "cpu":  # torchvision's CPU decoder can turn JPEGs itself: ours must agree exactly
        np.testing.assert_array_equal(tensor.numpy(), decode_jpeg(raw, mode=ImageReadMode.RGB,
                                                                  apply_exif_orientation=True).numpy())
    assert tuple(tensor.shape) == (3, 64, 96)
    # the two decoders may differ by JPEG rounding, never by a turn: the scene's corners land in the same place
    assert np.abs(tensor.permute(1, 2, 0).numpy().astype(int) - want.astype(int)).mean() < 2


def test_images_without_orientation_decode_as_before():
    buffer = io.BytesIO()
    scene().save(buffer, "PNG")
    data = buffer.getvalue()
    assert exif_orientation(data) == 1 and exif_orientation(b"not an image") == 1
    np.testing.assert_array_equal(np.asarray(decode_rgb(data)), np.asarray(scene()))


@pytest.fixture(scope="module")
def toy():
    return load_backbone(BackboneRequest("toy", device="cpu"))


@pytest.mark.parametrize("decode", ["pil", "tensor"])
def test_a_phone_photo_scores_as_it_is_displayed(toy, tmp_path, decode):
    """The features of a photo stored turned (orientation 6, as phones write portrait shots) are those of the
    upright picture, on the PIL path and on the tensor (GPU) path."""
    (tmp_path / "phone.jpg").write_bytes(rotated_jpeg(6))
    (tmp_path / "upright.jpg").write_bytes(rotated_jpeg(1))
    feats, keep, _ = encode_images(toy, [tmp_path / "phone.jpg", tmp_path / "upright.jpg"], use_cache=False,
                                   decode=decode, quiet=True)
    assert keep == [0, 1]
    sideways, _, _ = encode_images(toy, [tmp_path / "phone.jpg"], use_cache=False, decode=decode, quiet=True)
    cosine = float(feats[0] @ feats[1])
    assert cosine > 0.98, cosine  # the same picture (JPEG rounding of the turned pixels aside)
    turned_back = Image.fromarray(displayed(rotated_jpeg(6))).transpose(Image.Transpose.ROTATE_270)  # as stored
    turned_back.save(tmp_path / "stored.png")
    stored, _, _ = encode_images(toy, [tmp_path / "stored.png"], use_cache=False, decode="pil", quiet=True)
    assert float(sideways[0] @ stored[0]) < cosine  # what ignoring the tag scored: another picture


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, "PNG")
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.mode.startswith("I;16")
        assert np.asarray(image.convert("RGB")).mean() > 250  # PIL's own conversion: nearly white
    decoded = np.asarray(decode_rgb(buffer.getvalue()))
    want = np.rint(ramp / 257.0).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], want)
    assert abs(decoded.mean() - 127.5) < 1


def test_other_wide_modes_are_scaled():
    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    as_float = as_displayed(Image.fromarray(ramp.astype(np.float32)))  # a float TIFF in [0, 1]
    np.testing.assert_array_equal(np.asarray(as_float)[..., 0], np.rint(ramp * 255).astype(np.uint8))
    wide = (ramp * 65535).astype(np.int32)
    as_int = as_displayed(Image.fromarray(wide))  # 16-bit data held as "I"
    np.testing.assert_array_equal(np.asarray(as_int)[..., 0], np.rint(wide / 257).astype(np.uint8))
    small = as_displayed(Image.fromarray((ramp * 255).astype(np.int32)))  # 8-bit data held as "I"
    np.testing.assert_array_equal(np.asarray(small)[..., 0], (ramp * 255).astype(np.int32).astype(np.uint8))
    rgb = scene()
    np.testing.assert_array_equal(np.asarray(as_displayed(rgb)), np.asarray(rgb))  # 8-bit RGB untagged: as it is


def test_cached_features_are_keyed_by_the_decode_rule(toy, tmp_path):
    """Features cached before this rule (a rotated photo encoded sideways) are never reused."""
    (tmp_path / "phone.jpg").write_bytes(rotated_jpeg(6))
    for decode in ("pil", "tensor"):
        encode_images(toy, [tmp_path / "phone.jpg"], cache_dir=tmp_path / "cache", decode=decode, quiet=True)
    infos = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/info.json")]
    assert len(infos) == 2 and all(DECODE_RULE in info["preprocess"] for info in infos)


def test_the_detector_and_the_report_show_images_upright(toy, tmp_path):
    from negprompt_cli.detector import Detector

    (tmp_path / "phone.jpg").write_bytes(rotated_jpeg(6))
    detector = Detector.zero_shot(["house", "square"], backbone="toy", device="cpu")
    with Image.open(tmp_path / "phone.jpg") as photo:  # a PIL image with its tag, as a user opens it
        photo.load()
        from_memory = detector.features([photo])
    from_file = detector.features([tmp_path / "phone.jpg"])
    upright = detector.features([Image.fromarray(displayed(rotated_jpeg(6)))])
    torch.testing.assert_close(from_memory, upright, atol=1e-6, rtol=0)
    torch.testing.assert_close(from_file, upright, atol=1e-6, rtol=0)
    uri, why = thumbnail(str(tmp_path / "phone.jpg"), pixels=48)
    assert why is None and uri is not None
    import base64

    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.width > thumb.height  # landscape as displayed (stored portrait)
