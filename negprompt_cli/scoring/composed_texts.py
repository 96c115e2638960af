"""Texts a scorer writes for each image from its best matches (NegRefine's "<class> and <label>" for an image
that matches an ID class and a negative label at once), encoded as the ID class prompts are: under the mined
labels' pool's ID templates (CSP's eight for ``csp``), the raw outputs averaged, then normalised.

The texts an image needs depend on its own top matches, so they cannot be encoded before the images are seen;
images that match alike ask for the same texts, so each text is encoded once and kept, up to ``KEEP`` texts (the
least recently asked for go first): a few KiB each, so memory stays bounded however many images a run scores
(ImageNet's 50,000 images could ask for over a million pairs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..features.backbone import Backbone
from ..features.text_encoder import SoftPromptTextEncoder
from ..features.text_features import template_features

KEEP = 131_072  # texts kept (256 MiB at 512 dimensions)


class ComposedTexts:
    """The class and label names a scorer composes texts from, and the unit features of any texts it writes."""

    def __init__(self, backbone: Backbone, class_names: Sequence[str], label_names: Sequence[str],
                 templates: tuple[str, ...], *, keep: int = KEEP) -> None:
        self.class_names, self.label_names = list(class_names), list(label_names)
        self.templates, self.keep = templates, keep
        self._backbone = backbone
        self._encoder: SoftPromptTextEncoder | None = None  # built at the first text (a deferred model loads then)
        self._known: OrderedDict[str, torch.Tensor] = OrderedDict()  # the least recently asked for first
        self.encoded = 0  # how many texts were encoded

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit CPU features [T, E] of ``texts``, in their order."""
        if not texts:
            return torch.empty(0, 0)
        wanted = list(dict.fromkeys(texts))
        found = {t: self._known[t] for t in wanted if t in self._known}
        for t in found:
            self._known.move_to_end(t)
        new = [t for t in wanted if t not in found]
        if new:
            if self._encoder is None:
                self._encoder = SoftPromptTextEncoder(self._backbone)
            found.update(zip(new, template_features(self._encoder, new, self.templates), strict=True))
            self.encoded += len(new)
            for t in new:
                self._known[t] = found[t]
            while len(self._known) > self.keep:
                self._known.popitem(last=False)
        return torch.stack([found[t] for t in texts])
