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
