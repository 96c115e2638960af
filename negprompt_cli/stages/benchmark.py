"""``negprompt benchmark list | check``: the shipped protocols, and whether a data root holds what one needs.

(``benchmark run`` is not built yet; see docs/benchmarks.md.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..benchmark_layout import LayoutReport, check_layout
from ..benchmark_protocols import load_protocol, protocol_names
from ..errors import NotFoundError


def list_protocols() -> list[dict[str, Any]]:
    rows = []
    for name in protocol_names():
        protocol = load_protocol(name)
        rows.append({"name": name, "title": protocol.title, "id_classes": len(protocol.wnids),
                     "ood_sets": [o.name for o in protocol.ood], "seeds": list(protocol.seeds),
                     "open_vocabulary": protocol.open_vocabulary,
                     "published": [f"{p['method']} ({p['backbone']}, {p['pretrained']})" for p in protocol.published]})
    return rows


def check(protocol_name: str, root: Path) -> LayoutReport:
    """The layout report (the caller decides what a problem means: the CLI exits 2)."""
    protocol = load_protocol(protocol_name)
    if not Path(root).is_dir():
        raise NotFoundError(f"benchmark root not found: {root}",
                            hint="--root is the folder holding imagenet/, iNaturalist/, ... (docs/benchmarks.md)")
    return check_layout(protocol, Path(root))
