"""The image-feature cache on disk, safe to share between many processes.

One directory per feature key (weights + preprocessing), holding *shards*: safetensors files of
unit-norm float32 rows whose header lists the row ids and a SHA-256 of the rows.

How many writers share it (concurrent ``score`` / ``cache build`` runs, torchrun ranks, jobs on one
NFS cache) without locks on the hot path:

- **No shared index file.** Every shard names its own rows; the directory listing is the index.
  Writers never modify a file another process may read, so there is nothing to merge or race on.
- **Atomic shards.** A shard is written to a hidden temporary file named after its writer
  (``.<uuid>-<pid>-<host>.safetensors.tmp``) and renamed into place: a reader sees a whole shard or
  none. A writer killed mid-write leaves only its temporary file, which readers never look at and
  :func:`compact` removes once the writer is gone.
- **Verified reads.** A shard whose header cannot be read is ignored (a torn write on a file system
  without atomic rename); one whose rows fail their checksum is removed and its rows re-encoded.
  Either way a reader never fails because of the cache: it is only a cache.
- **Compaction under a lock.** :func:`compact` (``negprompt cache gc``) merges a key's shards into
  few large ones while holding an exclusive ``flock`` on ``<key>/.lock`` (so two compactions never
  interleave). It publishes the merged shards before it deletes the old ones, and a reader that finds a
  shard gone re-reads the directory, so rows are never missing at any moment.
- **Only what it wrote.** A cache root carries a ``CACHEDIR.TAG`` (the Cache Directory Tagging
  convention: backup tools skip it) naming negprompt, a key directory an ``info.json`` with the
  cache's format, a shard a uuid name and that format in its header. :func:`compact` and
  :func:`verify` touch only such files; anything else found there (a user's own ``.safetensors``, a
  folder pointed at by mistake) is listed as ``foreign`` and left alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UsageError
from ..outputs.atomic import publish

FORMAT = "negprompt-feature-cache/1"  # in every info.json and shard header this cache writes
SHARD_TENSOR = "features"
SHARD_SUFFIX = ".safetensors"
TEMP_SUFFIX = ".safetensors.tmp"
INFO_FILE = "info.json"
LOCK_FILE = ".lock"
COMPACT_ROWS = 65_536  # rows per compacted shard (32 MB at width 128, 128 MB at width 512)
COMPACT_BYTES = 128 << 20  # and at most this much: rows with patch features are ~200x wider (local_features)
STALE_TEMP_SECONDS = 3600  # a temporary file this old is abandoned even if its writer's pid was reused
TAG_FILE = "CACHEDIR.TAG"
# https://bford.info/cachedir/: the first line is the convention's signature; ours names negprompt
TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
            "# This file is a cache directory tag created by negprompt (image-feature cache).\n"
            "# For information about cache directory tags see https://bford.info/cachedir/\n")
TEXT_FEATURES_DIR = "text-features"  # the mined-label candidates' text features (negative_labels)
NOTES_DIR = "notes"  # which one-time notes were shown (first_time)
BACKBONES_DIR = "backbones"  # what a run needs to know of a backbone without building it (backbone_facts)
LISTS_DIR = "lists"  # registered negative-label lists fetched from their home (scoring.negative_lists)
SHARD_NAME = re.compile(r"[0-9a-f]{32}\.safetensors")
TEMP_NAME = re.compile(r"\.[0-9a-f]{32}-[0-9]+-.+\.safetensors\.tmp")


def rows_digest(block: torch.Tensor) -> str:
    return hashlib.sha256(block.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _shard_ids(shard: Path) -> list[str] | None:
    """The row ids a shard's header lists; None when the header cannot be read."""
    try:
        with safe_open(str(shard), framework="pt") as handle:
            ids = json.loads((handle.metadata() or {}).get("ids", "[]"))
    except Exception:
        return None
    return ids if isinstance(ids, list) else None


def _read_rows(shard: Path) -> tuple[list[str], torch.Tensor] | None:
    """(ids, rows) of a shard whose rows match its checksum; None for a damaged or unreadable one.
    A shard that vanished (compacted meanwhile) raises FileNotFoundError."""
    if not shard.exists():
        raise FileNotFoundError(shard)
    try:
        with safe_open(str(shard), framework="pt") as handle:
            meta = handle.metadata() or {}
            block = handle.get_tensor(SHARD_TENSOR)
        ids = json.loads(meta.get("ids", "[]"))
    except FileNotFoundError:
        raise
    except Exception:
        return None
    expected = meta.get("sha256")
    if not isinstance(ids, list) or len(ids) != block.shape[0] or (expected is not None
                                                                    and rows_digest(block) != expected):
        return None
    return ids, block


def _write_shard(folder: Path, ids: Sequence[str], block: torch.Tensor) -> Path:
    """Write one shard atomically (writer-named temp file + rename); returns its path."""
    name = f"{uuid.uuid4().hex}{SHARD_SUFFIX}"
    tmp = folder / f".{name[:-len(SHARD_SUFFIX)]}-{os.getpid()}-{socket.gethostname()}{TEMP_SUFFIX}"
    try:
        save_file({SHARD_TENSOR: block}, str(tmp), metadata={"ids": json.dumps(list(ids)),
                                                              "sha256": rows_digest(block), "format": FORMAT})
        publish(tmp, folder / name)  # readable by whoever shares the cache, as the umask allows
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return folder / name


def _write_info(folder: Path, info: dict) -> None:
    target = folder / INFO_FILE
    if target.exists():
        return
    tmp = folder / f".{INFO_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(json.dumps({**info, "format": FORMAT}, indent=2, sort_keys=True))
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def mark_root(root: Path) -> None:
    """Tag ``root`` as a negprompt cache (once), so that ``gc`` can tell it from a folder named by mistake."""
    target = Path(root) / TAG_FILE
    if target.exists():
        return
    tmp = Path(root) / f".{TAG_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(TAG_TEXT)
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _tagged(root: Path) -> bool:
    try:
        return "created by negprompt" in (root / TAG_FILE).read_text(errors="replace")
    except OSError:
        return False


def _owned_key(folder: Path) -> bool:
    """Whether ``folder`` is a feature-key directory this cache wrote: its info.json names the format (or, from
    before the format was recorded, has exactly the fields negprompt wrote)."""
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    return info.get("format") == FORMAT or {"backbone", "pretrained", "preprocess"} <= info.keys()


class FeatureCache:
    """The rows of one feature key: look up verified rows, add new shards (see the module docstring)."""

    def __init__(self, root: Path, key: str, info: dict | None = None) -> None:
        self.dir = Path(root) / key
        self.info = info or {}
        self._index: dict[str, tuple[Path, int]] | None = None
        self._last_read: tuple[Path, tuple[list[str], torch.Tensor] | None] | None = None  # one shard, re-read
        # by every window of a stream that falls into it (compacted shards hold 65,536 rows)
        self.damaged: list[Path] = []
        self.write_error: OSError | None = None

    def _load_index(self, reload: bool = False) -> dict[str, tuple[Path, int]]:
        if self._index is None or reload:
            index: dict[str, tuple[Path, int]] = {}
            for shard in _own_shards(self.dir) if self.dir.is_dir() else []:
                for row, item in enumerate(_shard_ids(shard) or []):  # an unreadable header is ignored
                    index[item] = (shard, row)
            self._index = index
        return self._index

    def lookup(self, ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """The verified rows this cache holds for ``ids`` (absent ones, and those of damaged shards, left out)."""
        found: dict[str, torch.Tensor] = {}
        wanted = list(dict.fromkeys(ids))
        for attempt in range(3):  # a shard compacted away meanwhile: read the directory again
            index = self._load_index(reload=attempt > 0)
            by_shard: dict[Path, list[str]] = {}
            for item in wanted:
                if item in index and item not in found:
                    by_shard.setdefault(index[item][0], []).append(item)
            vanished = False
            for shard, items in by_shard.items():
                try:
                    rows = self._read(shard)
                except FileNotFoundError:
                    vanished = True
                    continue
                if rows is None:
                    self._drop_damaged(shard)
                    continue
                for item in items:
                    found[item] = rows[1][index[item][1]].float()
            if not vanished:
                break
        return found

    def _read(self, shard: Path) -> tuple[list[str], torch.Tensor] | None:
        if self._last_read is None or self._last_read[0] != shard:
            self._last_read = (shard, _read_rows(shard))
        return self._last_read[1]

    def _drop_damaged(self, shard: Path) -> None:
        self.damaged.append(shard)
        shard.unlink(missing_ok=True)
        self._index = {k: v for k, v in self._load_index().items() if v[0] != shard}

    def add(self, ids: Sequence[str], features: torch.Tensor) -> None:
        """Write the rows as one new shard; a cache that cannot be written is noted in ``write_error`` and
        skipped from then on (the caller warns once)."""
        if not ids or self.write_error is not None:
            return
        block = features.detach().to("cpu", torch.float32).contiguous()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            mark_root(self.dir.parent)
            _write_info(self.dir, self.info)
            _write_shard(self.dir, ids, block)  # not indexed here: a run does not look up its own rows again,
            # and a stream's memory must not grow with the rows it writes
        except OSError as exc:  # read-only or full: go on without caching
            self.write_error = exc
            return
        except Exception as exc:  # safetensors reports a full disk as its own error type
            self.write_error = OSError(str(exc))
            return


# -- checking and compacting (negprompt cache verify | gc) -------------------------------------------------------
@dataclass
class KeyReport:
    """The state of one feature key's directory."""

    key: str
    backbone: str | None
    pretrained: str | None
    shards: int = 0
    rows: int = 0
    unique_rows: int = 0
    bytes: int = 0
    damaged: list[str] = field(default_factory=list)  # shards that fail their checksum or cannot be read
    temp_files: list[str] = field(default_factory=list)  # writers' temporary files still present
    stale_temp_files: list[str] = field(default_factory=list)  # ... whose writer is gone
    removed: int = 0  # files compaction removed (merged shards, damaged shards, stale temp files)
    foreign: list[str] = field(default_factory=list)  # files negprompt did not write: never read, never removed

    def as_dict(self) -> dict:
        return asdict(self)


def cache_keys(root: Path) -> list[Path]:
    """The feature-key directories under a cache root that this cache wrote (see :func:`_owned_key`)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _owned_key(p))


def root_folder(root: Path, name: str) -> Path:
    """``root/name``, made (with ``root``, tagged as this cache, when it is new): the folders beside the feature
    keys (notes, backbone facts). OSError when the cache cannot be written."""
    root = Path(root)
    if not root.exists():
        root.mkdir(parents=True)
        mark_root(root)
    folder = root / name
    folder.mkdir(exist_ok=True)
    return folder


def first_time(root: Path, key: str) -> bool:
    """Whether a note about ``key`` is new to this cache (and remember that it was shown): a note that repeats on
    every run stops being read. Concurrent runs agree (one file created exclusively); a cache that cannot be
    written remembers nothing, and the note is shown."""
    try:
        folder = root_folder(root, NOTES_DIR)
        os.close(os.open(folder / hashlib.sha256(key.encode()).hexdigest()[:32], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def foreign_entries(root: Path) -> list[Path]:
    """What lies in a cache root that negprompt did not put there (left alone by gc; named in its warning)."""
    if not root.is_dir():
        return []
    ours = {TAG_FILE, TEXT_FEATURES_DIR, NOTES_DIR, BACKBONES_DIR, LISTS_DIR, *(p.name for p in cache_keys(root))}
    return sorted(p for p in root.iterdir() if p.name not in ours and not TEMP_NAME.fullmatch(p.name)
                  and not (p.name.startswith(f".{TAG_FILE}.") and p.name.endswith(".tmp")))


def check_is_cache(root: Path) -> None:
    """Refuse a folder that holds things but none of a negprompt cache (a --cache-dir pointed at the wrong
    folder): nothing in it is read or removed. An empty folder is an empty cache."""
    root = Path(root)
    if not root.is_dir() or _tagged(root) or cache_keys(root) or not any(root.iterdir()):
        return
    raise UsageError(f"{root} is not a negprompt feature cache (no {TAG_FILE} from negprompt, no feature "
                     "folders): nothing was read or removed",
                     hint="--cache-dir (or NEGPROMPT_CACHE) names the folder that fit-*, score and cache build "
                          "wrote to")


def _own_shards(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SHARD_SUFFIX}") if SHARD_NAME.fullmatch(p.name))


def _own_temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f".*{TEMP_SUFFIX}") if TEMP_NAME.fullmatch(p.name))


def _foreign_in_key(folder: Path) -> list[str]:
    ours = {INFO_FILE, LOCK_FILE}
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in ours and not SHARD_NAME.fullmatch(p.name) and not TEMP_NAME.fullmatch(p.name)
                  and not (p.name.startswith(f".{INFO_FILE}.") and p.name.endswith(".tmp")))


def _writer_gone(temp: Path, now: float) -> bool:
    """Whether a temporary shard's writer has stopped: its pid is dead on this host, or the file is old."""
    try:
        age = now - temp.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_TEMP_SECONDS:
        return True
    parts = temp.name[1:-len(TEMP_SUFFIX)].split("-", 2)
    if len(parts) != 3 or parts[2] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def inspect_key(folder: Path) -> KeyReport:
    """Read every shard of one key and check it (the whole cache is read: this costs I/O, not compute)."""
    info = {}
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        pass
    report = KeyReport(folder.name, info.get("backbone"), info.get("pretrained"), foreign=_foreign_in_key(folder))
    seen: set[str] = set()
    now = time.time()
    for shard in _own_shards(folder):
        try:
            rows = _read_rows(shard)
            size = shard.stat().st_size
        except FileNotFoundError:  # compacted meanwhile
            continue
        report.shards += 1
        report.bytes += size
        if rows is None:
            report.damaged.append(shard.name)
            continue
        report.rows += len(rows[0])
        seen.update(rows[0])
    report.unique_rows = len(seen)
    for temp in _own_temps(folder):
        report.temp_files.append(temp.name)
        if _writer_gone(temp, now):
            report.stale_temp_files.append(temp.name)
    return report


def verify(root: Path) -> list[KeyReport]:
    check_is_cache(Path(root))
    return [inspect_key(folder) for folder in cache_keys(Path(root))]


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compact_key(folder: Path, max_rows: int = COMPACT_ROWS) -> KeyReport:
    """Merge a key's verified shards into shards of up to ``max_rows`` unique rows, drop damaged shards and
    abandoned temporary files. Shards other writers add meanwhile are left alone (and kept). Memory stays
    at about one output shard: merged shards are written as they fill."""
    removed = 0
    with _exclusive(folder):
        now = time.time()
        shards = _own_shards(folder)
        readable = [s for s in shards if _shard_ids(s) is not None]
        full = [s for s in readable if _row_count(s) >= max_rows]
        merge = len(readable) > 1 and len(readable) > len(full) + 1
        pending_ids: list[str] = []
        pending: list[torch.Tensor] = []
        seen: set[str] = set()
        merged_from: list[Path] = []
        for shard in shards:
            try:
                rows = _read_rows(shard)
            except FileNotFoundError:
                continue
            if rows is None:
                shard.unlink(missing_ok=True)
                removed += 1
                continue
            if not merge:
                continue
            ids, block = rows
            max_rows = min(max_rows, max(1, COMPACT_BYTES // (block.element_size() * max(1, block.shape[1]))))
            keep = [i for i, item in enumerate(ids) if item not in seen]
            seen.update(ids)
            pending_ids.extend(ids[i] for i in keep)
            pending.append(block[keep])
            merged_from.append(shard)
            while len(pending_ids) >= max_rows:
                stacked = torch.cat(pending)
                _write_shard(folder, pending_ids[:max_rows], stacked[:max_rows].contiguous())
                pending_ids, pending = pending_ids[max_rows:], [stacked[max_rows:]]
        if merge:
            if pending_ids:
                _write_shard(folder, pending_ids, torch.cat(pending).contiguous())
            for shard in merged_from:  # only after every merged shard is in place
                shard.unlink(missing_ok=True)
                removed += 1
        for temp in _own_temps(folder):
            if _writer_gone(temp, now):
                temp.unlink(missing_ok=True)
                removed += 1
    report = inspect_key(folder)
    report.removed = removed
    return report


def _row_count(shard: Path) -> int:
    return len(_shard_ids(shard) or [])


def compact(root: Path, max_rows: int = COMPACT_ROWS) -> list[KeyReport]:
    check_is_cache(Path(root))
    keys = cache_keys(Path(root))
    if keys:
        mark_root(Path(root))  # a cache from before the tag: tag it now
    return [compact_key(folder, max_rows) for folder in keys]
