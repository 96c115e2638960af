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
def register_backbones(register):  # type: ignore[no-untyped-def]
    """Register CLIP backbones.

    ``register(name, factory, *, aliases=(), description="", replace=False)`` where
    ``factory(pretrained: str | None, device: torch.device, cache_dir: str | None) -> Backbone``, where
    ``cache_dir`` is where downloaded weights go (the user's ``--weights-cache``).
    """


@hookspec(firstresult=True)
def resolve_backbone(name):  # type: ignore[no-untyped-def]
    """Return a factory for a backbone name nobody registered explicitly, or None.

    Lets a plugin accept open-ended names (any open_clip architecture, ``hf-hub:org/repo``,
    ``local-dir:/path``) without enumerating them. The first non-None answer wins.
    """


@hookspec
def register_prompt_learners(register):  # type: ignore[no-untyped-def]
    """Register prompt learners: ``register(name, learner, *, description="", replace=False)``."""


@hookspec
def register_scorers(register):  # type: ignore[no-untyped-def]
    """Register OOD scorers: ``register(name, scorer, *, description="", replace=False)``.

    A scorer maps cosine similarities to an ID score where higher means more in-distribution.
    """
