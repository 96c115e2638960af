"""Lexicons: the words training-free negative labels are mined from (NegLabel, CSP).

A lexicon is nouns and adjectives. The default is the WordNet lists NegLabel ships
(``assets/lexicon/``; provenance and licence in its README). ``--lexicon`` takes a folder in the same
layout (``noun.*.txt`` / ``adj.*.txt``; a folder without them: every ``*.txt`` is nouns) or one text
file (one noun or phrase per line). Lines are stripped, ``_`` reads as a space, ``#`` starts a
comment line; repeated words count once (nouns first).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NotFoundError, UsageError

DEFAULT_LEXICON = Path(__file__).resolve().parent.parent / "assets" / "lexicon" / "wordnet"
# Far above WordNet's ~70k words: a lexicon this large is almost certainly the wrong file (each entry is a
# text-tower pass, ~hours on a CPU for a million). NEGPROMPT_MAX_LEXICON raises it.
MAX_LEXICON_ENV = "NEGPROMPT_MAX_LEXICON"
MAX_LEXICON = 500_000


MANIFEST = "manifest.json"
# How negative labels are mined from a lexicon that does not say (a plain --lexicon FILE, a folder without a
# manifest): NegLabel's released configuration, made for WordNet-sized lexicons.
PAPER_MINING = {"fraction": 0.15, "groups": 100, "percentile": 0.95}


@dataclass(frozen=True)
class Lexicon:
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    source: str  # where it was read from ("default" for the shipped WordNet lists)
    mining: dict = field(default_factory=lambda: dict(PAPER_MINING))  # its defaults: fraction, groups, percentile
    # (file name, "noun" | "adjective", its words) before de-duplication: a pool may leave files out
    files: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def without_files(self, names: tuple[str, ...]) -> Lexicon:
        """The lexicon as if ``names`` were not in its folder (CSP's release leaves four WordNet files out);
        a word also in a kept file stays. Itself when it has none of them."""
        if not any(name in names for name, _, _ in self.files):
            return self
        kept = [f for f in self.files if f[0] not in names]
        nouns, adjectives = _deduplicate([w for _, kind, words in kept if kind == "noun" for w in words],
                                         [w for _, kind, words in kept if kind == "adjective" for w in words])
        return Lexicon(tuple(nouns), tuple(adjectives), self.source, self.mining, tuple(kept))

    def digest(self) -> str:
        payload = "\n".join(self.nouns) + "\0" + "\n".join(self.adjectives)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.nouns) + len(self.adjectives)


def _read_words(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"lexicon file {path} is not UTF-8 text (byte {exc.start} cannot be decoded)",
                         hint="save it as UTF-8, one word or phrase per line") from None
    words = []
    for line in text.splitlines():
        word = " ".join(line.replace("_", " ").split())
        if word and not word.startswith("#"):
            words.append(word)
    return words


def is_registered_name(text: str) -> bool:
    """A bare word (no folder separator, no suffix) given to --lexicon or --negatives that is not a path: a
    registered lexicon's or negative-label list's name (``negprompt plugins`` lists them), e.g. ``wordnet``."""
    return bool(text) and "/" not in text and os.sep not in text and "." not in text


def load_lexicon(path: Path | None = None, backbone_default: str | None = None) -> Lexicon:
    """The user's file or folder, or a registered lexicon's name; else the backbone's own lexicon (a backbone
    plugin may name one in ``Backbone.default_lexicon``: the world CLIP knows only its world's words); else
    WordNet."""
    if path is None and backbone_default is not None:
        path = Path(backbone_default)
        source = f"backbone default {path.name}"
    else:
        source = "default" if path is None else str(path)
    if path is not None and not Path(path).exists() and is_registered_name(str(path)):
        from ..registry import get_host  # noqa: PLC0415 (plugins load only for a named lexicon)

        path = get_host().lexicon(str(path))  # unknown names: one error with the close ones
    root = DEFAULT_LEXICON if path is None else Path(path)
    if not root.exists():
        raise NotFoundError(f"lexicon not found: {root}")
    files: list[tuple[str, str, tuple[str, ...]]] = []
    if root.is_dir():
        noun_files = sorted(root.glob("noun.*.txt"))
        adj_files = sorted(root.glob("adj.*.txt"))
        if not noun_files and not adj_files:
            noun_files = sorted(root.glob("*.txt"))
        files += [(file.name, "noun", tuple(_read_words(file))) for file in noun_files]
        files += [(file.name, "adjective", tuple(_read_words(file))) for file in adj_files]
    else:
        files.append((root.name, "noun", tuple(_read_words(root))))
    unique_nouns, unique_adjectives = _deduplicate([w for _, kind, words in files if kind == "noun" for w in words],
                                                   [w for _, kind, words in files if kind == "adjective"
                                                    for w in words])
    if not unique_nouns and not unique_adjectives:
        raise UsageError(f"lexicon {root} has no words", hint="one word or phrase per line, UTF-8")
    mining = read_manifest(root / MANIFEST) if root.is_dir() and (root / MANIFEST).is_file() else dict(PAPER_MINING)
    limit = max_lexicon()
    if len(unique_nouns) + len(unique_adjectives) > limit:
        raise UsageError(f"lexicon {root} has {len(unique_nouns) + len(unique_adjectives):,} entries, more than "
                         f"{limit:,} (each is one text-tower pass; WordNet has about 70,000)",
                         hint=f"give a smaller --lexicon, or raise the limit with {MAX_LEXICON_ENV}=N")
    return Lexicon(tuple(unique_nouns), tuple(unique_adjectives), source, mining, tuple(files))


def _deduplicate(nouns: list[str], adjectives: list[str]) -> tuple[list[str], list[str]]:
    """Each word once (case-insensitive), the first time it appears; a word that is both counts as a noun."""
    seen: set[str] = set()
    unique_nouns = [w for w in nouns if not (w.lower() in seen or seen.add(w.lower()))]  # type: ignore[func-returns-value]
    unique_adjectives = [w for w in adjectives if not (w.lower() in seen or seen.add(w.lower()))]  # type: ignore[func-returns-value]
    return unique_nouns, unique_adjectives


def read_manifest(path: Path) -> dict:
    """A lexicon folder's ``manifest.json``: the mining settings validated for it (``{"mining": {"fraction",
    "groups", "percentile"}}``, each optional: the paper's where left out). A bad value is one line, exit 2."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{path} is not a lexicon manifest ({type(exc).__name__}: {exc})") from None
    mining = manifest.get("mining", {}) if isinstance(manifest, dict) else None
    if not isinstance(mining, dict):
        raise UsageError(f"{path}: \"mining\" must be an object of fraction, groups, percentile")
    unknown = sorted(set(mining) - set(PAPER_MINING))
    if unknown:
        raise UsageError(f"{path}: unknown mining setting(s) {', '.join(unknown)}",
                         hint="a manifest sets fraction, groups and percentile")
    checks = {"fraction": lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
              "groups": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "percentile": lambda v: isinstance(v, (int, float)) and 0 <= v <= 1}
    for key, value in mining.items():
        if isinstance(value, bool) or not checks[key](value):
            rule = {"fraction": "in (0, 1]", "groups": "a whole number >= 1", "percentile": "in [0, 1]"}[key]
            raise UsageError(f"{path}: mining.{key} must be {rule} (got {value!r})")
    return {**PAPER_MINING, **mining}


def max_lexicon() -> int:
    value = os.environ.get(MAX_LEXICON_ENV)
    if not value:
        return MAX_LEXICON
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{MAX_LEXICON_ENV} must be a whole number (got {value!r})") from None
