"""Performance harness: fit-neg steps (ours vs the released code's approach) and score throughput.

One command: ``python benchmarks/perf.py`` prints a table and writes ``benchmarks/results/perf.json``
(and ``docs/performance.md`` with ``--docs``). Not part of the test suite.

* **fit-neg step** at C ∈ {100, 200, 1000}, P = 2, a batch of 64 cached (random unit) image
  features, the ViT-B/16 text tower with seeded random weights (speed does not depend on the
  values). *Ours*: shared-prefix encoding (each negative context's prefix once per layer,
  class-name suffixes bucketed by length), gradient caching with ``--text-chunk``, vectorised
  losses. *Reference-style*: what the released code does for the same loss — every C·P prompt
  through the tower at the full context length 77 in fp32, NPD/NND with per-class Python loops,
  no chunking. Both compute the released-code ("official") loss; the harness reports
  seconds/step, peak RSS, the ratio, and max |Δloss| and max |Δgrad| between the two.
  Each measurement runs in its own process so peak RSS is its own.
* **score throughput** on generated 224×224 JPEGs with ViT-B/32 and ViT-B/16 (random weights):
  ``score`` end to end (decode, preprocess, encode, score, write) vs bare ``encode_image`` over
  the same pre-decoded batches; and a second ``score`` run on the same images (feature cache:
  zero encoder calls).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import ROOT, SEED, P, current_commit, inputs, reference_official_loss, text_backbone  # noqa: E402,E501

RESULTS = ROOT / "benchmarks" / "results" / "perf.json"


# -- the workers (run in a child process each) ----------------------------------------------------------------
def worker_ours(c: int, steps: int, text_chunk: int | None, out: Path) -> dict[str, Any]:
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.registry import get_host
    from negprompt_cli.training.learners import PromptSettings

    backbone = text_backbone()
    encoder = SoftPromptTextEncoder(backbone)
    names, ctx_pos, ctx_neg, f, labels = inputs(c, backbone.text_width, backbone.model.text_projection.shape[1])
    prompts = encoder.tokenize(names, 16, ".")
    module = get_host().learner("negprompt")(encoder, prompts, PromptSettings(n_ctx=16), torch.Generator(),
                                             ctx_pos=ctx_pos, n_neg=P, loss_variant="official",
                                             text_chunk=text_chunk)
    module.ctx_neg.data.copy_(ctx_neg)
    times, loss = [], None
    for _ in range(steps):
        module.ctx_neg.grad = None
        start = time.perf_counter()
        loss, _ = module.loss_and_backward(f, labels)
        times.append(time.perf_counter() - start)
    torch.save({"loss": loss.item(), "grad": module.ctx_neg.grad.clone()}, out)
    return {"seconds": times, "loss": loss.item()}


def worker_reference(c: int, steps: int, out: Path) -> dict[str, Any]:
    backbone = text_backbone()
    model = backbone.model
    names, ctx_pos, ctx_neg, f, labels = inputs(c, backbone.text_width, model.text_projection.shape[1])
    tokenizer = backbone.tokenizer
    tokens = tokenizer([" ".join(["X"] * 16 + [n]) + "." for n in names])  # [C, 77]
    emb = model.token_embedding(tokens)
    prefix, suffix = emb[:, :1], emb[:, 17:]

    def encode(ctx_rows: torch.Tensor, rows_tokens: torch.Tensor, pre, suf) -> torch.Tensor:  # type: ignore[no-untyped-def]
        x = torch.cat([pre, ctx_rows, suf], dim=1) + model.positional_embedding  # full length 77
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(x.shape[0]), rows_tokens.argmax(-1)] @ model.text_projection
        return F.normalize(x, dim=-1)

    with torch.no_grad():
        pos = encode(ctx_pos.expand(c, -1, -1), tokens, prefix, suffix)
    ctx = torch.nn.Parameter(ctx_neg.clone())
    times, loss = [], None
    for _ in range(steps):
        ctx.grad = None
        start = time.perf_counter()
        rows = ctx.repeat_interleave(c, dim=0)  # prompt-major: row l*C + k
        neg = encode(rows, tokens.repeat(P, 1), prefix.repeat(P, 1, 1), suffix.repeat(P, 1, 1))
        loss = reference_official_loss(f, pos, neg, labels, model.logit_scale.exp(), c)
        loss.backward()
        times.append(time.perf_counter() - start)
    torch.save({"loss": loss.item(), "grad": ctx.grad.clone()}, out)
    return {"seconds": times, "loss": loss.item()}


def worker_score(arch: str, images: Path, batch: int) -> dict[str, Any]:
    from PIL import Image

    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.image_features import EncodeOptions
    from negprompt_cli.outputs.artifact import PromptArtifact, save_prompts
    from negprompt_cli.stages.score import ScoreOptions, score

    name = {"ViT-B-32": "ViT-B/32", "ViT-B-16": "ViT-B/16"}[arch]
    torch.manual_seed(SEED)
    start = time.perf_counter()
    backbone = load_backbone(BackboneRequest(name, pretrained="none", device="auto"))
    load_seconds = time.perf_counter() - start
    paths = sorted(images.glob("*.jpg"))
    decoded = []
    for p in paths:
        with Image.open(p) as img:
            decoded.append(backbone.preprocess(img.convert("RGB")))
    device = backbone.device
    with torch.no_grad():  # bare encode_image over pre-decoded batches
        backbone.model.encode_image(torch.stack(decoded[:batch]).to(device))  # warm-up
        start = time.perf_counter()
        for i in range(0, len(decoded), batch):
            backbone.model.encode_image(torch.stack(decoded[i:i + batch]).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "p.safetensors"
        width = backbone.text_width
        save_prompts(PromptArtifact("positive", {"ctx_pos": torch.randn(16, width) * 0.02},
                                    backbone.identity(), {"n_ctx": 16, "suffix": "."},
                                    [f"class {i}" for i in range(10)]), prompts)
        options = ScoreOptions(images=images, prompts=prompts, out=Path(tmp) / "s.csv", backbone=None,
                               encode=EncodeOptions(cache_dir=Path(tmp) / "c", batch_size=batch, quiet=True))
        torch.manual_seed(SEED)  # random weights: the same seed gives the same backbone (and cache key)
        start = time.perf_counter()
        first = score(options)  # includes loading the backbone again from the artifact
        cold = time.perf_counter() - start
        torch.manual_seed(SEED)
        start = time.perf_counter()
        second = score(options)
        warm = time.perf_counter() - start
    n = len(paths)
    return {"images": n, "device": str(device), "load_seconds": load_seconds, "bare_images_per_s": n / bare,
            "score_cold_images_per_s": n / cold, "score_cold_seconds": cold,
            "score_cold_excluding_load_images_per_s": n / max(cold - load_seconds, 1e-9),
            "encoded_first": first["encoded"], "encoded_second": second["encoded"], "score_warm_seconds": warm}


# -- the driver -------------------------------------------------------------------------------------------------
def run_child(args: list[str], timeout: int) -> dict[str, Any] | None:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "ours":
        c, steps, chunk, out = int(argv[1]), int(argv[2]), argv[3], Path(argv[4])
        result = worker_ours(c, steps, None if chunk == "none" else int(chunk), out)
    elif kind == "reference":
        result = worker_reference(int(argv[1]), int(argv[2]), Path(argv[3]))
    else:
        result = worker_score(argv[1], Path(argv[2]), int(argv[3]))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(json.dumps(result))


def make_jpegs(folder: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((256, 256), Image.Resampling.BICUBIC)
        img.save(folder / f"{i:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 200, 1000])
    parser.add_argument("--reference-max-classes", type=int, default=200,
                        help="run the reference only up to this C (it needs ~45 GB at C=1000)")
    parser.add_argument("--text-chunk", default="256", help="ours: --text-chunk (or 'none')")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--archs", nargs="+", default=["ViT-B-32", "ViT-B-16"])
    parser.add_argument("--skip-score", action="store_true")
    parser.add_argument("--docs", action="store_true", help="also write docs/performance.md")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "commit": current_commit(), "fit_neg": [], "score": []}
    with tempfile.TemporaryDirectory(prefix="negprompt-perf-") as tmp:
        tmp_path = Path(tmp)
        for c in args.classes:
            row: dict[str, Any] = {"classes": c, "prompts": c * P}
            ours = run_child(["ours", str(c), str(args.steps), args.text_chunk, str(tmp_path / f"ours{c}.pt")], 3600)
            row["ours"] = summarise(ours)
            if c <= args.reference_max_classes:
                ref = run_child(["reference", str(c), "1", str(tmp_path / f"ref{c}.pt")], 3600)
                row["reference"] = summarise(ref)
                if "error" not in ref and "error" not in ours:
                    a, b = torch.load(tmp_path / f"ours{c}.pt"), torch.load(tmp_path / f"ref{c}.pt")
                    row["max_abs_delta_loss"] = abs(a["loss"] - b["loss"])
                    row["max_abs_delta_grad"] = float((a["grad"] - b["grad"]).abs().max())
                    row["grad_max_abs"] = float(b["grad"].abs().max())
                    row["speedup"] = row["reference"]["seconds_per_step"] / row["ours"]["seconds_per_step"]
            else:
                row["reference"] = {"skipped": f"C={c} needs ~{45 * c / 1000:.0f} GB at full length 77 in fp32"}
            results["fit_neg"].append(row)
            print(json.dumps(row), flush=True)
        if not args.skip_score:
            images = tmp_path / "jpegs"
            make_jpegs(images, args.images)
            for arch in args.archs:
                row = run_child(["score", arch, str(images), "64"], 3600) or {}
                row["arch"] = arch
                if "bare_images_per_s" in row:
                    bare = row["bare_images_per_s"]
                    row["ratio_excluding_load"] = row["score_cold_excluding_load_images_per_s"] / bare
                    row["ratio_end_to_end"] = row["score_cold_images_per_s"] / row["bare_images_per_s"]
                results["score"].append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    if args.docs:
        write_docs(results)


def summarise(result: dict[str, Any] | None) -> dict[str, Any]:
    if not result or "error" in result:
        return result or {"error": "no result"}
    seconds = result["seconds"]
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return {"seconds_per_step": statistics.median(steady), "first_step_seconds": seconds[0],
            "peak_rss_gb": result["peak_rss_gb"], "loss": result["loss"]}


def machine() -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info




def table(results: dict[str, Any]) -> str:
    lines = ["| C | prompts | ours s/step | ours peak RSS GB | reference s/step | reference peak RSS GB | speed-up | "
             "max abs Δloss | max abs Δgrad |", "|---|---|---|---|---|---|---|---|---|"]
    for row in results["fit_neg"]:
        ours, ref = row["ours"], row["reference"]

        def cell(d: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
            return fmt.format(d[key]) if key in d else (d.get("skipped") or d.get("error") or "-")

        lines.append(f"| {row['classes']} | {row['prompts']} | {cell(ours, 'seconds_per_step')} | "
                     f"{cell(ours, 'peak_rss_gb')} | {cell(ref, 'seconds_per_step')} | {cell(ref, 'peak_rss_gb')} | "
                     + (f"{row['speedup']:.1f}× | {row['max_abs_delta_loss']:.1e} | {row['max_abs_delta_grad']:.1e}"
                        if "speedup" in row else "- | - | -") + " |")
    if results["score"]:
        lines += ["", "| backbone | images | bare encode_image img/s | score img/s (excl. model load) | ratio | "
                      "score img/s (end to end) | encoder calls on 2nd run |", "|---|---|---|---|---|---|---|"]
        for row in results["score"]:
            if "bare_images_per_s" not in row:
                lines.append(f"| {row['arch']} | error: {row.get('error')} |")
                continue
            lines.append(f"| {row['arch']} | {row['images']} | {row['bare_images_per_s']:.1f} | "
                         f"{row['score_cold_excluding_load_images_per_s']:.1f} | {row['ratio_excluding_load']:.2f} | "
                         f"{row['score_cold_images_per_s']:.1f} | {row['encoded_second']} |")
    return "\n".join(lines)


def epoch_table(results: dict[str, Any]) -> str:
    """The batch-size trade-off: a step costs about the same whatever the image batch (the text encoder
    dominates), so an epoch of 16 shots x C classes costs ceil(16 C / B) steps."""
    lines = ["| C | s/step (ours) | epoch at B=32 | B=64 | B=128 | B=256 |", "|---|---|---|---|---|---|"]
    for row in results["fit_neg"]:
        step = row["ours"].get("seconds_per_step")
        if step is None:
            continue
        cells = [f"{math.ceil(16 * row['classes'] / b) * step / 60:.1f} min" for b in (32, 64, 128, 256)]
        lines.append(f"| {row['classes']} | {step:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(results: dict[str, Any]) -> None:
    (ROOT / "docs" / "performance.md").write_text(render_docs(results))


def render_docs(results: dict[str, Any]) -> str:
    """docs/performance.md from the results files alone (tests/test_docs_numbers.py re-renders and compares)."""
    m = results["machine"]
    ours_1000 = next((r["ours"] for r in results["fit_neg"] if r["classes"] == 1000), {})
    speedups = [f"{r['speedup']:.1f}× at C={r['classes']}" for r in results["fit_neg"] if "speedup" in r]
    text = [
        "# Performance",
        "",
        f"Measured by `python benchmarks/perf.py --docs` at commit `{results['commit']}` on {m['platform']}, "
        f"{m['cpus']} CPUs ({m['threads']} torch threads), torch {m['torch']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else "; no GPU on this machine, so GPU numbers are pending") + ".",
        "",
        "## fit-neg step: ours vs the released code's approach",
        "",
        "Same loss (the released-code variant), same inputs: ViT-B/16 text tower with seeded random weights, "
        "P = 2 negative prompts, 16 context tokens, a batch of 64 cached image features. *Reference*: every "
        "C·P prompt through the tower at the full context length 77 in fp32, NPD/NND with per-class Python "
        "loops, no chunking (what the released code does). *Ours*: shared-prefix encoding (each negative "
        "context's 17-token prefix once per layer, class-name suffixes bucketed by length), vectorised "
        "losses, and above `--text-chunk` classes (256 in this harness; the CLI default is `auto`, below) "
        "gradient caching. Peak RSS is each "
        "measurement's own process.",
        "",
        table(results).split("\n\n")[0],
        "",
        f"Speed-up: {', '.join(speedups)}; loss and gradients agree to float rounding. At C = 1000 ours "
        + (f"runs in {ours_1000['seconds_per_step']:.1f} s/step with a peak of {ours_1000['peak_rss_gb']:.1f} GB; "
           if ours_1000.get("seconds_per_step") else "")
        + "the reference would need about 45 GB and does not fit this 24 GB machine.",
        "",
        "Where the time goes now: with the prefix shared, each class runs only its name tokens plus the "
        "period and EOT (about 4 of 21 positions), so the text tower's cost per step falls roughly 5×; "
        "the rest of the gap to the reference comes from the reference's full length 77 (3.7× more positions "
        "than the longest ImageNet prompt needs). Above the chunk size, gradient caching adds one "
        "no-grad forward pass (about +30 % per step) to keep memory flat.",
        "",
        "## Batch size: a user-facing trade-off, not a default change",
        "",
        "A step costs about the same whatever the image batch size (the text encoder dominates and runs "
        "once per step), so larger batches mean fewer text-encoder passes per epoch:",
        "",
        epoch_table(results),
        "",
        "Quality on the first offline world (world v1; validation grid of `benchmarks/quality.py` at commit "
        "`b31bf68`, marginal over the other settings, 10 partitions): near-OOD AUROC of the released-code loss "
        "is 84.4 ± 2.0 % at batch 16 and 83.5 ± 2.0 % at batch 64 (far-OOD 65.4 vs 63.5 %), i.e. within the "
        "spread over partitions; the paper's loss gives 77.9 vs 79.8 %. Recommendation: on slow hardware "
        "raise `--batch-size` (e.g. 256 at C = 1000 cuts a CPU epoch 4× against 64) and check the result "
        "on held-out data (`--val-fraction`); the default stays the released code's 64.",
        "",
        "## score throughput",
        "",
        table(results).split("\n\n")[1] if "\n\n" in table(results) else "(not measured)",
        "",
        "*score* includes decoding JPEGs, preprocessing, the image tower, scoring and writing the CSV "
        "(decoding runs in DataLoader workers in parallel with the model). The second run on the same "
        "images performs no image-encoder calls (the feature cache).",
        "",
        *extra_sections(),
        "## Raw results (`benchmarks/results/perf.json`)",
        "",
        "```json",
        json.dumps(results, indent=2),
        "```",
    ]
    return "\n".join(text) + "\n"


GPU_RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"


LEXICON_RESULTS = ROOT / "benchmarks" / "results" / "lexicon.json"
STARTUP_RESULTS = ROOT / "benchmarks" / "results" / "startup.json"


def extra_sections() -> list[str]:
    """Lexicon encoding (benchmarks/lexicon.py), the --text-chunk auto rule and the GPU results (from
    benchmarks/gpu.py), or say they are pending."""
    lines = []
    if LEXICON_RESULTS.exists():
        from lexicon import markdown as lexicon_markdown  # noqa: PLC0415  (benchmarks/ is run as scripts)

        lines.append(lexicon_markdown(json.loads(LEXICON_RESULTS.read_text())))
    if STARTUP_RESULTS.exists():
        from startup import markdown as startup_markdown  # noqa: PLC0415  (benchmarks/ is run as scripts)

        lines.append(startup_markdown(json.loads(STARTUP_RESULTS.read_text())))
    lines += [
        "## `--text-chunk auto` (the fit-neg default)",
        "",
        "Gradient caching bounds memory at any class count but costs one extra no-grad pass over the text "
        "tower per step (about +30 %). `auto` chunks only when one unchunked step's autograd graph would not "
        "fit: it estimates rows × layers × width × (11·S + 2·Lp) × bytes × 1.5 (rows = C·P prompts, S the "
        "longest class-name suffix, Lp = 1 + n_ctx; coefficients measured with autograd's saved-tensor hooks "
        "on the ViT-B/16 text tower, 3.3 MB per prompt row in fp32; bf16 keeps about 0.6 of that) and "
        "compares it with 80 % of the GPU's free memory, or 3 GiB on the CPU. Above the budget it picks the "
        "largest multiple of 16 classes per chunk that fits. ViT-B/16, P = 2: the CPU chunks from about "
        "C = 330; an 80 GB+ GPU never chunks at C = 1000 (about 10 GB fp32). `--text-chunk N` forces N, "
        "`0` never chunks; a device out-of-memory error during training keeps the checkpoint and names "
        "both remedies.",
        "",
        "## GPU",
        "",
    ]
    if GPU_RESULTS.exists():
        from gpu import markdown  # noqa: PLC0415  (benchmarks/ is run as scripts)

        lines += [markdown(json.loads(GPU_RESULTS.read_text())), ""]
    else:
        lines += [
            "**Pending**: no GPU has run this commit's harness yet. `bash scripts/gpu-check.sh OUT` on a CUDA machine "
            "(after `bash scripts/gpu-wheels.sh` here if it has no network) runs the in-process tests (`-m \"not "
            "slow\"`) on CUDA, the CLI pipeline in fp32/bf16/fp16 and `benchmarks/gpu.py`; copy `OUT/gpu.json` to "
            "`benchmarks/results/gpu.json` and rerun `python benchmarks/perf.py --docs`. It measures, against the "
            "issue's targets: fit-neg step ≥ 10× the released-style step at C = 1000 in fp32 and bf16; one "
            "ImageNet-scale fit-neg epoch (C = 1000, 16 shots) ≤ 20 s in bf16; `score` ≥ 0.9× min(bare `encode_image`, "
            "the GPU decoder) for ViT-B/16 and ViT-B/32 in fp32 and bf16 on 500×375 JPEGs, naming which is the "
            "ceiling. The last numbers a GPU gave (NVIDIA H200, torch 2.11 + cu130, commit ec9f869, before the device "
            "fixes, the fp32 gradient accumulation, `--text-chunk auto` and the GPU decoder): fit-neg step 4.0–7.9× "
            "the released-style step, bf16 without chunking lost half the gradient at C = 1000, one epoch 51 s (fp32, "
            "chunk 256), score 0.57× (ViT-B/16) and 0.26× (ViT-B/32) of bare `encode_image`.",
            "",
        ]
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    else:
        main()
