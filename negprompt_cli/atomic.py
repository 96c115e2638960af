"""Write files so that a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import NotFoundError, UsageError

# Read once: os.umask can only be read by setting it, which would race with writer threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def check_output_path(path: Path) -> Path:
    """Fail before any work is done if the output could not be written (probed with a real file, and its full
    name checked against the file system's limits)."""
    path = Path(path)
    if path.parent.exists():
        check_name_fits(path)
    if path.exists() and path.is_dir():
        raise UsageError(f"output path is a directory: {path}", hint="name a file, e.g. prompts.safetensors")
    if not path.parent.exists():
        raise NotFoundError(f"output directory does not exist: {path.parent}",
                            hint=f"create it first: mkdir -p {path.parent}")
    check_writable(path.parent)
    return path


def check_name_fits(path: Path) -> None:
    """A name longer than the file system takes (NAME_MAX, usually 255 bytes; PATH_MAX for the whole path)
    fails at the final rename, after all the work: say so first."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
        path_max = os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return
    name = len(os.fsencode(path.name))
    if name > name_max:
        raise UsageError(f"--out file name is {name} bytes long; this file system takes at most {name_max}: "
                         f"{path.name[:40]}...", hint="choose a shorter name")
    full = len(os.fsencode(os.path.abspath(path)))
    if full >= path_max:
        raise UsageError(f"--out path is {full} bytes long; this system takes at most {path_max - 1}",
                         hint="choose a shorter path")


def temp_prefix(path: Path) -> str:
    """A temporary file's prefix that keeps its name under NAME_MAX whatever the target's length."""
    return f".{path.name[:60]}."


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(out: Path | None, inputs: Iterable[tuple[str, Path | None]]) -> None:
    """Refuse an output path that is one of the command's inputs (``(what, path)`` pairs, e.g. ("--prompts",
    P)): writing it would replace the very file the command reads, with nothing said (exit 2, before any work)."""
    if out is None:
        return
    for what, path in inputs:
        if path is not None and _same_file(Path(out), Path(path)):
            raise UsageError(f"--out {out} is also an input ({what} {path}): writing it would replace it",
                             hint="choose another --out")


def check_writable(folder: Path) -> None:
    """Create and remove a probe file in ``folder``: a read-only folder fails here, not after the work."""
    try:
        with tempfile.NamedTemporaryFile(prefix=".negprompt-probe-", dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}",
                         hint="choose another --out, or fix the folder's permissions") from exc


def publish(tmp: Path, path: Path) -> None:
    """Give a finished temporary file the mode a plainly created file would have, then rename it into place."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` whole (multi-file outputs)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path is a file, not a folder: {path}")
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def files_into_folder(path: Path, owned: Iterable[str]) -> Iterator[Path]:
    """Yield a temporary folder; on success move its files into the existing folder ``path`` (each by rename,
    so each file is whole) and remove the files named in ``owned`` that this run did not write. Every other
    file in ``path`` (a user's own) is left as it is. For a new or empty ``path``, :func:`atomic_folder`."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path))
    try:
        yield tmp
        written = sorted(tmp.iterdir(), key=lambda p: p.name.endswith(".json"))  # the JSON record last
        for item in written:
            publish(item, path / item.name)
        for name in set(owned) - {item.name for item in written}:
            (path / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: Path, writer: Callable[[Path], object]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """UTF-8; a file name that is not valid UTF-8 (possible on Linux) keeps its exact bytes (surrogateescape),
    so the path written is the path that opens the file."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))
