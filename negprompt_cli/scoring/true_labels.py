"""The true class of each scored image (``score --labeled``): a file's from the first folder below the input
folder it was found under, a sample in a shard or table from the label it carries (``containers``: a WebDataset
``cls`` field, a table's ``label`` column).

A label names one of the classes being scored in one of three ways, in this order:

* a **text** label (a folder name, a text ``cls``, a string column) is matched as a class folder is: the
  artifact's training folders, the class name, the name with ``_`` for spaces;
* an **integer** label of a table that names its classes (the ``datasets`` ClassLabel feature) is that name,
  matched as a text label, when any of the table's names is one of these classes;
* any other integer label (WebDataset's ``cls``, a table without class names, or one whose names are none of
  these classes: Hugging Face's ImageNet names its classes "tench, Tinca tinca") is the class's position in the
  class list being scored, counted from 0 — the order the shards were labelled in.

A label that names no class gets -1, which report leaves out of the ID accuracy; one warning says which.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NegPromptWarning
from ..inputs.containers import Container, Member, SampleList
from ..outputs.artifact import PromptArtifact

NO_LABEL = "(none)"  # what a container sample without a label is counted as in the warning


@dataclass(frozen=True)
class TrueLabel:
    """One image's true class: ``index`` into the class names (-1: none of them), the class ``folder`` it was
    read from (files only), and, when it names no class, what it said (``unknown``) for the warning."""

    index: int
    folder: str | None = None
    unknown: str | None = None


class TrueLabels:
    """Reads each scored image's true class, by the rules of the module docstring."""

    def __init__(self, names: list[str], artifact: PromptArtifact | None, samples: Sequence[Any]) -> None:
        self.names = names
        self.lookup = label_lookup(names, training_folders(artifact, names) if artifact is not None else {})
        self._by_name: dict[str, list[int]] = {}  # a table's class index -> ours, where its names are ours
        positional: list[Container] = []
        for source in samples.sources() if isinstance(samples, SampleList) else ():
            if not source.label_names:
                continue
            mapped = [self.lookup.get(name, -1) for name in source.label_names]
            if any(i >= 0 for i in mapped):
                self._by_name[str(source.path)] = mapped
            else:
                positional.append(source)
        if positional:
            first, table_names = positional[0], positional[0].label_names or ()
            warnings.warn(f"--labeled: the class names {len(positional)} table(s) give their labels (e.g. "
                          f"{first.path}: {len(table_names)} names, {table_names[0]!r} first) are none of these "
                          f"{len(names)} classes, so their integer labels are read as positions in this class list "
                          f"({names[0]!r} is 0)", NegPromptWarning, stacklevel=3)

    def of_file(self, path: Path, root: Path) -> TrueLabel:
        """A file's class: the first folder below the input folder it was found under."""
        relative = path.relative_to(root).parts
        folder = relative[0] if len(relative) > 1 else ""
        index = self.lookup.get(folder, -1)
        return TrueLabel(index, folder, None if index >= 0 else folder)

    def of_sample(self, sample: Member) -> TrueLabel:
        """A container sample's class, from the label it carries."""
        raw = sample.label()
        if raw is None:
            return TrueLabel(-1, unknown=NO_LABEL)
        if isinstance(raw, str):
            index = self.lookup.get(raw, -1)
        else:
            mapped = self._by_name.get(str(sample.source.path))
            table = mapped if mapped is not None else range(len(self.names))
            index = table[raw] if 0 <= raw < len(table) else -1
            if index < 0 and mapped is not None and 0 <= raw < len(mapped):  # the table's name for it says more
                raw = (sample.source.label_names or ())[raw]
        return TrueLabel(index, unknown=None if index >= 0 else repr(raw))


def training_folders(artifact: PromptArtifact, names: list[str]) -> dict[str, int]:
    """Training folder -> index in ``names``, through the class names the artifact was trained with."""
    dirs = artifact.training.get("data", {}).get("class_dirs", [])
    trained_names = artifact.extra.get("transfer", {}).get("source_classes", artifact.class_names)
    if len(dirs) != len(trained_names):
        return {}
    if list(names) == list(trained_names):  # by position: right even where two classes share a name
        return {d: i for i, d in enumerate(dirs)}
    where: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        where.setdefault(name, []).append(i)
    # a name given to several classes of the new list says nothing about which one the folder is
    return {d: where[n][0] for d, n in zip(dirs, trained_names, strict=True) if len(where.get(n, ())) == 1}


def label_lookup(names: list[str], folders: dict[str, int]) -> dict[str, int]:
    """Folder name -> class index: the artifact's training folders, else the name (with _ for space)."""
    lookup = dict(folders)
    for i, name in enumerate(names):
        lookup.setdefault(name, i)
        lookup.setdefault(name.replace(" ", "_"), i)
    return lookup


def warn_unknown_labels(folders: dict[str, int], labels: dict[str, int], names: list[str]) -> None:
    """Images whose folder (``folders``) or carried label (``labels``, container samples) names no class get label
    -1, which report leaves out of the ID accuracy: say which, not nothing."""
    if folders:
        shown = ", ".join(repr(f) if f else "(images directly in an input folder)" for f in list(folders)[:5])
        more = f" and {len(folders) - 5} more" if len(folders) > 5 else ""
        warnings.warn(f"--labeled: {sum(folders.values())} image(s) are in folders that name no class ({shown}{more}), "
                      f"so their label is -1 and report leaves them out of the ID accuracy; class folders are the "
                      f"class names (spaces or _) or the training folders, e.g. {names[0]!r}", NegPromptWarning,
                      stacklevel=3)
    if labels:
        shown = ", ".join(list(labels)[:5])
        more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
        warnings.warn(f"--labeled: {sum(labels.values())} sample(s) in shards or tables carry a label that names no "
                      f"class, or none ({shown}{more}), so their label is -1 and report leaves them out of the ID "
                      f"accuracy; a sample's label is its WebDataset cls field or its table's label column: a class "
                      f"name, or a position in these {len(names)} classes counted from 0", NegPromptWarning,
                      stacklevel=3)
