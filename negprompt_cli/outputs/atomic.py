"""Write files so that a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import NotFoundError, UsageError

# Read once: os.umask can only be read by setting it, which would race with writer threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# What an existing path is, when it is neither a regular file nor a folder: never replaced by a writer.
_SPECIAL = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


def special_kind(path: Path) -> str | None:
    """'a named pipe', 'a character device', ... when ``path`` (followed through symlinks) exists and is neither a
    regular file nor a folder; None otherwise."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((kind for test, kind in _SPECIAL if test(mode)), None)


def is_stream_target(path: Path) -> bool:
    """A named pipe or a character device (``/dev/stdout`` in a terminal, ``>(gzip > x)``, ``/dev/null``): it
    takes bytes as they come and cannot be renamed over, so only a streamed output (score rows) is written to it,
    directly."""
    return special_kind(path) in ("a named pipe", "a character device")


def real_target(path: Path) -> Path:
    """The file a write to ``path`` lands in: a symlink is followed, as a shell's ``>`` follows it, so the link
    (the user's) stays and the file it names is replaced; anything else is ``path`` itself."""
    path = Path(path)
    return Path(os.path.realpath(path)) if os.path.islink(path) else path  # islink: False for a name too long


def check_replaceable(path: Path, what: str = "--out") -> None:
    """Refuse to rename a file over ``path`` when it is not a regular file: a named pipe, a device (``/dev/full``
    as root), a socket is somebody else's, and a writer that replaced it would lose it silently (exit 2)."""
    kind = special_kind(path)
    if kind is not None:
        raise UsageError(f"{what} {path} is {kind}, not a regular file: negprompt writes a finished file and "
                         "renames it into place, which would replace it",
                         hint="name a regular file" + (" (score rows can go to a pipe: omit --out and redirect "
                                                       "stdout, or give score --out the pipe)"
                                                       if kind == "a named pipe" else ""))


def check_output_folder(path: Path, what: str = "--out") -> None:
    """An output folder may be new or a folder; a file, pipe or device in its place is refused (exit 2), never
    removed or replaced."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"{what} {path} is {special_kind(path) or 'a file'}, not a folder",
                         hint="name a new or existing folder")


def check_output_path(path: Path, *, stream_ok: bool = False) -> Path:
    """Fail before any work is done if the output could not be written (probed with a real file, and its full
    name checked against the file system's limits). An existing path that is not a regular file is refused
    (:func:`check_replaceable`), except a named pipe or character device where ``stream_ok`` (a streamed output,
    written to it directly)."""
    path = Path(path)
    if stream_ok and is_stream_target(path):
        if not os.access(path, os.W_OK):
            raise UsageError(f"cannot write to {path}: permission denied")
        return path
    target = real_target(path)
    if target.parent.exists():
        check_name_fits(target)
    if target.exists() and target.is_dir():
        raise UsageError(f"output path is a directory: {path}", hint="name a file, e.g. prompts.safetensors")
    check_replaceable(target)
    if not target.parent.exists():
        raise NotFoundError(f"output directory does not exist: {target.parent}",
                            hint=f"create it first: mkdir -p {target.parent}")
    check_writable(target.parent)
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
    """Give a finished temporary file the mode a plainly created file would have, then rename it into place: over
    the file a symlink names (the link stays), never over anything but a regular file (every writer's last
    check, also for files inside folders the tool owns)."""
    target = real_target(path)
    check_replaceable(target)
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, target)


def temp_file(path: Path) -> tuple[int, Path]:
    """(descriptor, path) of a new temporary file in the folder of the file a write to ``path`` replaces, so that
    the final rename stays on one file system."""
    target = real_target(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    return fd, Path(tmp)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    fd, tmp = temp_file(path)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` whole (multi-file outputs). A
    symlink to a folder stays: the folder it names is replaced."""
    path = real_target(Path(path))
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path is {special_kind(path) or 'a file'}, not a folder: {path}")
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
