"""The one place that decides where human-readable output goes: stderr, always.

stdout is reserved for data (JSON, CSV, JSONL) so that ``negprompt ... --json | jq`` works.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

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


def cell(value: object):
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


PROGRESS_SECONDS_ENV = "NEGPROMPT_PROGRESS_SECONDS"
PROGRESS_SECONDS = 30.0  # how often a log (no terminal) gets a progress line


class PlainProgress:
    """Progress for a log file (nohup, SLURM, CI, ``2> log``): where no bar can be drawn, one plain line per task
    every ``every`` seconds -- done/total, the task's status (epoch, loss), elapsed time and ETA -- and a last
    line when a task that printed one ends. Same calls as the rich display (add_task, advance, update)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            for task in self.tasks.values():
                if task["printed"] and task["completed"] != task["shown"]:
                    self._line(task, time.monotonic())

    def add_task(self, description: str, total: float | None = None, completed: float = 0, status: str = "",
                 **_: Any) -> int:
        now = time.monotonic()
        key = len(self.tasks)
        self.tasks[key] = {"description": description, "total": total, "completed": completed, "status": status,
                           "start": now, "start_completed": completed, "last": now, "printed": False, "shown": None}
        return key

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               status: str | None = None, **_: Any) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        if status is not None:
            task["status"] = status
        now = time.monotonic()
        if now - task["last"] >= self.every:
            self._line(task, now)

    def _line(self, task: dict[str, Any], now: float) -> None:
        task["last"], task["printed"], task["shown"] = now, True, task["completed"]
        done, total = task["completed"], task["total"]
        elapsed = now - task["start"]
        parts = [f"{task['description']}: {done:g}/{total:g}" + (f" ({100 * done / total:.0f}%)" if total else "")
                 if total else f"{task['description']}: {done:g}"]
        if task["status"]:
            parts.append(str(task["status"]))
        parts.append(f"{_duration(elapsed)} elapsed")
        rate = (done - task["start_completed"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0 and done < total:
            parts.append(f"ETA {_duration((total - done) / rate)}")
        info(", ".join(parts))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_seconds() -> float:
    value = os.environ.get(PROGRESS_SECONDS_ENV)
    try:
        return float(value) if value else PROGRESS_SECONDS
    except ValueError:
        return PROGRESS_SECONDS


class ProgressDisplay(Protocol):
    """What long loops call on a progress display: rich's ``Progress`` or :class:`PlainProgress`."""

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> Any: ...

    def advance(self, task_id: Any, advance: float = 1) -> None: ...

    def update(self, task_id: Any, **kwargs: Any) -> None: ...


@contextmanager
def progress(quiet: bool = False) -> Iterator[ProgressDisplay]:
    """A rich progress display on stderr that never captures stdout, or plain lines every
    ``NEGPROMPT_PROGRESS_SECONDS`` (30) when stderr is not a terminal; silent unless show_progress() was called
    (the CLI does; the Python API stays quiet) or with ``quiet``."""
    if not quiet and _display["progress"] and not err.is_terminal:
        with PlainProgress(progress_seconds()) as plain:
            yield plain
        return
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
