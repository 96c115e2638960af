"""Does a data root hold what a benchmark protocol needs? Checked before any GPU time is spent.

Every dataset of the protocol is looked for under the root: the ImageNet validation images of the ID
classes (one folder per wnid, or a flat folder with a label file), the training folders the few-shot
images come from, and each OOD set. Every problem is collected (missing folders, wrong counts,
unreadable images, missing labels, folders that are not ImageNet wnids) and reported together, with
what was expected and where the dataset comes from. Image files are opened (header only) to find
unreadable ones, except in the training folders, which are only counted (1.28M images).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from ..inputs.image_folders import walk_images
from ..inputs.image_list import is_image_file
from .protocol import Protocol, imagenet_wnids

WNID = re.compile(r"^n\d{8}$")
VAL_LABEL_FILES = ("val.txt", "val_labels.txt", "LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt")
SHOWN = 3  # examples named per problem


@dataclass
class DatasetCheck:
    role: str  # "ID test", "few-shot training", "OOD (near)", "OOD (far)"
    name: str
    path: str
    expected: str
    found: str = ""
    problems: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class LayoutReport:
    protocol: str
    root: str
    datasets: list[DatasetCheck]
    val_images: dict[str, list[Path]] = field(default_factory=dict)  # labelled ImageNet val images by wnid

    @property
    def problems(self) -> int:
        return sum(len(d.problems) for d in self.datasets)

    def as_dict(self) -> dict:
        return {"protocol": self.protocol, "root": self.root, "ok": self.problems == 0, "problems": self.problems,
                "datasets": [{**asdict(d), "ok": d.ok} for d in self.datasets]}


def _images(folder: Path) -> list[Path]:
    """The images ``score`` would find under ``folder`` (the same discovery rule, so the counts agree)."""
    return walk_images(folder)[0]


def _unreadable(paths: list[Path]) -> list[Path]:
    def bad(path: Path) -> bool:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018  (the header is parsed on open)
            return False
        except Exception:
            return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        flags = list(pool.map(bad, paths))
    return [p for p, flag in zip(paths, flags, strict=True) if flag]


def _examples(items: list, total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(str(i) for i in items[:SHOWN])
    return shown + (f" ... ({total} in all)" if total > SHOWN else "")


def val_labels(folder: Path) -> tuple[dict[str, list[Path]], str]:
    """ImageNet validation images by wnid, and how they were labelled; ({}, why) when they cannot be."""
    subdirs = [d for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []
    if any(WNID.match(d.name) for d in subdirs):
        return {d.name: _images(d) for d in subdirs if WNID.match(d.name)}, "one folder per wnid"
    flat = sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []
    if not flat:
        return {}, "no images"
    wnids = imagenet_wnids()
    by_name = {p.name: p for p in flat}
    for where in (folder, folder.parent, folder.parent / "ILSVRC2012_devkit_t12" / "data"):
        for name in VAL_LABEL_FILES:
            labels = where / name
            if not labels.is_file():
                continue
            pairs = _read_label_file(labels, wnids, sorted(by_name))
            if pairs is None:
                continue
            grouped: dict[str, list[Path]] = {}
            for image, wnid in pairs:
                if image in by_name:
                    grouped.setdefault(wnid, []).append(by_name[image])
            return grouped, f"flat, labels from {labels}"
    return {}, "flat, no label file"


def _read_label_file(path: Path, wnids: list[str], images: list[str]) -> list[tuple[str, str]] | None:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if path.name == "LOC_val_solution.csv":  # Kaggle: ImageId,PredictionString ("n01751748 x y x y ...")
        return [(f"{a}.JPEG", b.split()[0]) for a, b in (line.split(",", 1) for line in lines[1:])]
    if path.name == "ILSVRC2012_validation_ground_truth.txt":  # devkit: ILSVRC2012_IDs in image order + meta.mat
        meta = path.parent / "meta.mat"
        if not meta.is_file():
            return None
        from scipy.io import loadmat  # noqa: PLC0415  (only for this layout)

        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        return [(image, by_id[int(line)]) for image, line in zip(images, lines, strict=False)]
    pairs = []  # val.txt: "ILSVRC2012_val_00000001.JPEG 65" (index in sorted-wnid order)
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= len(wnids):
            return None
        pairs.append((Path(parts[0]).name, wnids[int(parts[1])]))
    return pairs


@dataclass(frozen=True)
class ImageList:
    """An OOD set given by a list file (OpenOOD's ``benchmark_imglist/...``): the first field of each line is an
    image path relative to ``base``. The list, not the folder or the protocol's count, is then the truth."""

    file: Path
    base: Path

    def paths(self) -> list[tuple[str, Path]]:
        """(path as listed, file) for every non-empty line."""
        lines = self.file.read_text(encoding="utf-8", errors="replace").splitlines()
        return [(line.split()[0], self.base / line.split()[0]) for line in lines if line.strip()]


def check_layout(protocol: Protocol, root: Path, *, read_images: bool = True,
                 image_lists: dict[str, ImageList] | None = None) -> LayoutReport:
    """Every problem of ``root`` for ``protocol``; ``read_images=False`` counts images without opening them;
    ``image_lists`` gives OOD sets (by name) as list files instead of folders."""
    root = Path(root)
    image_lists = image_lists or {}
    unknown = sorted(set(image_lists) - {o.name for o in protocol.ood})
    if unknown:
        from ..errors import UsageError  # noqa: PLC0415

        raise UsageError(f"--imglist names {unknown[0]!r}, which is not an OOD set of {protocol.name}",
                         hint=f"its OOD sets: {', '.join(o.name for o in protocol.ood)}")
    report = LayoutReport(protocol.name, str(root), [])
    known = set(imagenet_wnids())

    # ID test images: the validation images of the protocol's classes
    val_dir = root / protocol.id_path
    per_class = protocol.id_images_per_class
    id_check = DatasetCheck("ID test", "ImageNet-1k val", str(val_dir),
                            f"{per_class or 'any'} images per class x {len(protocol.wnids)} classes",
                            source=protocol.id_source)
    report.datasets.append(id_check)
    by_wnid: dict[str, list[Path]] = {}
    if not val_dir.is_dir():
        id_check.problems.append(f"folder missing: {val_dir}")
    else:
        by_wnid, how = val_labels(val_dir)
        report.val_images = by_wnid
        id_check.found = how
        if not by_wnid:
            id_check.problems.append(f"ImageNet val without labels ({how}): put images in one folder per wnid, or "
                                     f"add one of {', '.join(VAL_LABEL_FILES)} (with meta.mat for the devkit file)")
    if by_wnid:
        _check_classes(id_check, by_wnid, protocol.wnids, per_class, read_images)

    # few-shot training folders
    train_dir = root / protocol.train_path
    train_check = DatasetCheck("few-shot training", "ImageNet-1k train", str(train_dir),
                               f"one folder per wnid, at least {protocol.shots} images in each of "
                               f"{len(protocol.wnids)} classes", source=protocol.train_source)
    report.datasets.append(train_check)
    if not train_dir.is_dir():
        train_check.problems.append(f"folder missing: {train_dir}")
    else:
        folders = {d.name: d for d in train_dir.iterdir() if d.is_dir()}
        strangers = sorted(n for n in folders if n not in known)
        if strangers:
            train_check.problems.append(f"{len(strangers)} folder(s) that are not ImageNet-1k wnids: "
                                        f"{_examples(strangers)}")
        missing = [w for w in protocol.wnids if w not in folders]
        if missing:
            train_check.problems.append(f"{len(missing)} class folder(s) missing: {_examples(missing)}")
        counts = {w: sum(1 for f in os.scandir(folders[w]) if is_image_file(Path(f.name)))
                  for w in protocol.wnids if w in folders}
        short = [f"{w} ({n})" for w, n in counts.items() if n < protocol.shots]
        if short:
            train_check.problems.append(f"{len(short)} class folder(s) with fewer than {protocol.shots} images: "
                                        f"{_examples(short)}")
        train_check.found = f"{len(counts)} class folders, {sum(counts.values())} images"

    # OOD sets
    for ood in protocol.ood:
        role = f"OOD ({ood.group})"
        if ood.classes:
            check = DatasetCheck(role, ood.name, str(val_dir), f"{ood.images_per_class or 'any'} images per class x "
                                 f"{len(ood.classes)} classes of ImageNet val", source=ood.source)
            report.datasets.append(check)
            if by_wnid:
                _check_classes(check, by_wnid, ood.classes, ood.images_per_class, read_images)
            else:
                check.problems.append("needs the labelled ImageNet val images (see the ID test row)")
            continue
        if ood.name in image_lists:
            report.datasets.append(_check_list(role, ood.name, image_lists[ood.name], ood.source, read_images))
            continue
        folder = root / (ood.path or ood.name)
        check = DatasetCheck(role, ood.name, str(folder), f"{ood.images or 'some'} images", source=ood.source)
        report.datasets.append(check)
        if not folder.is_dir():
            check.problems.append(f"folder missing: {folder}")
            continue
        images = _images(folder)
        check.found = f"{len(images)} images"
        if not images:
            check.problems.append(f"no images under {folder}")
        elif ood.images is not None and len(images) != ood.images:
            check.problems.append(f"{len(images)} images, expected {ood.images}")
        bad = _unreadable(images) if read_images else []
        if bad:
            check.problems.append(f"{len(bad)} unreadable image(s): {_examples(bad)}")
    return report


def _check_list(role: str, name: str, image_list: ImageList, source: str, read_images: bool) -> DatasetCheck:
    check = DatasetCheck(role, name, str(image_list.file), f"every image listed, under {image_list.base}",
                         source=source)
    if not image_list.file.is_file():
        check.problems.append(f"image list missing: {image_list.file}")
        return check
    listed = [path for _, path in image_list.paths()]
    missing = [p for p in listed if not p.is_file()]
    check.found = f"{len(listed) - len(missing)} of {len(listed)} listed images"
    if not listed:
        check.problems.append(f"{image_list.file} lists no images")
    if missing:
        check.problems.append(f"{len(missing)} listed image(s) missing: {_examples(missing)}")
    bad = _unreadable([p for p in listed if p.is_file()]) if read_images else []
    if bad:
        check.problems.append(f"{len(bad)} unreadable image(s): {_examples(bad)}")
    return check


def _check_classes(check: DatasetCheck, by_wnid: dict[str, list[Path]], wnids: tuple[str, ...],
                   per_class: int | None, read_images: bool = True) -> None:
    missing = [w for w in wnids if not by_wnid.get(w)]
    if missing:
        check.problems.append(f"{len(missing)} class(es) without images: {_examples(missing)}")
    wrong = [f"{w} ({len(by_wnid[w])})" for w in wnids if by_wnid.get(w) and per_class is not None
             and len(by_wnid[w]) != per_class]
    if wrong:
        check.problems.append(f"{len(wrong)} class(es) with other than {per_class} images: {_examples(wrong)}")
    images = [p for w in wnids for p in by_wnid.get(w, [])]
    check.found = (check.found + "; " if check.found else "") + f"{len(images)} images"
    bad = _unreadable(images) if read_images else []
    if bad:
        check.problems.append(f"{len(bad)} unreadable image(s): {_examples(bad)}")
