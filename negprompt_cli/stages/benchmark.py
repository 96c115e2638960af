"""``negprompt benchmark list | check``: the shipped protocols, and whether a data root holds what one needs.

(``benchmark run`` is ``benchmark_run``, a composer; see docs/benchmarks.md.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..benchmark.layout import ImageList, LayoutReport, check_layout
from ..benchmark.protocol import load_protocol, protocol_names
from ..errors import NotFoundError


def list_protocols() -> list[dict[str, Any]]:
    rows = []
    for name in protocol_names():
        protocol = load_protocol(name)
        rows.append({"name": name, "title": protocol.title, "id_classes": len(protocol.wnids),
                     "ood_sets": [o.name for o in protocol.ood], "seeds": list(protocol.seeds),
                     "open_vocabulary": protocol.open_vocabulary,
                     "published": [f"{p['method']} ({p['backbone']}, "
                                   f"{p['pretrained'] if p.get('pretrained_stated', True) else 'weights not stated'})"
                                   for p in protocol.published]})
    return rows


def check(protocol_name: str, root: Path, image_lists: dict[str, ImageList] | None = None) -> LayoutReport:
    """The layout report (the caller decides what a problem means: the CLI exits 2)."""
    protocol = load_protocol(protocol_name)
    if not Path(root).is_dir():
        raise NotFoundError(f"benchmark root not found: {root}",
                            hint="--root is the folder holding imagenet/, iNaturalist/, ... (docs/benchmarks.md)")
    return check_layout(protocol, Path(root), image_lists=image_lists)


def image_lists(values: list[str], base: Path | None, root: Path) -> dict[str, ImageList]:
    """``--imglist NAME=FILE`` pairs; listed paths are relative to ``base`` (default: the root)."""
    from ..errors import UsageError  # noqa: PLC0415

    lists = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--imglist {value!r}: expected NAME=FILE (NAME: an OOD set of the protocol)")
        lists[name] = ImageList(Path(file), Path(base) if base is not None else Path(root))
    return lists
