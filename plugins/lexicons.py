"""Built-in lexicons, registered by name as a third party registers its own (``register_lexicons``):
``--lexicon wordnet`` (NegLabel's WordNet lists, the default when none is named) and ``--lexicon world`` (the
toy world's 318 words, the ``toy`` backbone's own)."""

from __future__ import annotations

from collections.abc import Callable

from negprompt.plugin import hookimpl, wordnet_lexicon_dir, world_lexicon_dir


@hookimpl
def register_lexicons(register: Callable[..., None]) -> None:
    register("wordnet", wordnet_lexicon_dir(), description="NegLabel's WordNet nouns and adjectives (about 70,000; "
             "the default)")
    register("world", world_lexicon_dir(), description="the offline world's words and phrases (the toy "
             "backbone's own)")
