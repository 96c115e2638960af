"""Train the offline world's CLIP from scratch (reproducible: fixed seed and step count).

Uses open_clip's own model class and writes open_clip's ``local-dir:`` layout
(``open_clip_config.json`` + ``open_clip_model.safetensors``, fp16 storage) into
``negprompt_cli/assets/world_clip`` so the package can load it offline through open_clip's
normal loader. Two things matter (found in a feasibility run):

* 30 % of captions start with 1-11 filler words, so late text positions get trained (a
  16-token learned context puts class names there);
* the contrastive loss treats every caption that matches an image as a positive (batches hold
  many duplicate captions; the stock loss would count them as mismatches).

Usage: python scripts/train_world_clip.py [--steps 1500] [--out DIR]   (~14 min on 2 CPU cores)
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


def match_matrix(items: list[world.Item], captions: list[str]) -> torch.Tensor:
    """[images, captions]: 1 where the caption is true of the image (what it does not mention is free)."""
    def codes(values, vocab):  # type: ignore[no-untyped-def]
        return torch.tensor([vocab.index(v) if v is not None else -1 for v in values])

    attrs = list(zip(*(world.caption_attributes(c) for c in captions), strict=True))
    cap_shape, cap_colour, cap_size = (codes(a, v) for a, v in zip(attrs, (world.SHAPES, world.COLOUR_NAMES,
                                                                             world.SIZES), strict=True))
    img_shape = codes([i.shape for i in items], world.SHAPES)
    img_colour = codes([i.colour for i in items], world.COLOUR_NAMES)
    img_size = codes([i.size for i in items], world.SIZES)
    match = img_shape[:, None] == cap_shape[None]
    match &= (cap_colour[None] == -1) | (img_colour[:, None] == cap_colour[None])
    match &= (cap_size[None] == -1) | (img_size[:, None] == cap_size[None])
    return match.float()


def multi_positive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                        match: torch.Tensor) -> torch.Tensor:
    logits = scale * image @ text.t()
    to_text = match / match.sum(1, keepdim=True)
    to_image = (match / match.sum(0, keepdim=True)).t()
    return 0.5 * (torch.sum(-to_text * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-to_image * F.log_softmax(logits.t(), 1), 1).mean())


def evaluate(model, tokenizer, rng, n=1200) -> dict[str, float]:  # type: ignore[no-untyped-def]
    pairs = world.all_pairs()
    with torch.no_grad():
        text = model.encode_text(tokenizer([f"a photo of a {c} {s}." for c, s in pairs]), normalize=True)
        out = {}
        for name, subset in (("seen", world.pretraining_pairs()), ("unseen", sorted(world.HELD_OUT_PAIRS))):
            items = world.sample_items(n, rng, pairs=subset)
            feats = model.encode_image(to_tensor(world.render(items, rng)), normalize=True)
            pred = (feats @ text.t()).argmax(1)
            truth = torch.tensor([pairs.index(it.pair) for it in items])
            out[f"zero_shot_{name}_pairs"] = float((pred == truth).float().mean())
            shape_pred = torch.tensor([world.SHAPES.index(pairs[p][1]) for p in pred])
            out[f"shape_{name}"] = float((shape_pred == torch.tensor([world.SHAPES.index(i.shape)
                                                                     for i in items])).float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=256)
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
    token_cache: dict[str, torch.Tensor] = {}
    start = time.time()
    for step in range(args.steps):
        lr = args.lr * (step + 1) / warmup if step < warmup else \
            0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        items = world.sample_items(args.batch, rng)
        captions = [world.caption(it, rng) for it in items]
        for c in captions:
            if c not in token_cache:
                token_cache[c] = tokenizer([c])[0]
        tokens = torch.stack([token_cache[c] for c in captions])
        image = model.encode_image(to_tensor(world.render(items, rng)), normalize=True)
        text = model.encode_text(tokens, normalize=True)
        loss = multi_positive_loss(image, text, model.logit_scale.exp(), match_matrix(items, captions))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
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
    (args.out / "TRAINING.json").write_text(json.dumps({"steps": args.steps, "seed": args.seed, "batch": args.batch,
                                                        "lr": args.lr, "seconds": round(time.time() - start),
                                                        "metrics": metrics}, indent=2) + "\n")


if __name__ == "__main__":
    main()
