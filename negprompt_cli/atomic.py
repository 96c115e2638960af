"""Write files so that a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import NotFoundError, UsageError


def check_output_path(path: Path) -> Path:
    """Fail before any work is done if the output could not be written."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UsageError(f"output path is a directory: {path}", hint="name a file, e.g. prompts.safetensors")
    if not path.parent.exists():
        raise NotFoundError(f"output directory does not exist: {path.parent}",
                            hint=f"create it first: mkdir -p {path.parent}")
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
