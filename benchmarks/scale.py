"""Scoring throughput of `negprompt score` in one process and under torchrun (issue #13).

Runs the real command line on generated 256x256 JPEGs with a ViT-B/32-shaped CLIP (random weights
written once to a local checkpoint, so every rank loads the same ones; throughput does not depend on
the weights). Each setting runs twice, on a large and a small folder, with a fresh feature cache;
the steady throughput (large - small images) / (large - small seconds) removes process start-up and
model loading, which a long job pays once. Scaling efficiency = throughput(N) / (N * throughput(1)).

    python benchmarks/scale.py            # writes benchmarks/results/scale.json and docs/scale.md's table
    python benchmarks/scale.py --images 256 --small 64   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import ROOT, current_commit

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
DOC = ROOT / "docs" / "scale.md"
MARK_BEGIN, MARK_END = "<!-- scale-table:begin -->", "<!-- scale-table:end -->"


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize((256, 256), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def make_model(folder: Path) -> tuple[Path, Path]:
    """A ViT-B/32 checkpoint with seeded random weights, and a positive prompts artifact for it."""
    import open_clip
    from safetensors.torch import save_file

    from negprompt_cli.artifact import PromptArtifact, save_prompts

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    weights = folder / "vit-b-32-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    prompts = folder / "prompts.safetensors"
    width = model.token_embedding.weight.shape[1]
    save_prompts(PromptArtifact("positive", {"ctx_pos": torch.randn(16, width) * 0.02},
                                {"backbone": "ViT-B/32", "pretrained": str(weights), "quick_gelu": False},
                                {"n_ctx": 16, "suffix": "."}, [f"class {i}" for i in range(10)]), prompts)
    return weights, prompts


def timed_score(processes: int, threads: int | None, images: Path, prompts: Path, work: Path, batch: int) -> float:
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    out = work / f"scores-{processes}-{threads}-{images.name}.csv"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEGPROMPT_DEVICE": os.environ.get("NEGPROMPT_DEVICE", "auto")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    args = ["score", str(images), "--prompts", str(prompts), "--cache-dir", str(cache), "--batch-size", str(batch),
            "--out", str(out), "--quiet"]
    if processes == 1:
        cmd = [sys.executable, "-m", "negprompt_cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "negprompt_cli", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, prompts = make_model(work)
        large, small = work / "large", work / "small"
        make_jpegs(large, args.images)
        make_jpegs(small, args.small)
        cpus = os.cpu_count() or 1
        settings = [(1, 1, "1 process, 1 thread"), (1, None, f"1 process, {torch.get_num_threads()} threads "
                                                             "(torch default)")]
        settings += [(n, 1, f"{n} processes (torchrun), 1 thread each") for n in args.processes if n > 1]
        rows = []
        for processes, threads, label in settings:
            big = timed_score(processes, threads, large, prompts, work, args.batch_size)
            little = timed_score(processes, threads, small, prompts, work, args.batch_size)
            steady = (args.images - args.small) / max(big - little, 1e-9)
            rows.append({"label": label, "processes": processes, "threads": threads, "seconds_large": big,
                         "seconds_small": little, "wall_images_per_s": args.images / big,
                         "steady_images_per_s": steady})
            print(f"{label}: {steady:.1f} img/s steady, {args.images / big:.1f} img/s wall", file=sys.stderr)
        base = rows[0]["steady_images_per_s"]
        for row in rows:
            row["efficiency"] = row["steady_images_per_s"] / (row["processes"] * base) if row["threads"] == 1 else None
    device = os.environ.get("NEGPROMPT_DEVICE", "auto")
    return {"commit": current_commit(), "date": time.strftime("%Y-%m-%d"), "backbone": "ViT-B/32 (random weights)",
            "images": args.images, "small": args.small, "image_size": "256x256 JPEG", "batch_size": args.batch_size,
            "device": device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
            "machine": {"cpus": cpus, "torch": torch.__version__, "python": platform.python_version(),
                        "platform": platform.platform()}, "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Measured by `python benchmarks/scale.py` at commit {results['commit']} ({results['date']}) on "
             f"{results['machine']['cpus']} CPU cores ({results['device']}), torch {results['machine']['torch']}: "
             f"`negprompt score` on {results['images']} {results['image_size']}s, {results['backbone']}, "
             f"batch {results['batch_size']}, fresh feature cache. Steady = ({results['images']} − "
             f"{results['small']} images) / (difference in wall time): start-up and model loading excluded.",
             "",
             "| setting | wall s | wall img/s | steady img/s | scaling efficiency |",
             "|---|---|---|---|---|"]
    for row in results["rows"]:
        efficiency = f"{row['efficiency']:.2f}" if row["efficiency"] is not None else "—"
        lines.append(f"| {row['label']} | {row['seconds_large']:.1f} | {row['wall_images_per_s']:.1f} | "
                     f"{row['steady_images_per_s']:.1f} | {efficiency} |")
    return "\n".join(lines)


def write_doc(results: dict[str, Any]) -> None:
    text = DOC.read_text()
    start, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    DOC.write_text(text[:start] + "\n" + markdown(results) + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--small", type=int, default=64)
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--docs-only", action="store_true", help="re-render docs/scale.md from the stored results")
    args = parser.parse_args()
    if args.docs_only:
        write_doc(json.loads(RESULTS.read_text()))
        return
    results = run(args)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(results)
    print(markdown(results))


if __name__ == "__main__":
    main()
