"""negprompt: learn negative prompts so a CLIP model can say "I don't know"."""

from __future__ import annotations

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (plugins write @negprompt_cli.hookimpl)

MAY_IMPORT = ("shared", "outputs")  # the lazy re-exports below (tests/test_architecture.py)

__all__ = ["__version__", "hookimpl", "load_prompts", "save_prompts", "PromptArtifact"]


def __getattr__(name: str):  # lazy: keep `import negprompt_cli` (and plugin discovery) cheap
    if name in ("load_prompts", "save_prompts", "PromptArtifact"):
        from .outputs import artifact

        return getattr(artifact, name)
    raise AttributeError(name)
