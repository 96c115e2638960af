"""Where ``score`` rows go while they are produced, so that no process holds them all.

One process writes a temporary file next to ``--out`` and renames it into place only when the run is
complete (never a half-written output), or passes the rows on to a text stream (stdout). In a torchrun
job every rank writes its own share to a hidden *part* file named with the job's run id, and rank 0
joins the parts in rank order into the output: the bytes one process would have written. Parts of
another (interrupted) run are never joined: their run id differs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import NegPromptError, UsageError
from .atomic import publish, temp_file

ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # a file name that is not UTF-8 keeps its bytes
COPY_BLOCK = 1 << 20


class RowOutput:
    """Text written in order; ``finish`` on success, ``discard`` on failure."""

    def write(self, text: str) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        pass


class FileOutput(RowOutput):
    """A temporary file next to ``path``, renamed over it by ``finish`` (``discard`` removes it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd, self.tmp = temp_file(self.path)
        self.handle = os.fdopen(fd, "wb")

    def write(self, text: str) -> None:
        self.handle.write(text.encode(**ENCODING))

    def finish(self) -> None:
        self.handle.close()
        publish(self.tmp, self.path)

    def discard(self) -> None:
        _close_quietly(self.handle)  # after a full disk, closing (flushing) fails again: remove the file anyway
        self.tmp.unlink(missing_ok=True)


class PipeOutput(RowOutput):
    """``--out`` that is a named pipe or a character device (``atomic.is_stream_target``): rows written to it
    directly, as to stdout; it is never renamed over. A failed write (``/dev/full``: no space; a pipe whose reader
    left) is one error naming it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.handle = open(self.path, "wb")  # a pipe: waits for its reader, as a shell's > does
        except OSError as exc:
            raise self._failed(exc) from None

    def write(self, text: str) -> None:
        try:
            self.handle.write(text.encode(**ENCODING))
        except OSError as exc:
            _close_quietly(self.handle)
            raise self._failed(exc) from None

    def finish(self) -> None:
        try:
            self.handle.close()
        except OSError as exc:
            raise self._failed(exc) from None

    def discard(self) -> None:
        _close_quietly(self.handle)

    def _failed(self, exc: OSError) -> NegPromptError:
        reason = "its reader closed it" if isinstance(exc, BrokenPipeError) else (exc.strerror or str(exc))
        return NegPromptError(f"could not write the scores to {self.path}: {reason}",
                              hint="rows already written there cannot be taken back; rerun with a regular --out "
                                   "file for an all-or-nothing output")


class StreamOutput(RowOutput):
    """Rows passed on as they come (the CLI: stdout); what was passed on cannot be taken back."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write_text = write

    def write(self, text: str) -> None:
        if text:
            self.write_text(text)


class TextOutput(RowOutput):
    """Rows kept as one text (the Python API without ``out``: small inputs)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def write(self, text: str) -> None:
        self.pieces.append(text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _close_quietly(handle: Any) -> None:
    try:
        handle.close()
    except OSError:
        pass


def part_prefix(target: str) -> str:
    return f".{target[:60]}."


def part_path(folder: Path, target: str, run_id: str, rank: int) -> Path:
    """Rank ``rank``'s part of the output ``target`` (a file name) in ``folder``, for the run ``run_id``."""
    return Path(folder) / f"{part_prefix(target)}{run_id}.part{rank:05d}"


def stale_parts(folder: Path, target: str, run_id: str) -> list[Path]:
    """Parts an earlier run left next to ``target`` (killed before it could remove them)."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    prefix = part_prefix(target)
    return sorted(p for p in entries if p.name.startswith(prefix) and ".part" in p.name[len(prefix):]
                  and not p.name.startswith(f"{prefix}{run_id}.") and not p.name.endswith(".progress"))


class PartOutput(RowOutput):
    """This rank's share of the rows, in its part file (created new: a leftover is never appended to)."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path, self.rank, self.size = Path(path), rank, 0
        try:
            self.handle = open(self.path, "xb")
        except OSError as exc:
            error = UsageError(f"rank {rank} cannot write its part of the scores next to the output "
                               f"({self.path.parent}): {exc.strerror or exc}",
                               hint="in a torchrun job every rank writes its part in --out's folder: put --out on "
                                    "a file system every node can write (docs/scale.md)")
            error.rank_specific = True
            raise error from None

    def write(self, text: str) -> None:
        data = text.encode(**ENCODING)
        try:
            self.handle.write(data)
        except OSError as exc:
            self.discard()
            error = NegPromptError(f"rank {self.rank} could not write its part of the scores {self.path}: "
                                   f"{exc.strerror or exc}",
                                   hint="free some space (or choose another --out); nothing was written")
            error.rank_specific = True
            raise error from None
        self.size += len(data)

    def finish(self) -> None:
        self.handle.close()

    def discard(self) -> None:
        _close_quietly(self.handle)
        self.path.unlink(missing_ok=True)


class ResumablePart(PartOutput):
    """``score --resume``: this process's rows in a part file with a fixed name and, beside it, its progress: how
    many bytes of rows are committed and after which input position (``checkpoint``, once per window: the part
    flushed to disk first, then the progress replaced atomically). A rerun whose ``fingerprint`` (inputs and every
    setting that changes a row) is the same cuts the part back to the committed bytes and goes on from that
    position (``resumed``); anything else starts over. The part and its progress are kept when the run fails
    (that is what a rerun resumes) and removed once joined into the output."""

    def __init__(self, path: Path, rank: int, fingerprint: str) -> None:
        self.path, self.rank, self.fingerprint = Path(path), rank, fingerprint
        self.progress = progress_path(self.path)
        self.resumed = self._committed()
        try:
            if self.resumed is not None:
                handle: Any = open(self.path, "r+b")
                handle.truncate(self.resumed["bytes"])  # rows written after the last checkpoint go
                handle.seek(self.resumed["bytes"])
                self.handle = handle
                self.size = int(self.resumed["bytes"])
            else:
                self.progress.unlink(missing_ok=True)
                self.handle, self.size = open(self.path, "wb"), 0  # a part of other settings is started over
        except OSError as exc:
            error = UsageError(f"cannot write the resumable part of the scores {self.path}: {exc.strerror or exc}",
                               hint="--resume keeps its part next to --out: put --out in a writable folder")
            error.rank_specific = True
            raise error from None

    def _committed(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.progress.read_text())
            size = self.path.stat().st_size
        except (OSError, ValueError):
            return None
        if state.get("fingerprint") != self.fingerprint or size < int(state.get("bytes", -1)):
            return None
        return state

    def checkpoint(self, position: int, tally: dict[str, Any]) -> None:
        """Everything written so far is committed: the rows of the inputs before ``position`` (of this process's
        share), and the tally that counts them."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        state = {"fingerprint": self.fingerprint, "bytes": self.size, "position": position, "tally": tally}
        tmp = self.progress.with_name(self.progress.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.progress)

    def discard(self) -> None:
        _close_quietly(self.handle)  # kept, with its progress: a rerun with --resume goes on from there


def progress_path(part: Path) -> Path:
    return Path(part).with_name(Path(part).name + ".progress")


def join_parts(parts: list[tuple[Path, int]], into: RowOutput) -> None:
    """Write the parts (path, size each rank wrote) into ``into`` in order, then remove them. A part that rank
    0 does not see whole was written on a file system its node does not share: an error, nothing written."""
    for rank, (path, size) in enumerate(parts):
        try:
            seen = path.stat().st_size
        except OSError:
            seen = -1
        if seen != size:
            raise UsageError(f"rank {rank}'s part of the scores ({path}, {size} bytes) is "
                             + ("not visible" if seen < 0 else f"{seen} bytes") + " from rank 0's node",
                             hint="the ranks wrote to folders that are not one shared folder: put --out on a file "
                                  "system every node shares (docs/scale.md)")
    for path, _ in parts:
        with open(path, "rb") as handle:
            if isinstance(into, FileOutput):
                shutil.copyfileobj(handle, into.handle, COPY_BLOCK)
            else:
                while block := handle.read(COPY_BLOCK):
                    into.write(block.decode(**ENCODING))
    remove_parts([path for path, _ in parts])


def remove_parts(paths: list[Path]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
        progress_path(path).unlink(missing_ok=True)  # a resumable part's progress goes with it
