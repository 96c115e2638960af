"""The one place that decides where human-readable output goes: stderr, always.

stdout is reserved for data (JSON, CSV, JSONL) so that ``negprompt ... --json | jq`` works.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Console(stderr=True) resolves sys.stderr lazily, so test runners that swap stderr still capture it.
err = Console(stderr=True, highlight=False)

# Library code reports progress through progress(); it is only drawn once a front end (the CLI) asks for it,
# so the Python API stays silent.
_display = {"progress": False}


def show_progress(enabled: bool = True) -> None:
    """Let progress() draw bars on stderr (the CLI turns this on; library callers leave it off)."""
    _display["progress"] = enabled


def info(message: str) -> None:
    err.print(message, markup=False, soft_wrap=True)


def emit_json(obj: Any) -> None:
    """Write exactly one JSON document to stdout (plain write: no rich markup or highlighting)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


@contextmanager
def progress(quiet: bool = False) -> Iterator[Progress]:
    """A rich progress display on stderr that never captures stdout; silent unless show_progress() was called."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
        disable=quiet or not _display["progress"] or not err.is_terminal,
    )
    with bar:
        yield bar
