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
out_console = Console(highlight=False)  # an information command's human-readable result (tables): stdout is its data

# Library code reports progress through progress(); it is only drawn once a front end (the CLI) asks for it,
# so the Python API stays silent.
_display = {"progress": False}


def show_progress(enabled: bool = True) -> None:
    """Let progress() draw bars on stderr (the CLI turns this on; library callers leave it off)."""
    _display["progress"] = enabled


def printable(text: object) -> str:
    """``text`` safe for a terminal: control and format characters (an escape sequence in a class or file name
    could rewrite the screen, a bidi override reorder it) and undecodable file-name bytes shown as escapes,
    e.g. ``\x1b``, ``\u202e``, ``\udcff``. Newlines and tabs stay."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() or c in "\n\t" else ascii(c)[1:-1] for c in value)


def info(message: str) -> None:
    """One human-readable message on stderr, printed as plain text (no rich markup), names escaped."""
    err.print(printable(message), markup=False, soft_wrap=True)


def say(message: str) -> None:
    """A human-readable result line on stdout (``inspect``, ``env``, ``plugins``, ``benchmark list``): what an
    information command prints is its data, so ``negprompt env > env.txt`` keeps it. Names escaped."""
    write_data(printable(message) + "\n")


def cell(value: object):  # type: ignore[no-untyped-def]
    """A rich table cell that is plain text: no markup read from names, control characters escaped."""
    from rich.text import Text

    return Text(printable("" if value is None else value))


def write_data(text: str) -> None:
    """Rows on stdout as UTF-8 whatever the locale (a C/POSIX locale's ASCII stdout would fail on the first
    non-ASCII class or file name), file-name bytes that are not UTF-8 written as they are (surrogateescape)."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (embedding): it takes str
        sys.stdout.write(text)
    else:
        buffer.write(text.encode("utf-8", "surrogateescape"))
        buffer.flush()


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
