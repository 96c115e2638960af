"""Benchmark protocols as data: one JSON file each in ``protocols/`` beside this module (schema in
docs/benchmarks.md).

A protocol names its ID classes (all of ImageNet-1k, or a hard-OOD split's known classes), where
under ``--root`` the ID test images, the few-shot training images and every OOD set live, how many
images each must hold and where each dataset comes from, the seeds, an optional open-vocabulary
setting, and the numbers papers published for it (with their source and backbone). A protocol
argument is a shipped name or the path of a JSON file in the same schema (your own protocol, or a
miniature one for testing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, UsageError

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
SPLITS_FILE = PROTOCOL_DIR / "hard_ood_splits.json"
SCHEMA = 1
# Bounds a real protocol stays far inside; a file beyond them is hostile or broken, refused before any use.
MAX_SEEDS = 100
MAX_OOD_SETS = 100
MAX_SHOTS = 10_000
MAX_IMAGES = 100_000_000
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class OodSet:
    name: str
    group: str  # "near" or "far"
    source: str
    path: str | None = None  # a folder under the root ...
    images: int | None = None  # ... with exactly this many images
    classes: tuple[str, ...] = ()  # or: these wnids' images of the ID dataset (hard-OOD splits)
    images_per_class: int | None = None


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    wnids: tuple[str, ...]  # ID classes, in label order
    id_path: str
    id_images_per_class: int | None
    id_source: str
    train_path: str
    shots: int
    train_source: str
    ood: tuple[OodSet, ...]
    seeds: tuple[int, ...]
    open_vocabulary: dict[str, Any] | None
    published: tuple[dict[str, Any], ...]
    file: Path


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k wnids in the standard index order (sorted wnids)."""
    index = json.loads(SPLITS_FILE.read_text())["imagenet_index"]
    return sorted(index, key=index.__getitem__)


def resolve_classes(spec: str | list[str]) -> tuple[str, ...]:
    """"imagenet1k" -> all wnids; "split1:known" -> that hard-OOD split's list; a list -> those ImageNet wnids."""
    if isinstance(spec, list):
        unknown = sorted(set(spec) - set(imagenet_wnids()))
        if unknown:
            raise UsageError(f"a protocol names {len(unknown)} class(es) that are not ImageNet-1k wnids: "
                             f"{', '.join(unknown[:3])}")
        return tuple(spec)
    if spec == "imagenet1k":
        return tuple(imagenet_wnids())
    split, _, part = spec.partition(":")
    splits = json.loads(SPLITS_FILE.read_text())
    if split in splits and part in splits[split] and split.startswith("split"):
        return tuple(splits[split][part])
    raise UsageError(f"unknown class list {spec!r} in a protocol",
                     hint="use imagenet1k, or splitN:known / splitN:unknown (N = 1..4)")


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json") if p.name != SPLITS_FILE.name)


def load_protocol(name_or_path: str) -> Protocol:
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = PROTOCOL_DIR / f"{name_or_path}.json"
        if name_or_path not in protocol_names():
            raise NotFoundError(f"no benchmark protocol named {name_or_path!r}",
                                hint=f"choose one of {', '.join(protocol_names())} (negprompt benchmark list), "
                                     "or give a protocol .json file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"the file holds a JSON {type(raw).__name__}, not an object")
        if raw.get("schema") != SCHEMA:
            raise UsageError(f"{path}: protocol schema {raw.get('schema')!r}, this version reads {SCHEMA}")
        try:
            check_schema(raw)
        except UsageError as exc:
            raise UsageError(f"{path} is not a valid benchmark protocol: {exc.message}", hint=exc.hint) from None
        ood = tuple(OodSet(name=o["name"], group=o.get("group", "far"), source=o.get("source", ""),
                           path=o.get("path"), images=o.get("images"),
                           classes=resolve_classes(o["classes"]) if "classes" in o else (),
                           images_per_class=o.get("images_per_class")) for o in raw["ood"])
        published = tuple(raw.get("published", []))
        _check_published(published, [o.name for o in ood])
        return Protocol(
            name=raw["name"], title=str(raw.get("title", raw["name"])), wnids=resolve_classes(raw["classes"]),
            id_path=raw["id"]["path"], id_images_per_class=raw["id"].get("images_per_class"),
            id_source=raw["id"].get("source", ""), train_path=raw["train"]["path"],
            shots=int(raw["train"].get("shots", 16)), train_source=raw["train"].get("source", ""), ood=ood,
            seeds=tuple(raw.get("seeds", [1, 2, 3])), open_vocabulary=raw.get("open_vocabulary"),
            published=published, file=path)
    except UsageError as exc:
        if str(path) in exc.message:
            raise
        raise UsageError(f"{path}: {exc.message}", hint=exc.hint) from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:  # UnicodeDecodeError: a ValueError
        raise UsageError(f"{path} is not a valid benchmark protocol ({type(exc).__name__}: {exc})",
                         hint="see the schema in docs/benchmarks.md") from None


def check_schema(raw: dict[str, Any]) -> None:
    """Types, ranges and paths of a protocol file, before any of it is used: every path stays below the data
    root, counts are whole numbers in range, seeds are few. One UsageError naming the field."""
    def fail(field: str, problem: str) -> UsageError:
        return UsageError(f"{field} {problem}", hint="see the schema in docs/benchmarks.md")

    def text(field: str, value: Any, *, optional: bool = False) -> None:
        if (value is None and optional) or (isinstance(value, str) and value.strip()):
            return
        raise fail(field, f"is {value!r}, not a non-empty string")

    def count(field: str, value: Any, least: int, most: int, *, optional: bool = True) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            raise fail(field, f"is {value!r}, not a whole number from {least} to {most:,}")

    def relative_path(field: str, value: Any) -> None:
        text(field, value)
        parts = Path(value).parts
        if Path(value).is_absolute() or ".." in parts or any(ord(c) < 32 for c in value):
            raise fail(field, f"{value!r} leaves the data root (a path below --root, without '..')")

    def classes(field: str, value: Any) -> None:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return
        text(field, value)

    text("name", raw.get("name"))
    classes("classes", raw.get("classes"))
    for section in ("id", "train"):
        if not isinstance(raw.get(section), dict):
            raise fail(section, "is not an object with a path")
        relative_path(f"{section}.path", raw[section].get("path"))
        text(f"{section}.source", raw[section].get("source"), optional=True)
    count("id.images_per_class", raw["id"].get("images_per_class"), 1, MAX_IMAGES)
    count("train.shots", raw["train"].get("shots"), 1, MAX_SHOTS)
    ood = raw.get("ood")
    if not isinstance(ood, list) or not 1 <= len(ood) <= MAX_OOD_SETS:
        raise fail("ood", f"is not a list of 1 to {MAX_OOD_SETS} OOD sets")
    names = []
    for k, entry in enumerate(ood):
        if not isinstance(entry, dict):
            raise fail(f"ood[{k}]", "is not an object")
        text(f"ood[{k}].name", entry.get("name"))
        names.append(entry["name"])
        if entry.get("group", "far") not in ("near", "far"):
            raise fail(f"ood[{k}].group", f"is {entry.get('group')!r}, not near or far")
        if ("path" in entry) == ("classes" in entry):
            raise fail(f"ood[{k}]", "needs a path or classes (one of them)")
        if "path" in entry:
            relative_path(f"ood[{k}].path", entry["path"])
        else:
            classes(f"ood[{k}].classes", entry["classes"])
        count(f"ood[{k}].images", entry.get("images"), 1, MAX_IMAGES)
        count(f"ood[{k}].images_per_class", entry.get("images_per_class"), 1, MAX_IMAGES)
    if len(set(names)) != len(names):
        raise fail("ood", "names a set twice")
    seeds = raw.get("seeds", [1, 2, 3])
    if not isinstance(seeds, list) or not 1 <= len(seeds) <= MAX_SEEDS:
        raise fail("seeds", f"is not a list of 1 to {MAX_SEEDS} seeds")
    for k, seed in enumerate(seeds):
        count(f"seeds[{k}]", seed, 0, MAX_SEED, optional=False)
    if raw.get("open_vocabulary") is not None and not isinstance(raw["open_vocabulary"], dict):
        raise fail("open_vocabulary", "is not an object")
    if not isinstance(raw.get("published", []), list) or not all(isinstance(r, dict) for r in raw.get("published", [])):
        raise fail("published", "is not a list of objects")


def _check_published(rows: tuple[dict[str, Any], ...], ood_names: list[str]) -> None:
    """A published number for a set the protocol does not have would be printed beside nothing, or beside
    the wrong set: refuse the file instead."""
    for row in rows:
        method = row.get("method", "?")
        for metric in ("fpr95", "auroc"):
            values = row.get(metric, {})
            if not isinstance(values, dict):
                raise UsageError(f"published row {method!r}: {metric} is not an object of set -> number")
            for name, value in values.items():
                if name != "average" and name not in ood_names:
                    raise UsageError(f"published row {method!r} names OOD set {name!r}, which the protocol does "
                                     f"not have (its sets: {', '.join(ood_names)})",
                                     hint="a published row's keys are the protocol's OOD set names or \"average\"")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise UsageError(f"published row {method!r}: {metric} of {name!r} is {value!r}, not a "
                                     "percentage")
        missing = [key for key in ("method", "source", "backbone") if not isinstance(row.get(key), str)]
        if missing:
            raise UsageError(f"published row {method!r} has no {missing[0]!r} (a published number says what "
                             "it is, where it is from and which backbone measured it)")
