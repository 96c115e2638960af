"""Lexicon encoding speed: the text-tower pass that the first zero-shot ``score`` with mined negative labels
(``neglabel``, ``csp``) makes over every lexicon prompt (~70k for WordNet), then caches.

``python benchmarks/lexicon.py`` writes ``benchmarks/results/lexicon.json``. Not part of the test suite.

* **encode** ``--sample`` WordNet prompts ("a photo of a {noun}.", "This is a {adjective} photo") with ViT-B/16's
  text tower (seeded random weights: speed does not depend on the values): ``encode_texts`` (length-bucketed,
  each batch cut at its longest end-of-text token) vs ``model.encode_text`` at the full context length 77; the
  largest difference between the two.
* **ensemble**: a WordNet sample through CSP's template ensembles (8 noun templates, 4 adjective templates):
  ``template_features`` with each template's prefix shared vs the same without sharing (every prompt cut at
  its end of text); the largest difference between the two.
* **first zero-shot score**: ``negprompt score IMAGES --zero-shot --backbone ViT-B/16 --pretrained none``
  (the default scorer, ``csp``: CSP's pool and ensembles) on a few images with an empty feature cache, end to
  end (the whole WordNet lexicon is encoded once), as a user's first run on a CPU would be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, current_commit  # noqa: E402  (benchmarks/ is run as scripts)
from PIL import Image

RESULTS = ROOT / "benchmarks" / "results" / "lexicon.json"


def encode_sample(sample: int, batch: int) -> dict:
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.features.text_features import encode_texts
    from negprompt_cli.scoring.lexicon import load_lexicon

    torch.manual_seed(0)
    backbone = load_backbone(BackboneRequest("ViT-B/16", pretrained="none", device="cpu"))
    lexicon = load_lexicon(None)
    rng = random.Random(0)
    nouns = rng.sample(list(lexicon.nouns), sample * 3 // 4)
    adjectives = rng.sample(list(lexicon.adjectives), sample - len(nouns))
    texts = [f"a photo of a {w}." for w in nouns] + [f"This is a {w} photo" for w in adjectives]
    started = time.perf_counter()
    ours = encode_texts(SoftPromptTextEncoder(backbone), texts, batch=batch)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    with torch.no_grad():
        full = torch.cat([backbone.model.encode_text(backbone.tokenizer(texts[i:i + batch]), normalize=True).float()
                          for i in range(0, len(texts), batch)])
    full_s = time.perf_counter() - started
    return {"prompts": len(texts), "batch": batch, "ours_s": round(ours_s, 2), "full_length_s": round(full_s, 2),
            "speedup": round(full_s / ours_s, 2), "max_abs_diff": float((ours - full).abs().max()),
            "ours_prompts_per_s": round(len(texts) / ours_s, 1)}


def ensemble_sample(nouns: int, adjectives: int, batch: int) -> dict:
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.features.text_features import template_features
    from negprompt_cli.scoring.lexicon import load_lexicon
    from negprompt_cli.scoring.negative_labels import POOLS

    torch.manual_seed(0)
    backbone = load_backbone(BackboneRequest("ViT-B/16", pretrained="none", device="cpu"))
    encoder = SoftPromptTextEncoder(backbone)
    lexicon, pool, rng = load_lexicon(None), POOLS["csp"], random.Random(0)
    parts = {"noun": (rng.sample(list(lexicon.nouns), nouns), pool.noun_templates),
             "adjective": ([rng.choice(pool.phrases).format(a) for a in rng.sample(list(lexicon.adjectives),
                                                                                   adjectives)],
                           pool.adjective_templates)}
    out: dict = {}
    for kind, (words, templates) in parts.items():
        started = time.perf_counter()
        ours = template_features(encoder, words, templates, batch=batch)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        plain = template_features(encoder, words, templates, batch=batch, share_prefix=False)
        plain_s = time.perf_counter() - started
        out[kind] = {"candidates": len(words), "templates": len(templates), "ours_s": round(ours_s, 2),
                     "plain_s": round(plain_s, 2), "speedup": round(plain_s / ours_s, 2),
                     "candidates_per_s": round(len(words) / ours_s, 1),
                     "max_abs_diff": float((ours - plain).abs().max())}
    return out


def first_zero_shot(images: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="negprompt-lexicon-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(images):
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        names = Path(tmp) / "names.txt"
        names.write_text("dog\ncat\nschool bus\nred fox\n")
        env = {**os.environ, "NEGPROMPT_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "negprompt_cli", "score", str(folder), "--zero-shot", "--names", str(names),
               "--backbone", "ViT-B/16", "--pretrained", "none", "--out",
               str(Path(tmp) / "s.csv"), "--json"]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        summary = json.loads(done.stdout)
        labels = summary["negative_labels"]
        return {"seconds": round(seconds, 1), "images": images, "candidates": labels["candidates"],
                "labels": labels["labels"], "scorer": summary["scorer"], "pool_digest": labels.get("pool_digest")}


def markdown(result: dict) -> str:
    """The docs/performance.md section (rendered by ``perf.py --docs`` from results/lexicon.json)."""
    encode, first = result["encode"], result["first_zero_shot_score"]
    full_rate = encode["prompts"] / encode["full_length_s"]
    return "\n".join([
        "## Lexicon encoding (the first zero-shot run with mined labels)",
        "",
        "`neglabel` and `csp` mine negative labels from every lexicon candidate's text feature; the first run per",
        "backbone and lexicon encodes them all (WordNet: NegLabel's 70,000 prompts, one per candidate; CSP's",
        "56,620 candidates under template ensembles, about 416,000 prompts) and caches them.",
        "`encode_texts` sorts the prompts by token length and runs each batch only up to its longest",
        f"end-of-text token: exact for CLIP's causal text tower (max |Δ| {encode['max_abs_diff']:.1e} against "
        "`encode_text` here,",
        "tests/test_text_encoder.py checks < 1e-5 on three towers), and most of the 77 positions of a",
        "3-word prompt are padding. `python benchmarks/lexicon.py` (`benchmarks/results/lexicon.json`),",
        f"ViT-B/16 text tower with random weights, {result['machine']['cpus']} CPU cores, commit "
        f"`{result['commit']}`:",
        "",
        "| | prompts | seconds | prompts/s |",
        "|---|---|---|---|",
        f"| `encode_text`, full context (77) | {encode['prompts']:,} | {encode['full_length_s']:.2f} | "
        f"{full_rate:.1f} |",
        f"| `encode_texts`, cut at end of text | {encode['prompts']:,} | {encode['ours_s']:.2f} | "
        f"{encode['ours_prompts_per_s']} ({encode['speedup']:.1f}×) |",
        *(f"| CSP {kind}s, {e['templates']}-template ensemble, prefixes shared | {e['candidates'] * e['templates']:,} "
          f"| {e['ours_s']:.2f} | {e['candidates'] * e['templates'] / e['ours_s']:.1f} ({e['speedup']:.1f}× "
          f"the same without sharing) |" for kind, e in result["ensemble"].items()),
        f"| first `score --zero-shot` (default `{first['scorer']}`) with WordNet, end to end "
        f"({first['images']} images) | {first['candidates']:,} candidates | {first['seconds']} | |",
        "",
        f"CSP's pool is {first['candidates']:,} candidates with 8 prompts per noun and 4 per adjective; the "
        f"first `csp` run takes about {first['seconds'] / 60:.0f} minutes on this machine (its candidates' own "
        "tokens remain after the prefixes are shared: they are what a CPU spends the time on; no GPU has "
        "measured it yet); later runs read the cached features. `--scorer neglabel` encodes one prompt per candidate.",
        ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--skip-first-run", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = {"commit": current_commit(), "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                                      "python": platform.python_version(),
                                                      "torch": torch.__version__},
              "encode": encode_sample(args.sample, args.batch),
              "ensemble": ensemble_sample(args.sample, args.sample // 4, args.batch)}
    print(json.dumps(result["encode"]))
    print(json.dumps(result["ensemble"]))
    if not args.skip_first_run:
        result["first_zero_shot_score"] = first_zero_shot(args.images)
        print(json.dumps(result["first_zero_shot_score"]))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
