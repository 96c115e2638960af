"""Image features, computed once: encode each image once per (weights, preprocessing, view).

Features are stored as unit-norm float32 rows in the shared on-disk cache (``feature_cache``), one
directory per feature key. Rows are keyed by a hash of the image file's bytes (plus the
augmentation view), so renamed or re-exported copies of the same image hit the cache.
Every training and scoring stage goes through :func:`encode_images`, which only runs the
image tower on what the cache does not already hold.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..console import progress
from ..devices import autocast
from ..distributed import (
    SINGLE,
    Ranks,
    agree,
    batch_shard,
    concat_rows,
    gather_to_all,
    gather_to_main,
)
from ..environment import default_cache_dir
from ..errors import NegPromptError, NegPromptWarning, UsageError
from ..inputs.containers import Samples, index_each, index_shared, list_samples
from ..inputs.displayed import DECODE_RULE, as_displayed, exif_orientation
from ..inputs.image_folders import find_images
from ..inputs.pixels import TensorPreprocess, decode_jpegs, is_jpeg
from .backbone import Backbone
from .feature_cache import FeatureCache
from .local_features import LOCAL_TAG, check_local, encode_local


def _apply_pixel_limit() -> None:
    """PIL refuses images over ~179M pixels as decompression bombs; NEGPROMPT_MAX_IMAGE_PIXELS moves that limit
    (decoding workers import this module, so they apply it too)."""
    value = os.environ.get("NEGPROMPT_MAX_IMAGE_PIXELS")
    if value:
        try:
            Image.MAX_IMAGE_PIXELS = int(value) // 2 or None  # PIL refuses above twice MAX_IMAGE_PIXELS
        except ValueError:
            raise UsageError(f"NEGPROMPT_MAX_IMAGE_PIXELS must be a whole number (got {value!r})") from None


_apply_pixel_limit()


def file_digest(path: Path) -> str:
    """The cache key of an image file's content (the same as :func:`bytes_digest` of its bytes)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_item(item: Any) -> bytes:
    """An image's bytes: a file (``Path`` or str), or a container sample (``containers.Member``), which reads
    like a file."""
    return (item if hasattr(item, "read_bytes") else Path(item)).read_bytes()


def item_name(item: Any) -> str:
    """An image in messages: its path, or a container sample's container and id."""
    where = getattr(item, "where", None)
    return where() if where is not None else str(item)


def describe_skipped(skipped: Sequence[Any]) -> str:
    """"N unreadable image(s): a, b, c ...", naming the ones over PIL's decompression-bomb limit separately
    (container samples by container and id)."""
    too_large = []
    for path in skipped:
        try:
            with Image.open(path if isinstance(path, (str, Path)) else io.BytesIO(read_item(path))):
                pass
        except Image.DecompressionBombError:
            too_large.append(path)
        except Exception:
            continue
    unreadable = [p for p in skipped if p not in too_large]
    parts = []
    if unreadable:
        parts.append(f"{len(unreadable)} unreadable image(s): " + ", ".join(item_name(p) for p in unreadable[:3])
                     + (" ..." if len(unreadable) > 3 else ""))
    if too_large:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        parts.append(f"{len(too_large)} image(s) too large (over the decompression-bomb limit of {limit} pixels; "
                     "NEGPROMPT_MAX_IMAGE_PIXELS raises it, 0 lifts it): "
                     + ", ".join(item_name(p) for p in too_large[:3]) + (" ..." if len(too_large) > 3 else ""))
    return "; ".join(parts)


def _digest_or_none(path: Any) -> str | None:
    try:
        return file_digest(Path(path)) if isinstance(path, (str, Path)) else bytes_digest(read_item(path))
    except OSError:  # no read permission, vanished, a path the system refuses: skipped like a corrupt image
        return None


def file_digests(paths: Sequence[Any]) -> list[str | None]:
    """Content hashes of many files (None for a file that cannot be read); threads overlap the reads (hashlib
    releases the GIL on large buffers)."""
    if len(paths) < 64:
        return [_digest_or_none(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        return list(pool.map(_digest_or_none, paths))


@dataclass
class EncodeStats:
    """What a call to :func:`encode_images` did; tests count ``encoded`` to prove caching."""

    requested: int = 0
    cached: int = 0
    encoded: int = 0
    encoder_calls: int = 0
    skipped: list[Any] = field(default_factory=list)  # Paths, and container samples (``containers.Member``)
    cache_write_error: str | None = None  # why the feature cache could not be written, if it could not

    @classmethod
    def total(cls, parts: Iterable[EncodeStats]) -> EncodeStats:
        """What several calls (views, ranks) did together."""
        total = cls()
        for part in parts:
            total.merge(part)
        return total

    def merge(self, other: EncodeStats) -> None:
        self.requested += other.requested
        self.cached += other.cached
        self.encoded += other.encoded
        self.encoder_calls += other.encoder_calls
        self.skipped.extend(other.skipped)
        self.cache_write_error = self.cache_write_error or other.cache_write_error


AUGMENTS = ("pad-crop", "resized-crop")  # how augmented views are made (``--augment``); the first is the default


def augmented_views(count: int, seed: int, recipe: str = AUGMENTS[0]) -> list[View]:
    """Views 0..count-1 of a seeded augmentation: what ``cache build --aug-views`` fills and fit-* reads."""
    return [View(index=k, seed=seed, recipe=recipe) for k in range(count)]


def check_augment(augment: str, aug_views: int) -> None:
    """--augment names a recipe, and says how --aug-views views are made: without views it would do nothing."""
    if augment not in AUGMENTS:
        raise UsageError(f"unknown --augment {augment!r}", hint=f"choose {' or '.join(AUGMENTS)}")
    if augment != AUGMENTS[0] and aug_views <= 0:
        raise UsageError(f"--augment {augment} says how augmented views are made, and --aug-views asks for none",
                         hint="add --aug-views K (K at least the epochs gives every epoch its own crops)")


@dataclass(frozen=True)
class View:
    """How an image is turned into pixels: the eval preprocessing, or seeded augmented view ``index``.

    Augmented views (``recipe``) follow a release: ``pad-crop`` is NegPrompt's (a random crop with 4-pixel
    padding and a horizontal flip, on top of the eval resize + centre crop); ``resized-crop`` is CoOp's and
    LoCoOp's (``random_resized_crop``: a random 8-100 % of the image's area at an aspect ratio of 3/4 to 4/3,
    resized to the input size with bicubic resampling, and a horizontal flip). They are seeded per image and
    view, so view k of an image is the same in every run and stage; training epoch e reads view e mod K, so K
    views at least as many as the epochs give every epoch its own crops.
    """

    index: int | None = None  # None = eval preprocessing
    seed: int = 0
    pad: int = 4
    recipe: str = AUGMENTS[0]

    def tag(self) -> str:
        if self.index is None:
            return "eval"
        if self.recipe == "resized-crop":
            return f"rrc{self.index}-s{self.seed}"
        return f"aug{self.index}-s{self.seed}-p{self.pad}"


class _ImageDataset(torch.utils.data.Dataset):
    """Item i: (i, digest, pixels): PIL-preprocessed pixels, or the raw bytes of a JPEG (``raw_jpeg``: decoded
    later on the device), or None for an unreadable file.

    The file is read once and ``digest`` is the hash of exactly those bytes, which are the ones decoded: a file
    rewritten while a run reads it can never be cached under one version's key with the other's features."""

    def __init__(self, paths: Sequence[Path], view: View, preprocess: Callable, image_size: int,
                 raw_jpeg: bool = False) -> None:
        self.paths, self.view = paths, view  # an ImageList stays compact
        self.preprocess, self.image_size, self.raw_jpeg = preprocess, image_size, raw_jpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            data = read_item(self.paths[i])
        except OSError:
            return i, None, None
        digest = bytes_digest(data)
        if self.raw_jpeg and is_jpeg(data):
            return i, digest, RawJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), digest,
                                      exif_orientation(data))
        return i, digest, self.pil_pixels(data, digest)

    def pil_pixels(self, data: bytes, digest: str) -> torch.Tensor | None:
        image = decode_rgb(data)
        if image is None:
            return None
        if self.view.index is not None:
            image = _augment(image, digest, self.view, self.image_size)
        return self.preprocess(image)


def decode_rgb(data: bytes) -> Image.Image | None:
    """An image file's bytes as an RGB PIL image, as every stage decodes them and a viewer shows them (EXIF
    orientation, 16-bit pixels scaled: ``pixels.as_displayed``); None when PIL cannot."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return as_displayed(img)
    except Exception:
        return None


@dataclass(frozen=True)
class RawJpeg:
    data: torch.Tensor  # uint8 [n_bytes]
    digest: str  # of these bytes
    orientation: int = 1  # EXIF, applied after decoding on the device


def _augment(image: Image.Image, digest: str, view: View, size: int) -> Image.Image:
    seed = int.from_bytes(hashlib.blake2b(f"{digest}:{view.tag()}".encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    if view.recipe == "resized-crop":
        return _resized_crop(image, rng, size)
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                         Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    padded = ImageOps.expand(image, border=view.pad, fill=0)
    dx, dy = (int(v) for v in rng.integers(0, 2 * view.pad + 1, size=2))
    image = padded.crop((dx, dy, dx + size, dy + size))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    return image


def resized_crop_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a random resized crop, drawn as torchvision's ``RandomResizedCrop.get_params``
    draws it (ten tries at a random area and log-uniform aspect ratio, else the centre crop at the nearest allowed
    ratio), from a seeded numpy generator instead of torch's global one (so a view is the same in any process)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _resized_crop(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    left, top, w, h = resized_crop_box(image.width, image.height, rng)
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    return ImageOps.mirror(image) if rng.random() < 0.5 else image


def encode_pixels(backbone: Backbone, pixels: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Unit CPU features of one batch of preprocessed pixels on the backbone's device (every image path through
    negprompt, cached or in memory, ends here, so the same pixels in the same batch give the same features)."""
    with torch.no_grad(), autocast(backbone.device, precision):
        feats = backbone.model.encode_image(pixels.to(backbone.device))
    return F.normalize(feats.float(), dim=-1).cpu()


def worker_context(device: torch.device, num_workers: int) -> str | None:
    """How decoding workers start: forking a process whose CUDA runtime and its threads are up can deadlock
    the children, so on CUDA (or once CUDA is initialised) they start from a clean forkserver instead; likewise
    in a torchrun job, whose process group runs its own threads and holds sockets to the other ranks that a
    forked child would inherit."""
    if num_workers <= 0:
        return None
    if device.type == "cuda" or torch.cuda.is_initialized():
        return "forkserver"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return "forkserver"
    return None


def _collate(batch):
    """(indices and stacked pixels of PIL items, indices and raw JPEGs, indices of unreadable files, and the
    digest of the bytes each readable item was decoded from)."""
    pil = [(i, x) for i, _, x in batch if isinstance(x, torch.Tensor)]
    jpeg = [(i, x) for i, _, x in batch if isinstance(x, RawJpeg)]
    bad = [i for i, _, x in batch if x is None]
    digests = {i: d for i, d, x in batch if x is not None}
    pixels = torch.stack([x for _, x in pil]) if pil else None
    return [i for i, _ in pil], pixels, [i for i, _ in jpeg], [x for _, x in jpeg], bad, digests


def _device_pixels(dataset: _ImageDataset, device: torch.device, tensor_path: TensorPreprocess | None,
                   pil_idx, pil_pixels, jpeg_idx, jpeg_data) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """One batch's pixels on the device and the item order they are in; JPEGs the decoder refuses fall back
    to PIL, and those PIL cannot read either are returned as refused."""
    order: list[int] = list(pil_idx)
    refused: list[int] = []
    parts = [pil_pixels.to(device, non_blocking=True)] if pil_pixels is not None else []
    if jpeg_idx:
        assert tensor_path is not None
        decoded = decode_jpegs([raw.data for raw in jpeg_data], device, [raw.orientation for raw in jpeg_data])
        good = [(i, image) for i, image in zip(jpeg_idx, decoded, strict=True) if image is not None]
        if good:
            order.extend(i for i, _ in good)
            parts.append(tensor_path([image for _, image in good]))
        for i, raw, image in zip(jpeg_idx, jpeg_data, decoded, strict=True):
            if image is None:  # PIL decodes the very same bytes
                fallback = dataset.pil_pixels(raw.data.numpy().tobytes(), raw.digest)
                if fallback is None:
                    refused.append(i)
                else:
                    order.append(i)
                    parts.append(fallback.unsqueeze(0).to(device))
    return order, (torch.cat(parts) if parts else None), refused


DECODERS = ("auto", "pil", "tensor")


def tensor_decoding(backbone: Backbone, view: View, decode: str | None) -> TensorPreprocess | None:
    """Whether JPEGs are decoded and preprocessed as tensors on the device (see ``pixels``).

    ``decode`` (default ``$NEGPROMPT_DECODE`` or auto): auto = on CUDA, for the eval view, when the
    backbone's preprocessing is open_clip's standard eval transform; tensor = also on CPU (torchvision's
    CPU decoder: how tests compare the two paths); pil = never.
    """
    decode = decode or os.environ.get("NEGPROMPT_DECODE") or "auto"
    if decode not in DECODERS:
        raise UsageError(f"unknown decoder {decode!r} (NEGPROMPT_DECODE)", hint=f"choose one of {', '.join(DECODERS)}")
    if decode == "pil" or view.index is not None or (decode == "auto" and backbone.device.type != "cuda"):
        return None
    return backbone.tensor_preprocess()


WINDOW_BATCHES = 64  # encoder batches per window: what a streaming reader holds at once (64 x 64 images)


@dataclass
class Window:
    """A run of consecutive images of a stream: ``indices`` are the positions (in the stream's ``paths``) of its
    readable images, in order, ``features`` their unit features [len(indices), E], and ``end`` the position after
    the run (unreadable images included: where a resumed stream starts)."""

    indices: list[int]
    features: torch.Tensor
    end: int = 0


@dataclass
class _Pending:
    """A window between its cache lookup and the last of its encoder batches."""

    start: int
    stop: int
    cached: dict[int, torch.Tensor]
    batches_left: int
    new: dict[int, torch.Tensor] = field(default_factory=dict)
    bad: list[int] = field(default_factory=list)


class ImageStream:
    """Unit features of ``paths`` window by window, in order, so that memory does not grow with the number of
    images: each window (``WINDOW_BATCHES`` encoder batches) is looked up in the feature cache, the rest goes
    through the image tower, and the window is handed on once complete. One decoding pool serves the whole
    stream. With a fresh cache every image is encoded in the same batch as :func:`encode_images` on the whole
    list would put it in (windows are whole batches), so the features are the same.

    ``stats`` fills as the stream is read. Unreadable images are left out of the windows; once the stream is
    exhausted they are reported in one warning, or (``strict``) raised as one error.
    """

    def __init__(self, backbone: Backbone, paths: Sequence[Path], *, cache_dir: Path | None = None,
                 view: View = View(), batch_size: int = 64, num_workers: int | None = None,
                 precision: str = "fp32", strict: bool = False, use_cache: bool = True, quiet: bool = False,
                 description: str = "Encoding images", decode: str | None = None,
                 window_batches: int | None = None, local: bool = False) -> None:
        self.backbone, self.paths, self.view = backbone, paths, view
        self.batch_size, self.num_workers, self.precision = batch_size, num_workers, precision
        self.strict, self.quiet, self.description = strict, quiet, description
        self.window = batch_size * max(1, window_batches or WINDOW_BATCHES)
        self.tensor_path = tensor_decoding(backbone, view, decode)
        preprocess_id = (self.tensor_path.tag() if self.tensor_path is not None
                         else f"{DECODE_RULE}:{backbone.preprocess_repr()}")
        self.local = local
        if local:  # rows of another width: their own key (``local_features``), beside the global rows
            check_local(backbone)
            preprocess_id = f"{preprocess_id}:{LOCAL_TAG}"
        self.cache = FeatureCache(cache_dir or default_cache_dir(), backbone.feature_key(preprocess_id),
                                  info={**backbone.identity(), "preprocess": preprocess_id}) if use_cache else None
        self.stats = EncodeStats(requested=len(paths))

    @classmethod
    def encoding(cls, backbone: Backbone, paths: Sequence[Path], encoding: EncodeOptions, *, view: View = View(),
                 description: str = "Encoding images", quiet: bool | None = None) -> ImageStream:
        """A stream with a stage's ``EncodeOptions`` (``quiet``: instead of theirs, e.g. on ranks other than 0)."""
        options = encoding.stream_options()
        if quiet is not None:
            options["quiet"] = quiet
        return cls(backbone, paths, view=view, description=description, **options)

    def _lookup(self, start: int) -> tuple[_Pending, list[int]]:
        """A window's cache lookup: (its pending record, the positions still to encode)."""
        stop = min(start + self.window, len(self.paths))
        digests = file_digests(self.paths[start:stop])
        row_ids = {start + k: f"{d}:{self.view.tag()}" for k, d in enumerate(digests) if d is not None}
        found = self.cache.lookup(list(row_ids.values())) if self.cache is not None else {}
        cached = {i: found[r] for i, r in row_ids.items() if r in found}
        todo = [i for i in range(start, stop) if i not in cached]
        self.stats.cached += len(cached)
        return _Pending(start, stop, cached, -(-len(todo) // self.batch_size) or 1), todo

    def _batches(self, pending: deque[_Pending], first: tuple[_Pending, list[int]]) -> Iterator[list[int]]:
        """The encoder batches, window after window; a window with nothing to encode sends one empty batch, so
        the decoding pool's read-ahead (a few batches) also bounds how many windows wait in memory."""
        for start in range(0, len(self.paths), self.window):
            window, todo = first if start == 0 else self._lookup(start)
            pending.append(window)
            if not todo:
                yield []
            for b in range(0, len(todo), self.batch_size):
                yield todo[b:b + self.batch_size]

    def _workers(self, todo: int) -> int:
        """Decoding workers: as asked, else up to 4 when the first window has 64 or more images to encode (a
        warm cache needs none)."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, os.cpu_count() or 1) if todo >= 64 else 0

    def __iter__(self) -> Iterator[Window]:
        device = self.backbone.device
        pending: deque[_Pending] = deque()
        first = self._lookup(0) if len(self.paths) else (_Pending(0, 0, {}, 0), [])
        workers = self._workers(len(first[1]))
        # In this process the preprocessing is asked for only when an image is decoded, so that a stream whose
        # images are all cached never builds a deferred backbone's model (``backbone_facts``); workers get it whole.
        preprocess = self.backbone.preprocess if workers else self._preprocess
        dataset = _ImageDataset(self.paths, self.view, preprocess, self.backbone.image_size,
                                raw_jpeg=self.tensor_path is not None)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=self._batches(pending, first),
                                             num_workers=workers, collate_fn=_collate,
                                             pin_memory=device.type == "cuda",
                                             multiprocessing_context=worker_context(device, workers))
        skipped: list[int] = []
        # shards are written by one background thread while the next batch encodes
        with progress(self.quiet) as bar, ThreadPoolExecutor(max_workers=1) as writer:
            writes: list[Any] = []
            task = bar.add_task(self.description, total=len(self.paths), status="")
            for pil_idx, pil_pixels, jpeg_idx, jpeg_data, bad, decoded_digests in loader:
                window = next(w for w in pending if w.batches_left > 0)
                window.batches_left -= 1
                order, pixels, refused = _device_pixels(dataset, device, self.tensor_path, pil_idx, pil_pixels,
                                                        jpeg_idx, jpeg_data)
                window.bad.extend(bad + refused)
                if order:
                    assert pixels is not None  # the batch's pixels, whenever any item was decoded
                    feats = (encode_local if self.local else encode_pixels)(self.backbone, pixels, self.precision)
                    self.stats.encoder_calls += 1
                    self.stats.encoded += len(order)
                    if self.cache is not None:  # keyed by the bytes that were decoded, not by the earlier hash
                        keys = [f"{decoded_digests[i]}:{self.view.tag()}" for i in order]
                        writes.append(writer.submit(self.cache.add, keys, feats))
                    window.new.update(zip(order, feats, strict=True))
                while pending and pending[0].batches_left == 0:
                    done = pending.popleft()
                    bar.advance(task, done.stop - done.start)
                    skipped.extend(sorted(done.bad))
                    yield _assemble(done)
                for future in [w for w in writes if w.done()]:
                    future.result()  # a failed write surfaces here, not at the end
                writes = [w for w in writes if not w.done()]
            for future in writes:
                future.result()
        self.stats.skipped = [_as_item(self.paths[i]) for i in skipped]
        self._report()

    def _preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.backbone.preprocess(image)

    def _report(self) -> None:
        cache = self.cache
        if cache is not None and cache.damaged:
            warnings.warn(f"re-encoded the rows of {len(cache.damaged)} damaged feature-cache shard(s) "
                          f"({cache.damaged[0].name}{' ...' if len(cache.damaged) > 1 else ''}); removed them",
                          NegPromptWarning, stacklevel=3)
        if cache is not None and cache.write_error is not None:
            reason = cache.write_error.strerror or cache.write_error
            self.stats.cache_write_error = str(reason)
            warnings.warn(f"the feature cache {cache.dir} cannot be written ({reason}): continuing without caching",
                          NegPromptWarning, stacklevel=3)
        if self.stats.skipped:
            message = describe_skipped(self.stats.skipped)
            if self.strict:
                raise UsageError(message, hint="fix or remove them, or drop --strict to skip them")
            warnings.warn(f"skipped {message}", NegPromptWarning, stacklevel=3)


def _as_item(item: Any) -> Any:
    return Path(item) if isinstance(item, str) else item


def _assemble(window: _Pending) -> Window:
    features = {**window.cached, **window.new}
    indices = [i for i in range(window.start, window.stop) if i in features]
    return Window(indices, torch.stack([features[i] for i in indices]) if indices else torch.empty(0, 0),
                  window.stop)


def encode_images(backbone: Backbone, paths: Sequence[Path], **options: Any) -> tuple[torch.Tensor, list[int],
                                                                                      EncodeStats]:
    """Unit-norm features for ``paths``, all at once: (features of readable images, their indices, stats).

    Takes :class:`ImageStream`'s options. Unreadable images are skipped with one warning (count + first
    paths); ``strict`` makes them an error. Cached rows are reused; only the rest goes through the image
    tower. For inputs too large to hold, read an :class:`ImageStream` instead.
    """
    stream = ImageStream(backbone, paths, **options)
    windows = [w for w in stream if w.indices]
    if not windows:
        return torch.empty(0, 0), [], stream.stats
    return (torch.cat([w.features for w in windows]), [i for w in windows for i in w.indices], stream.stats)


@dataclass(frozen=True)
class EncodeOptions:
    """How a stage runs images through the backbone on this machine: the options every image-reading command
    shares (``--cache-dir``, ``--batch-size``, ``--workers``, ``--precision``, ``--strict``, ``--quiet``), declared
    here once and carried whole by each stage's options. ``precision`` is also the autocast the prompt stages
    train under: a choice about this machine, recorded apart from the training recipe."""

    cache_dir: Path | None = None
    batch_size: int = 64
    num_workers: int | None = None
    precision: str = "fp32"
    strict: bool = False
    quiet: bool = False  # no progress bars (stderr)
    local: bool = False  # rows also carry the patch features (``local_features``; a scorer that reads them)

    def stream_options(self) -> dict[str, Any]:
        """These settings as :class:`ImageStream`'s keywords (one list, for every way a stage encodes)."""
        return dict(cache_dir=self.cache_dir, batch_size=self.batch_size, num_workers=self.num_workers,
                    precision=self.precision, strict=self.strict, quiet=self.quiet, local=self.local)


def ranks_agree(ranks: Ranks, backbone: Backbone, paths: Sequence[Path]) -> None:
    """Every rank of a torchrun job loaded the same backbone and weights and sees the same image list (one
    error on every rank, before any image is encoded, if not)."""
    if not ranks.distributed:
        return
    agree({**backbone.identity(), "weights": backbone.weights_fingerprint()}, ranks, "the backbone")
    agree_on_list(ranks, paths, "the image list")


def list_samples_across(ranks: Ranks, inputs: Sequence[Path | str], *, strict: bool = False) -> Samples:
    """``list_samples`` in every process of a job, each indexing its own share of the shards and tables (their
    headers and footers are what listing costs) and receiving the others'."""
    index = (index_shared(ranks.rank, ranks.world_size, lambda value: gather_to_all(value, ranks, "listing the shards "
                                                                                    "and tables"))
             if ranks.distributed else index_each)
    return list_samples(inputs, strict=strict, index=index)


def agree_on_list(ranks: Ranks, paths: Sequence[Path], what: str) -> None:
    """Every rank sees the same images in the same order (one error on every rank if not)."""
    if not ranks.distributed:
        return
    fingerprint = getattr(paths, "fingerprint", None)  # an ImageList hashes its bytes at once
    listing = (fingerprint() if fingerprint is not None
               else hashlib.sha256(b"\n".join(os.fsencode(p) for p in paths)).hexdigest()[:12])
    agree(f"{len(paths)} image(s), list sha256 {listing}", ranks, what)


def encode_images_across(ranks: Ranks, backbone: Backbone, paths: Sequence[Path],
                         encoding: EncodeOptions = EncodeOptions(), *, gather: str = "main", view: View = View(),
                         description: str = "Encoding images") -> tuple[torch.Tensor, list[int], EncodeStats] | None:
    """:func:`encode_images` with ``encoding``'s settings, split over the ranks of a torchrun job, in whole
    batches (see ``distributed``).

    Returns what one process would return, on rank 0 (``gather="main"``) or on every rank
    (``gather="all"``); other ranks get None. Every rank writes the cache rows of its own share.
    """
    options: dict[str, Any] = dict(encoding.stream_options(), view=view, description=description)
    if not ranks.distributed:
        return encode_images(backbone, paths, **options)
    ranks_agree(ranks, backbone, paths)
    share = batch_shard(len(paths), encoding.batch_size, ranks)
    try:
        feats, keep, stats = encode_images(backbone, [paths[i] for i in share],
                                           **{**options, "quiet": encoding.quiet or not ranks.is_main})
    except NegPromptError as exc:  # about this rank's share: the other ranks cannot say it
        exc.rank_specific = True
        raise
    payload = (feats, [share.start + k for k in keep], stats)
    what = "gathering image features"
    parts = gather_to_all(payload, ranks, what) if gather == "all" else gather_to_main(payload, ranks, what)
    if parts is None:
        return None
    total = EncodeStats.total(part_stats for _, _, part_stats in parts)
    return concat_rows([p[0] for p in parts]), [k for p in parts for k in p[1]], total


def cache_share(ranks: Ranks, backbone: Backbone, paths: Sequence[Path], encoding: EncodeOptions, *,
                view: View = View(), description: str = "Caching features") -> EncodeStats:
    """Encode this rank's contiguous run of whole batches of ``paths`` (one process: all of them) into the
    feature cache, holding no more than a window of features; what it did, for this rank. (The ranks have
    agreed on the backbone and the list: :func:`ranks_agree`.)"""
    share = batch_shard(len(paths), encoding.batch_size, ranks)
    stream = ImageStream.encoding(backbone, paths[share.start:share.stop], encoding, view=view,
                                  description=description, quiet=encoding.quiet or not ranks.is_main)
    try:
        for _ in stream:
            pass
    except NegPromptError as exc:  # about this rank's share: the other ranks cannot say it
        exc.rank_specific = ranks.distributed
        raise
    return stream.stats


def encode_folder(backbone: Backbone, root: Path, options: EncodeOptions, description: str = "Encoding images",
                  ranks: Ranks = SINGLE) -> tuple[list[Path], torch.Tensor, EncodeStats] | None:
    """Every readable image under ``root``: (their paths, their features, stats); none readable is an error.
    In a torchrun job every rank encodes its share and rank 0 gets the result (the others None)."""
    paths = find_images(root, strict=options.strict)
    if not paths:
        raise UsageError(f"no images found under {root}")
    encoded = encode_images_across(ranks, backbone, paths, options, description=description)
    if encoded is None:
        return None
    feats, keep, stats = encoded
    if not keep:
        raise UsageError(f"no readable images under {root}")
    return [paths[i] for i in keep], feats, stats
