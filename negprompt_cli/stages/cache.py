"""``negprompt cache build | verify | gc``: fill the image-feature cache ahead of time, check it, compact it.

``build`` encodes a folder once (eval view, and the seeded augmented views ``fit-*`` use with
``--aug-views``), so that later ``fit-pos``/``fit-neg``/``score`` runs on the same images and backbone
only read the cache. Under torchrun every rank encodes its share (see ``distributed``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..devices import check_precision
from ..distributed import SINGLE, Ranks, check_enough_items, gather_to_all
from ..environment import default_cache_dir
from ..errors import NegPromptError, NegPromptWarning, NotFoundError, UsageError
from ..features.backbone import BackboneRequest, load_backbone
from ..features.feature_cache import compact, foreign_entries, verify
from ..features.image_features import (
    AUGMENTS,
    EncodeOptions,
    EncodeStats,
    View,
    augmented_views,
    cache_share,
    list_samples_across,
    ranks_agree,
)
from ..inputs.image_folders import image_inputs
from ..outputs.atomic import check_writable
from ..presets import POSITIVE_OPTIM


@dataclass(frozen=True)
class CacheBuildOptions:
    images: Path | Sequence[Path]  # image files and/or folders
    backbone: BackboneRequest = BackboneRequest()
    aug_views: int = 0  # also cache views 0..K-1 of the seeded augmentation (as fit-* --aug-views K --seed S)
    seed: int = POSITIVE_OPTIM.seed  # the views fit-pos and fit-neg read by default (one default, presets)
    augment: str = AUGMENTS[0]  # how the views are made (as fit-* --augment)
    encode: EncodeOptions = EncodeOptions()  # batch, workers, precision, strictness, progress (its cache_dir too)
    patches: bool = False  # also the patch features (rows for GL-MCM / LoCoOp: ``local_features``)
    ranks: Ranks = SINGLE


def cache_root(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def writable_cache(root: Path) -> Path:
    """The cache root, created if needed; one that cannot be written is an error here (filling it is the job)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"the feature cache {root} cannot be created ({exc.strerror or exc})",
                         hint="point --cache-dir (or NEGPROMPT_CACHE) at a writable folder") from None
    try:
        check_writable(root)
    except UsageError:
        raise UsageError(f"the feature cache {root} cannot be written",
                         hint="point --cache-dir (or NEGPROMPT_CACHE) at a writable folder") from None
    return root


def build(options: CacheBuildOptions) -> dict[str, Any] | None:
    """Encode every image under ``images`` into the cache; the summary on rank 0, None on the other ranks."""
    root = writable_cache(cache_root(options.encode.cache_dir))
    paths = list_samples_across(options.ranks, image_inputs(options.images), strict=options.encode.strict)
    check_enough_items(len(paths), options.ranks)
    backbone = load_backbone(options.backbone)
    encoding = replace(options.encode, cache_dir=root,
                       precision=check_precision(backbone.device, options.encode.precision), local=options.patches)
    views = [View(), *augmented_views(options.aug_views, options.seed, options.augment)]
    ranks_agree(options.ranks, backbone, paths)
    total = EncodeStats()
    for view in views:  # every rank encodes its own share; only the counts travel
        mine = cache_share(options.ranks, backbone, paths, encoding, view=view,
                           description=f"Caching {view.tag()} features")
        shares = gather_to_all(mine, options.ranks, "counting the cached features")
        failed = next((s.cache_write_error for s in shares if s.cache_write_error is not None), None)
        if failed is not None:
            raise NegPromptError(f"the feature cache {root} could not be written ({failed})",
                                 hint="free some space or point --cache-dir elsewhere; the rows written so far "
                                      "are kept")
        total.merge(EncodeStats.total(shares))
    if not options.ranks.is_main:
        return None
    return {"images": len(paths), "views": [v.tag() for v in views], "rows": total.requested,
            "encoded": total.encoded, "cached": total.cached, "skipped": len({str(p) for p in total.skipped}),
            "cache_dir": str(root), "backbone": backbone.identity(), "processes": options.ranks.world_size,
            "patches": options.patches}


def existing_cache(cache_dir: Path | None) -> Path:
    """The cache root to check or compact. A folder named on the command line that does not exist is most
    likely a typo, so it is an error rather than an empty cache; the default root may not exist yet."""
    root = cache_root(cache_dir)
    if cache_dir is not None and not root.is_dir():
        raise NotFoundError(f"feature cache folder not found: {root}",
                            hint="--cache-dir (or NEGPROMPT_CACHE) names the folder that fit-*, score and "
                                 "cache build wrote to")
    return root


def verify_cache(cache_dir: Path | None) -> dict[str, Any]:
    """Every key's shards read and checked; ``damaged`` counts shards that fail. A folder that is not a
    negprompt cache is refused (exit 2); files the cache did not write are listed, never read."""
    root = existing_cache(cache_dir)
    keys = [k.as_dict() for k in verify(root)]
    return {"cache_dir": str(root), "keys": keys, "shards": sum(k["shards"] for k in keys),
            "rows": sum(k["unique_rows"] for k in keys), "damaged": sum(len(k["damaged"]) for k in keys),
            "stale_temp_files": sum(len(k["stale_temp_files"]) for k in keys), "foreign": _foreign(root, keys)}


def gc_cache(cache_dir: Path | None) -> dict[str, Any]:
    """Compact every key: merge shards, drop duplicates, damaged shards and abandoned temporary files. Only
    files the cache wrote are touched: a folder that is not a negprompt cache is refused (exit 2), and anything
    else found in one is left where it is and named in one warning."""
    root = existing_cache(cache_dir)
    if not root.is_dir():
        return {"cache_dir": str(root), "keys": [], "shards": 0, "rows": 0, "removed": 0, "foreign": []}
    keys = [k.as_dict() for k in compact(root)]
    return {"cache_dir": str(root), "keys": keys, "shards": sum(k["shards"] for k in keys),
            "rows": sum(k["unique_rows"] for k in keys), "removed": sum(k["removed"] for k in keys),
            "foreign": _foreign(root, keys)}


def _foreign(root: Path, keys: list[dict[str, Any]]) -> list[str]:
    """Paths in the cache that negprompt did not write, with one warning naming them (they are left alone)."""
    found = [str(p) for p in foreign_entries(root)]
    found += [str(root / k["key"] / name) for k in keys for name in k["foreign"]]
    if found:
        warnings.warn(f"left alone {len(found)} file(s) or folder(s) in the cache that negprompt did not write: "
                      + ", ".join(found[:3]) + (" ..." if len(found) > 3 else ""), NegPromptWarning, stacklevel=2)
    return found
