"""The hooks a negprompt plugin can implement.

Each ``register_*`` hook receives a ``register`` callback that the plugin calls zero or more
times (the llm/datasette pattern): hooks stay free of side effects and the host owns naming
rules, validation and duplicate handling.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("negprompt")
hookimpl = pluggy.HookimplMarker("negprompt")


@hookspec
def register_backbones(register):
    """Register CLIP backbones.

    ``register(name, factory, *, aliases=(), description="", replace=False)`` where ``factory`` is a
    ``negprompt.plugin.BackboneFactory``: called with the keywords ``pretrained`` (str | None),
    ``device`` (torch.device), ``cache_dir`` (where downloaded weights go: the user's ``--weights-cache``)
    and ``quick_gelu`` (bool | None: None for what the weights were trained with); returns a ``Backbone``.
    """


@hookspec(firstresult=True)
def resolve_backbone(name):
    """Return a ``BackboneFactory`` for a backbone name nobody registered explicitly, or None.

    Lets a plugin accept open-ended names (any open_clip architecture, ``hf-hub:org/repo``,
    ``local-dir:/path``) without enumerating them. The first non-None answer wins.
    """


@hookspec
def register_prompt_learners(register):
    """Register prompt learners: ``register(name, learner, *, description="", replace=False)``.

    ``learner`` is a ``negprompt.plugin.LearnerBuilder``: ``kind`` ("positive" or "negative"), ``Options`` (a
    dataclass of its own settings, set from the command line with ``--learner-option KEY=VALUE``, or None) and a
    call that builds the ``PromptModule``.
    """


@hookspec
def register_scorers(register):
    """Register OOD scorers: ``register(name, scorer, *, description="", replace=False, **properties)``.

    A scorer maps cosine similarities to an ID score where higher means more in-distribution. Its
    properties are stated as keywords (``negprompt.plugin.ScorerSpec``): ``default_temperature``,
    ``probability`` (an ID probability in [0, 1]: ``score --adaptive`` can run it), ``needs_negative_prompts``,
    ``pool`` ("neglabel" or "csp": the core mines negative labels and passes ``mined``, ``groups``, ``seed``)
    and ``trained_temperature`` (runs at the τ the negatives were trained with).
    """


@hookspec
def register_lexicons(register):
    """Register named lexicons: ``register(name, path, *, description="", replace=False)``.

    ``path`` is a folder or file in ``--lexicon``'s layout (``noun.*.txt`` / ``adj.*.txt``, an optional
    ``manifest.json`` with its mining defaults; or one text file of nouns). ``--lexicon NAME`` then reads it, and
    ``negprompt plugins`` lists it: a package can ship a word list (an LLM-filtered one, a domain's) this way.
    """


@hookspec
def register_negative_lists(register):
    """Register named lists of negative labels: ``register(name, source, *, description="", replace=False)``.

    Unlike a lexicon, a list is not mined: ``score --negatives NAME`` uses every label as given (EOE-style; an LLM's
    or a domain expert's list). ``source`` is a folder or file in ``--negatives``' layout (one label per line; in a
    folder, files named ``adj*`` hold adjective phrases) that exists when the plugin loads, or
    ``negprompt.plugin.RemoteFiles``: files named by address and SHA-256, fetched into the cache on first use and
    checked byte for byte (a list whose licence asks for its home to stay its source).
    """

