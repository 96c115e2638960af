"""Flags to option records, one way: every command builds its records here from the option groups of
``cli_options`` (dicts named like the records' fields) with ``presets.from_cli``, so an option the user did
not give keeps the record's own default and no command restates a conversion. Range checks on the way in
say which flag is wrong."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..presets import EXPLAIN_TOP, OptimConfig, from_cli


def check_at_least(flag: str, value: int, least: int) -> None:
    from ..errors import UsageError

    if value < least:
        raise UsageError(f"{flag} must be at least {least} (got {value})")


def backbone_request(name: str, pretrained: str | None, runtime: dict[str, Any], device: Any = None):
    """The backbone to load, from the runtime group (``device``: the one a torchrun rank was given)."""
    from ..features.backbone import BackboneRequest

    return BackboneRequest(name, pretrained, runtime["device"] if device is None else device,
                           runtime["weights_cache"], runtime["quick_gelu"], runtime["offline"])


def runtime_record(runtime: dict[str, Any], *, text_chunk: str, trust_backbone: bool, device: Any = None):
    """RuntimeOptions for a stage that loads the backbone an artifact names (``--text-chunk`` of a no-grad pass)."""
    from ..features.backbone import RuntimeOptions
    from ..training.memory import no_grad_text_chunk

    return RuntimeOptions(runtime["device"] if device is None else device, runtime["weights_cache"],
                          runtime["offline"], no_grad_text_chunk(text_chunk), trust_backbone)


def encode_options(runtime: dict[str, Any], quiet: bool, *, cache_dir: Path | None, workers: int | None,
                   strict: bool = False, batch_size: int | None = None):
    """EncodeOptions from the flags every image-reading command shares (unset ones keep its defaults)."""
    from ..features.image_features import EncodeOptions

    if batch_size is not None:
        check_at_least("--batch-size", batch_size, 1)
    return from_cli(EncodeOptions(), cache_dir=cache_dir, batch_size=batch_size, num_workers=workers,
                    precision=runtime["precision"], strict=strict, quiet=quiet)


def image_encoding(runtime: dict[str, Any], images: dict[str, Any], quiet: bool):
    """EncodeOptions of score and cache build, from their images group."""
    return encode_options(runtime, quiet, cache_dir=images["cache_dir"], workers=images["workers"],
                          strict=images["strict"], batch_size=images["batch_size"])


def training_encoding(runtime: dict[str, Any], data: dict[str, Any], run: dict[str, Any]):
    """EncodeOptions of fit-pos and fit-neg, from their data and run groups."""
    return encode_options(runtime, run["quiet"] or run["json_out"], cache_dir=data["cache_dir"],
                          workers=data["workers"], strict=data["strict"])


def training_data(root: Path, given: dict[str, Any]):
    """DataOptions from the data option group; --all-images means no shot limit."""
    from ..features.image_features import check_augment
    from ..training.data import DataOptions

    data = from_cli(DataOptions(root), classes_file=given["classes"], shots=given["shots"],
                    val_fraction=given["val_fraction"], aug_views=given["aug_views"], augment=given["augment"])
    if given["all_images"]:
        data = replace(data, shots=None)
    check_at_least("--aug-views", data.aug_views, 0)
    check_augment(data.augment, data.aug_views)
    return data


def optim_config(preset: OptimConfig, given: dict[str, Any]) -> OptimConfig:
    config = from_cli(preset, **given)
    check_at_least("--epochs", config.epochs, 1)
    check_at_least("--batch-size", config.batch_size, 1)
    return config


def label_request(given: dict[str, Any]) -> Any:
    """The negative-label options as the library's ``LabelRequest``."""
    from ..scoring.negative_labels import LabelRequest, MiningOptions

    return LabelRequest(lexicon=given["lexicon"], groups=given["groups"], negatives=given["negatives"],
                        mining=MiningOptions(percentile=given["mine_percentile"], fraction=given["mine_fraction"],
                                             count=given["negative_labels"], seed=given["seed"],
                                             id_names="keep" if given["keep_id_names"] else "drop"))


def adaptive_record(given: dict[str, Any], batch_size: int):
    """``--adaptive`` and its settings as AdaptiveOptions (None without ``--adaptive``)."""
    from ..errors import UsageError
    from ..scoring.adaptive import AdaptiveOptions

    settings = {key: given[f"adaptive_{key}"] for key in ("slots", "weight") if given[f"adaptive_{key}"] is not None}
    if not given["adaptive"]:
        if settings:
            flags = " and ".join(f"--adaptive-{key}" for key in settings)
            raise UsageError(f"{flags} set{'s' if len(settings) == 1 else ''} the adaptive memory, and there is no "
                             "--adaptive", hint=f"add --adaptive, or drop {'it' if len(settings) == 1 else 'them'}")
        return None
    return AdaptiveOptions(**settings, batch=batch_size)


def learner_options(shortcuts: dict[str, Any], pairs: list[str] | None) -> dict[str, Any]:
    """A learner's options from ``--learner-option KEY=VALUE`` and the built-in learner's own flags (shortcuts
    for the same keys: giving both is refused)."""
    from ..errors import UsageError
    from ..training.learners import parse_option_pairs

    parsed = parse_option_pairs(pairs or [])
    given = {k: v for k, v in shortcuts.items() if v is not None and v is not False}
    both = sorted(k for k in parsed if k in given)
    if both:
        raise UsageError(f"--{both[0].replace('_', '-')} and --learner-option {both[0]}=... are both given",
                         hint="give one of them")
    return {**given, **parsed}


def score_record(base: Any, given: dict[str, Any]):
    """``base`` (a ScoreOptions) with the scoring group's values; ``--explain`` lists ``--explain-top`` each."""
    from ..errors import UsageError
    from ..registry import parse_pairs

    top = given["explain_top"]
    if top is not None:
        check_at_least("--explain-top", top, 1)
        if not given["explain"]:
            raise UsageError("--explain-top says how many classes and negatives --explain lists, and there is no "
                             "--explain", hint="add --explain, or drop --explain-top")
    settings = {k: v for k, v in given.items() if k not in ("explain", "explain_top", "scorer_options")}
    return from_cli(base, **settings, explain=(top or EXPLAIN_TOP) if given["explain"] else 0,
                    scorer_options=parse_pairs(given["scorer_options"] or [], "--scorer-option"))
