"""``negprompt world``, ``cache``, ``benchmark`` and ``demo``: data, the feature cache, published protocols."""


from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import emit_json, info, say
from ..errors import (
    NegPromptError,
)
from ..presets import DEFAULT_BACKBONE, NEGATIVE_OPTIM, POSITIVE_OPTIM, from_cli
from .app import (
    EPILOG,
    app,
    command_family,
    finish,
    print_report,
    reports_errors,
)
from .cli_options import (
    AugmentOpt,
    AugViewsOpt,
    BackboneOpt,
    CacheOpt,
    DeviceOpt,
    Flags,
    ImagesArg,
    JsonOpt,
    PretrainedOpt,
    QuietOpt,
    SeedOpt,
    WorkersOpt,
    WorldSeedOpt,
    image_command_options,
    option_group,
    runtime_options,
)
from .records import backbone_request, check_at_least, encode_options, image_encoding

world_app = command_family("world", help="The procedural offline world (54 object categories, colours, textures, "
                           "noise).", short_help="The procedural offline world.")


@world_app.command("export", epilog=EPILOG)
@reports_errors
def world_export_command(
    out: Annotated[Path, typer.Argument(help="Directory to write train/, test/, calib/, ood_near/, ood_unnamed/, "
                                        "ood_far/ into.")],
    id_shapes: Annotated[str | None, typer.Option("--id", help="Comma-separated ID categories (default: 6 named "
                                                  "ones chosen by --seed).")] = None,
    ood_shapes: Annotated[str | None, typer.Option("--ood", help="Comma-separated near-OOD categories (default: 6 "
                                                   "other named ones chosen by --seed).")] = None,
    unnamed: Annotated[bool, typer.Option("--unnamed/--no-unnamed", help="Write ood_unnamed/: the 8 categories the "
                                          "world CLIP never saw and its lexicon does not name.")] = True,
    train_classes: Annotated[int | None, typer.Option("--train-classes", help="Only the first K ID categories get "
                                                      "training images (open-vocabulary setups).")] = None,
    shots: Annotated[int, typer.Option("--shots", help="Training images per class.")] = 16,
    test_per_class: Annotated[int, typer.Option("--test-per-class", help="Test images per class.")] = 50,
    far: Annotated[int, typer.Option("--far", help="Far-OOD images (noise, stripes, checkerboards).")] = 300,
    calib: Annotated[int, typer.Option("--calib-per-class", help="Held-out ID images per class in calib/ (for "
                                       "--calibrate); 0 = none.")] = 20,
    seed: WorldSeedOpt = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export in OUT (its split "
                                            "folders and name files; nothing else).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Render the world as ImageFolder trees so every CLI path can run on real files."""
    from ..errors import NotFoundError, UsageError
    from ..outputs.atomic import check_output_folder, check_writable
    from ..world import CATEGORIES, UNNAMED, WorldSpec, check_export_target, default_spec, export_world_into

    if not out.parent.exists():
        raise NotFoundError(f"output directory's parent does not exist: {out.parent}")
    spec = default_spec(seed)

    def categories(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        if value is None:
            return default
        chosen = tuple(" ".join(v.split()) for v in value.split(",") if v.strip())
        unknown = [v for v in chosen if v not in CATEGORIES]
        if unknown or not chosen:
            raise UsageError(f"unknown shape {unknown[0] if unknown else value!r}",
                             hint=f"categories: {', '.join(CATEGORIES)}")
        return chosen

    ids = categories(id_shapes, spec.id_shapes)
    oods = categories(ood_shapes, tuple(s for s in spec.ood_shapes if s not in ids))
    if set(ids) & set(oods):
        raise UsageError(f"categories both ID and OOD: {', '.join(sorted(set(ids) & set(oods)))}")
    for flag, value, least in (("--shots", shots, 1), ("--test-per-class", test_per_class, 1), ("--far", far, 0),
                               ("--calib-per-class", calib, 0)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least} (got {value})")
    k = train_classes if train_classes is not None else len(ids)
    if not 1 <= k <= len(ids):
        raise UsageError(f"--train-classes must be between 1 and {len(ids)} (got {k})")
    check_output_folder(out, "world export:")
    check_export_target(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty: an export there would mix with what it holds",
                         hint="choose an empty or new folder, or pass --overwrite to replace an earlier export")
    check_writable(out.parent)  # the export is rendered beside OUT, then moved in
    if out.exists():
        check_writable(out)
    hidden = tuple(c for c in UNNAMED if c not in ids and c not in oods) if unnamed else ()
    paths = export_world_into(out, WorldSpec(ids, oods, ids[:k], shots, test_per_class, far, seed, calib, hidden))
    info(f"Wrote the world to {out}: train/ ({k} classes x {shots}), test/ ({len(ids)} x {test_per_class}), "
         + (f"calib/ ({len(ids)} x {calib}), " if calib else "")
         + f"ood_near/ ({len(oods)} x {test_per_class}), "
         + (f"ood_unnamed/ ({len(hidden)} categories), " if hidden else "")
         + f"ood_far/ ({far}), id_names.txt, train_names.txt")
    if json_out:
        emit_json({k: str(v) for k, v in paths.items() if v.exists()})


cache_app = command_family("cache", help="The image-feature cache: fill it ahead of time (also under torchrun), "
                           "check it, compact it. Many processes may share one cache; see docs/scale.md.",
                           short_help="Fill, check and compact the feature cache.")


@cache_app.command("build", epilog=EPILOG)
@reports_errors
@image_command_options()
def cache_build_command(
    images: ImagesArg = None,
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    pretrained: PretrainedOpt = None,
    aug_views: AugViewsOpt = 0,
    augment: AugmentOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the augmented views: the fit-* --seed that "
                                             f"will read them. Default: {POSITIVE_OPTIM.seed}, as fit-*.")] = None,
    patches: Annotated[bool, typer.Option("--patches", help="Cache each image's patch features with its global "
                                          "one, for the scorers and learners that read them (gl-mcm, l-mcm, "
                                          "locoop; ViT backbones): (1 + P) x E floats an image, 394 KiB on "
                                          "ViT-B/16.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    flags: Flags,
) -> None:
    """Encode every image into the feature cache, so later fit-*/score runs only read it."""
    images = images or []  # none: the stage says "no images given" (exit 2)
    from ..distributed import process_group
    from ..features.image_features import AUGMENTS, check_augment
    from ..stages.cache import CacheBuildOptions, build

    encoding = image_encoding(flags.runtime, flags.images, quiet or json_out)
    aug_views = aug_views or 0
    check_at_least("--aug-views", aug_views, 0)
    augment = augment or AUGMENTS[0]
    check_augment(augment, aug_views)
    with process_group(flags.images["distributed"], flags.runtime["device"]) as (ranks, device):
        summary = build(CacheBuildOptions(
            images=images, backbone=backbone_request(backbone, pretrained, flags.runtime, device),
            aug_views=aug_views, augment=augment, seed=POSITIVE_OPTIM.seed if seed is None else seed, encode=encoding,
            ranks=ranks, patches=patches))
    if summary is None:
        return
    finish(f"Cached {summary['images']} image(s) x {len(summary['views'])} view(s)"
           + (" with their patch features" if summary["patches"] else "") + f" in {summary['cache_dir']}: "
           f"{summary['encoded']} encoded, {summary['cached']} already cached"
           + (f", {summary['skipped']} unreadable skipped" if summary["skipped"] else "")
           + (f"; {summary['processes']} processes" if summary["processes"] > 1 else "") + ".",
           summary, json_out)


@cache_app.command("verify", epilog=EPILOG)
@reports_errors
def cache_verify_command(cache_dir: CacheOpt = None, json_out: JsonOpt = False) -> None:
    """Read every shard and check its checksum; exit 1 if any is damaged (`cache gc` removes them)."""
    from ..stages.cache import verify_cache

    report = verify_cache(cache_dir)
    for key in report["keys"]:
        info(f"{key['key']}: {key['backbone']} ({key['pretrained']}): {key['unique_rows']} row(s) in "
             f"{key['shards']} shard(s), {key['bytes'] / 2**20:.1f} MiB"
             + (f"; {len(key['damaged'])} damaged" if key["damaged"] else "")
             + (f"; {len(key['stale_temp_files'])} abandoned temporary file(s)" if key["stale_temp_files"] else ""))
    if json_out:
        emit_json(report)
    if report["damaged"]:
        raise NegPromptError(f"{report['damaged']} damaged shard(s) in {report['cache_dir']} (readers skip and "
                             "re-encode them)", hint="negprompt cache gc removes them")
    info(f"{report['cache_dir']}: {report['rows']} row(s) in {report['shards']} shard(s), all verified.")


@cache_app.command("gc", epilog=EPILOG)
@reports_errors
def cache_gc_command(cache_dir: CacheOpt = None, json_out: JsonOpt = False) -> None:
    """Compact the cache: merge shards, drop duplicate rows, damaged shards and abandoned temporary files.
    Safe while other processes read and write it."""
    from ..stages.cache import gc_cache

    report = gc_cache(cache_dir)
    finish(f"{report['cache_dir']}: {report['rows']} row(s) in {report['shards']} shard(s) after compaction; "
           f"{report['removed']} file(s) removed.", report, json_out)


ImgListOpt = Annotated[list[str] | None, typer.Option("--imglist", metavar="NAME=FILE", help="Take OOD set NAME from "
                                                      "an image list (e.g. OpenOOD's benchmark_imglist/imagenet/"
                                                      "test_ssb_hard.txt) instead of its folder; repeatable.")]
ImgListRootOpt = Annotated[Path | None, typer.Option("--imglist-root", help="What the listed paths are relative to "
                                                     "(OpenOOD: its images_largescale/; default: --root).")]
benchmark_app = command_family("benchmark", help="Published benchmark protocols on your own copies of the "
                               "datasets (docs/benchmarks.md). We never download data.",
                               short_help="Published protocols on your data.")


@benchmark_app.command("list", epilog=EPILOG)
@reports_errors
def benchmark_list_command(json_out: JsonOpt = False) -> None:
    """The shipped protocols: ID classes, OOD sets, seeds, published numbers."""
    from ..stages.benchmark import list_protocols

    rows = list_protocols()
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        say(f"{row['name']}: {row['title']}")
        say(f"    {row['id_classes']} ID classes; OOD: {', '.join(row['ood_sets'])}; seeds {row['seeds']}"
            + (f"; published: {'; '.join(row['published'])}" if row["published"] else ""))


@benchmark_app.command("check", epilog=EPILOG)
@reports_errors
def benchmark_check_command(
    protocol: Annotated[str, typer.Argument(help="A protocol name (negprompt benchmark list) or a protocol .json.")],
    root: Annotated[Path, typer.Option("--root", help="The folder holding the datasets in the layout of "
                                       "docs/benchmarks.md.")],
    imglist: ImgListOpt = None,
    imglist_root: ImgListRootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check that ROOT holds every dataset PROTOCOL needs; list every problem at once (exit 2 if any)."""
    from ..errors import UsageError
    from ..stages.benchmark import check, image_lists

    report = check(protocol, root, image_lists(imglist or [], imglist_root, root))
    for row in report.datasets:
        status = "ok" if row.ok else "PROBLEM"
        info(f"[{status}] {row.role}: {row.name} at {row.path}: expected {row.expected}"
             + (f"; found {row.found}" if row.found else ""))
        for problem in row.problems:
            info(f"    - {problem}")
        if row.problems and row.source:
            info(f"    source: {row.source}")
    if json_out:
        emit_json(report.as_dict())
    if report.problems:
        raise UsageError(f"{report.problems} problem(s) in the layout under {root} for {report.protocol} (listed "
                         "above)", hint="docs/benchmarks.md gives the expected layout and where each dataset comes "
                         "from")
    info(f"{root} holds everything {report.protocol} needs.")


@benchmark_app.command("run", epilog=EPILOG)
@reports_errors
@option_group("runtime", runtime_options())
def benchmark_run_command(
    protocol: Annotated[str, typer.Argument(help="A protocol name (negprompt benchmark list) or a protocol .json.")],
    root: Annotated[Path, typer.Option("--root", help="The folder holding the datasets (docs/benchmarks.md).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: artifacts, score files, report.{json,md,"
                                      "html}; rerun with the same --out to continue.")],
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    pretrained: PretrainedOpt = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds (default: the protocol's, "
                                              "1,2,3).")] = None,
    shots: Annotated[int | None, typer.Option("--shots", help="Training images per class (default: the "
                                              "protocol's, 16).")] = None,
    scorers: Annotated[str, typer.Option("--scorers", help="Scorers run with the trained prompts.")] =
        "negprompt,mcm,energy",
    zero_shot_scorers: Annotated[str, typer.Option("--zero-shot-scorers", help="Scorers run zero-shot with the hand "
                                                   "template ('' for none).")] = "mcm,neglabel,csp",
    lexicon: Annotated[Path | None, typer.Option("--lexicon", help="Lexicon of the negative-label scorers (default: "
                                                 "the shipped WordNet lists).")] = None,
    negatives: Annotated[Path | None, typer.Option("--negatives", help="A list of negative labels the negative-label "
                                                   "scorers use as given instead of mining (a file, a folder, or a "
                                                   "registered list's name: negrefine-imagenet1k).")] = None,
    imglist: ImgListOpt = None,
    imglist_root: ImgListRootOpt = None,
    pos_epochs: Annotated[int | None, typer.Option("--pos-epochs", help=f"Default: {POSITIVE_OPTIM.epochs}.")] = None,
    neg_epochs: Annotated[int | None, typer.Option("--neg-epochs", help=f"Default: {NEGATIVE_OPTIM.epochs}.")] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Positive stage context tokens (default 16, the "
                                              "paper's; the released code: 4).")] = None,
    ctx_init: Annotated[str | None, typer.Option("--ctx-init", help="Positive stage context initialisation (the "
                                                 "released code: 'a photo of a').")] = None,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Text after the class name (default '.'; the "
                                               "released code: '').")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")] = 64,
    cache_dir: CacheOpt = None,
    workers: WorkersOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    flags: Flags,
) -> None:
    """Run PROTOCOL end to end (train per seed, score every set, report with the published numbers)."""
    from ..errors import UsageError
    from ..stages.benchmark import image_lists
    from ..training.learners import PromptSettings
    from .benchmark_run import BenchmarkOptions, run_benchmark, table

    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else None
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated whole numbers (got {seeds!r})") from None
    report = run_benchmark(BenchmarkOptions(
        protocol=protocol, root=root, out=out,
        backbone=backbone_request(backbone, pretrained, flags.runtime),
        seeds=seed_list, shots=shots, learned_scorers=tuple(s for s in scorers.split(",") if s),
        zero_shot_scorers=tuple(s for s in zero_shot_scorers.split(",") if s),
        pos_optim=from_cli(POSITIVE_OPTIM, epochs=pos_epochs), neg_optim=from_cli(NEGATIVE_OPTIM, epochs=neg_epochs),
        prompt=from_cli(PromptSettings(), n_ctx=n_ctx, ctx_init=ctx_init, suffix=suffix),
        encode=encode_options(flags.runtime, quiet or json_out, cache_dir=cache_dir, workers=workers,
                              batch_size=batch_size),
        lexicon=lexicon, negatives=negatives, image_lists=image_lists(imglist or [], imglist_root, root)))
    for line in table(report):
        info(" | ".join(line))
    finish(f"Wrote {out / 'report.html'}, report.md and report.json ({len(report['rows'])} rows).", report, json_out)


def promise_kept(record: dict, kept: float, n: int) -> str:
    """The stored threshold's promise beside what it did on the ID test images."""
    from ..scoring.thresholds import stated

    low, high = record.get("keep_interval") or (0.0, 1.0)
    inside = "within" if low <= kept <= high else "outside"
    return (f"The threshold {stated(record)}. On the {n} ID test images it kept {100 * kept:.1f}%, {inside} that "
            "interval.")


@app.command("demo", epilog=EPILOG, short_help="The whole method offline on the built-in world.")
@reports_errors
def demo_command(
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Where to put data, prompts and the report "
                                                 "(default: a new temporary directory).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Run the whole method offline on the built-in world and its shipped toy CLIP."""
    from .demo import run_demo

    if workdir is not None and not workdir.parent.exists():
        from ..errors import NotFoundError

        raise NotFoundError(f"--workdir parent does not exist: {workdir.parent}")
    if workdir is not None:
        from ..outputs.atomic import check_output_folder

        check_output_folder(workdir, "--workdir")
    report = run_demo(workdir, seed=seed, device=device, quiet=json_out)
    print_report(report, Path(report["demo"]["workdir"]) / "report")
    info(promise_kept(report["demo"]["threshold"], report["decision"]["id_kept"], report["id"]["n"]))
    info(f"Done in {report['demo']['seconds']:.0f} s. Everything is in {report['demo']['workdir']}.")
    if json_out:
        emit_json(report)
