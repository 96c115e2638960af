"""Start-up: what a command costs before and around its real work, on the shipped toy CLIP (#36 item 4).

``python benchmarks/startup.py`` writes ``benchmarks/results/startup.json`` and re-renders docs/performance.md
(whose other sections come from the stored results of ``perf.py``, ``lexicon.py`` and ``gpu.py``). Not part
of the test suite. Each figure is the median wall time of ``--repeat`` fresh processes (the interpreter start
and every import included, as a user's command pays them):

* ``score``, 1 image, empty feature cache (the first call anyone types);
* ``score``, about 1,200 images, every one already in the feature cache (a rerun: no image is encoded);
* ``report`` on those score files (no model at all);
* ``negprompt.Detector.from_prompts`` (the Python API's first call), in a fresh interpreter;
* the import breakdown of the score stage (``python -X importtime``): torch, torchvision, open_clip, timm and
  negprompt's own modules, cumulative milliseconds.

The issue's aims (a warm-cache score of 1,000 images under 2 s, ``report`` under 1.5 s) are printed beside the
measurements; a run whose images are cached and whose prompts hold their text features still loads the model
today (the lazy backbone is the open part of the issue).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, current_commit  # noqa: E402  (benchmarks/ is run as scripts)

RESULTS = ROOT / "benchmarks" / "results" / "startup.json"
AIMS = {"score_warm_seconds": 2.0, "report_seconds": 1.5}
IMPORTS = ("torch", "torchvision", "open_clip", "timm", "negprompt_cli")


def negprompt() -> list[str]:
    exe = Path(sys.executable).with_name("negprompt")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "negprompt_cli"]


def wall(args: list[str], repeat: int, env: dict[str, str], before=None) -> list[float]:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args[:3])} ... failed: {done.stderr[-500:]}")
    return times


def import_breakdown(env: dict[str, str]) -> dict[str, float]:
    """Cumulative import milliseconds of the score stage's heaviest packages (the first time each is named)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import negprompt_cli.stages.score"],
                          capture_output=True, text=True, env=env)
    found: dict[str, float] = {}
    total = 0.0
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if not match:
            continue
        cumulative, depth, name = int(match.group(1)) / 1000, len(match.group(2)), match.group(3)
        if name in IMPORTS and name not in found:
            found[name] = round(cumulative, 1)
        if name == "negprompt_cli.stages.score" and depth == 1:
            total = cumulative
    found["negprompt_cli.stages.score (all)"] = round(total, 1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cli = negprompt()
    with tempfile.TemporaryDirectory(prefix="negprompt-startup-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "NEGPROMPT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        demo = subprocess.run([*cli, "demo", "--workdir", str(work / "demo")], capture_output=True, text=True,
                              env=env)
        if demo.returncode != 0:
            raise SystemExit(f"demo failed: {demo.stderr[-500:]}")
        d = work / "demo"
        prompts = d / "negprompt_all.safetensors"
        folders = [d / "test", d / "ood_near", d / "ood_unnamed", d / "ood_far"]
        images = sum(1 for f in folders for p in f.rglob("*.png"))
        one = next((d / "test").rglob("*.png"))
        cold_cache = work / "cold"

        def empty_cold_cache() -> None:
            subprocess.run(["rm", "-rf", str(cold_cache)], check=True)

        score_one = wall([*cli, "score", str(one), "--prompts", str(prompts), "--cache-dir", str(cold_cache),
                          "--out", str(work / "one.csv"), "--quiet"], args.repeat, env, before=empty_cold_cache)
        warm_args = [*cli, "score", *map(str, folders), "--prompts", str(prompts), "--cache-dir", str(d / "cache"),
                     "--out", str(work / "all.csv"), "--quiet"]
        wall(warm_args, 1, env)  # every image into the cache
        score_warm = wall(warm_args, args.repeat, env)
        report = wall([*cli, "report", "--id", str(d / "id.csv"), "--ood", f"near={d / 'ood_near.csv'}", "--ood",
                       f"far={d / 'ood_far.csv'}", "--out", str(work / "report"), "--overwrite"], args.repeat, env)
        detector = wall([sys.executable, "-c", "import sys, negprompt; negprompt.Detector.from_prompts(sys.argv[1], "
                         "device='cpu')", str(prompts)], args.repeat, env)
        breakdown = import_breakdown(env)
    result = {
        "commit": current_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "backbone": "toy",
        "repeat": args.repeat,
        "images_warm": images,
        "seconds": {"score_one_cold": statistics.median(score_one), "score_warm": statistics.median(score_warm),
                    "report": statistics.median(report), "detector_from_prompts": statistics.median(detector)},
        "imports_ms": breakdown,
        "aims": AIMS,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    if args.out == RESULTS:  # docs/performance.md, re-rendered from the stored results (perf.py renders it whole)
        import perf  # noqa: PLC0415  (benchmarks/ is run as scripts)

        perf.write_docs(json.loads(perf.RESULTS.read_text()))


def markdown(result: dict) -> str:
    """The docs/performance.md section (rendered by ``perf.py --docs`` from results/startup.json)."""
    s, imports = result["seconds"], result["imports_ms"]
    aims = result["aims"]
    return "\n".join([
        "## Start-up (the toy backbone)",
        "",
        "What a command costs around its real work: the interpreter, the imports, loading the model. "
        "`python benchmarks/startup.py` (`benchmarks/results/startup.json`), median of "
        f"{result['repeat']} fresh processes, {result['machine']['cpus']} CPU cores, commit `{result['commit']}`:",
        "",
        "| command | seconds | aim |",
        "|---|---|---|",
        f"| `score`, 1 image, empty feature cache | {s['score_one_cold']:.2f} | |",
        f"| `score`, {result['images_warm']:,} images all in the feature cache | {s['score_warm']:.2f} | "
        f"< {aims['score_warm_seconds']:.1f} |",
        f"| `report` (no model) | {s['report']:.2f} | < {aims['report_seconds']:.1f} |",
        f"| `negprompt.Detector.from_prompts` (fresh interpreter) | {s['detector_from_prompts']:.2f} | |",
        "",
        "Imports of the score stage, cumulative milliseconds (`python -X importtime`): "
        + ", ".join(f"{name} {ms:,.0f}" for name, ms in imports.items()) + ".",
        "A warm-cache score still builds the model (open_clip, with torchvision and timm) although every image is "
        "cached and the prompts hold their text features: loading no model there is the open part of issue #36.",
        "",
    ])


if __name__ == "__main__":
    main()
