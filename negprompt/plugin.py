"""What a negprompt plugin imports, in one place.

A backbone, prompt-learner or scorer plugin (docs/plugins.md) needs the hook marker, the records it returns
or receives, the text encoder that soft prompts go through and the errors it may raise. They are all here,
so a plugin never imports ``negprompt_cli``'s inner modules and a move inside the core cannot break it: the
built-in plugins (``plugins/``) import exactly this module, and tests/test_architecture.py checks that they
and docs/plugins.md's examples import nothing else of negprompt.

    from negprompt.plugin import Backbone, hookimpl

    @hookimpl
    def register_backbones(register):
        register("my-clip", my_factory, description="...")
"""

from __future__ import annotations

from negprompt_cli import __version__
from negprompt_cli.environment import hub_cache_from_environment
from negprompt_cli.errors import (
    HubError,
    IncompatibleArtifactError,
    NegPromptError,
    NegPromptNotice,
    NegPromptWarning,
    NotFoundError,
    UsageError,
)
from negprompt_cli.features.backbone import Backbone, BackboneFactory
from negprompt_cli.features.local_features import split_rows
from negprompt_cli.features.text_encoder import SoftPromptTextEncoder, TokenizedPrompts
from negprompt_cli.hookspecs import hookimpl
from negprompt_cli.registry import RemoteFile, RemoteFiles, ScorerSpec
from negprompt_cli.scoring.composed_texts import ComposedTexts
from negprompt_cli.scoring.lexicon import DEFAULT_LEXICON
from negprompt_cli.scoring.test_time import BatchStream, ScoreStream, StreamContext
from negprompt_cli.training.coop import CoOpPrompts
from negprompt_cli.training.learners import LearnerBuilder, PromptModule, PromptSettings, initial_context
from negprompt_cli.training.losses import VARIANTS as LOSS_VARIANTS
from negprompt_cli.training.losses import LossWeights, negprompt_loss
from negprompt_cli.world import checkpoint_dir as world_checkpoint_dir
from negprompt_cli.world import lexicon_dir as world_lexicon_dir

__all__ = [
    "__version__", "hookimpl",
    # backbones: the factory a plugin registers and the record it returns
    "Backbone", "BackboneFactory", "hub_cache_from_environment", "world_checkpoint_dir", "world_lexicon_dir",
    # prompt learners: the contract, the settings they receive, the soft-prompt text path, NegPrompt's losses
    "LearnerBuilder", "PromptModule", "PromptSettings", "initial_context", "SoftPromptTextEncoder",
    "TokenizedPrompts", "CoOpPrompts", "LOSS_VARIANTS", "LossWeights", "negprompt_loss",
    # rows that carry patch features (a ``local`` learner's or scorer's): (global [N, E], patches [N, P, E] | None)
    "split_rows",
    # scorers: the properties a scorer states when it registers; what a ``composes_texts`` scorer receives as texts
    "ScorerSpec", "ComposedTexts",
    # test-time scorers (``test_time=True``): what ``start`` receives and what the stream it opens offers
    "StreamContext", "ScoreStream", "BatchStream",
    # lexicons: the shipped WordNet lists (``register_lexicons`` registers folders in --lexicon's layout); lists of
    # negative labels (``register_negative_lists``) may be files to fetch: their addresses and SHA-256 digests
    "wordnet_lexicon_dir", "RemoteFile", "RemoteFiles",
    # errors and notes (their exit codes: README.md, "Output conventions and exit codes")
    "NegPromptError", "UsageError", "NotFoundError", "HubError", "IncompatibleArtifactError", "NegPromptWarning",
    "NegPromptNotice",
]


def wordnet_lexicon_dir():  # noqa: ANN201 (a Path; annotated in the docstring to keep this module import-light)
    """The folder of the WordNet lists negprompt ships (NegLabel's; ``assets/lexicon/wordnet``): a Path."""
    return DEFAULT_LEXICON

