"""The score file: what ``negprompt score`` writes (CSV or JSONL rows) and ``report`` reads back."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, UsageError

FORMATS = ("csv", "jsonl", "parquet")
# label: the true class's name (the vocabulary of prediction), label_folder: the folder it was read from (--labeled)
# threshold_n, threshold_rank: how the threshold was calibrated (the rank-th lowest of n ID scores), so that report
# can tell whether new ID images keep what it promised (scoring/calibration.py); empty when unknown
COLUMNS = ["path", "score", "prediction", "prediction_index", "ood", "max_pos_cos", "max_neg_cos", "label",
           "label_index", "label_folder", "scorer", "prompts_id", "threshold", "threshold_source", "threshold_n",
           "threshold_rank"]


EXPLAIN_COLUMNS = ["top_classes", "nearest_negatives"]  # score --explain: [{"name", "cos"}, ...] per image
TEXT_COLUMNS = ("path", "prediction", "label", "label_folder", "scorer", "prompts_id")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def excel_safe(row: dict[str, Any]) -> dict[str, Any]:
    """``--excel-safe``: a text cell that a spreadsheet would run as a formula (a file or class named
    ``=HYPERLINK(...)``) gets a leading ``'``, which spreadsheets show as text. Opt-in: the cell is then no
    longer the exact path or name (JSONL is the format that keeps untrusted names exact and inert)."""
    return {k: ("'" + v if k in TEXT_COLUMNS and isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v)
            for k, v in row.items()}


def render_rows(rows: list[dict[str, Any]], fmt: str, *, spreadsheet_safe: bool = False,
                columns: list[str] | None = None, header: bool = True) -> str:
    """Rows as JSONL or CSV text (``header``: the CSV header line first; ``columns``: CSV's columns, by default
    those of the rows). CSV quotes a field as the csv module does (delimiter, quote, newline), and a
    row with a carriage return in a field (a legal Linux file name) has all its fields quoted, which the csv
    module's minimal quoting does not do. File names that are not valid UTF-8 stay as surrogate escapes here;
    writers encode with ``surrogateescape`` so the bytes are the file's own. A file written in pieces (one
    header, then rows) has the bytes of one written whole."""
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    buffer = io.StringIO()
    columns = columns or score_columns(explain=bool(rows) and EXPLAIN_COLUMNS[0] in rows[0])
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    quoted = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", quoting=csv.QUOTE_ALL)
    if header:
        writer.writeheader()
    for r in rows:
        row = {k: ("" if v is None else _explain_cell(v) if k in EXPLAIN_COLUMNS else v)
               for k, v in (excel_safe(r) if spreadsheet_safe else r).items()}
        (quoted if any(isinstance(v, str) and "\r" in v for v in row.values()) else writer).writerow(row)
    return buffer.getvalue()


def text_format(fmt: str) -> str:
    """The text rows travel as for an output format: Parquet's rows are rendered as JSONL on the way (exact, and
    ASCII: torchrun parts join block by block) and become a table in ``score_parquet``."""
    return "jsonl" if fmt == "parquet" else fmt


def score_columns(*, explain: bool) -> list[str]:
    """The CSV columns of a score file (``explain``: score --explain's two more)."""
    return COLUMNS + (EXPLAIN_COLUMNS if explain else [])


def read_score_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``negprompt score`` output (CSV or JSONL, by content), with typed values.

    Also as a spreadsheet saves it again ("CSV UTF-8"): a byte-order mark, CRLF line ends, TRUE / FALSE and
    blank trailing rows are read as what they mean."""
    if not path.is_file():
        raise NotFoundError(f"score file not found: {path}")
    with open(path, "rb") as probe:
        parquet = probe.read(4) == b"PAR1"
    if parquet:
        from .score_parquet import read_parquet_rows  # noqa: PLC0415 (pyarrow: only for Parquet score files)

        try:
            rows = read_parquet_rows(path)
        except Exception as exc:
            raise UsageError(f"{path} is not a readable Parquet score file: {exc}") from None
        return _checked(path, rows)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:  # \r inside a quoted
        text = handle.read()  # field is part of a file name, not a line end
    text = text.removeprefix("\ufeff")  # a spreadsheet's "CSV UTF-8" starts with a byte-order mark
    if not text.strip():
        raise UsageError(f"score file {path} is empty")
    try:
        if text.lstrip().startswith("{"):
            rows = [json.loads(line) for line in text.split("\n") if line.strip()]
        else:
            rows = [{k: _parse(k, v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))
                    if any(v not in (None, "") for v in r.values())]  # blank rows a spreadsheet leaves
    except (json.JSONDecodeError, ValueError) as exc:
        raise UsageError(f"{path} is not a negprompt score file: {exc}") from exc
    return _checked(path, rows)


def _checked(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows or not {"path", "score"} <= set(rows[0]):
        raise UsageError(f"{path} is not a negprompt score file (needs path and score columns)")
    bad = [r["path"] for r in rows if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"])]
    if bad:
        raise UsageError(f"{path}: non-numeric or non-finite score for {bad[0]}")
    return rows


def _explain_cell(entries: list[dict[str, Any]]) -> str:
    """CSV's compact form of an --explain list: a JSON array of [name, cosine] pairs."""
    return json.dumps([[e["name"], e["cos"]] for e in entries], ensure_ascii=False, separators=(",", ":"))


def _parse(column: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if column in EXPLAIN_COLUMNS:
        return [{"name": name, "cos": cos} for name, cos in json.loads(value)]
    if column in ("score", "max_pos_cos", "max_neg_cos", "threshold"):
        return float(value)
    if column in ("prediction_index", "label_index", "threshold_n", "threshold_rank"):
        return int(value)
    if column == "ood":
        return value.strip().lower() == "true"  # a spreadsheet writes TRUE
    return value

