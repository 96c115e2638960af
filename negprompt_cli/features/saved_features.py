"""Image embeddings saved beside the scores (``score --save-features DIR``) and read back instead of images
(``score --features DIR``), so that a crawl is encoded once.

The folder is clip-retrieval's layout, which its tools (and autofaiss) read: ``img_emb/img_emb_*.npy`` (float32
rows, L2-normalised) and ``metadata/metadata_*.parquet`` (an ``image_path`` column: each row's id, as the score
file's path column), part by part in name order, plus ``negprompt.json``: the backbone (name, weights,
fingerprint), the preprocessing, the normalisation and the count, checked when the folder is read. A part holds
at most ``PART_ROWS`` rows and is named by the position of its first image in the input list, so the parts of a
torchrun job's ranks sort into input order. The folder is written under a temporary name and renamed into place
once complete (a killed run leaves no folder that looks whole).

Read back, a part is memory-mapped and handed on window by window; embeddings written by clip-retrieval itself
(float16, no ``negprompt.json``) are read too, normalised in float32, with one warning that their model cannot be
checked. Features saved by negprompt are used as saved (already unit-norm: normalising again would move their
last bits), so scores from them equal the scores from the images, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from ..errors import IncompatibleArtifactError, NegPromptWarning, NotFoundError, UsageError
from .backbone import Backbone
from .image_features import EncodeStats, Window

FORMAT = "negprompt-features/1"
PART_ROWS = 65_536  # rows per part: a part is buffered whole (E = 512: 128 MiB) before it is written
PROVENANCE = "negprompt.json"


def temporary_folder(folder: Path, run_id: str) -> Path:
    return folder.parent / f".{folder.name}.partial-{run_id}"


def check_features_target(folder: Path) -> None:
    """Before any work: --save-features names a new folder whose parent exists."""
    if folder.exists():
        raise UsageError(f"--save-features {folder} exists", hint="name a new folder (features are never mixed "
                                                                   "into an existing one)")
    if not folder.parent.is_dir():
        raise NotFoundError(f"--save-features: the folder {folder.parent} does not exist")


class FeatureSaver:
    """One process's rows of embeddings and ids, written part by part into the temporary folder."""

    def __init__(self, folder: Path, run_id: str, *, resumable: bool = False) -> None:
        # resumable (score --resume): parts are written only when the rows are committed (:meth:`flush`, called
        # by the checkpoint), so the parts on disk are always the committed rows' and a rerun goes on from them
        self.folder, self.tmp, self.resumable = folder, temporary_folder(folder, run_id), resumable
        for sub in ("img_emb", "metadata"):
            (self.tmp / sub).mkdir(parents=True, exist_ok=True)  # every rank: the first creates them
        self.first: int | None = None
        self.ids: list[str] = []
        self.rows: list[torch.Tensor] = []
        self.count = 0

    def add(self, positions: list[int], ids: list[str], features: torch.Tensor) -> None:
        """Rows in input order: ``positions`` in the whole input list, their ids and unit features."""
        for k in range(0, len(ids)):
            if self.first is None:
                self.first = positions[k]
            self.ids.append(ids[k])
            self.rows.append(features[k])
            if len(self.ids) == PART_ROWS and not self.resumable:
                self._flush()

    @property
    def pending(self) -> int:
        """Rows not yet written to a part."""
        return len(self.ids)

    def drop_from(self, start: int, stop: int) -> None:
        """Remove the parts whose first row is at a position in [start, stop): a resumed process's rows after its
        last commit (written, never committed), which it is about to write again."""
        for sub, stem in (("img_emb", "img_emb_"), ("metadata", "metadata_")):
            for part in (self.tmp / sub).glob(f"{stem}*"):
                first = part.name.removeprefix(stem).split(".")[0]
                if first.isdigit() and start <= int(first) < stop:
                    part.unlink(missing_ok=True)

    def flush(self) -> None:
        self._flush()

    def _flush(self) -> None:
        import pyarrow as pa  # noqa: PLC0415 (imported when features are saved)
        import pyarrow.parquet as pq  # noqa: PLC0415

        if not self.ids:
            return
        name = f"{self.first:012d}"
        np.save(self.tmp / "img_emb" / f"img_emb_{name}.npy", torch.stack(self.rows).float().numpy())
        pq.write_table(pa.table({"image_path": self.ids}), self.tmp / "metadata" / f"metadata_{name}.parquet")
        self.count += len(self.ids)
        self.first, self.ids, self.rows = None, [], []

    def finish(self) -> int:
        self._flush()
        return self.count


def publish(folder: Path, run_id: str, backbone: Backbone, preprocess: str, count: int) -> None:
    """Write the provenance and rename the temporary folder into place (rank 0, once every rank finished)."""
    tmp = temporary_folder(folder, run_id)
    info = {"format": FORMAT, "backbone": backbone.identity(), "weights": backbone.weights_fingerprint(),
            "preprocess": preprocess, "normalised": "l2", "dtype": "float32", "count": count,
            "embed_dim": _embed_dim(tmp)}
    (tmp / PROVENANCE).write_text(json.dumps(info, indent=1))
    tmp.rename(folder)


def discard(folder: Path, run_id: str) -> None:
    shutil.rmtree(temporary_folder(folder, run_id), ignore_errors=True)


def _embed_dim(tmp: Path) -> int | None:
    parts = sorted((tmp / "img_emb").glob("img_emb_*.npy"))
    return int(np.load(parts[0], mmap_mode="r").shape[1]) if parts else None


class SavedFeatures(Sequence[str]):
    """A folder of saved embeddings as a score input: item ``i`` is row ``i``'s id; :meth:`stream` hands the
    features on in windows."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise NotFoundError(f"--features: not found: {folder}")
        self.folder = folder
        embeddings = sorted((folder / "img_emb").glob("*.npy"))
        metadata = sorted((folder / "metadata").glob("*.parquet"))
        if not embeddings:
            raise UsageError(f"--features {folder} holds no embeddings (img_emb/*.npy, clip-retrieval's layout)")
        if len(metadata) != len(embeddings):
            raise UsageError(f"--features {folder}: {len(embeddings)} embedding part(s) but {len(metadata)} metadata "
                             "part(s) (metadata/*.parquet): the folder is incomplete")
        self.provenance: dict[str, Any] | None = None
        if (folder / PROVENANCE).is_file():
            self.provenance = json.loads((folder / PROVENANCE).read_text())
        self.parts = [np.load(p, mmap_mode="r") for p in embeddings]
        self.ids = []
        import pyarrow.parquet as pq  # noqa: PLC0415

        for part, (emb, meta) in enumerate(zip(self.parts, metadata, strict=True)):
            table = pq.read_table(meta)
            column = next((c for c in ("image_path", "__key__", "key", "path") if c in table.column_names), None)
            ids = ([str(v) for v in table.column(column).to_pylist()] if column is not None
                   else [f"{embeddings[part].name}#{r}" for r in range(table.num_rows)])
            if len(ids) != emb.shape[0]:
                raise UsageError(f"--features {folder}: {embeddings[part].name} has {emb.shape[0]} rows but "
                                 f"{meta.name} {len(ids)}")
            self.ids += ids
        self.starts = np.cumsum([0] + [p.shape[0] for p in self.parts])

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        return self.ids[i]

    def fingerprint(self) -> str:
        import hashlib  # noqa: PLC0415

        return hashlib.sha256("\0".join(self.ids).encode("utf-8", "surrogateescape")).hexdigest()[:12]

    @property
    def embed_dim(self) -> int:
        return int(self.parts[0].shape[1])

    def check(self, backbone: Backbone) -> None:
        """The embeddings must come from this backbone (its weights), at its width: one error if not; embeddings
        without negprompt's provenance (clip-retrieval's own) are one warning that their model is unchecked."""
        wanted = getattr(backbone, "embed_dim", None)
        if wanted is not None and wanted != self.embed_dim:
            raise IncompatibleArtifactError(f"--features {self.folder} holds {self.embed_dim}-dimensional "
                                            f"embeddings; backbone {backbone.name} gives {wanted}")
        if self.provenance is None:
            warnings.warn(f"--features {self.folder} does not say which model made it (no {PROVENANCE}: e.g. "
                          f"clip-retrieval's output): it is taken to be {backbone.name}'s, unchecked",
                          NegPromptWarning, stacklevel=3)
            return
        saved = self.provenance.get("backbone", {})
        if saved != backbone.identity() or self.provenance.get("weights") != backbone.weights_fingerprint():
            raise IncompatibleArtifactError(f"--features {self.folder} was made with {saved.get('backbone')} "
                                            f"({saved.get('pretrained')}), not with {backbone.name} "
                                            f"({backbone.pretrained}) and these weights",
                                            hint="score with the backbone that made them, or encode the images")

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Unit float32 features of rows [start, stop)."""
        pieces = []
        for k, part in enumerate(self.parts):
            lo, hi = max(start, int(self.starts[k])), min(stop, int(self.starts[k + 1]))
            if hi > lo:
                pieces.append(np.asarray(part[lo - int(self.starts[k]):hi - int(self.starts[k])], dtype=np.float32))
        features = torch.from_numpy(np.concatenate(pieces)) if pieces else torch.empty(0, self.embed_dim)
        if self.provenance is None or self.provenance.get("normalised") != "l2":
            features = torch.nn.functional.normalize(features, dim=-1)
        return features


class FeatureStream:
    """Rows ``[start, stop)`` of saved features as an image stream gives them: windows of (positions relative to
    ``start``, features); ``stats`` counts them as read from a cache."""

    def __init__(self, features: SavedFeatures, start: int, stop: int, window: int) -> None:
        self.features, self.start, self.stop, self.window = features, start, stop, window
        self.stats = EncodeStats(requested=stop - start)

    def __iter__(self) -> Iterator[Window]:
        for lo in range(self.start, self.stop, self.window):
            hi = min(lo + self.window, self.stop)
            self.stats.cached += hi - lo
            yield Window(list(range(lo - self.start, hi - self.start)), self.features.rows(lo, hi), hi - self.start)
