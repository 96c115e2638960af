"""The score file: what ``negprompt score`` writes (CSV or JSONL rows) and ``report`` reads back."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from .errors import NotFoundError, UsageError

FORMATS = ("csv", "jsonl")
COLUMNS = ["path", "score", "prediction", "prediction_index", "ood", "max_pos_cos", "max_neg_cos", "label",
           "label_index", "scorer", "prompts_id"]


def render_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buffer.getvalue()


def read_score_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``negprompt score`` output (CSV or JSONL, by content), with typed values."""
    if not path.is_file():
        raise NotFoundError(f"score file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise UsageError(f"score file {path} is empty")
    try:
        if text.lstrip().startswith("{"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = [{k: _parse(k, v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]
    except (json.JSONDecodeError, ValueError) as exc:
        raise UsageError(f"{path} is not a negprompt score file: {exc}") from exc
    if not rows or not {"path", "score"} <= set(rows[0]):
        raise UsageError(f"{path} is not a negprompt score file (needs path and score columns)")
    bad = [r["path"] for r in rows if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"])]
    if bad:
        raise UsageError(f"{path}: non-numeric or non-finite score for {bad[0]}")
    return rows


def _parse(column: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if column in ("score", "max_pos_cos", "max_neg_cos"):
        return float(value)
    if column in ("prediction_index", "label_index"):
        return int(value)
    if column == "ood":
        return value == "True"
    return value

