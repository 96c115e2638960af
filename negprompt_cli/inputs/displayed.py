"""Images as a viewer shows them: the decoding rule every path shares (PIL and numpy only, no torch, so that the
report's thumbnails follow it without importing torch).

A phone stores a portrait photo sideways and tags it with its EXIF orientation; a 16-bit PNG's pixels go up to
65,535, which PIL's ``convert("RGB")`` clips to white. Scoring either as stored scores another picture than the
one the user sees. ``DECODE_RULE`` names this rule in every feature-cache key.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

DECODE_RULE = "displayed-v1"  # EXIF orientation applied, 16-bit / float pixels scaled: part of every cache key
EXIF_ORIENTATION = 0x0112
EXIF_MARKER = b"Exif\x00\x00"  # how a JPEG's APP1 EXIF segment begins
EXIF_SEARCH_BYTES = 1 << 17  # APP segments come first and hold at most 64 KiB each
HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer greyscale wider than 8 bits


def as_displayed(image: Image.Image) -> Image.Image:
    """``image`` as an RGB picture the way a viewer shows it: its EXIF orientation applied, and pixels wider
    than 8 bits scaled to 0-255 (16-bit integers by 1/257; floats in [0, 1] by 255, others clipped)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image) or image
    if image.mode in HIGH_BIT_DEPTH:
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or values.max(initial=0) > 255:  # "I" holding 8-bit values stays as it is
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.nan_to_num(np.rint(values)), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")  # a new image, also for RGB: the caller may close the one it opened


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) an image file's bytes declare, read from its header only; 1 when none.

    A JPEG keeps its EXIF in an APP1 segment at the very start of the file: one without that marker (most
    datasets' JPEGs) is answered without asking PIL, since this runs for every JPEG of the GPU score path."""
    if data[:2] == b"\xff\xd8" and EXIF_MARKER not in data[:EXIF_SEARCH_BYTES]:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
