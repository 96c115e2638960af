"""The images of a command's inputs, listed in a form that fits a crawl in memory.

A list of ``Path`` objects costs several hundred bytes per image (about 650 measured), which at
tens of millions of images is more than the scoring itself needs. ``ImageList`` holds the sorted
paths as one byte string with an offset per image, and the input each was found under as a small
integer: about the path's length plus 12 bytes per image. The folders are walked in sorted order
(``walk``), so no list of paths exists while listing either; an image reached twice is found by a
128-bit hash of its real path, kept per image only while listing.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, overload

import numpy as np

from ..errors import NegPromptWarning, NotFoundError, UsageError

OFFSET = "q"  # array type code of the offsets into the byte string (int64)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


class Skipped(NamedTuple):
    """A path a walk left out, and why: ``unreadable`` (a folder that cannot be listed), ``broken`` (a symlink
    whose target does not exist) or ``upward`` (a symlinked folder that leads back up: a loop, or a parent of
    the folder given)."""

    path: Path
    reason: str
    kind: str = "unreadable"


def report_skipped(skipped: list[Skipped], strict: bool) -> None:
    """What a walk left out is said, never silent: unreadable folders and broken links are a warning (with
    ``strict`` an error, as an unreadable image is); links that lead back up are a warning."""
    def shown(entries: list[Skipped]) -> str:
        return ", ".join(f"{e.path} ({e.reason})" for e in entries[:3]) + (" ..." if len(entries) > 3 else "")

    unreadable = [s for s in skipped if s.kind == "unreadable"]
    broken = [s for s in skipped if s.kind == "broken"]
    upward = [s for s in skipped if s.kind == "upward"]
    if unreadable:
        message = f"{len(unreadable)} folder(s) could not be read, so their images are left out: {shown(unreadable)}"
        if strict:
            raise UsageError(message, hint="fix the permissions or shorten the paths, or drop --strict to skip them")
        warnings.warn(f"skipped {message}", NegPromptWarning, stacklevel=3)
    if broken:
        message = f"{len(broken)} broken symlink(s), whose targets do not exist: {shown(broken)}"
        if strict:
            raise UsageError(message, hint="fix or remove the links, or drop --strict to skip them")
        warnings.warn(f"skipped {message}", NegPromptWarning, stacklevel=3)
    if upward:
        warnings.warn(f"did not follow {len(upward)} symlinked folder(s) that lead back up (a loop, or a folder "
                      f"that holds the one given): {shown(upward)}", NegPromptWarning, stacklevel=3)


def holds(outer: str, inner: str) -> bool:
    """Whether real path ``inner`` is ``outer`` or lies below it: a folder link whose target holds the folder it
    sits in leads back up (a loop, or out into what surrounds the input)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def walk(root: Path, skipped: list[Skipped] | None = None) -> Iterator[tuple[str, str, bool]]:
    """Every visible file below ``root``, following symlinked folders, in the order ``sorted()`` puts their
    ``Path``s in (depth first, the entries of a folder by name): (path, real path, whether it is an image).

    A symlinked folder whose target holds the folder the link is in (a loop, a link to ``root`` or to any
    folder above it) is never followed: the walk would come back through ``root`` or climb out of it into its
    surroundings. Links to other folders are followed (a dataset built of links to class folders elsewhere is
    the usual way to make a split), and a folder reached twice (two links to one folder) is walked once. What
    is left out is appended to ``skipped``: folders that cannot be listed, broken links, links back up."""
    seen: set[tuple[int, int]] = set()

    def leave_out(path: str, reason: str, kind: str) -> None:
        if skipped is not None:
            skipped.append(Skipped(Path(path), reason, kind))

    def folder(path: str, real: str) -> Iterator[tuple[str, str, bool]]:
        try:
            stat = os.stat(path)
            if (stat.st_dev, stat.st_ino) in seen:
                return
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(path) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as error:
            leave_out(error.filename or path, error.strerror or str(error), "unreadable")
            return
        for entry in entries:
            full = os.path.join(path, entry.name)
            try:
                is_dir = entry.is_dir()  # follows a symlink, as os.walk(followlinks=True) does
                is_file = not is_dir and entry.is_file()
                linked = entry.is_symlink()
            except OSError:
                continue
            target = os.path.realpath(full) if linked else os.path.join(real, entry.name)
            if is_dir:
                if linked and holds(target, real):
                    leave_out(full, f"-> {target}", "upward")
                    continue
                yield from folder(full, target)
            elif is_file:
                yield full, target, os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            elif linked and not os.path.exists(full):
                leave_out(full, f"-> {os.readlink(full)}", "broken")

    yield from folder(str(root), os.path.realpath(root))


class ImageList(Sequence[Path]):
    """Sorted image paths (``Path`` on access) and the input each was found under (:meth:`root`)."""

    def __init__(self, blob: bytes, offsets: np.ndarray, root_index: np.ndarray, roots: list[Path]) -> None:
        self._blob, self._offsets, self._root_index, self._roots = blob, offsets, root_index, roots

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, i: int) -> Path: ...

    @overload
    def __getitem__(self, i: slice) -> ImageList: ...

    def __getitem__(self, i: int | slice) -> Path | ImageList:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("an ImageList slices in steps of 1")
            stop = max(start, stop)
            offsets = self._offsets[start:stop + 1]
            blob = self._blob[int(offsets[0]):int(offsets[-1])]  # a copy: a share pickled to decoding workers
            return ImageList(blob, offsets - offsets[0], self._root_index[start:stop], self._roots)  # is its own
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Path(os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]]))

    def __iter__(self) -> Iterator[Path]:
        for i in range(len(self)):
            yield self[i]

    def root(self, i: int) -> Path:
        """The input folder image ``i`` was found under (a file given itself: its folder)."""
        return self._roots[int(self._root_index[i])]

    def fingerprint(self) -> str:
        """A hash of the paths in order (ranks compare it to know they see the same list)."""
        digest = hashlib.sha256(self._blob)
        digest.update(np.ascontiguousarray(self._offsets - self._offsets[0]).tobytes())
        return digest.hexdigest()[:12]

    @property
    def nbytes(self) -> int:
        return len(self._blob) + self._offsets.nbytes + self._root_index.nbytes


def list_images(inputs: Sequence[Path], *, strict: bool = False) -> ImageList:
    """The images of the inputs (files or folders), in the order given, each folder's sorted; an image reached
    twice (a file and its folder, one folder named twice, a symlink to it) is kept once, where it first
    appears. No image at all is an error naming the inputs."""
    blob, offsets, root_index, keys = bytearray(), array(OFFSET, [0]), array("i"), bytearray()
    roots: list[Path] = []
    skipped: list[Skipped] = []
    for number, given in enumerate(inputs):
        if not given.exists():
            raise NotFoundError(f"not found: {given}")
        roots.append(given if given.is_dir() else given.parent)
        if given.is_file():
            if not is_image_file(given):
                raise UsageError(f"{given} is not an image file")
            found: Iterator[tuple[str, str, bool]] = iter([(str(given), os.path.realpath(given), True)])
        else:
            found = walk(given, skipped)
        ignored, example = 0, ""
        for path, real, image in found:
            if not image:
                ignored, example = ignored + 1, example or os.path.basename(path)
                continue
            blob += os.fsencode(path)
            offsets.append(len(blob))
            root_index.append(number)
            keys += hashlib.blake2b(os.fsencode(real), digest_size=16).digest()
        if ignored:
            warnings.warn(f"ignored {ignored} file(s) under {given} that are not images by extension (e.g. "
                          f"{example}); image types: {', '.join(sorted(IMAGE_EXTENSIONS))}", NegPromptWarning,
                          stacklevel=2)
    report_skipped(skipped, strict)
    images = ImageList(bytes(blob), np.frombuffer(offsets, dtype=np.int64), np.frombuffer(root_index, np.int32),
                       roots)
    del blob
    if not len(images):
        raise UsageError(f"no images found under {', '.join(str(p) for p in inputs)}")
    first = np.unique(np.frombuffer(bytes(keys), dtype="V16"), return_index=True)[1]
    if len(first) < len(images):
        warnings.warn(f"{len(images) - len(first)} image(s) were given more than once; each is read once",
                      NegPromptWarning, stacklevel=2)
        images = _keep(images, np.sort(first))
    return images


def _keep(images: ImageList, keep: np.ndarray) -> ImageList:
    """``images`` with only the positions in ``keep`` (sorted)."""
    starts, stops = images._offsets[keep], images._offsets[keep + 1]
    pieces = [images._blob[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(stops - starts, out=offsets[1:])
    return ImageList(b"".join(pieces), offsets, images._root_index[keep], images._roots)
