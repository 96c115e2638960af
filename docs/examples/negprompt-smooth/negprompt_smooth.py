"""A prompt-learner plugin: CoOp with label smoothing, its strength a --learner-option (an example)."""

from dataclasses import dataclass

import torch.nn.functional as F

from negprompt.plugin import CoOpPrompts, UsageError, hookimpl


@dataclass(frozen=True)
class SmoothOptions:
    smoothing: float = 0.1  # fit-pos --learner-option smoothing=0.2

    def __post_init__(self):
        if not 0.0 <= self.smoothing < 1.0:
            raise UsageError(f"smoothing must be in [0, 1) (got {self.smoothing})")


class SmoothPrompts(CoOpPrompts):
    def __init__(self, encoder, prompts, settings, generator, *, smoothing, text_chunk=None):
        super().__init__(encoder, prompts, settings, generator, text_chunk=text_chunk)
        self.smoothing = smoothing

    def loss(self, image_features, labels):
        logits = self.class_logits(image_features).float()
        return F.cross_entropy(logits, labels, label_smoothing=self.smoothing), logits


class SmoothLearner:
    kind = "positive"  # fit-pos; "negative" learners serve fit-neg
    Options = SmoothOptions

    def __call__(self, encoder, prompts, settings, generator, *, options, text_chunk=None):
        return SmoothPrompts(encoder, prompts, settings, generator, smoothing=options.smoothing,
                             text_chunk=text_chunk)


@hookimpl
def register_prompt_learners(register):
    register("coop-smooth", SmoothLearner(), description="CoOp with label smoothing")
