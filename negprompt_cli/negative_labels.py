"""Training-free negative labels mined from a lexicon: NegLabel (ICLR 2024) and CSP (NeurIPS 2024).

Candidate pools (one text prompt per candidate, through the model's own ``encode_text``):

- ``neglabel``: every lexicon noun as "the nice {noun}" (NegLabel's prompt 85, also its positive
  template) and every adjective as "This is a {adj} photo" (NegLabel's adjective template);
- ``csp``: the same nouns, and instead of bare adjectives the *conjugated semantic pool*: each
  adjective joined to one of CSP's 14 superclass words ("environment", "space", "object", ...),
  chosen per adjective with a seeded generator, as "a nice photo of {adj} {superclass}".

Mining (NegLabel's NegMining): every candidate's cosine similarity to each ID class feature; its
closeness to the ID set is the ``percentile`` (default 0.95) of those similarities; within the
noun part and the adjective part separately, keep the ``fraction`` (default 0.15, about 10k of the
WordNet lists) that is farthest from the ID set. ID names themselves never become candidates
(case-insensitive; how many were dropped is recorded). docs/method.md compares every setting with
the papers.

The candidate features (the expensive part: ~70k prompts through the text tower) are cached per
(backbone, pool, lexicon) under ``<cache>/text-features/``; mining against a class list reruns
in about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import publish
from .backbone import Backbone
from .errors import NegPromptNotice, UsageError
from .lexicon import Lexicon, load_lexicon
from .text_encoder import SoftPromptTextEncoder
from .text_features import encode_texts

POOLS = ("neglabel", "csp")
NOUN_TEMPLATE = "the nice {}"
ADJECTIVE_TEMPLATE = "This is a {} photo"
CSP_TEMPLATE = "a nice photo of {}"
CSP_SUPERCLASSES = ("environment", "space", "object", "scene", "place", "item", "area", "view", "thing", "pattern",
                    "structure", "landscape", "vista", "creature")


@dataclass(frozen=True)
class MiningOptions:
    """How labels are mined; None: the lexicon's own default (its manifest, else NegLabel's 0.95 and 0.15)."""

    pool: str = "neglabel"
    percentile: float | None = None  # closeness to the ID set: this percentile of the similarities
    fraction: float | None = None  # of each part (nouns, adjectives) kept; NegLabel's neg_topk
    count: int | None = None  # a total number of negative labels instead of ``fraction``
    seed: int = 0  # CSP: which superclass word each adjective is joined to

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise UsageError(f"unknown negative-label pool {self.pool!r}", hint=f"choose one of {', '.join(POOLS)}")
        if self.percentile is not None and not 0.0 <= self.percentile <= 1.0:
            raise UsageError(f"the mining percentile must be in [0, 1] (got {self.percentile})")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"the mined fraction must be in (0, 1] (got {self.fraction})")
        if self.count is not None and self.count < 1:
            raise UsageError(f"the number of negative labels must be at least 1 (got {self.count})")


@dataclass(frozen=True)
class Candidates:
    prompts: list[str]  # what is encoded
    words: list[str]  # the lexicon entry (or "adj superclass" phrase) each prompt names
    kinds: list[str]  # "noun" or "adjective"
    dropped_id_names: int  # lexicon entries equal to an ID class name, never candidates


def candidates(lexicon: Lexicon, id_names: list[str], pool: str, seed: int = 0) -> Candidates:
    banned = {" ".join(n.replace("_", " ").split()).lower() for n in id_names}
    nouns = [w for w in lexicon.nouns if w.lower() not in banned]
    adjectives = [w for w in lexicon.adjectives if w.lower() not in banned]
    dropped = len(lexicon) - len(nouns) - len(adjectives)
    prompts = [NOUN_TEMPLATE.format(w) for w in nouns]
    words, kinds = list(nouns), ["noun"] * len(nouns)
    if pool == "csp":
        rng = np.random.default_rng(seed)
        choice = rng.integers(0, len(CSP_SUPERCLASSES), size=len(adjectives))
        phrases = [f"{adj} {CSP_SUPERCLASSES[int(k)]}" for adj, k in zip(adjectives, choice, strict=True)]
        prompts += [CSP_TEMPLATE.format(p) for p in phrases]
        words += phrases
    else:
        prompts += [ADJECTIVE_TEMPLATE.format(w) for w in adjectives]
        words += adjectives
    kinds += ["adjective"] * len(adjectives)
    if not prompts:
        raise UsageError(f"every word of the lexicon ({lexicon.source}) is an ID class name: nothing to mine",
                         hint="use a larger lexicon (--lexicon)")
    return Candidates(prompts, words, kinds, dropped)


def text_fingerprint(backbone: Backbone) -> str:
    """A cheap fingerprint of the text tower's weights (the image tower has its own for the image cache)."""
    model = backbone.model
    h = hashlib.sha256()
    for tensor in (model.token_embedding.weight, model.positional_embedding, model.text_projection):
        h.update(tensor.detach().float().cpu().flatten()[:4096].numpy().tobytes())
    return h.hexdigest()[:16]


def encode_prompts(backbone: Backbone, prompts: list[str], *, quiet: bool = False,
                   description: str = "Encoding lexicon") -> torch.Tensor:
    return encode_texts(SoftPromptTextEncoder(backbone), prompts, quiet=quiet, description=description)


def candidate_features(backbone: Backbone, found: Candidates, cache_dir: Path | None,
                       quiet: bool = False) -> torch.Tensor:
    """The candidates' features, from ``<cache>/text-features/`` when this backbone encoded them before."""
    key = hashlib.sha256(json.dumps({**backbone.identity(), "text": text_fingerprint(backbone),
                                     "prompts": hashlib.sha256("\n".join(found.prompts).encode()).hexdigest()},
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / "text-features" / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            with safe_open(str(path), framework="pt") as handle:
                features = handle.get_tensor("features")
            if features.shape[0] == len(found.prompts):
                return features
        except Exception:  # a damaged cache file is encoded again
            pass
    warnings.warn(f"encoding {len(found.prompts):,} lexicon prompts with the text tower (once per backbone and "
                  "lexicon; kept in the feature cache)", NegPromptNotice, stacklevel=3)
    features = encode_prompts(backbone, found.prompts, quiet=quiet)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"features": features.contiguous()}, str(tmp))
            publish(tmp, path)
        except Exception:  # a read-only or full cache: go on without it
            tmp.unlink(missing_ok=True)
    return features


@dataclass
class NegativeLabels:
    """The mined labels: their words, prompts, kinds and unit features [M, E]."""

    words: list[str]
    prompts: list[str]
    kinds: list[str]
    features: torch.Tensor
    candidates: int
    dropped_id_names: int
    options: MiningOptions
    lexicon: str = ""  # the lexicon's digest: the labels depend on it

    def record(self) -> dict[str, Any]:
        return {"pool": self.options.pool, "labels": len(self.words), "candidates": self.candidates,
                "dropped_id_names": self.dropped_id_names, "percentile": self.options.percentile,
                "fraction": self.options.fraction if self.options.count is None else None,
                "count": self.options.count, "seed": self.options.seed, "lexicon": self.lexicon}


@dataclass(frozen=True)
class LabelRequest:
    """What a negative-label scorer needs besides the class list: the lexicon, mining and grouping settings."""

    lexicon: Path | None = None  # None: the backbone's own lexicon, else the shipped WordNet lists
    mining: MiningOptions = MiningOptions()  # its pool is the scorer's
    groups: int | None = None  # None: the lexicon's default (its manifest, else NegLabel's 100)

    def __post_init__(self) -> None:
        if self.groups is not None and self.groups < 1:
            raise UsageError(f"--groups must be at least 1 (got {self.groups})")


def prepare(backbone: Backbone, scorer: Any, names: list[str], id_features: torch.Tensor, request: LabelRequest,
            *, cache_dir: Path, quiet: bool = False) -> tuple[NegativeLabels | None, dict[str, Any] | None]:
    """(mined labels, the scorer's extra options) for a negative-label scorer; (None, None) for any other."""
    pool = getattr(scorer, "pool", None)
    if pool is None:
        return None, None
    lexicon = load_lexicon(request.lexicon, backbone.extra.get("default_lexicon"))
    labels = mine(backbone, lexicon, names, id_features, replace(request.mining, pool=pool), cache_dir=cache_dir,
                  quiet=quiet)
    groups = request.groups if request.groups is not None else int(lexicon.mining["groups"])
    return labels, {"groups": groups, "seed": request.mining.seed}


def resolve_mining(options: MiningOptions, lexicon: Lexicon) -> MiningOptions:
    """``options`` with every unset setting taken from the lexicon's defaults (mining belongs to the lexicon)."""
    return replace(options,
                   fraction=options.fraction if options.fraction is not None else float(lexicon.mining["fraction"]),
                   percentile=(options.percentile if options.percentile is not None
                               else float(lexicon.mining["percentile"])))


def settings_fingerprint(labels: NegativeLabels | None, scorer_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a threshold calibrated with mined labels is valid for (the labels' count follows from these)."""
    if labels is None:
        return None
    record = labels.record()
    return {k: record[k] for k in ("pool", "lexicon", "percentile", "fraction", "count", "seed")} | {
        "groups": (scorer_options or {}).get("groups")}


def closeness(candidate_feats: torch.Tensor, id_features: torch.Tensor, percentile: float,
              batch: int = 4096) -> torch.Tensor:
    """Each candidate's ``percentile`` similarity to the ID classes (higher = closer to the ID set)."""
    id_features = id_features.float()
    out = []
    for start in range(0, len(candidate_feats), batch):
        sims = candidate_feats[start:start + batch].float() @ id_features.t()
        out.append(torch.quantile(sims, q=percentile, dim=1))
    return torch.cat(out)


def select(kinds: list[str], close: torch.Tensor, options: MiningOptions) -> list[int]:
    """Indices kept: per kind, the least close ones (stable order for ties), nouns first."""
    parts = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in ("noun", "adjective")}
    total = len(kinds)
    if options.count is not None and options.count > total:
        raise UsageError(f"{options.count} negative labels requested, but the lexicon has only {total} candidates "
                         "(after removing ID names)", hint=f"ask for at most {total}, or use a larger --lexicon")
    kept: list[int] = []
    noun_share = 0
    for kind, members in parts.items():
        if options.count is None:
            take = int(len(members) * options.fraction)
        elif kind == "noun":
            take = noun_share = round(options.count * len(members) / total)
        else:
            take = options.count - noun_share
        order = sorted(members, key=lambda i: (float(close[i]), i))
        kept += order[:take]
    return kept


def mine(backbone: Backbone, lexicon: Lexicon, id_names: list[str], id_features: torch.Tensor,
         options: MiningOptions = MiningOptions(), *, cache_dir: Path | None = None,
         quiet: bool = False) -> NegativeLabels:
    options = resolve_mining(options, lexicon)
    found = candidates(lexicon, id_names, options.pool, options.seed)
    feats = candidate_features(backbone, found, cache_dir, quiet)
    kept = select(found.kinds, closeness(feats, id_features, options.percentile), options)
    if not kept:
        raise UsageError(f"mining kept no negative labels ({len(found.prompts)} candidates x fraction "
                         f"{options.fraction})", hint="raise the fraction or give a count")
    index = torch.tensor(kept)
    return NegativeLabels([found.words[i] for i in kept], [found.prompts[i] for i in kept],
                          [found.kinds[i] for i in kept], feats[index], len(found.prompts),
                          found.dropped_id_names, options, lexicon.digest())
