"""Run negprompt end to end with no network: a tiny random-weight open_clip model in
``local-dir:`` layout and generated images of three classes, then ``negprompt fit-pos``.

Random weights show the mechanics (caching, training, artifacts), not OOD quality.
Usage: python scripts/offline_quickstart.py [WORKDIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def write_backbone(path: Path) -> None:
    torch.manual_seed(0)
    model = open_clip.CLIP(**CONFIG)
    model.logit_scale.data.fill_(float(np.log(100.0)))
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": CONFIG, "preprocess_cfg": PREPROCESS}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))


def write_images(root: Path, per_class: int = 16) -> None:
    rng = np.random.default_rng(0)
    for name, channel, axis in (("red_stripes", 0, 0), ("green_bars", 1, 1), ("blue_checks", 2, None)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 40, size=(40, 40, 3)).astype(np.uint8)
            if axis == 0:
                img[::4, :, channel] = 255
            elif axis == 1:
                img[:, ::4, channel] = 255
            else:
                img[::8, ::8, channel] = 255
            Image.fromarray(img).save(root / name / f"{i:03d}.png")


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="negprompt-quickstart-"))
    write_backbone(work / "tiny-clip")
    write_images(work / "train")
    cmd = [sys.executable, "-m", "negprompt_cli", "fit-pos", "--backbone", f"local-dir:{work / 'tiny-clip'}",
           "--data", str(work / "train"), "--out", str(work / "pos.safetensors"), "--n-ctx", "4",
           "--epochs", "30", "--batch-size", "16",
           "--optimizer", "adamw", "--lr", "0.01", "--warmup-epochs", "0", "--cache-dir", str(work / "cache"),
           "--json"]
    print("$ negprompt " + " ".join(cmd[3:]), file=sys.stderr)
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
