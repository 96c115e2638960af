"""Texts a scorer writes for each image from its best matches (NegRefine's "<class> and <label>" for an image
that matches an ID class and a negative label at once), encoded as the ID class prompts are: under the mined
labels' pool's ID templates (CSP's eight for ``csp``), the raw outputs averaged, then normalised.

The texts an image needs depend on its own top matches, so they cannot be encoded before the images are seen;
images that match alike ask for the same texts, so each text is encoded once a run and kept (a few KiB each).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..features.backbone import Backbone
from ..features.text_encoder import SoftPromptTextEncoder
from ..features.text_features import template_features


class ComposedTexts:
    """The class and label names a scorer composes texts from, and the unit features of any texts it writes."""

    def __init__(self, backbone: Backbone, class_names: Sequence[str], label_names: Sequence[str],
                 templates: tuple[str, ...]) -> None:
        self.class_names, self.label_names = list(class_names), list(label_names)
        self.templates = templates
        self._backbone = backbone
        self._encoder: SoftPromptTextEncoder | None = None  # built at the first text (a deferred model loads then)
        self._known: dict[str, torch.Tensor] = {}
        self.encoded = 0  # how many texts were encoded (each once)

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit CPU features [T, E] of ``texts``, in their order."""
        new = list(dict.fromkeys(t for t in texts if t not in self._known))
        if new:
            if self._encoder is None:
                self._encoder = SoftPromptTextEncoder(self._backbone)
            found = template_features(self._encoder, new, self.templates)
            self._known.update(zip(new, found, strict=True))
            self.encoded += len(new)
        if not texts:
            return torch.empty(0, 0)
        return torch.stack([self._known[t] for t in texts])
