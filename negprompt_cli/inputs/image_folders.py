"""Image discovery and few-shot sampling.

Training data is an ImageFolder tree (``root/<class>/<image>``). Class order is the sorted
folder names, so a class-names file lines up with it the way torchvision's ImageFolder does.
The few-shot subset depends only on (file list, shots, seed), so fit-pos and fit-neg pick
the same images for the same seed.
"""

from __future__ import annotations

import hashlib
import math
import os
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NegPromptWarning, NotFoundError, UsageError
from .image_list import IMAGE_EXTENSIONS, Skipped, holds, is_image_file, report_skipped, walk


def find_images(root: Path, *, strict: bool = False) -> list[Path]:
    """Every image file below ``root`` (or ``root`` itself), sorted; other files are ignored (and counted), and
    folders that cannot be listed are skipped with one warning (``strict``: an error), as unreadable images are."""
    root = Path(root)
    if not root.exists():
        raise NotFoundError(f"not found: {root}")
    if root.is_file():
        if not is_image_file(root):
            raise UsageError(f"{root} is not an image file")
        return [root]
    skipped: list[Skipped] = []
    images, ignored = walk_images(root, skipped)
    report_skipped(skipped, strict)
    if ignored:
        warnings.warn(f"ignored {len(ignored)} file(s) under {root} that are not images by extension "
                      f"(e.g. {ignored[0].name}); image types: {', '.join(sorted(IMAGE_EXTENSIONS))}",
                      NegPromptWarning, stacklevel=2)
    return images


def image_inputs(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """What a command was asked to read images from: one path, or several (the Python API takes both)."""
    inputs = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    if not inputs:
        raise UsageError("no images given: name an image file or a folder")
    return inputs


def walk_images(root: Path, skipped: list[Skipped] | None = None) -> tuple[list[Path], list[Path]]:
    """(image files, other visible files) below ``root``, sorted, following symlinked folders
    (``image_list.walk``).

    Every command discovers images this way, so a class folder that is a symlink counts everywhere;
    a folder reached twice (a symlink loop, or two links to one folder) is walked once. What the walk leaves
    out (folders that cannot be listed, broken links, links out of ``root``) is appended to ``skipped``.
    """
    images: list[Path] = []
    ignored: list[Path] = []
    for path, _, image in walk(root, skipped):
        (images if image else ignored).append(Path(path))
    return images, ignored


@dataclass
class ImageFolder:
    """A labelled image tree: class folders in sorted order and their images."""

    root: Path
    class_dirs: list[str]
    class_names: list[str]
    files: list[list[Path]]  # per class, sorted

    @property
    def num_classes(self) -> int:
        return len(self.class_dirs)


def load_image_folder(root: Path, classes_file: Path | None = None, *, strict: bool = False) -> ImageFolder:
    root = Path(root)
    if not root.exists():
        raise NotFoundError(f"data directory not found: {root}")
    if not root.is_dir():
        raise UsageError(f"data path is not a directory: {root}", hint="expected root/<class>/<image> folders")
    skipped: list[Skipped] = []
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and not _loops_back(p, root, skipped))
    if not class_dirs:
        raise UsageError(f"data directory {root} has no class folders",
                         hint="expected an ImageFolder layout: root/<class>/<image>")
    files = [walk_images(root / d, skipped)[0] for d in class_dirs]
    report_skipped(skipped, strict)
    empty = [d for d, fs in zip(class_dirs, files, strict=True) if not fs]
    if empty:
        raise UsageError(f"class folder {root / empty[0]} has no images"
                         + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""),
                         hint="remove the folder or add images to it")
    if classes_file:
        names = read_class_names(classes_file, class_dirs, strict=strict)
    else:
        names = default_names(class_dirs)
        check_duplicates(root, names, strict=strict, unit="folder")
    return ImageFolder(root, class_dirs, names, files)


def _loops_back(folder: Path, root: Path, skipped: list[Skipped]) -> bool:
    """A class folder that is a link to the data root or one of its parents would hold every other class: left
    out (said with the walk's other links). Links to class folders elsewhere (a subset built of links into a
    full dataset) are the usual way to build a split and are followed."""
    if not folder.is_symlink():
        return False
    target = os.path.realpath(folder)
    if holds(target, os.path.realpath(root)):
        skipped.append(Skipped(folder, f"-> {target}, which holds the data root", "upward"))
        return True
    return False


def warn_foreign_calibration_classes(folder: Path, names: list[str]) -> None:
    """A calibration folder is ID images of *this* class list: class folders in it that name none of the
    classes (compared as names are: case, ``_`` and Unicode form aside) are said, since their images move the
    threshold as if they were ID."""
    if not Path(folder).is_dir():
        return
    known = {name_key(n) for n in names}
    foreign = sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")
                     and name_key(p.name.replace("_", " ")) not in known and name_key(p.name) not in known)
    if foreign:
        shown = ", ".join(repr(f) for f in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        warnings.warn(f"calibration folder {folder} holds {len(foreign)} folder(s) that name no class of the "
                      f"{len(names)} class names: {shown}; their images are calibrated on as in-distribution",
                      NegPromptWarning, stacklevel=3)


def folder_fingerprint(folder: ImageFolder) -> str:
    """Which images a training folder holds: each image's path below the root and size, in class order. A
    finished stage is reused only for the same fingerprint (a class or an image added, removed or rewritten to
    another size is another run)."""
    h = hashlib.sha256()
    for class_dir, files in zip(folder.class_dirs, folder.files, strict=True):
        h.update(os.fsencode(class_dir) + b"\0")
        for path in files:
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            h.update(os.fsencode(path.relative_to(folder.root)) + f"\0{size}\n".encode())
    return h.hexdigest()


def default_names(class_dirs: list[str]) -> list[str]:
    return [d.replace("_", " ") for d in class_dirs]


def read_text_lines(path: Path, what: str = "class-names file") -> list[str]:
    """The lines of a UTF-8 text file (a leading BOM dropped). Only ``\n`` and ``\r\n`` end a line: the other
    characters Python's ``splitlines`` breaks at (U+2028, U+0085, form feed ...) would split one name in two.
    Control characters (a tab excepted) are refused: they are never part of a class name and would reach
    terminals and plots raw."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{what} not found: {path}")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})",
                         hint=f"save the {what} as UTF-8") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    for number, line in enumerate(lines, 1):
        bad = next((c for c in line if c != "\t" and unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            raise UsageError(f"{path}:{number}: control character U+{ord(bad):04X} in the {what}",
                             hint="one name per line, separated by newlines only")
    return lines


def read_names_file(path: Path, *, strict: bool = False) -> list[str]:
    """A plain list of class names, one per line; blank lines are errors, duplicates a warning (names that differ
    only in case or Unicode form but give identical prompts: an error with ``strict``)."""
    names = _names_lines(Path(path))
    check_duplicates(path, names, strict=strict)
    return names


def _names_lines(path: Path) -> list[str]:
    """The stripped lines of a class-names file: not empty, no blank line inside."""
    lines = read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline is not a blank class
    if not lines:
        raise UsageError(f"class-names file {path} is empty")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise UsageError(f"{path}:{number}: blank line in class-names file")
    return [line.strip() for line in lines]


def read_class_names(path: Path, class_dirs: list[str], *, strict: bool = False) -> list[str]:
    """Names for the class folders: one per line in sorted-folder order, or ``folder<TAB>name`` lines."""
    lines = _names_lines(Path(path))
    if all("\t" in line for line in lines):
        mapping: dict[str, str] = {}
        for line in lines:
            folder, name = (part.strip() for part in line.split("\t", 1))
            mapping[folder] = name
        missing = [d for d in class_dirs if d not in mapping]
        if missing:
            raise UsageError(f"{path} names no class for folder {missing[0]!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        names = [mapping[d] for d in class_dirs]
        check_duplicates(path, names, strict=strict, unit="class")
        return names
    if any("\t" in line for line in lines):
        raise UsageError(f"{path} mixes 'folder<TAB>name' lines with plain names")
    if len(lines) != len(class_dirs):
        raise UsageError(f"{path} has {len(lines)} class names but the data has {len(class_dirs)} class folders",
                         hint="one name per class folder, in sorted folder order, or folder<TAB>name lines")
    _check_order(path, lines, class_dirs)
    check_duplicates(path, lines, strict=strict)
    return lines


def _folder_key(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").casefold().split())


def _check_order(path: Path, names: list[str], class_dirs: list[str]) -> None:
    """A names file whose line names another class folder is in the wrong order (it would train every class
    on another's name, to near-zero accuracy, with nothing said): refuse it, naming the first such line."""
    folders = {_folder_key(d): d for d in class_dirs}
    for number, (name, folder) in enumerate(zip(names, class_dirs, strict=True), 1):
        other = folders.get(_folder_key(name))
        if other is not None and other != folder:
            raise UsageError(f"{path}:{number}: {name!r} is the name of folder {other!r}, but line {number} names "
                             f"folder {folder!r} (sorted-folder order)",
                             hint="list the names in the order of the sorted folder names, or write "
                                  "folder<TAB>name lines")


def name_key(name: str) -> str:
    """What two class names are compared by: case folded, Unicode NFKC (full-width letters, ligatures and
    composed / decomposed accents alike), whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold()).split())


def prompt_key(name: str) -> str:
    """Names with the same key give identical prompts: CLIP's tokenizer lower-cases text and ftfy normalises it
    to NFC (open_clip's SimpleTokenizer: ``basic_clean``, ``whitespace_clean``, ``lower``)."""
    return " ".join(unicodedata.normalize("NFC", name).lower().split())


def check_duplicates(where: Path, names: list[str], *, strict: bool = False, unit: str = "line") -> None:
    """Warn about names given to more than one class, and about names that differ only in case or Unicode form.

    Exact repeats are a warning, never an error: the standard ImageNet-1k list every CLIP paper uses (OpenAI's,
    open_clip's IMAGENET_CLASSNAMES) names two classes "missile" and two "sunglasses", and a reproduction has to
    keep it; classes stay distinct by position. Names spelt differently that compare equal after case folding
    and NFKC (``House`` / ``house``, two spellings of ``café``) are almost always a mistake: a warning naming both
    lines, and with ``strict`` an error where the two give identical prompts (the model cannot tell them apart).
    """
    exact: dict[str, list[int]] = {}
    for number, name in enumerate(names, 1):
        exact.setdefault(name, []).append(number)
    repeated = [(name, at) for name, at in exact.items() if len(at) > 1]
    if repeated:
        shown = "; ".join(f"{name!r} (classes {', '.join(map(str, at))})" for name, at in repeated[:3])
        more = f" and {len(repeated) - 3} more" if len(repeated) > 3 else ""
        warnings.warn(f"{where}: {len(repeated)} class name(s) given to more than one class: {shown}{more}; "
                      "those classes get identical prompts and cannot be told apart", NegPromptWarning,
                      stacklevel=3)
    spellings: dict[str, list[tuple[int, str]]] = {}
    for name, at in exact.items():  # first line of each distinct spelling
        spellings.setdefault(name_key(name), []).append((at[0], name))
    alike = [group for group in spellings.values() if len(group) > 1]
    if not alike:
        return
    same_prompt = [group for group in alike if len({prompt_key(name) for _, name in group}) == 1]
    if strict and same_prompt:
        (a, first), (b, second) = same_prompt[0][:2]
        raise UsageError(f"{where}: {unit} {a} {first!r} and {unit} {b} {second!r} differ only in case or Unicode "
                         "form and give identical prompts",
                         hint="rename or remove one of them (without --strict this is a warning)")
    shown = "; ".join(" and ".join(f"{unit} {number} {name!r}" for number, name in group) for group in alike[:3])
    more = f" and {len(alike) - 3} more" if len(alike) > 3 else ""
    warnings.warn(f"{where}: class names that differ only in case or Unicode form: {shown}{more}"
                  + ("; identical prompts, so the model cannot tell them apart" if same_prompt else ""),
                  NegPromptWarning, stacklevel=3)


@dataclass
class Split:
    """Indices into the flattened (class-major) file list."""

    paths: list[Path]
    labels: list[int]
    train: list[int]
    val: list[int]


def few_shot_split(folder: ImageFolder, shots: int | None, seed: int, val_fraction: float = 0.0) -> Split:
    """Seeded per-class sample of ``shots`` training images and an optional validation hold-out.

    The validation images come from the images *not* in the shot subset, so the training
    subset is the same with or without ``--val-fraction``.
    """
    if shots is not None and shots < 1:
        raise UsageError(f"--shots must be at least 1 (got {shots})")
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1) (got {val_fraction})")
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    labels: list[int] = []
    train: list[int] = []
    val: list[int] = []
    short: list[str] = []
    for label, files in enumerate(folder.files):
        offset = len(paths)
        paths.extend(files)
        labels.extend([label] * len(files))
        order = rng.permutation(len(files))
        take = len(files) if shots is None else min(shots, len(files))
        if shots is not None and shots > len(files):
            short.append(f"{folder.class_dirs[label]} ({len(files)})")
        train.extend(offset + int(i) for i in order[:take])
        if val_fraction > 0:
            n_val = min(math.ceil(val_fraction * len(files)), len(files) - take)
            if n_val > 0:
                val.extend(offset + int(i) for i in order[len(files) - n_val:])
    if short:
        warnings.warn(f"--shots {shots} is more than {len(short)} class(es) have; using all their images: "
                      + ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""), NegPromptWarning, stacklevel=2)
    if val_fraction > 0 and not val:
        raise UsageError(f"--val-fraction {val_fraction} leaves no validation images outside the "
                         f"{shots}-shot training subset", hint="lower --shots or add images")
    return Split(paths, labels, sorted(train), sorted(val))
