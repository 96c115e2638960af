"""Training-free negative labels mined from a lexicon: NegLabel (ICLR 2024) and CSP (NeurIPS 2024), each
built as its authors' released code builds it (docs/method.md has the setting-by-setting table).

Candidate pools (``POOLS``; every candidate's feature is the normalised mean of its templates' raw
``encode_text`` outputs):

- ``neglabel`` (XueJiang16/NegLabel): every lexicon noun as "the nice {noun}" (prompt 85, also its
  ID prompt) and every adjective as "This is a {adj} photo";
- ``csp`` (MengyuanChen21/NeurIPS2024-CSP, ``clip-ViT-B16.py``): the lexicon without noun.person,
  noun.quantity, noun.group and adj.pert; each noun under 8 templates ("a close-up photo of the
  nice {}.", ..., "the nice {}"), the same 8 for the zero-shot ID names; each adjective joined to
  one of 14 superclass words ("{} environment", "{} space", ...) by a seeded ``random.choice``,
  the phrase under 4 templates; a candidate closer than cosine 0.95 to any ID class is never kept.

Mining (NegLabel's NegMining): every candidate's cosine similarity to each ID class feature; its
closeness to the ID set is the ``percentile`` (default 0.95) of those similarities; within the
noun part and the adjective part separately, keep the ``fraction`` (default 0.15) that is farthest
from the ID set. Lexicon entries equal to an ID class name (case-insensitive) count in the pool, as in
the releases, but are never kept (how many is recorded). The releases keep no such rule: an ID name is an
ordinary candidate, and its closeness is a percentile of its similarities to all ID classes, which its own
class (cosine 1 with the zero-shot ID prompt) barely moves, so NegLabel's released ImageNet list holds 32
ImageNet class names ("gibbon", "samoyed", ...): the images of those classes then score against their own
name. ``MiningOptions.id_names="keep"`` (``--keep-id-names``) mines as released.

The candidate features (the expensive part: NegLabel's 70k prompts, CSP's ~416k) are cached per
(backbone, pool, lexicon) under ``<cache>/text-features/``; mining against a class list reruns
in about a second.

A list of negative labels written by a user or an LLM (EOE-style; ``LabelRequest.negatives``,
``--negatives FILE|DIR|NAME``; a name is a plugin's registered list: ``scoring.negative_lists``) is used as given
instead of mined: every entry under the scorer's templates for its kind, ID class names left out (unless
``id_names="keep"``), one group unless ``groups`` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import NegPromptNotice, NotFoundError, UsageError
from ..features.backbone import Backbone
from ..features.feature_cache import TEXT_FEATURES_DIR
from ..features.text_encoder import SoftPromptTextEncoder
from ..features.text_features import template_features
from ..outputs.atomic import publish
from .lexicon import Lexicon, load_lexicon
from .negative_lists import negatives_path

CSP_NOUN_TEMPLATES = ("a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
                      "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}")
CSP_PHRASES = ("{} environment", "{} space", "{} object", "{} scene", "{} place", "{} item", "{} area", "{} view",
               "{} thing", "{} pattern", "{} structure", "{} landscape", "{} vista", "{} creature")
CSP_ADJECTIVE_TEMPLATES = ("{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}")


@dataclass(frozen=True)
class Pool:
    """How one method's released code turns a lexicon into candidates, and which ID prompts it scores with."""

    name: str
    noun_templates: tuple[str, ...]
    adjective_templates: tuple[str, ...]
    id_templates: tuple[str, ...]  # the zero-shot ID class prompts (averaged as the candidates' are)
    phrases: tuple[str, ...] = ()  # each adjective becomes one of these, by a seeded random.choice (CSP)
    excluded_files: tuple[str, ...] = ()  # lexicon files the release leaves out (when the lexicon has them)
    near_duplicate: float | None = None  # never keep a candidate with a cosine above this to an ID class

    def digest(self) -> str:
        """Changes whenever the pool would give other candidates: a threshold follows it."""
        return hashlib.sha256(json.dumps([self.noun_templates, self.adjective_templates, self.id_templates,
                                          self.phrases, self.excluded_files, self.near_duplicate]).encode()
                              ).hexdigest()[:12]


POOLS = {
    "neglabel": Pool("neglabel", ("the nice {}",), ("This is a {} photo",), ("the nice {}",)),
    "csp": Pool("csp", CSP_NOUN_TEMPLATES, CSP_ADJECTIVE_TEMPLATES, CSP_NOUN_TEMPLATES, phrases=CSP_PHRASES,
                excluded_files=("noun.person.txt", "noun.quantity.txt", "noun.group.txt", "adj.pert.txt"),
                near_duplicate=0.95),
}


def zero_shot_templates(pool: str | None) -> tuple[str, ...] | None:
    """The ID class prompts a negative-label scorer's paper scores with (None: the scorer mines no labels)."""
    return POOLS[pool].id_templates if pool in POOLS else None


ID_NAME_RULES = ("drop", "keep")


@dataclass(frozen=True)
class MiningOptions:
    """How labels are mined; None: the lexicon's own default (its manifest, else NegLabel's 0.95 and 0.15)."""

    pool: str = "neglabel"
    percentile: float | None = None  # closeness to the ID set: this percentile of the similarities
    fraction: float | None = None  # of each part (nouns, adjectives) kept; NegLabel's neg_topk
    count: int | None = None  # a total number of negative labels instead of ``fraction``
    seed: int = 0  # CSP: which superclass word each adjective is joined to
    # lexicon entries equal to an ID class name: "drop" = never kept (ours), "keep" = ordinary candidates, as
    # NegLabel's and CSP's releases treat them (NegLabel's released ImageNet list holds 32 ImageNet class names)
    id_names: str = "drop"

    def __post_init__(self) -> None:
        if self.id_names not in ID_NAME_RULES:
            raise UsageError(f"unknown rule for ID class names in the lexicon {self.id_names!r}",
                             hint=f"choose one of {', '.join(ID_NAME_RULES)}")
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
    words: list[str]  # the lexicon entry (or CSP's "adj superclass" phrase) each candidate names
    kinds: list[str]  # "noun" or "adjective"
    pool: Pool
    id_name: list[bool]  # the entry is an ID class name: counted in the pool (as the releases do), never kept
    excluded: int  # entries only in the pool's excluded lexicon files

    @property
    def dropped_id_names(self) -> int:
        return sum(self.id_name)

    def templates(self, kind: str) -> tuple[str, ...]:
        return self.pool.noun_templates if kind == "noun" else self.pool.adjective_templates

    @property
    def prompts(self) -> list[str]:
        """Each candidate in its first template (how it reads; its feature averages all of them)."""
        return [self.templates(k)[0].format(w) for w, k in zip(self.words, self.kinds, strict=True)]


def candidates(lexicon: Lexicon, id_names: list[str], pool: str, seed: int = 0) -> Candidates:
    spec = POOLS[pool]
    kept = lexicon.without_files(spec.excluded_files)
    banned = {" ".join(n.replace("_", " ").split()).lower() for n in id_names}
    nouns, adjectives = list(kept.nouns), list(kept.adjectives)
    id_name = [w.lower() in banned for w in nouns + adjectives]
    if spec.phrases:  # CSP: Python's random.choice per adjective, in lexicon order, as the release draws it
        draw = random.Random(seed)
        adjectives = [draw.choice(spec.phrases).format(adj) for adj in adjectives]
    if all(id_name):
        raise UsageError(f"every word of the lexicon ({lexicon.source}) is an ID class name: nothing to mine",
                         hint="use a larger lexicon (--lexicon)")
    return Candidates(nouns + adjectives, ["noun"] * len(nouns) + ["adjective"] * len(adjectives), spec, id_name,
                      len(lexicon) - len(kept))


def candidate_features(backbone: Backbone, found: Candidates, cache_dir: Path | None,
                       quiet: bool = False) -> torch.Tensor:
    """The candidates' features, from ``<cache>/text-features/`` when this backbone encoded them before."""
    payload: dict[str, tuple[tuple[str, ...], list[str]]] = {
        kind: (found.templates(kind), [w for w, k in zip(found.words, found.kinds, strict=True) if k == kind])
        for kind in ("noun", "adjective")}
    key = hashlib.sha256(json.dumps({**backbone.identity(), "text": backbone.text_fingerprint(), "ensemble": 1,
                                     "prompts": hashlib.sha256(json.dumps(payload).encode()).hexdigest()},
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / TEXT_FEATURES_DIR / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            with safe_open(str(path), framework="pt") as handle:
                features = handle.get_tensor("features")
            if features.shape[0] == len(found.words):
                return features
        except Exception:  # a damaged cache file is encoded again
            pass
    prompts = sum(len(words) * len(templates) for templates, words in payload.values())
    warnings.warn(f"encoding {len(found.words):,} lexicon candidates ({prompts:,} prompts) with the text tower "
                  "(once per backbone and lexicon; kept in the feature cache)", NegPromptNotice, stacklevel=3)
    encoder = SoftPromptTextEncoder(backbone)
    features = torch.cat([template_features(encoder, words, templates, quiet=quiet,
                                            description=f"Encoding lexicon {kind}s")
                          for kind, (templates, words) in payload.items() if words])
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
    excluded: int = 0  # lexicon entries only in the pool's excluded files
    near_duplicates: int = 0  # candidates above the pool's near-duplicate cosine, never kept
    mined_id_names: int = 0  # kept labels that are ID class names (only with MiningOptions.id_names "keep")
    source: str = "mined"  # "mined" from a lexicon, or "list": a list of negatives used as given

    def record(self) -> dict[str, Any]:
        pool = POOLS[self.options.pool]
        return {"source": self.source, "pool": self.options.pool, "pool_digest": pool.digest(),
                "labels": len(self.words),
                "candidates": self.candidates, "dropped_id_names": self.dropped_id_names,
                "excluded_files": list(pool.excluded_files), "excluded_entries": self.excluded,
                "near_duplicates": self.near_duplicates, "percentile": self.options.percentile,
                "fraction": self.options.fraction if self.options.count is None else None,
                "count": self.options.count, "seed": self.options.seed, "lexicon": self.lexicon,
                "id_names": self.options.id_names, "mined_id_names": self.mined_id_names}


@dataclass(frozen=True)
class LabelRequest:
    """What a negative-label scorer needs besides the class list: the lexicon, mining and grouping settings."""

    lexicon: Path | None = None  # None: the backbone's own lexicon, else the shipped WordNet lists
    mining: MiningOptions = MiningOptions()  # its pool is the scorer's
    groups: int | None = None  # None: the lexicon's default (its manifest, else NegLabel's 100); a list's: 1
    negatives: Path | None = None  # a list of negative labels used as given (a file, folder or registered name)

    def __post_init__(self) -> None:
        if self.groups is not None and self.groups < 1:
            raise UsageError(f"--groups must be at least 1 (got {self.groups})")
        if self.negatives is not None:
            mined = [flag for flag in self.given() if flag in MINING_FLAGS]
            if mined:
                raise UsageError(f"--negatives is the list of negative labels itself; {' and '.join(mined)} "
                                 "set(s) how labels are mined from a lexicon", hint="give one or the other")

    def given(self) -> list[str]:
        """The flags that set these labels away from their defaults (a scorer that reads no labels refuses them)."""
        settings = (("--lexicon", self.lexicon), ("--mine-percentile", self.mining.percentile),
                    ("--mine-fraction", self.mining.fraction), ("--negative-labels", self.mining.count),
                    ("--negatives", self.negatives), ("--groups", self.groups),
                    ("--keep-id-names", True if self.mining.id_names == "keep" else None))
        return [flag for flag, value in settings if value is not None]


MINING_FLAGS = ("--lexicon", "--mine-percentile", "--mine-fraction", "--negative-labels")


def prepare(backbone: Backbone, pool: str | None, names: list[str], id_features: torch.Tensor, request: LabelRequest,
            *, cache_dir: Path, quiet: bool = False, offline: bool = False,
            ) -> tuple[NegativeLabels | None, dict[str, Any] | None]:
    """(mined labels, the scorer's extra options) for a scorer that mines from ``pool``; (None, None) without.
    ``offline``: a registered remote list (``--negatives NAME``) is read from the cache only."""
    if pool is None:
        return None, None
    if request.negatives is not None:
        path = negatives_path(request.negatives, cache_dir, offline=offline)
        labels = listed(backbone, path, names, replace(request.mining, pool=pool), cache_dir=cache_dir, quiet=quiet)
        return labels, {"groups": request.groups if request.groups is not None else 1, "seed": request.mining.seed}
    lexicon = load_lexicon(request.lexicon, backbone.default_lexicon or backbone.extra.get("default_lexicon"))
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
    settings = {k: record[k] for k in ("pool", "pool_digest", "lexicon", "percentile", "fraction", "count", "seed")}
    if record["id_names"] != "drop":  # named only when not the default, so thresholds stored before still apply
        settings["id_names"] = record["id_names"]
    return settings | {"groups": (scorer_options or {}).get("groups")}


def closeness(candidate_feats: torch.Tensor, id_features: torch.Tensor, percentile: float,
              batch: int = 4096, near_duplicate: float | None = None) -> torch.Tensor:
    """Each candidate's ``percentile`` similarity to the ID classes (higher = closer to the ID set); with
    ``near_duplicate``, a candidate whose largest similarity exceeds it gets 1.0, the closest there is (CSP's
    release: ``sim[maximum > 0.95] = 1.0``), so it is never kept."""
    id_features = id_features.float()
    out = []
    for start in range(0, len(candidate_feats), batch):
        sims = candidate_feats[start:start + batch].float() @ id_features.t()
        close = torch.quantile(sims, q=percentile, dim=1)
        if near_duplicate is not None:
            close[sims.max(dim=1).values > near_duplicate] = 1.0
        out.append(close)
    return torch.cat(out)


def select(kinds: list[str], close: torch.Tensor, options: MiningOptions) -> list[int]:
    """Indices kept: per kind, the least close ones (stable order for ties), nouns first. The fraction is of
    every candidate of the kind, as in the released code; a candidate that is never kept (closeness +inf: an
    ID class name) counts there but is not taken."""
    parts = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in ("noun", "adjective")}
    keepable = {kind: [i for i in members if not torch.isinf(close[i])] for kind, members in parts.items()}
    total = sum(len(m) for m in keepable.values())
    if options.count is not None and options.count > total:
        raise UsageError(f"{options.count} negative labels requested, but the lexicon has only {total} candidates "
                         "(after removing ID names)", hint=f"ask for at most {total}, or use a larger --lexicon")
    kept: list[int] = []
    noun_share = 0
    fraction = options.fraction
    for kind, members in keepable.items():
        if options.count is None:
            if fraction is None:
                raise ValueError("select() needs a fraction or a count (resolve_mining fills the fraction)")
            take = int(len(parts[kind]) * fraction)
        elif kind == "noun":
            take = noun_share = round(options.count * len(members) / total)
        else:
            take = options.count - noun_share
        order = sorted(members, key=lambda i: (float(close[i]), i))
        kept += order[:take]
    return kept


def read_negatives(path: Path) -> tuple[list[str], list[str]]:
    """(labels, their kinds) of a list of negative labels: a text file, one label per line, all nouns; or a folder
    of ``.txt`` files, those whose name has ``adj`` in it adjective phrases ("gooey landscape", as CSP and
    NegRefine write them), the others nouns: NegRefine's release (``neg_labels_noun.txt``, ``neg_labels_adj.txt``)
    reads as it is. UTF-8; blank lines and ``#`` comments skipped; each label kept once, where it first appears
    (case-insensitive), nouns first."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"), key=lambda p: ("adj" in p.name.lower(), p.name))
        if not files:
            raise UsageError(f"--negatives {path} holds no .txt list", hint="one negative label per line, in "
                                                                             "noun*.txt / adj*.txt files")
    else:
        files = [path]
    seen: set[str] = set()
    words, kinds = [], []
    for file in files:
        kind = "adjective" if path.is_dir() and "adj" in file.name.lower() else "noun"
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise NotFoundError(f"negative-label list not found: {file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--negatives {file} cannot be read as UTF-8 text ({exc})") from None
        for line in lines:
            word = " ".join(line.split())
            if word and not word.startswith("#") and word.lower() not in seen:
                seen.add(word.lower())
                words.append(word)
                kinds.append(kind)
    if not words:
        raise UsageError(f"--negatives {path} names no label", hint="one negative label per line")
    return words, kinds


def list_digest(words: list[str], kinds: list[str]) -> str:
    """What a list of negatives is, by content (:func:`read_negatives`' labels and kinds): a threshold, or a
    benchmark run folder, made with one list never applies to another."""
    return hashlib.sha256(json.dumps([words, kinds]).encode()).hexdigest()[:16]


def listed(backbone: Backbone, path: Path, id_names: list[str], options: MiningOptions, *,
           cache_dir: Path | None = None, quiet: bool = False) -> NegativeLabels:
    """A given list of negative labels (EOE-style: a user's or an LLM's), each under the pool's templates for its
    kind (:func:`read_negatives`);
    entries equal to an ID class name are left out unless ``options.id_names`` is "keep" (counted either way)."""
    words, kinds = read_negatives(path)
    banned = {" ".join(n.replace("_", " ").split()).lower() for n in id_names}
    is_id = [w.lower() in banned for w in words]
    keep = [i for i, named in enumerate(is_id) if options.id_names == "keep" or not named]
    if not keep:
        raise UsageError(f"every label in --negatives {path} is an ID class name", hint="list other labels")
    found = Candidates([words[i] for i in keep], [kinds[i] for i in keep], POOLS[options.pool], [False] * len(keep),
                       0)
    feats = candidate_features(backbone, found, cache_dir, quiet)
    return NegativeLabels(found.words, found.prompts, found.kinds, feats, len(words),
                          sum(is_id) if options.id_names == "drop" else 0, options, f"list:{list_digest(words, kinds)}",
                          mined_id_names=sum(is_id) if options.id_names == "keep" else 0, source="list")


def mine(backbone: Backbone, lexicon: Lexicon, id_names: list[str], id_features: torch.Tensor,
         options: MiningOptions = MiningOptions(), *, cache_dir: Path | None = None,
         quiet: bool = False) -> NegativeLabels:
    options = resolve_mining(options, lexicon)
    found = candidates(lexicon, id_names, options.pool, options.seed)
    feats = candidate_features(backbone, found, cache_dir, quiet)
    near = found.pool.near_duplicate
    assert options.percentile is not None  # resolve_mining filled it
    close = closeness(feats, id_features, options.percentile, near_duplicate=near)
    near_count = 0 if near is None else int((close == 1.0).sum())
    if options.id_names == "drop":
        close[torch.tensor(found.id_name, dtype=torch.bool)] = float("inf")
    kept = select(found.kinds, close, options)
    if not kept:
        raise UsageError(f"mining kept no negative labels ({len(found.words)} candidates x fraction "
                         f"{options.fraction})", hint="raise the fraction or give a count")
    index = torch.tensor(kept)
    prompts = found.prompts
    return NegativeLabels([found.words[i] for i in kept], [prompts[i] for i in kept],
                          [found.kinds[i] for i in kept], feats[index], len(found.words),
                          found.dropped_id_names, options, lexicon.digest(), found.excluded, near_count,
                          mined_id_names=sum(found.id_name[i] for i in kept))
