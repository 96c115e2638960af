"""GPU harness: the numbers issue #9 asks for, in one run on one GPU (``scripts/gpu-check.sh`` calls it).

* **fit-neg step** at C = 100 and 1000 (ViT-B/16 text tower, seeded random weights, P = 2, batch 64):
  the released-style step (every C·P prompt at full length 77, per-class loops; ``common.py``'s
  reference) against ours in fp32 and bf16, with ``--text-chunk auto`` and 256: seconds per step,
  peak GPU memory, ratio, max |Δgrad| against the reference (fp32) and, for bf16, max |Δ| / max |g|
  against our fp32 gradient.
* **ImageNet-scale epoch**: ``train()`` over C = 1000 × 16 shots of cached features (250 steps,
  batch 64), bf16 and fp32, ``--text-chunk auto``.
* **score**: ImageNet-like JPEGs (500×375, quality 90) with ViT-B/16 and ViT-B/32 (random weights),
  fp32 and bf16: bare ``encode_image`` on pre-decoded batches, the GPU decoder alone (decode + resize
  + crop + normalise), and ``score`` end to end (tensor path; and the PIL path once), as images/s
  and the ratio to min(bare, decoder), naming which of the two is the ceiling.

``--smoke`` runs every section with tiny sizes on whatever device there is (how the script is
checked on CPU before GPU time is spent). Writes ``gpu.json`` and ``gpu.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED, P, current_commit, inputs, reference_official_loss, text_backbone  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else None


def timed(step, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


# -- fit-neg steps --------------------------------------------------------------------------------------------
def reference_step(backbone, c: int, steps: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    model = backbone.model
    names, ctx_pos, ctx_neg, f, labels = inputs(c, backbone.text_width, model.text_projection.shape[1])
    tokens = backbone.tokenizer([" ".join(["X"] * 16 + [n]) + "." for n in names]).to(DEVICE)
    emb = model.token_embedding(tokens)
    prefix, suffix = emb[:, :1], emb[:, 17:]
    f, labels = f.to(DEVICE), labels.to(DEVICE)

    def encode(rows: torch.Tensor, rows_tokens: torch.Tensor, pre, suf) -> torch.Tensor:  # type: ignore[no-untyped-def]
        x = torch.cat([pre, rows, suf], dim=1) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        x = x[torch.arange(x.shape[0], device=DEVICE), rows_tokens.argmax(-1)] @ model.text_projection
        return F.normalize(x, dim=-1)

    with torch.no_grad():
        pos = encode(ctx_pos.to(DEVICE).expand(c, -1, -1), tokens, prefix, suffix)
    ctx = torch.nn.Parameter(ctx_neg.clone().to(DEVICE))
    out: dict[str, Any] = {}

    def step() -> None:
        ctx.grad = None
        neg = encode(ctx.repeat_interleave(c, dim=0), tokens.repeat(P, 1), prefix.repeat(P, 1, 1),
                     suffix.repeat(P, 1, 1))
        loss = reference_official_loss(f, pos, neg, labels, model.logit_scale.exp(), c)
        loss.backward()
        out["loss"] = float(loss)

    reset_peak()
    times = timed(step, steps)
    return {"seconds": times, "peak_gb": peak_gb(), "loss": out["loss"], "grad": ctx.grad.detach().cpu()}


def our_step(backbone, c: int, steps: int, precision: str, chunk: int | str | None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from negprompt_cli.devices import autocast
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.registry import get_host
    from negprompt_cli.training.learners import PromptSettings
    from negprompt_cli.training.memory import resolve_text_chunk

    encoder = SoftPromptTextEncoder(backbone)
    names, ctx_pos, ctx_neg, f, labels = inputs(c, backbone.text_width, backbone.model.text_projection.shape[1])
    prompts = encoder.tokenize(names, 16, ".")
    resolved = resolve_text_chunk(chunk, backbone=backbone, prompts=prompts, prompts_per_class=P,
                                  class_specific=False, precision=precision)
    module = get_host().learner("negprompt")(encoder, prompts, PromptSettings(n_ctx=16), torch.Generator(),
                                             ctx_pos=ctx_pos, n_neg=P, loss_variant="official",
                                             text_chunk=resolved)
    module.ctx_neg.data.copy_(ctx_neg.to(DEVICE))
    f, labels = f.to(DEVICE), labels.to(DEVICE)
    out: dict[str, Any] = {}

    def step() -> None:
        module.ctx_neg.grad = None
        with autocast(DEVICE, precision):
            loss, _ = module.loss_and_backward(f, labels)
        out["loss"] = float(loss)

    reset_peak()
    times = timed(step, steps)
    return {"seconds": times, "peak_gb": peak_gb(), "loss": out["loss"], "grad": module.ctx_neg.grad.detach().cpu(),
            "text_chunk": resolved}


def steady(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def fit_neg_section(classes: list[int], steps: int) -> list[dict[str, Any]]:
    backbone = text_backbone()
    backbone.model.to(DEVICE)
    rows = []
    for c in classes:
        ref = reference_step(backbone, c, steps)
        row: dict[str, Any] = {"classes": c, "reference_s": steady(ref["seconds"]), "reference_peak_gb": ref["peak_gb"]}
        fp32_grad = None
        for precision in ("fp32", "bf16"):
            for chunk in ("auto", 256):
                ours = our_step(backbone, c, steps, precision, chunk)
                key = f"{precision}_chunk_{chunk}"
                grad = ours["grad"]
                entry = {"s": steady(ours["seconds"]), "peak_gb": ours["peak_gb"], "text_chunk": ours["text_chunk"],
                         "ratio": steady(ref["seconds"]) / steady(ours["seconds"]),
                         "max_abs_dgrad_vs_reference": float((grad - ref["grad"]).abs().max()),
                         "relative_dgrad_vs_reference": float((grad - ref["grad"]).abs().max()
                                                              / ref["grad"].abs().max())}
                if precision == "fp32" and chunk == "auto":
                    fp32_grad = grad
                if precision == "bf16" and fp32_grad is not None:
                    entry["relative_dgrad_vs_fp32"] = float((grad - fp32_grad).abs().max() / fp32_grad.abs().max())
                row[key] = entry
                torch.cuda.empty_cache() if DEVICE.type == "cuda" else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def epoch_section(classes: int, shots: int) -> list[dict[str, Any]]:
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.registry import get_host
    from negprompt_cli.training.learners import PromptSettings
    from negprompt_cli.training.loop import OptimConfig, train
    from negprompt_cli.training.memory import resolve_text_chunk

    backbone = text_backbone()
    backbone.model.to(DEVICE)
    encoder = SoftPromptTextEncoder(backbone)
    names, ctx_pos, _, _, _ = inputs(classes, backbone.text_width, backbone.model.text_projection.shape[1])
    prompts = encoder.tokenize(names, 16, ".")
    g = torch.Generator().manual_seed(SEED)
    feats = F.normalize(torch.randn(classes * shots, backbone.model.text_projection.shape[1], generator=g), dim=-1)
    labels = torch.arange(classes).repeat_interleave(shots)
    rows = []
    for precision in ("bf16", "fp32"):
        chunk = resolve_text_chunk("auto", backbone=backbone, prompts=prompts, prompts_per_class=P,
                                   class_specific=False, precision=precision)
        module = get_host().learner("negprompt")(encoder, prompts, PromptSettings(n_ctx=16), torch.Generator(),
                                                 ctx_pos=ctx_pos, n_neg=P, text_chunk=chunk)
        config = OptimConfig(epochs=1, batch_size=64, lr=0.1, momentum=0.0, weight_decay=0.0, warmup_epochs=0)
        sync()
        start = time.perf_counter()
        train(module, feats, labels, config, precision=precision, quiet=True)
        sync()
        row = {"precision": precision, "classes": classes, "features": len(labels),
               "steps": -(-len(labels) // 64), "text_chunk": chunk, "seconds": time.perf_counter() - start}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# -- score ----------------------------------------------------------------------------------------------------
def make_jpegs(folder: Path, n: int, size: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)).astype(np.int16)
        image += rng.integers(-10, 11, size=image.shape, dtype=np.int16)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def score_section(archs: list[str], images: Path, batch: int, with_pil: bool) -> list[dict[str, Any]]:
    from negprompt_cli.devices import autocast
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.image_features import EncodeOptions
    from negprompt_cli.inputs.pixels import decode_jpegs, tensor_preprocess_for
    from negprompt_cli.outputs.artifact import PromptArtifact, save_prompts
    from negprompt_cli.stages.score import ScoreOptions, score

    paths = sorted(images.glob("*.jpg"))
    blobs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    rows = []
    for arch in archs:
        name = {"ViT-B-32": "ViT-B/32", "ViT-B-16": "ViT-B/16"}.get(arch, arch)
        torch.manual_seed(SEED)
        start = time.perf_counter()
        backbone = load_backbone(BackboneRequest(name, pretrained="none", device=str(DEVICE)))
        load_seconds = time.perf_counter() - start  # score loads the same backbone once more
        spec = tensor_preprocess_for(backbone.preprocess)
        assert spec is not None
        # the decoder alone: bytes on the host -> normalised pixels on the device
        sync()
        start = time.perf_counter()
        pixels = [spec(decode_jpegs(blobs[i:i + batch], DEVICE)) for i in range(0, len(blobs), batch)]
        sync()
        decoder_rate = len(blobs) / (time.perf_counter() - start)
        for precision in ("fp32", "bf16"):
            with torch.no_grad(), autocast(DEVICE, precision):
                backbone.model.encode_image(pixels[0])  # warm-up
                sync()
                start = time.perf_counter()
                for chunk in pixels:
                    backbone.model.encode_image(chunk)
                sync()
            bare = len(blobs) / (time.perf_counter() - start)
            runs = [("tensor", "score_images_per_s")] + ([("pil", "score_pil_images_per_s")]
                                                          if with_pil and precision == "fp32" else [])
            row: dict[str, Any] = {"arch": arch, "precision": precision, "images": len(paths),
                                   "bare_images_per_s": bare, "decoder_images_per_s": decoder_rate}
            for decoder, key in runs:
                with tempfile.TemporaryDirectory() as tmp:
                    prompts = Path(tmp) / "p.safetensors"
                    save_prompts(PromptArtifact("positive", {"ctx_pos": torch.randn(16, backbone.text_width) * 0.02},
                                                backbone.identity(), {"n_ctx": 16, "suffix": "."},
                                                [f"class {i}" for i in range(10)]), prompts)
                    os.environ["NEGPROMPT_DECODE"] = decoder
                    torch.manual_seed(SEED)
                    options = ScoreOptions(images=images, prompts=prompts, out=Path(tmp) / "s.csv",
                                           encode=EncodeOptions(cache_dir=Path(tmp) / "c", batch_size=batch,
                                                                precision=precision, quiet=True))
                    start = time.perf_counter()
                    summary = score(options)
                    seconds = time.perf_counter() - start
                    os.environ.pop("NEGPROMPT_DECODE", None)
                    row[key] = summary["encoded"] / max(seconds - load_seconds, 1e-9)  # excluding model load
                    row[key.replace("images_per_s", "end_to_end_images_per_s")] = summary["encoded"] / seconds
            ceiling = min(bare, decoder_rate)
            row["model_load_seconds"] = load_seconds
            row["ceiling"] = "encode_image" if bare <= decoder_rate else "decoder"
            row["ratio_to_ceiling"] = row["score_images_per_s"] / ceiling
            rows.append(row)
            print(json.dumps(row), flush=True)
        del backbone, pixels
        torch.cuda.empty_cache() if DEVICE.type == "cuda" else None
    return rows


# -- report ---------------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# GPU check ({m['gpu'] or 'no GPU: ' + m['device']})", "",
             f"commit `{results['commit']}`, torch {m['torch']}, CUDA {m.get('cuda')}, python {m['python']}"
             + (" — **smoke run: tiny sizes, not a measurement**" if results["smoke"] else ""), ""]
    if results.get("fit_neg"):
        lines += ["## fit-neg step (ViT-B/16 text tower, P = 2, batch 64)", "",
                  "| C | released-style s | fp32 auto | fp32 chunk 256 | bf16 auto | bf16 chunk 256 "
                  "| bf16 max abs Δg / max abs g vs fp32 |", "|---|---|---|---|---|---|---|"]
        for r in results["fit_neg"]:
            cells = []
            for key in ("fp32_chunk_auto", "fp32_chunk_256", "bf16_chunk_auto", "bf16_chunk_256"):
                e = r[key]
                mem = f", {e['peak_gb']:.1f} GB" if e["peak_gb"] is not None else ""
                cells.append(f"{e['s']:.3f} s = {e['ratio']:.1f}×{mem} (chunk {e['text_chunk']})")
            mem = f" ({r['reference_peak_gb']:.1f} GB)" if r["reference_peak_gb"] is not None else ""
            lines.append(f"| {r['classes']} | {r['reference_s']:.3f}{mem} | " + " | ".join(cells) + " | "
                         f"{r['bf16_chunk_auto'].get('relative_dgrad_vs_fp32', float('nan')):.4f} |")
    if results.get("epoch"):
        lines += ["", "## One fit-neg epoch through train()", "",
                  "| precision | C | features | steps | text chunk | s |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['precision']} | {r['classes']} | {r['features']} | {r['steps']} | {r['text_chunk']} | "
                  f"{r['seconds']:.1f} |" for r in results["epoch"]]
    if results.get("score"):
        lines += ["", "## score throughput (500×375 JPEGs, quality 90)", "",
                  "| backbone | precision | bare encode_image img/s | decoder img/s | score img/s (excl. model load) "
                  "| ratio to ceiling | ceiling | score end to end img/s | score, PIL path img/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['arch']} | {r['precision']} | {r['bare_images_per_s']:.0f} | "
                  f"{r['decoder_images_per_s']:.0f} | {r['score_images_per_s']:.0f} | "
                  f"{r['ratio_to_ceiling']:.2f} | {r['ceiling']} | "
                  f"{r['score_end_to_end_images_per_s']:.0f} | "
                  f"{r.get('score_pil_images_per_s', float('nan')):.0f} |" for r in results["score"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script itself")
    parser.add_argument("--sections", nargs="+", default=["fit_neg", "epoch", "score"])
    args = parser.parse_args()
    smoke = args.smoke
    results: dict[str, Any] = {
        "commit": current_commit(), "smoke": smoke,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "device": str(DEVICE), "gpu": torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else None,
                    "cpus": os.cpu_count()}}
    started = time.time()
    if "fit_neg" in args.sections:
        results["fit_neg"] = fit_neg_section([8] if smoke else [100, 1000], 2 if smoke else 4)
    if "epoch" in args.sections:
        results["epoch"] = epoch_section(8 if smoke else 1000, 2 if smoke else 16)
    if "score" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            images = Path(tmp) / "jpegs"
            make_jpegs(images, 16 if smoke else 2048, (500, 375))
            results["score"] = score_section(["ViT-B-32"] if smoke else ["ViT-B-16", "ViT-B-32"], images,
                                             8 if smoke else 256, with_pil=True)
    results["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "gpu.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
