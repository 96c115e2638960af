"""JPEG decoding and eval preprocessing as batched tensor work, on the GPU when there is one.

One CPU core decodes and preprocesses about 50 ImageNet-sized JPEGs per second with PIL, so on
a GPU the CPU is the ceiling of ``score`` long before the image tower is. This path reads the
file bytes on the CPU (cheap), decodes JPEGs in batches with ``torchvision.io.decode_jpeg`` on
the device (nvJPEG on CUDA), and resizes, crops and normalises there, reproducing open_clip's
eval transform (bicubic shorter-side resize with antialiasing, centre crop, rounding to 8-bit as
PIL does, normalisation). Image features agree with the PIL path to cosine ≥ 0.999
(tests/test_pixels.py), but the pixels are not bit-identical, so the feature cache keys the two
paths apart (:meth:`TensorPreprocess.tag`). Other formats, and JPEGs the decoder refuses, go
through PIL.

Both paths decode an image as a viewer shows it (:func:`as_displayed`): turned by its EXIF orientation (a
phone photo is stored sideways and tagged), and with 16-bit and float pixels scaled to 8 bits rather than
clipped (PIL's ``convert("RGB")`` of a 16-bit greyscale PNG is almost white). ``DECODE_RULE`` names the rule
in every feature-cache key, so features cached under an older rule are never reused. The rule itself lives in
``displayed`` (PIL and numpy only: the report's thumbnails use it without importing torch); the EXIF turn of a
decoded tensor is :func:`orient`.

torchvision is imported where it is used, not here: it costs a second and a half (it pulls in torch._dynamo),
and a run whose images are all in the feature cache decodes nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .displayed import DECODE_RULE, as_displayed, exif_orientation

__all__ = ["DECODE_RULE", "as_displayed", "exif_orientation", "orient", "decode_jpegs", "TensorPreprocess",
           "tensor_preprocess_for", "is_jpeg"]  # the decoding rule is re-exported: one import for the tensor path

JPEG_MAGIC = b"\xff\xd8\xff"
def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A decoded [C, H, W] image turned as EXIF ``orientation`` says (what ``ImageOps.exif_transpose`` does)."""
    if orientation in (2, 4):  # mirrored left-right / top-bottom
        return image.flip(-1 if orientation == 2 else -2)
    if orientation == 3:
        return image.flip(-1).flip(-2)
    if orientation == 5:  # transposed
        return image.transpose(-1, -2)
    if orientation == 6:  # stored turned left: turn right
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:  # transversed
        return image.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


@dataclass(frozen=True)
class TensorPreprocess:
    """open_clip's eval transform (Resize(size, bicubic) → CenterCrop → ToTensor → Normalize) on tensors."""

    size: int
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def tag(self) -> str:
        """Cache identity of this preprocessing (differs from every PIL transform's repr)."""
        return (f"tensor-jpeg-v1:{DECODE_RULE}:resize{self.size}-bicubic-aa-round:crop{self.crop}:mean{self.mean}"
                f":std{self.std}")

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 [3, H, W] images (any sizes, one device) -> normalised float [B, 3, crop_h, crop_w]."""
        from torchvision.transforms import InterpolationMode, v2  # noqa: PLC0415 (see the module docstring)

        out = []
        for image in images:
            x = v2.functional.resize(image.float(), [self.size], interpolation=InterpolationMode.BICUBIC,
                                     antialias=True)
            x = v2.functional.center_crop(x, list(self.crop))
            out.append(x.clamp_(0, 255).round_())  # PIL resamples to 8-bit; bicubic overshoot is clipped
        batch = torch.stack(out).div_(255)
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1)
        return batch.sub_(mean).div_(std)


def tensor_preprocess_for(preprocess: Any) -> TensorPreprocess | None:
    """The tensor equivalent of an open_clip eval ``Compose``, or None when it has steps we do not reproduce."""
    steps = getattr(preprocess, "transforms", None)
    if not steps:
        return None
    size = crop = mean = std = None
    for step in steps:
        kind = type(step).__name__
        if kind == "Resize" and isinstance(getattr(step, "size", None), (int, list, tuple)):
            value = step.size if isinstance(step.size, int) else (step.size[0] if len(step.size) == 1 else None)
            if value is None or getattr(step.interpolation, "value", None) != "bicubic" or step.max_size is not None:
                return None
            size = int(value)
        elif kind == "CenterCrop":
            crop = tuple(int(v) for v in step.size)
        elif kind == "Normalize":
            mean, std = tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
        elif kind in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb") or (
                kind == "function" and getattr(step, "__name__", "") == "_convert_to_rgb"):
            continue
        else:
            return None
    if size is None or crop is None or mean is None or std is None:
        return None
    return TensorPreprocess(size, crop, mean, std)  # type: ignore[arg-type]


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device,
                 orientations: list[int] | None = None) -> list[torch.Tensor | None]:
    """RGB uint8 [3, H, W] images on ``device``, each turned by its EXIF orientation (``orientations``, from
    :func:`exif_orientation`: the decoder applies it on no device); None where the decoder refuses a file.

    One batched call when every file decodes; a batch with a bad file is retried file by file so
    only that file is lost (the caller then tries PIL, and skips it with a warning if PIL fails too).
    """
    if not encoded:
        return []
    decoded = _decode_jpegs(encoded, device)
    if orientations is None:
        return decoded
    return [orient(image, o) if image is not None else None
            for image, o in zip(decoded, orientations, strict=True)]


def _decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415 (see the module docstring)

    with warnings.catch_warnings():
        # torchvision 0.29 announces its decoders' move to TorchCodec on every call; they still work
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded: list[torch.Tensor | None] = []
            for data in encoded:
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
            return decoded
