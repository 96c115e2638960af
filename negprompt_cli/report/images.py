"""The images behind a report's numbers: which rows to show, and small embedded thumbnails of them.

Researchers tune a detector by looking at what it gets wrong; practitioners decide whether to trust a
threshold by looking at what it rejects. So a report shows, per OOD set, the OOD images most confidently
accepted as in-distribution (the misses at the threshold) and the most clearly OOD ones, and for the ID set
the images rejected as OOD (false alarms). Everything comes from the score files alone (their rows hold the
paths); an image that moved since scoring becomes a placeholder with a note, never a failure.
"""

from __future__ import annotations

import base64
import io
from typing import Any

DEFAULT_PER_GALLERY = 12  # thumbnails per gallery: a report with 3 OOD sets stays well under 1 MB
THUMBNAIL_PIXELS = 112  # longest side
JPEG_QUALITY = 70


def row_threshold(threshold: dict[str, Any], row: dict[str, Any]) -> float | None:
    """The threshold ``row`` is decided by under the report's ``threshold``: its one value, or per class the
    threshold of the row's predicted class."""
    if "per_class" in threshold:
        return threshold["per_class"].get(str(row.get("prediction_index")))
    return threshold["value"]


def threshold_label(threshold: dict[str, Any], digits: int = 4) -> str:
    """The report's threshold in a plot's legend: "threshold 0.5123", or "per-class thresholds 0.49-0.53"."""
    if "per_class" in threshold:
        values = list(threshold["per_class"].values())
        return f"per-class thresholds {min(values):.{digits}g}-{max(values):.{digits}g}"
    return f"threshold {threshold['value']:.{digits}g}"


def row_kept(threshold: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether ``row`` is kept as in-distribution (a class the threshold does not know: not kept)."""
    cut = row_threshold(threshold, row)
    return cut is not None and row["score"] >= cut


def examples(id_rows: list[dict[str, Any]], ood_rows: dict[str, list[dict[str, Any]]],
             threshold: dict[str, Any] | None, per_gallery: int) -> dict[str, Any]:
    """The rows each gallery shows (no pixels yet): ``false_alarms`` (ID rows below the threshold, lowest
    first; without a threshold the least ID-like ID images) and per OOD set ``misses`` (OOD rows at or above
    the threshold, highest first; without one the most ID-like) and ``clearly_ood`` (lowest scores)."""
    def pick(rows: list[dict[str, Any]], keep, highest: bool) -> list[dict[str, Any]]:
        chosen = [r for r in rows if keep(r)]
        chosen.sort(key=lambda r: r["score"], reverse=highest)
        return [_summary(r) for r in chosen[:per_gallery]]

    if threshold is None:
        id_false = pick(id_rows, lambda r: True, highest=False)
        misses = {name: pick(rows, lambda r: True, highest=True) for name, rows in ood_rows.items()}
    else:
        id_false = pick(id_rows, lambda r: not row_kept(threshold, r), highest=False)
        misses = {name: pick(rows, lambda r: row_kept(threshold, r), highest=True)
                  for name, rows in ood_rows.items()}
    clearly = {name: pick(rows, lambda r: True, highest=False) for name, rows in ood_rows.items()}
    return {"false_alarms": id_false, "misses": misses, "clearly_ood": clearly}


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"path": row["path"], "score": row["score"], "prediction": row.get("prediction"),
            "label": row.get("label")}


def thumbnail(path: str, pixels: int = THUMBNAIL_PIXELS) -> tuple[str | None, str | None]:
    """(a ``data:image/jpeg`` URI, None), or (None, why not) for an image that moved, is not an image or cannot
    be read; never raises."""
    from PIL import Image, UnidentifiedImageError

    from ..inputs.displayed import as_displayed

    try:
        with Image.open(path) as image:
            image.draft("RGB", (pixels * 2, pixels * 2))  # JPEGs decode at a fraction of their size: fast
            small = as_displayed(image)  # turned and scaled as the image was scored
            small.thumbnail((pixels, pixels))
    except FileNotFoundError:
        return None, "not found: moved or deleted since scoring"
    except UnidentifiedImageError:
        return None, "not an image"
    except Exception as exc:  # permissions, decompression-bomb limit, a truncated file ...
        return None, f"cannot be read ({type(exc).__name__})"
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), None


def per_class_kept(id_rows: list[dict[str, Any]], threshold: dict[str, Any]) -> list[dict[str, Any]]:
    """Per ID class (the true label where the rows have one, else the predicted class), how many images and
    the share kept as in-distribution under ``threshold`` (report's: one value or per class), the classes the
    detector hurts most first."""
    counts: dict[str, list[int]] = {}
    for row in id_rows:
        labelled = isinstance(row.get("label_index"), int) and row["label_index"] >= 0
        name = str(row["label"] if labelled else row.get("prediction"))
        seen = counts.setdefault(name, [0, 0])
        seen[0] += 1
        seen[1] += row_kept(threshold, row)
    table = [{"class": name, "images": n, "kept": kept / n} for name, (n, kept) in counts.items()]
    return sorted(table, key=lambda r: (r["kept"], r["class"]))
