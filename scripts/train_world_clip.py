"""Train the offline world's CLIP from scratch (reproducible: fixed seed and step count).

Uses open_clip's own model class and writes open_clip's ``local-dir:`` layout
(``open_clip_config.json`` + ``open_clip_model.safetensors``, fp16 storage) into
``negprompt_cli/assets/world_clip`` so the package can load it offline through open_clip's
normal loader. Two things matter (found in a feasibility run):

* 30 % of captions start with 1-7 filler words, so late text positions get trained (a
  16-token learned context puts class names there);
* the contrastive loss treats every caption that matches an image as a positive (batches hold
  many duplicate captions; the stock loss would count them as mismatches).

World v2 (54 categories, textures, backgrounds): captions name the 46 named categories only; the 8
unnamed ones never appear. Zero-shot accuracy is evaluated every 1000 steps and at the end (46-way
category, colour, texture) and recorded in TRAINING.json with the run's settings and time.

Usage: python scripts/train_world_clip.py [--steps 4500] [--batch 128] [--out DIR]
(the shipped weights: 67 min on 2 CPU cores, about 15 of them shared with other jobs; ~45 min alone)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from negprompt_cli import world

CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "negprompt_cli" / "assets" / "world_clip"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def match_matrix(items: list[world.Item], captions: list[world.Caption]) -> torch.Tensor:
    """[images, captions]: 1 where the caption is true of the image (what it does not mention is free)."""
    match = torch.ones(len(items), len(captions), dtype=torch.bool)
    for field, attribute in (("category", "shape"), ("colour", "colour"), ("size", "size"), ("texture", "texture"),
                             ("background", "background")):
        vocab = sorted({getattr(i, attribute) for i in items} | {getattr(c, field) for c in captions} - {None})
        img = torch.tensor([vocab.index(getattr(i, attribute)) for i in items])
        cap = torch.tensor([vocab.index(getattr(c, field)) if getattr(c, field) is not None else -1 for c in captions])
        match &= (cap[None] == -1) | (img[:, None] == cap[None])
    return match.float()


def multi_positive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                        match: torch.Tensor) -> torch.Tensor:
    logits = scale * image @ text.t()
    to_text = match / match.sum(1, keepdim=True)
    to_image = (match / match.sum(0, keepdim=True)).t()
    return 0.5 * (torch.sum(-to_text * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-to_image * F.log_softmax(logits.t(), 1), 1).mean())


def evaluate(model, tokenizer, rng, n=1380) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Zero-shot accuracy on held-out renders: category (46-way), colour, texture."""
    out = {}
    with torch.no_grad():
        items = world.sample_items(n, rng)
        feats = model.encode_image(to_tensor(world.render(items, rng)), normalize=True)
        for name, attribute, labels, template in (
                ("category", "shape", world.NAMED, "a photo of a {}."),
                ("colour", "colour", world.COLOUR_NAMES, "a photo of a {} thing."),
                ("texture", "texture", world.TEXTURES, "a photo of a {} pattern.")):
            text = model.encode_text(tokenizer([template.format(v) for v in labels]), normalize=True)
            pred = (feats @ text.t()).argmax(1)
            truth = torch.tensor([labels.index(getattr(i, attribute)) for i in items])
            out[f"zero_shot_{name}"] = round(float((pred == truth).float().mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = open_clip.CLIP(**CONFIG)
    tokenizer = open_clip.SimpleTokenizer(context_length=CONFIG["text_cfg"]["context_length"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = 50
    start = time.time()
    history: list[dict[str, float]] = []
    for step in range(args.steps):
        lr = args.lr * (step + 1) / warmup if step < warmup else \
            0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        items = world.sample_items(args.batch, rng)
        captions = [world.caption(it, rng) for it in items]
        tokens = tokenizer([c.text for c in captions])
        image = model.encode_image(to_tensor(world.render(items, rng)), normalize=True)
        text = model.encode_text(tokens, normalize=True)
        loss = multi_positive_loss(image, text, model.logit_scale.exp(), match_matrix(items, captions))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 1000 == 999:
            model.eval()
            history.append({"step": step + 1, **evaluate(model, tokenizer, np.random.default_rng(999), n=460)})
            print(json.dumps(history[-1]), flush=True)
            model.train()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} lr {lr:.2e} scale {model.logit_scale.exp().item():.1f} "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval()
    metrics = evaluate(model, tokenizer, np.random.default_rng(12345))
    print(json.dumps(metrics), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": CONFIG, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD),
                                                      "interpolation": "bicubic", "resize_mode": "shortest"}}
    (args.out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "open_clip_model.safetensors"),
              metadata={"steps": str(args.steps), "seed": str(args.seed), "batch": str(args.batch),
                        "lr": str(args.lr), "metrics": json.dumps(metrics), "torch": torch.__version__,
                        "open_clip": open_clip.__version__})
    (args.out / "TRAINING.json").write_text(json.dumps({
        "world": "v2", "named_categories": len(world.NAMED), "unnamed_categories": list(world.UNNAMED),
        "steps": args.steps, "seed": args.seed, "batch": args.batch, "lr": args.lr,
        "seconds": round(time.time() - start), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "open_clip": open_clip.__version__, "metrics": metrics, "history": history}, indent=2) + "\n")


if __name__ == "__main__":
    main()
