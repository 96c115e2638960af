"""``score --format parquet``: the score file as Parquet, written streaming in row groups and atomically.

The rows reach this writer as the JSONL text ``score`` renders (``score_file.render_rows``), a line per row,
which is ASCII (``json.dumps`` escapes everything else), so a torchrun job's parts, joined block by block, give
this writer exactly the lines one process gives it. Rows are buffered and written ``ROW_GROUP`` at a time, so
the row groups, and with them the file's bytes, do not depend on how the rows arrived: the joined output of N
processes is the bytes of one. The file is a temporary file renamed into place once complete, as CSV and JSONL
are (``atomic``).

Arrow strings are UTF-8: a file name that is not UTF-8 is written with ``\\xNN`` escapes for its undecodable
bytes (JSONL keeps it exact). ``score_file.read_score_file`` reads the file back (``report`` takes it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import NegPromptError
from .atomic import publish, temp_file
from .score_output import RowOutput

ROW_GROUP = 65_536  # rows per row group: a fixed number, so the file does not depend on how the rows came
TEXT = ("path", "prediction", "label", "label_folder", "scorer", "prompts_id", "threshold_source")
FLOAT = ("score", "max_pos_cos", "max_neg_cos", "threshold")
INT = ("prediction_index", "label_index", "threshold_n", "threshold_rank")
BOOL = ("ood",)
EXPLAINED = ("top_classes", "nearest_negatives")  # lists of {"name", "cos"}


def schema(columns: list[str]) -> Any:
    """The Arrow schema of a score file with these columns (``score_file.score_columns``)."""
    import pyarrow as pa  # noqa: PLC0415 (imported when Parquet is written)

    def kind(column: str) -> Any:
        if column in FLOAT:
            return pa.float64()
        if column in INT:
            return pa.int64()
        if column in BOOL:
            return pa.bool_()
        if column in EXPLAINED:
            return pa.list_(pa.struct([("name", pa.string()), ("cos", pa.float64())]))
        return pa.string()

    return pa.schema([(c, kind(c)) for c in columns])


def utf8(value: Any) -> Any:
    """A file name as Arrow can hold it: undecodable bytes (surrogate escapes) as ``\\xNN``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


class ParquetOutput(RowOutput):
    """Rows (JSONL lines) into a Parquet file next to ``path``, renamed over it by ``finish``."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        self.path, self.columns, self.schema = Path(path), columns, schema(columns)
        fd, self.tmp = temp_file(self.path)
        os.close(fd)
        self.writer = pq.ParquetWriter(str(self.tmp), self.schema, compression="zstd")
        self.pending = ""  # a line not yet complete (a joined part arrives in blocks)
        self.rows: list[dict[str, Any]] = []

    def write(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if line:
                self.rows.append(json.loads(line))
                if len(self.rows) == ROW_GROUP:
                    self._flush()

    def _flush(self) -> None:
        import pyarrow as pa  # noqa: PLC0415

        if not self.rows:
            return
        data = {c: [utf8(r.get(c)) if c in TEXT else r.get(c) for r in self.rows] for c in self.columns}
        self.writer.write_table(pa.Table.from_pydict(data, schema=self.schema), row_group_size=ROW_GROUP)
        self.rows = []

    def finish(self) -> None:
        if self.pending:
            raise NegPromptError("a score row was cut short before the Parquet file was closed")
        self._flush()
        self.writer.close()
        publish(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.writer.close()
        except Exception:  # a full disk fails the footer too: remove the file anyway
            pass
        self.tmp.unlink(missing_ok=True)


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    """A Parquet score file's rows as dicts (the columns ``score`` writes, typed)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    return pq.read_table(path).to_pylist()
