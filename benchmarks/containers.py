"""Images from shards and tables against the same images as files (issue #32): `negprompt score` throughput,
and peak memory as the number of samples grows.

Throughput: N generated 256x256 JPEGs as files, as WebDataset tar shards (1,000 samples each, written with
webdataset's TarWriter) and as one Parquet table (the datasets Image layout, row groups of 500), scored by the
real command line with the shipped `toy` CLIP (so decoding and reading, which is what differs between the
inputs, dominate), zero-shot mcm, a fresh feature cache, default decoding workers. Each kind runs on a large
and a small input; the steady rate (large - small) / (large - small seconds) removes start-up.

Memory: N 32x32 PNGs as files, as shards of 10,000 samples and as one Parquet table (row groups of 500), scored
in one process with no decoding workers (the process measured is the whole run), peak resident set size of the
child (getrusage), and its resident size sampled every half second over the run's second half.

    python benchmarks/containers.py                       # writes benchmarks/results/containers.json, docs table
    python benchmarks/containers.py --images 1000 --small 200 --sizes 2000 10000   # quicker
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import ROOT, current_commit
from scale import make_jpegs, peak_rss

RESULTS = ROOT / "benchmarks" / "results" / "containers.json"
DOC = ROOT / "docs" / "scale.md"
BEGIN, END = "<!-- containers-table:begin -->", "<!-- containers-table:end -->"
SHARD = 1000
MEMORY_SHARD = 10_000


def write_shards(files: list[Path], folder: Path, per_shard: int) -> str:
    """The files as WebDataset shards of ``per_shard`` samples; the brace pattern naming them."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    count = -(-len(files) // per_shard)
    for k in range(count):
        with wds.TarWriter(str(folder / f"{k:06d}.tar")) as sink:
            for p in files[k * per_shard:(k + 1) * per_shard]:
                sink.write({"__key__": p.stem, p.suffix[1:]: p.read_bytes()})
    return str(folder / f"{{000000..{count - 1:06d}}}.tar")


def write_table(files: list[Path], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = pa.array([{"bytes": p.read_bytes(), "path": p.name} for p in files],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images}), path, row_group_size=500)


def run(inputs: str, work: Path, names: Path, *, workers: int | None = None,
        level: list[float] | None = None) -> tuple[float, float]:
    """(peak RSS MiB, wall seconds) of one `negprompt score` on ``inputs`` with a fresh feature cache; ``level``
    (a list) also gets the lowest and highest resident size sampled every half second over the second half of
    the run (start-up long done): level there means no cost per sample."""
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    cmd = [sys.executable, "-m", "negprompt_cli", "score", inputs, "--zero-shot", "--names", str(names),
           "--backbone", "toy", "--scorer", "mcm", "--cache-dir", str(cache), "--out", str(work / "s.jsonl"),
           "--format", "jsonl", "--quiet"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEGPROMPT_DEVICE": "cpu"}
    if level is None:
        return peak_rss(cmd, env)
    pids: list[int] = []
    measured: list[tuple[float, float]] = []
    runner = threading.Thread(target=lambda: measured.append(peak_rss(cmd, env, on_start=pids.append)))
    started = time.perf_counter()
    runner.start()
    samples: list[tuple[float, float]] = []
    while runner.is_alive():
        time.sleep(0.5)
        kib = _resident_kib(pids[0]) if pids else None
        if kib is not None:
            samples.append((time.perf_counter() - started, kib / 1024))
    rss, seconds = measured[0]
    late = [mib for t, mib in samples if t >= seconds / 2]
    level[:] = [round(min(late), 1), round(max(late), 1)] if late else []
    return rss, seconds


def _resident_kib(pid: int) -> int | None:
    """The process's resident size now (None once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), None)


def throughput(large: int, small: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = work / "names.txt"
        names.write_text("".join(f"class {i}\n" for i in range(10)))
        for n in (small, large):
            make_jpegs(work / f"files-{n}", n, seed=n)
        inputs: dict[str, dict[int, str]] = {"files": {}, "WebDataset shards": {}, "Parquet": {}}
        for n in (small, large):
            files = sorted((work / f"files-{n}").iterdir())
            inputs["files"][n] = str(work / f"files-{n}")
            inputs["WebDataset shards"][n] = write_shards(files, work / f"shards-{n}", SHARD)
            write_table(files, work / f"table-{n}.parquet")
            inputs["Parquet"][n] = str(work / f"table-{n}.parquet")
        for kind, given in inputs.items():
            seconds = {n: run(given[n], work, names)[1] for n in (small, large)}
            rate = (large - small) / (seconds[large] - seconds[small])
            rows.append({"input": kind, "images": large, "seconds": round(seconds[large], 2),
                         "images_per_second": round(rate, 1)})
            print(f"{kind}: {rate:.0f} images/s", file=sys.stderr)
    return rows


def memory(sizes: list[int]) -> list[dict[str, Any]]:
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = work / "names.txt"
        names.write_text("".join(f"class {i}\n" for i in range(10)))
        rng = np.random.default_rng(0)
        made: list[Path] = []
        for n in sorted(sizes):
            for i in range(len(made), n):
                sub = work / "files" / f"{i // 1000:05d}"
                sub.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                low = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
                Image.fromarray(low).resize((32, 32), Image.Resampling.BILINEAR).save(buffer, format="PNG")
                (sub / f"{i:07d}.png").write_bytes(buffer.getvalue())
                made.append(sub / f"{i:07d}.png")
            pattern = write_shards(made, work / f"shards-{n}", MEMORY_SHARD)
            write_table(made, work / f"table-{n}.parquet")
            for kind, given in (("files", str(work / "files")), ("WebDataset shards", pattern),
                                ("Parquet", str(work / f"table-{n}.parquet"))):
                level: list[float] = []
                rss, seconds = run(given, work, names, workers=0, level=level)
                rows.append({"input": kind, "samples": n, "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1),
                             "rss_second_half_mib": level})
                print(f"{kind}, {n}: {rss:.0f} MiB, {seconds:.0f} s", file=sys.stderr)
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [f"Measured at {result['commit']} on {result['date']} ({result['machine']['cpus']} CPU cores, torch "
             f"{result['machine']['torch']}; `python benchmarks/containers.py`, "
             "benchmarks/results/containers.json):", "",
             "| input | 256x256 JPEGs | images/s (steady) |", "|---|---|---|"]
    lines += [f"| {r['input']} | {r['images']} | {r['images_per_second']} |" for r in result["throughput"]]
    lines += ["", "| input | samples (32x32 PNG) | peak RSS (MiB) | RSS in the run's second half (MiB) | seconds |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['input']} | {r['samples']} | {r['peak_rss_mib']} | "
              f"{'-'.join(map(str, r.get('rss_second_half_mib') or [])) or '—'} | {r['seconds']} |"
              for r in result["memory"]]
    return "\n".join(lines)


def write_doc(result: dict[str, Any]) -> None:
    text = DOC.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + table(result) + "\n" + text[stop:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    result = {"commit": current_commit(), "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
              "throughput": throughput(args.images, args.small), "memory": memory(args.sizes)}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    write_doc(result)


if __name__ == "__main__":
    main()
