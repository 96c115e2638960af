"""`negprompt benchmark run imagenet1k-mcm` on a tree with ImageNet's exact shape (issue #11, item 5).

Builds, under --work, a root in the documented layout with the real protocol's sizes: 1,000 train
folders named by the ImageNet wnids, 50,000 val images (50 per wnid), iNaturalist, SUN and Places
with 10,000 images each and Textures with 5,640. The images are small generated JPEGs, so this
measures what ImageNet scale costs the benchmark kit itself (listing, checking, symlink views,
hashing, the feature cache, 1,000-class training, scoring and the report), not an encoder or a
JPEG decoder: `benchmarks/perf.py` and `benchmarks/gpu.py` measure those. The model is the shipped
16 MB world CLIP (`--backbone toy`), so the metrics it reports mean nothing and are not recorded.

The run is interrupted (SIGINT) while it scores the ID images, continued with the same command,
rerun once more (everything reused: only the report is rebuilt) and then rerun with one more
scorer, which must cost scoring only. Each phase records wall time, the feature-cache rows and the
peak memory of the process.

    python benchmarks/imagenet_shape.py                  # full shape; results/imagenet_shape.json, docs table
    python benchmarks/imagenet_shape.py --scale 0.05     # 5 % of every count, quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, current_commit

RESULTS = ROOT / "benchmarks" / "results" / "imagenet_shape.json"
DOC = ROOT / "docs" / "benchmarks.md"
MARK_BEGIN, MARK_END = "<!-- imagenet-shape:begin -->", "<!-- imagenet-shape:end -->"
OOD_SETS = {"iNaturalist": 10000, "SUN": 10000, "Places": 10000, "dtd/images": 5640}


def _jpeg_writer(seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)

    def write(path: Path) -> None:
        base = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)  # smooth 80x60 colour fields
        Image.fromarray(base).resize((80, 60), Image.BILINEAR).save(path, format="JPEG", quality=90)

    return write


def build_tree(root: Path, scale: float, train_per_class: int) -> dict[str, int]:
    """The documented layout at the real protocol's counts (times --scale); returns the image counts."""
    sys.path.insert(0, str(ROOT))
    from negprompt_cli.benchmark.protocol import imagenet_wnids

    wnids = imagenet_wnids()
    per_class = max(1, round(50 * scale))
    write = _jpeg_writer(0)
    counts = {"train": 0, "val": 0}
    for w in wnids:
        for split, n in (("train", train_per_class), ("val", per_class)):
            folder = root / "imagenet" / split / w
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                write(folder / f"{w}_{split}_{k:04d}.JPEG")
            counts[split] += n
    for path, n in OOD_SETS.items():
        n = max(1, round(n * scale))
        for k in range(n):
            folder = root / path / f"part{k // 1000:02d}"  # sub-folders, as the real sets have
            folder.mkdir(parents=True, exist_ok=True)
            write(folder / f"{k:05d}.jpg")
        counts[path] = n
    return counts


def protocol_for(scale: float, work: Path) -> str:
    """The shipped protocol, or at --scale < 1 a copy with the counts scaled (check would refuse the tree)."""
    if scale == 1:
        return "imagenet1k-mcm"
    sys.path.insert(0, str(ROOT))
    from negprompt_cli.benchmark.protocol import load_protocol

    spec = json.loads(load_protocol("imagenet1k-mcm").file.read_text())
    spec["name"] = f"imagenet1k-mcm-x{scale:g}"
    spec["id"]["images_per_class"] = max(1, round(50 * scale))
    for ood in spec["ood"]:
        ood["images"] = max(1, round(ood["images"] * scale))
    path = work / "protocol.json"
    path.write_text(json.dumps(spec, indent=2))
    return str(path)


def cache_rows(cache: Path) -> int:
    """Rows in the feature cache (every key), read from its shard files."""
    from safetensors import safe_open

    rows = 0
    for shard in cache.rglob("*.safetensors"):
        try:
            with safe_open(str(shard), "pt") as handle:
                for key in handle.keys():
                    rows += handle.get_slice(key).get_shape()[0]
                    break
        except Exception:
            continue
    return rows


def _obey_ctrl_c() -> None:
    """A benchmark started in the background (`cmd &`) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: the CLI must get the default disposition to be interrupted like a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_phase(name: str, command: list[str], env: dict[str, str], cache: Path,
              interrupt_when: Path | None = None, interrupt_delay: float = 0.0) -> dict[str, Any]:
    """One CLI call in its own process group; its wall time, exit code, peak RSS and the cache rows after it."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=_obey_ctrl_c)
    interrupted_at = None
    if interrupt_when is not None:
        while process.poll() is None and not interrupt_when.exists():
            time.sleep(0.5)
        time.sleep(interrupt_delay)
        if process.poll() is None:
            interrupted_at = time.perf_counter() - start
            if shutil.which("py-spy"):  # where the process was when Ctrl-C came (a dev tool, optional)
                dump = subprocess.run(["py-spy", "dump", "--pid", str(process.pid)], capture_output=True, text=True)
                (cache.parent / "interrupted-at.txt").write_text(dump.stdout + dump.stderr)
            os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate()
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    (cache.parent / f"{slug}.stderr").write_text(stderr)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest child so far
    result = {"phase": name, "seconds": round(seconds, 1), "exit_code": process.returncode,
              "cache_rows": cache_rows(cache), "peak_rss_gb_so_far": round(peak_gb, 2)}
    if interrupted_at is not None:
        result["interrupted_after_s"] = round(interrupted_at, 1)
        if process.returncode != 130:
            print(f"{name}: Ctrl-C was not obeyed (exit {process.returncode})", file=sys.stderr)
    tail = stderr.strip().splitlines()[-3:]
    result["stderr_tail"] = tail
    print(f"{name}: {result['seconds']} s, exit {process.returncode}, {result['cache_rows']} cached rows; "
          f"{' | '.join(tail)}", file=sys.stderr)
    if stdout.strip().startswith("{"):
        result["summary"] = json.loads(stdout)
    return result


def check_report(out: Path, counts: dict[str, int], scorers: list[str]) -> dict[str, Any]:
    """What the finished run must show: every set scored in full, every requested row present."""
    report = json.loads((out / "report.json").read_text())
    rows = {r["row"] for r in report["rows"]}
    lines = {}
    for score_file in sorted(out.glob("seed-*/scores/*/*.csv")) + sorted(out.glob("zero-shot/*/*.csv")):
        with open(score_file) as handle:
            lines[str(score_file.relative_to(out))] = sum(1 for _ in handle) - 1
    expected = {"ID": counts["val"], "iNaturalist": counts["iNaturalist"], "SUN": counts["SUN"],
                "Places": counts["Places"], "Textures": counts["dtd/images"]}
    wrong = {k: v for k, v in lines.items() if v != expected[Path(k).stem]}
    return {"rows": sorted(rows), "score_files": len(lines), "score_files_with_wrong_counts": wrong,
            "missing_rows": sorted({f"negprompt/{s}" for s in scorers} - rows)}


def render(results: dict[str, Any]) -> str:
    c = results["counts"]
    lines = [f"Measured by `python benchmarks/imagenet_shape.py` at commit `{results['commit']}` on "
             f"{results['machine']['cpus']} CPUs ({results['machine']['platform']}), torch "
             f"{results['machine']['torch']}, `--backbone toy`, seeds {results['seeds']}, "
             f"{results['pos_epochs']} + {results['neg_epochs']} epochs, {results['train_per_class']} train "
             f"images per class on disk, 80x60 JPEGs: {c['val']:,} ID, "
             f"{c['iNaturalist'] + c['SUN'] + c['Places'] + c['dtd/images']:,} OOD.", "",
             "| phase | wall time | exit | feature-cache rows after | peak RSS so far |", "|---|---|---|---|---|"]
    for p in results["phases"]:
        extra = f" (SIGINT after {p['interrupted_after_s']} s)" if "interrupted_after_s" in p else ""
        lines.append(f"| {p['phase']}{extra} | {p['seconds']} s | {p['exit_code']} | {p['cache_rows']:,} | "
                     f"{p['peak_rss_gb_so_far']} GB |")
    return "\n".join(lines)


def write_docs(results: dict[str, Any]) -> None:
    text = DOC.read_text()
    begin, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    DOC.write_text(text[:begin] + "\n" + render(results) + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/negprompt-imagenet-shape"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of every image count (1 = ImageNet's)")
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--pos-epochs", type=int, default=1)
    parser.add_argument("--neg-epochs", type=int, default=1)
    parser.add_argument("--interrupt-delay", type=float, default=30.0,
                        help="seconds into the ID scoring of the first seed at which the run is interrupted")
    parser.add_argument("--keep", action="store_true", help="keep the generated tree for another run")
    parser.add_argument("--docs-only", action="store_true", help="re-render docs from the saved results")
    args = parser.parse_args()
    if args.docs_only:
        write_docs(json.loads(RESULTS.read_text()))
        return
    root, out, cache = args.work / "root", args.work / "run", args.work / "cache"
    start = time.perf_counter()
    counts_file = args.work / "counts.json"
    if counts_file.exists() and json.loads(counts_file.read_text()).get("_args") == [args.scale,
                                                                                      args.train_per_class]:
        counts = {k: v for k, v in json.loads(counts_file.read_text()).items() if k != "_args"}
        generate_s = None
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        counts = build_tree(root, args.scale, args.train_per_class)
        counts_file.write_text(json.dumps({**counts, "_args": [args.scale, args.train_per_class]}))
        generate_s = round(time.perf_counter() - start, 1)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    protocol = protocol_for(args.scale, args.work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEGPROMPT_CACHE": str(cache)}
    neg = [sys.executable, "-m", "negprompt_cli"]
    base = [*neg, "benchmark", "run", protocol, "--root", str(root), "--out", str(out), "--backbone", "toy",
            "--seeds", args.seeds, "--pos-epochs", str(args.pos_epochs), "--neg-epochs", str(args.neg_epochs),
            "--n-ctx", "4", "--device", "cpu", "--quiet"]  # 4 context tokens: the toy CLIP reads 24 tokens
    first_seed = args.seeds.split(",")[0]
    phases = [run_phase("benchmark check", [*neg, "benchmark", "check", protocol, "--root", str(root)], env, cache),
              run_phase("run, interrupted", base, env, cache,
                        interrupt_when=out / f"seed-{first_seed}" / "scores" / "negprompt",
                        interrupt_delay=args.interrupt_delay),
              run_phase("run, continued", [*base, "--json"], env, cache),
              run_phase("run again (all reused)", [*base, "--json"], env, cache),
              run_phase("run with one more scorer (maxlogit)",
                        [*base, "--scorers", "negprompt,mcm,energy,maxlogit", "--json"], env, cache)]
    verdict = check_report(out, counts, ["negprompt", "mcm", "energy", "maxlogit"])
    import torch

    results = {"commit": current_commit(), "scale": args.scale, "train_per_class": args.train_per_class,
               "seeds": args.seeds, "pos_epochs": args.pos_epochs, "neg_epochs": args.neg_epochs,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
               "generate_seconds": generate_s, "counts": counts,
               "phases": [{k: v for k, v in p.items() if k != "summary"} for p in phases], "report_check": verdict}
    for p in phases:
        print(json.dumps({k: v for k, v in p.items() if k != "summary"}), file=sys.stderr)
    print(json.dumps(verdict, indent=2), file=sys.stderr)
    if args.scale == 1:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        write_docs(results)
    else:
        print(render(results))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
