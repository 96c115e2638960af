"""Images inside containers: WebDataset tar shards, Parquet files, ``datasets.save_to_disk`` folders and
``hf://datasets/ORG/NAME`` from the local Hub cache, read in place (a crawl is never unpacked into files).

Each container is indexed once, when the inputs are listed (a tar's member headers, a table's row counts and
ids), and its images are then read by position: a tar member by its byte offset, a table row from the row group
(Parquet) or memory-mapped Arrow file (``save_to_disk``) that holds it. So a container sample is an item like an
image file: :class:`Member` has ``read_bytes()`` as ``Path`` has, and ``str()`` gives its id, which ``score``
writes in the path column: the WebDataset ``__key__``; for tables the image's ``path`` field, else a ``__key__``
or ``key`` column, else ``FILE#ROW``. Features are cached by the hash of the image bytes, as for files, so a
sample scored from a shard and the same image as a file share one cache row.

What is read follows the libraries' own conventions: a tar sample's key and fields are split as WebDataset's
``base_plus_ext`` splits them (``__``-prefixed metadata skipped, as WebDataset does), tar headers are parsed by
:mod:`tarfile`, brace patterns expanded by ``braceexpand`` (WebDataset's own), tables read by ``pyarrow``. A
table's image column is the first column laid out as the ``datasets`` Image feature (a struct with ``bytes`` and
``path``), else the first binary column.

Faults are said per container and sample, never silent, and never lose the other samples: a shard that ends
early keeps the members before the end; a sample with no image, a table with no image column, a container that
cannot be read are one warning each (``strict``: one error); a member whose bytes are not an image is skipped
when decoded, as an unreadable image file is (the warning names shard and key).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import tarfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from ..errors import NegPromptWarning, NotFoundError, UsageError
from .image_list import IMAGE_EXTENSIONS, ImageList, list_images

TAR_SUFFIXES = (".tar",)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")  # named, to be refused clearly
TABLE_SUFFIXES = (".parquet", ".arrow")
SHARD_LIST_SUFFIXES = (".txt", ".shards")  # a text file naming one shard per line
HF_DATASETS = "hf://datasets/"
# a tar sample's image field, in order of preference when a sample holds several (WebDataset field names)
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "image")
# a sample's true class (score --labeled): WebDataset's class field, and the datasets library's label column
LABEL_FIELDS = ("cls", "label")
LABEL_COLUMNS = ("label", "cls")


class Member:
    """One sample's image inside a container, read like a file: ``read_bytes()``; ``str()`` is its id."""

    __slots__ = ("index", "source")

    def __init__(self, source: Container, index: int) -> None:
        self.source, self.index = source, index

    def read_bytes(self) -> bytes:
        return self.source.read(self.index)

    def label(self) -> int | str | None:
        """The class label the sample carries (None: none)."""
        return self.source.label(self.index)

    def __str__(self) -> str:
        return self.source.sample_id(self.index)

    def where(self) -> str:
        """Where it is, for messages: the container and the id."""
        return f"{self.source.path}: {self}"

    def __repr__(self) -> str:
        return f"Member({self.where()!r})"


class Container:
    """Indexed samples of one container file: ids and a way to read sample ``i``'s image bytes."""

    kind = "container"
    stamp: tuple[int, int]  # (size, mtime_ns) when listed: a changed container is refused
    label_names: tuple[str, ...] | None = None  # the class names integer labels index (a datasets ClassLabel)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_id(self, i: int) -> str:
        raise NotImplementedError

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    def label(self, i: int) -> int | str | None:
        """Sample ``i``'s class label: an integer, a text, or None where it carries none."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        import hashlib

        digest = hashlib.sha256(f"{self.kind}:{self.path}:{len(self)}".encode())
        for i in range(len(self)):
            digest.update(self.sample_id(i).encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()[:12]


class TarShard(Container):
    """A WebDataset shard, known by its sample count; its index (per sample the key and the byte range of its
    image member) is read again from the tar headers when a process first needs it, and only the few shards in
    use are held (``_shard_index``): memory does not grow with the number of samples of a crawl."""

    kind = "tar"

    def __init__(self, path: Path, count: int, stamp: tuple[int, int]) -> None:
        super().__init__(path)
        self.count, self.stamp = count, stamp  # (size, mtime_ns) when listed: a changed shard is refused

    def __len__(self) -> int:
        return self.count

    def _index(self) -> ShardIndex:
        with _INDEX_LOCK:  # threads hashing a window's samples would otherwise all parse a new shard at once
            index = _shard_index(str(self.path), *self.stamp)
        if len(index.keys) != self.count:
            raise OSError(f"{self.path} changed since it was listed")
        return index

    def sample_id(self, i: int) -> str:
        return self._index().keys[i]

    def fingerprint(self) -> str:
        """The shard as listed (path, size, time, count): what ranks compare, without reading its headers again."""
        import hashlib  # noqa: PLC0415

        return hashlib.sha256(f"tar:{self.path}:{self.stamp}:{self.count}".encode()).hexdigest()[:12]

    def read(self, i: int) -> bytes:
        index = self._index()
        return self._member(index.offsets[i], index.sizes[i], index.keys[i])

    def label(self, i: int) -> int | str | None:
        """The sample's ``cls`` (or ``label``) field: an integer where its text is one (WebDataset writes class
        indices so), else the text."""
        index = self._index()
        if index.label_sizes[i] < 0:
            return None
        try:
            text = self._member(index.label_offsets[i], index.label_sizes[i], index.keys[i]).decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        try:
            return int(text)
        except ValueError:
            return text or None

    def _member(self, offset: int, size: int, key: str) -> bytes:
        """A member's bytes, from the shard as listed."""
        with open(self.path, "rb") as handle:
            status = os.fstat(handle.fileno())
            if (status.st_size, status.st_mtime_ns) != self.stamp:  # the index is of the shard as listed
                raise OSError(f"{self.path} changed since it was listed")
            handle.seek(int(offset))
            data = handle.read(int(size))
        if len(data) != size:
            raise OSError(f"{self.path} ends inside sample {key}")
        return data


_INDEX_LOCK = threading.Lock()


def file_stamp(path: str | Path) -> tuple[int, int]:
    """(size, mtime_ns): what a container is known by when listed, and checked against before it is read."""
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


def _check_stamp(path: str, stamp: tuple[int, int]) -> None:
    if file_stamp(path) != stamp:
        raise OSError(f"{path} changed since it was listed")


@dataclass(frozen=True)
class ShardIndex:
    """A shard's samples: their keys, and the byte offset and size of each one's image member and label member
    (size -1: no label)."""

    keys: tuple[str, ...]
    offsets: np.ndarray
    sizes: np.ndarray
    label_offsets: np.ndarray
    label_sizes: np.ndarray


@functools.lru_cache(maxsize=4)
def _shard_index(path: str, size: int, mtime_ns: int) -> ShardIndex:
    """A shard's index, as listed (``size`` and ``mtime_ns`` key the cache: a rewritten shard is read again)."""
    _check_stamp(path, (size, mtime_ns))
    return _tar_index(Path(path), [])


def index_tar(path: Path, problems: list[str]) -> TarShard:
    """A WebDataset shard as an input: its samples counted (what is wrong with it appended to ``problems``)."""
    stamp = file_stamp(path)
    return TarShard(path, len(_tar_index(path, problems).keys), stamp)


def _tar_index(path: Path, problems: list[str]) -> ShardIndex:
    """The samples of a WebDataset shard, grouped by key as WebDataset groups them, with where their image and
    label members are; what is wrong with the shard (it ends early, a sample has no image) is appended to
    ``problems``."""
    from webdataset.tariterators import base_plus_ext  # noqa: PLC0415 (imported when a shard is read)

    fields: dict[str, dict[str, tuple[int, int]]] = {}
    size = path.stat().st_size
    try:
        with tarfile.open(path, mode="r:") as tar:  # uncompressed only: members are read by offset
            for info in tar:
                if not info.isreg():
                    continue
                key, extension = base_plus_ext(info.name)
                if key is None or os.path.basename(info.name).startswith("__"):
                    continue  # WebDataset skips files without an extension and __metadata__ entries
                if info.offset_data + info.size > size:
                    problems.append(f"{path} ends early, inside sample {key!r}: the samples before it are read")
                    break
                fields.setdefault(key, {})[extension.lower()] = (info.offset_data, info.size)
    except tarfile.ReadError as exc:
        if not fields:
            problems.append(f"{path} is not an uncompressed tar file ({exc}): skipped")
        else:
            problems.append(f"{path} ends early ({exc}): the {len(fields)} samples before it are read")
    keys: list[str] = []
    members: list[tuple[int, int, int, int]] = []  # image offset and size, label offset and size
    no_image = []
    for key, found in fields.items():
        field = _image_field(found)
        if field is None:
            no_image.append(key)
            continue
        label = next((found[f] for f in LABEL_FIELDS if f in found), (-1, -1))
        keys.append(key)
        members.append((*found[field], *label))
    if no_image:
        problems.append(f"{path}: {len(no_image)} sample(s) have no image ({', '.join(repr(k) for k in no_image[:3])}"
                        f"{' ...' if len(no_image) > 3 else ''}; image fields: {', '.join(IMAGE_FIELDS)})")
    table = np.array(members, dtype=np.int64).reshape(-1, 4)
    return ShardIndex(tuple(keys), table[:, 0], table[:, 1], table[:, 2], table[:, 3])


def _image_field(found: dict[str, Any]) -> str | None:
    """The field holding a sample's image: the preferred image type present, else any field whose last
    extension is an image type (``seg.png``)."""
    for name in IMAGE_FIELDS:
        if name in found:
            return name
    return next((f for f in found if "." + f.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)


class TableImages(Container):
    """Images in a table (Parquet, or the Arrow files of ``save_to_disk``), read a row group at a time. Known by
    its row count and row-group starts; each row's id is read with its row group's ids when first asked for, and
    only the few groups in use are held (``_group_index``), as a shard's index is: memory does not grow with the
    number of rows of a crawl. A row's class label (``--labeled``) is read with its id, from the ``label`` (or
    ``cls``) column."""

    kind = "table"

    def __init__(self, path: Path, column: str, struct: bool, count: int, group_starts: np.ndarray,
                 stamp: tuple[int, int], labels: TableLabels | None = None) -> None:
        super().__init__(path)
        self.column, self.struct, self.count, self.group_starts = column, struct, count, group_starts
        self.stamp = stamp  # (size, mtime_ns) when listed: a changed table is refused
        self.label_column = labels.column if labels is not None else None
        self.label_names = labels.names if labels is not None else None
        self._group: tuple[int, Any] | None = None  # the row group last read (not pickled to workers)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_group": None}

    def __len__(self) -> int:
        return self.count

    def _group_of(self, i: int) -> int:
        return int(np.searchsorted(self.group_starts, i, side="right")) - 1

    def _row(self, i: int) -> tuple[tuple[Any, ...], int]:
        """Row ``i``'s group index (ids, labels) and its position in it."""
        group = self._group_of(i)
        with _INDEX_LOCK:
            index = _group_index(self.id_table, str(self.path), *self.stamp, self.column if self.struct else None,
                                 self.label_column, group, int(self.group_starts[group]))
        return index, i - int(self.group_starts[group])

    def sample_id(self, i: int) -> str:
        (ids, _), row = self._row(i)
        return str(ids[row])

    def label(self, i: int) -> int | str | None:
        if self.label_column is None:
            return None
        (_, labels), row = self._row(i)
        value = labels[row]
        return value if value is None or isinstance(value, int) else str(value)

    @staticmethod
    def id_table(path: Path, column: str | None, label_column: str | None, group: int) -> Any:
        """A row group's id columns (``column``: the image struct, for its path field) and label column, never
        the image bytes."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """The table as listed (path, size, time, count): what ranks compare, without reading its ids again."""
        import hashlib  # noqa: PLC0415

        return hashlib.sha256(f"table:{self.path}:{self.stamp}:{self.count}".encode()).hexdigest()[:12]

    def _read_group(self, group: int) -> Any:
        raise NotImplementedError

    def read(self, i: int) -> bytes:
        group = self._group_of(i)
        try:
            if self._group is None or self._group[0] != group:
                self._group = (group, self._read_group(group))
            value = self._group[1][i - int(self.group_starts[group])].as_py()
        except OSError:
            raise
        except Exception as exc:  # pyarrow's own errors: a damaged file reads as an unreadable image
            raise OSError(f"{self.path}: {exc}") from exc
        data = value.get("bytes") if self.struct and value is not None else value
        if data is None and self.struct and value is not None and value.get("path"):
            return _linked_image(self.path, value["path"])
        if data is None:
            raise OSError(f"{self.path}: row {self.sample_id(i)} has no image bytes")
        return bytes(data)


@functools.lru_cache(maxsize=8)
def _group_index(id_table: Callable[[Path, str | None, str | None, int], Any], path: str, size: int, mtime_ns: int,
                 column: str | None, label_column: str | None, group: int,
                 first_row: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """One row group's ids and labels, as listed (``size`` and ``mtime_ns`` key the cache: a rewritten table is
    refused)."""
    _check_stamp(path, (size, mtime_ns))
    table = id_table(Path(path), column, label_column, group)
    labels = tuple(table.column(label_column).to_pylist()) if label_column is not None else ()
    return tuple(_row_ids(Path(path), table, column, first_row)), labels


def _linked_image(table: Path, path: str) -> bytes:
    """A ``datasets`` Image row that holds a file path instead of bytes (``to_parquet`` of a dataset built from
    files): the file, relative to the table's folder, else as given (as ``datasets`` resolves it)."""
    for candidate in (table.parent / path, Path(path)):
        if candidate.is_file():
            return candidate.read_bytes()
    raise OSError(f"{table}: the image {path} it points to is not found (next to it, or from here)")


class ParquetImages(TableImages):
    def _read_group(self, group: int) -> Any:
        import pyarrow.parquet as pq  # noqa: PLC0415 (imported when a table is read)

        return pq.ParquetFile(self.path).read_row_group(group, columns=[self.column]).column(0)

    @staticmethod
    def id_table(path: Path, column: str | None, label_column: str | None, group: int) -> Any:
        import pyarrow.parquet as pq  # noqa: PLC0415

        handle = pq.ParquetFile(path)
        keys = [c for c in ("__key__", "key") if c in handle.schema_arrow.names]
        return handle.read_row_group(group, columns=([f"{column}.path"] if column is not None else []) + keys
                                     + ([label_column] if label_column is not None else []))


class ArrowImages(TableImages):
    """One Arrow stream file of a ``save_to_disk`` folder (memory-mapped: a row costs its own bytes)."""

    def _read_group(self, group: int) -> Any:
        return _arrow_table(self.path).column(self.column)

    @staticmethod
    def id_table(path: Path, column: str | None, label_column: str | None, group: int) -> Any:
        return _arrow_table(path)  # memory-mapped: the image bytes stay on disk


def _arrow_table(path: Path) -> Any:
    import pyarrow as pa  # noqa: PLC0415

    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).read_all()


def image_column(schema: Any) -> tuple[str, bool] | None:
    """(the image column's name, whether it is a ``{bytes, path}`` struct), or None: the first column laid out
    as the ``datasets`` Image feature, else the first binary column."""
    import pyarrow as pa  # noqa: PLC0415

    for field in schema:
        if pa.types.is_struct(field.type) and {"bytes", "path"} <= {f.name for f in field.type}:
            return field.name, True
    for field in schema:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            return field.name, False
    return None


def _row_ids(path: Path, table: Any, column: str | None, first_row: int) -> list[str]:
    """Each row's id: the image's ``path`` field (``column``: the image struct, None for a binary column), else a
    ``__key__`` / ``key`` column, else ``FILE#ROW``."""
    import pyarrow.compute as pc  # noqa: PLC0415

    rows = table.num_rows
    # the path field alone (never the image bytes into Python): a null struct gives a null path
    paths = pc.struct_field(table.column(column), "path").to_pylist() if column is not None else [None] * rows
    key_column = next((c for c in ("__key__", "key") if c in table.column_names), None)
    keys = table.column(key_column).to_pylist() if key_column else [None] * rows
    return [str(p) if p else str(k) if k is not None else f"{path.name}#{first_row + r}"
            for r, (p, k) in enumerate(zip(paths, keys, strict=True))]


@dataclass(frozen=True)
class TableLabels:
    """A table's label column, and the class names its integers index where the table states them (the
    ``datasets`` ClassLabel feature, in the schema's ``huggingface`` metadata)."""

    column: str
    names: tuple[str, ...] | None


def label_column(schema: Any) -> TableLabels | None:
    """The table's label column (``label``, else ``cls``: integers or text), or None."""
    import pyarrow as pa  # noqa: PLC0415

    for name in LABEL_COLUMNS:
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            continue
        try:
            features = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))["info"]["features"]
            names = features[name]["names"] if features[name].get("_type") == "ClassLabel" else None
        except (KeyError, TypeError, ValueError):
            names = None
        return TableLabels(name, tuple(str(n) for n in names) if names else None)
    return None


def _image_column_of(path: Path, schema: Any, problems: list[str]) -> tuple[str, bool] | None:
    """:func:`image_column`, or None with the table's columns said in ``problems``."""
    found = image_column(schema)
    if found is None:
        problems.append(f"{path} has no image column (a {{bytes, path}} struct as datasets writes, or a binary "
                        f"column; its columns: {', '.join(schema.names)}): skipped")
    return found


def index_parquet(path: Path, problems: list[str]) -> ParquetImages | None:
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:
        problems.append(f"{path} cannot be read as Parquet ({type(exc).__name__}: {exc}): skipped")
        return None
    found = _image_column_of(path, handle.schema_arrow, problems)
    if found is None:
        return None
    column, struct = found
    starts = [0]
    for group in range(handle.num_row_groups):  # the footer's row counts: no row is read to list a table
        starts.append(starts[-1] + handle.metadata.row_group(group).num_rows)
    return ParquetImages(path, column, struct, starts[-1], np.array(starts[:-1] or [0], dtype=np.int64),
                         file_stamp(path), label_column(handle.schema_arrow))


def index_arrow(path: Path, problems: list[str]) -> ArrowImages | None:
    try:
        table = _arrow_table(path)
    except Exception as exc:
        problems.append(f"{path} cannot be read as Arrow ({type(exc).__name__}: {exc}): skipped")
        return None
    found = _image_column_of(path, table.schema, problems)
    if found is None:
        return None
    column, struct = found
    return ArrowImages(path, column, struct, table.num_rows, np.zeros(1, dtype=np.int64), file_stamp(path),
                       label_column(table.schema))


def saved_dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``datasets.save_to_disk`` folder, in order (a DatasetDict: split after split, in the
    order its ``dataset_dict.json`` lists them)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        return [f for split in splits for f in saved_dataset_files(folder / split)]
    state = json.loads((folder / "state.json").read_text())
    return [folder / entry["filename"] for entry in state["_data_files"]]


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def is_brace_pattern(text: str | Path) -> bool:
    """Whether an input is a brace pattern naming shards (``{000000..000999}``, ``{a,b}``): expanded, not a path."""
    text = str(text)
    return "{" in text and "}" in text.split("{", 1)[1]


def _hub_text(text: str | Path) -> str:
    """An input as typed: a ``Path`` has folded ``hf://`` into ``hf:/``."""
    text = str(text)
    return HF_DATASETS + text.removeprefix("hf:/datasets/") if text.startswith("hf:/datasets/") else text


def is_container(text: str | Path) -> bool:
    """Whether an input names containers rather than image files or folders: a shard, a table, a brace pattern,
    a shard list, an ``hf://datasets/`` name or a ``save_to_disk`` folder."""
    text = _hub_text(text)
    lower = text.lower()
    return (lower.endswith(TAR_SUFFIXES + COMPRESSED_TAR_SUFFIXES + TABLE_SUFFIXES + SHARD_LIST_SUFFIXES)
            or text.startswith(HF_DATASETS)
            or is_brace_pattern(text) or is_saved_dataset(Path(text)))


def container_files(text: str) -> list[Path]:
    """The container files an input names: brace patterns expanded, a shard list read (one shard per line,
    relative to the list's folder; blank lines and ``#`` comments skipped), a ``save_to_disk`` folder's Arrow
    files, an ``hf://datasets/ORG/NAME[@REVISION]`` snapshot's Parquet files from the local Hub cache."""
    if text.startswith(HF_DATASETS):
        return hub_dataset_files(text)
    if is_brace_pattern(text):
        from braceexpand import braceexpand  # noqa: PLC0415 (WebDataset's own dependency)

        return [Path(p) for p in braceexpand(text)]
    path = Path(text)
    if not path.exists():
        raise NotFoundError(f"not found: {path}")
    if is_saved_dataset(path):
        return saved_dataset_files(path)
    if path.suffix.lower() in SHARD_LIST_SUFFIXES:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        named = [line for line in lines if line and not line.startswith("#")]
        if not named:
            raise UsageError(f"shard list {path} names no shard")
        return [p if p.is_absolute() else path.parent / p for p in map(Path, named)]
    return [path]


def hub_dataset_files(text: str) -> list[Path]:
    """The Parquet files of a dataset in the local Hugging Face cache (never the network)."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: PLC0415

    name, _, revision = text.removeprefix(HF_DATASETS).partition("@")
    if name.count("/") != 1:
        raise UsageError(f"{text}: expected hf://datasets/ORG/NAME[@REVISION]")
    try:
        folder = Path(snapshot_download(name, repo_type="dataset", revision=revision or None,
                                        local_files_only=True))
    except LocalEntryNotFoundError:
        raise NotFoundError(f"dataset {name} is not in the local Hugging Face cache",
                            hint="download it where the network is reachable (huggingface_hub.snapshot_download("
                                 f"'{name}', repo_type='dataset')), or point HF_HUB_CACHE at the cache that holds "
                                 "it") from None
    files = sorted(p for p in folder.rglob("*.parquet") if p.is_file())
    if not files:
        raise UsageError(f"dataset {name} in the local cache holds no Parquet files ({folder})")
    return files


def index_container(path: Path, problems: list[str]) -> Container | None:
    """A container file's samples (None: nothing readable in it, said in ``problems``)."""
    if not path.exists():
        problems.append(f"{path} not found: skipped")
        return None
    suffix = path.suffix.lower()
    if path.name.lower().endswith(COMPRESSED_TAR_SUFFIXES):
        problems.append(f"{path} is a compressed tar: its images cannot be read in place (decompress it to .tar): "
                        "skipped")
        return None
    if suffix in TAR_SUFFIXES:
        try:
            return index_tar(path, problems)
        except OSError as exc:
            problems.append(f"{path} cannot be read ({exc.strerror or exc}): skipped")
            return None
    if suffix == ".parquet":
        return index_parquet(path, problems)
    if suffix == ".arrow":
        return index_arrow(path, problems)
    problems.append(f"{path} is not a shard (.tar) or a table (.parquet, .arrow): skipped")
    return None


def report_problems(problems: list[str], strict: bool) -> None:
    """What is wrong in the containers, in one warning (``strict``: one error)."""
    if not problems:
        return
    message = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    if strict:
        raise UsageError(message, hint="fix the containers, or drop --strict to read what they hold")
    warnings.warn(message, NegPromptWarning, stacklevel=3)


class SampleList(Sequence[Any]):
    """Images from files and containers, in the order given: item ``i`` is a ``Path`` or a :class:`Member`.

    Segments are held whole and sliced by range, so a rank's share or a stream's window costs no copy."""

    def __init__(self, segments: list[tuple[ImageList | Container, int, int]]) -> None:
        self._segments = [(s, a, b) for s, a, b in segments if b > a]
        self._starts = np.cumsum([0] + [b - a for _, a, b in self._segments])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @overload
    def __getitem__(self, i: int) -> Any: ...

    @overload
    def __getitem__(self, i: slice) -> SampleList: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a SampleList slices in steps of 1")
            parts = []
            for (segment, a, b), first in zip(self._segments, self._starts[:-1].tolist(), strict=True):
                lo, hi = max(start, first), min(stop, first + b - a)
                if hi > lo:
                    parts.append((segment, a + lo - first, a + hi - first))
            return SampleList(parts)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        segment, a, _ = self._segments[k]
        position = a + i - int(self._starts[k])
        return segment[position] if isinstance(segment, ImageList) else Member(segment, position)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def is_file(self, i: int) -> bool:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return isinstance(self._segments[k][0], ImageList)

    def root(self, i: int) -> Path:
        """The input folder image ``i`` was found under; container samples have none."""
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        segment, a, _ = self._segments[k]
        if not isinstance(segment, ImageList):
            raise UsageError(f"{segment.path} is a container: its samples have no class folder")
        return segment.root(a + i - int(self._starts[k]))

    def fingerprint(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        for segment, a, b in self._segments:
            digest.update(f"{segment.fingerprint()}:{a}:{b};".encode())
        return digest.hexdigest()[:12]

    @property
    def containers(self) -> int:
        return sum(not isinstance(s, ImageList) for s, _, _ in self._segments)

    def sources(self) -> list[Container]:
        """The containers its samples come from, each once, in order."""
        found: dict[int, Container] = {}
        for segment, _, _ in self._segments:
            if isinstance(segment, Container):
                found.setdefault(id(segment), segment)
        return list(found.values())


Samples = ImageList | SampleList  # what a command's image inputs list as
# indexes container files: (each file's container or None, and what is wrong with each), in the files' order
Indexer = Callable[[list[Path]], list[tuple[Container | None, list[str]]]]


def index_each(paths: list[Path]) -> list[tuple[Container | None, list[str]]]:
    """Every container file indexed here, one after another (one process)."""
    found = []
    for path in paths:
        problems: list[str] = []
        found.append((index_container(path, problems), problems))
    return found


def index_shared(rank: int, world_size: int,
                 gather: Callable[[Any], list[Any]]) -> Indexer:
    """An :data:`Indexer` for ``world_size`` processes that list the same inputs: each indexes every
    ``world_size``-th file (reading a shard's headers costs about half a second per 10,000 samples, so one
    process listing a 10,000-shard crawl would take over an hour) and ``gather`` (every process's value, on every
    process) brings the others'. The files must be the same on a file system every process shares: each process
    compares every listed file's size and time with its own view of it, and all stop with one error if any
    differs."""

    def index(paths: list[Path]) -> list[tuple[Container | None, list[str]]]:
        mine = {i: found for i, found in zip(range(rank, len(paths), world_size),
                                             index_each(paths[rank::world_size]), strict=True)}
        merged: dict[int, tuple[Container | None, list[str]]] = {}
        for part in gather(mine):
            merged.update(part)
        found = [merged[i] for i in range(len(paths))]
        differ = [str(c.path) for c, _ in found if c is not None and _stamp(c.path) != c.stamp]
        seen = gather(differ[:1])
        where = next(((r, d[0]) for r, d in enumerate(seen) if d), None)
        if where is not None:
            raise UsageError(f"process {where[0]} sees {where[1]} otherwise than the process that listed it (size "
                             "or time): every process must read the same containers",
                             hint="put the shards on a file system every node shares, and do not change them "
                                  "while a job runs")
        return found

    return index


def _stamp(path: Path) -> tuple[int, int] | None:
    """This process's view of a listed file (None: it cannot see it)."""
    try:
        return file_stamp(path)
    except OSError:
        return None


def list_samples(inputs: Sequence[Path | str], *, strict: bool = False, index: Indexer = index_each) -> Samples:
    """The images of the inputs, in the order given: image files and folders as ``list_images`` lists them (only
    files given: that ``ImageList`` itself), containers as their samples, indexed by ``index`` (all of a run's
    container files in one call: :func:`index_shared` splits them over the processes of a job). No image at all
    is an error."""
    if not any(is_container(p) for p in inputs):
        return list_images([Path(p) for p in inputs], strict=strict)
    parts: list[list[Path] | Path] = []  # in order: a run of image files and folders, or one container file
    for contained, run in itertools.groupby(inputs, key=is_container):
        if contained:
            parts += [f for given in run for f in container_files(_hub_text(given))]
        else:
            parts.append([Path(given) for given in run])
    files = [p for p in parts if isinstance(p, Path)]
    indexed = iter(index(files))
    segments: list[tuple[ImageList | Container, int, int]] = []
    problems: list[str] = []
    for part in parts:
        if isinstance(part, list):
            listed = list_images(part, strict=strict)
            segments.append((listed, 0, len(listed)))
            continue
        found, said = next(indexed)
        problems.extend(said)
        if found is not None:
            segments.append((found, 0, len(found)))
    report_problems(problems, strict)
    samples = SampleList(segments)
    if not len(samples):
        raise UsageError(f"no images found in {', '.join(str(p) for p in inputs)}")
    return samples
