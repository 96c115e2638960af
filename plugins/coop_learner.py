"""Built-in prompt learner: CoOp (Zhou et al., IJCV 2022), the positive-prompt stage of NegPrompt.

The module is ``negprompt.plugin.CoOpPrompts`` (public, for variants to subclass); this plugin only registers it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from negprompt.plugin import CoOpPrompts, PromptSettings, SoftPromptTextEncoder, TokenizedPrompts, hookimpl


class CoOpLearner:
    """The registered learner. CoOp's settings are the prompt layout itself (``PromptSettings``): no Options."""

    kind = "positive"
    Options = None

    def __call__(self, encoder: SoftPromptTextEncoder, prompts: TokenizedPrompts, settings: PromptSettings,
                 generator: torch.Generator, *, options: Any = None, text_chunk: int | None = None) -> CoOpPrompts:
        return CoOpPrompts(encoder, prompts, settings, generator, text_chunk=text_chunk)


@hookimpl
def register_prompt_learners(register: Callable[..., None]) -> None:
    register("coop", CoOpLearner(), description="CoOp positive prompts (cross-entropy over classes)")
