"""Built-in lexicons and negative-label lists, registered by name as a third party registers its own
(``register_lexicons``, ``register_negative_lists``): ``--lexicon wordnet`` (NegLabel's WordNet lists, the default
when none is named), ``--lexicon world`` (the toy world's 318 words, the ``toy`` backbone's own) and
``--negatives negrefine-imagenet1k`` (NegRefine's released list, fetched from its home on first use: negprompt
carries no copy of it)."""

from __future__ import annotations

from collections.abc import Callable

from negprompt.plugin import RemoteFile, RemoteFiles, hookimpl, wordnet_lexicon_dir, world_lexicon_dir

# NegRefine (Ansari et al., ICCV 2025): the negative labels its release mined for ImageNet-1k with OpenAI CLIP
# ViT-B/16 (CSP's pool, seed 0) after its LLM (Qwen2.5-14B-Instruct-1M) removed subcategories of ID classes and
# proper nouns. Pinned to one commit; the digests are of the files at that commit.
NEGREFINE_COMMIT = "72e4b82d8d48ae298ceabbb3322ac13799cd0c88"
NEGREFINE_BASE = f"https://raw.githubusercontent.com/ah-ansari/NegRefine/{NEGREFINE_COMMIT}/output/imagenet/seed_0/"
NEGREFINE_IMAGENET1K = RemoteFiles(
    files=(
        RemoteFile("neg_labels_noun.txt", NEGREFINE_BASE + "neg_labels_noun.txt",
                   "8da271ae424ac06af6cc41395ae0a117d71251fe953c77d653d2cc1920069353"),
        RemoteFile("neg_labels_adj.txt", NEGREFINE_BASE + "neg_labels_adj.txt",
                   "1bc70a5f57184de4789ba4b40d5a2aa19c2de0478b1b6eb097ea355449a9cb02"),
    ),
    licence="MIT License, Copyright (c) 2025 ah-ansari",
    source=f"ah-ansari/NegRefine @{NEGREFINE_COMMIT[:7]}, output/imagenet/seed_0",
)


@hookimpl
def register_lexicons(register: Callable[..., None]) -> None:
    register("wordnet", wordnet_lexicon_dir(), description="NegLabel's WordNet nouns and adjectives (about 70,000; "
             "the default)")
    register("world", world_lexicon_dir(), description="the offline world's words and phrases (the toy "
             "backbone's own)")


@hookimpl
def register_negative_lists(register: Callable[..., None]) -> None:
    register("negrefine-imagenet1k", NEGREFINE_IMAGENET1K, description="NegRefine's LLM-filtered negative labels "
             "for ImageNet-1k (4,998 nouns, 1,372 adjective phrases; selected with OpenAI CLIP ViT-B/16)")
