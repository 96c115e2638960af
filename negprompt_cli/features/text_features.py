"""Text features of an artifact's learned contexts for any list of class names.

This is what makes negative prompts transferable: the contexts are class-agnostic, so new
class names only need a text-encoder pass, no images and no training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..console import progress
from ..errors import IncompatibleArtifactError
from ..outputs.artifact import PromptArtifact
from .backbone import Backbone
from .text_encoder import SoftPromptTextEncoder


def text_features_for(backbone: Backbone, artifact: PromptArtifact, names: list[str],
                      text_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit ([C, E], [C, P, E] or None) features of the artifact's contexts with ``names``: the ones it stores
    for its own class names (the text tower is not touched), else encoded."""
    if list(names) == list(artifact.class_names) and "text_pos" in artifact.tensors:
        return artifact.tensors["text_pos"], artifact.tensors.get("text_neg")
    encoder = SoftPromptTextEncoder(backbone)
    return context_features(encoder, artifact.tensors["ctx_pos"], artifact.tensors.get("ctx_neg"), artifact.prompt,
                            names, text_chunk)


def context_features(encoder: SoftPromptTextEncoder, ctx_pos: torch.Tensor, ctx_neg: torch.Tensor | None,
                     prompt: dict, names: list[str],
                     text_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit CPU features of shared contexts (``prompt``: the artifact's layout) with ``names``."""
    if ctx_pos.dim() == 3 or (ctx_neg is not None and ctx_neg.dim() == 4):
        raise IncompatibleArtifactError(
            "these prompts have class-specific contexts, which cannot be re-targeted to other class names",
            hint="train with shared contexts (no --csc / --neg-csc) to transfer",
        )
    encoder.require_soft_prompts()
    prompts = encoder.tokenize(list(names), int(prompt["n_ctx"]), prompt.get("suffix", "."))
    device = encoder.device
    with torch.no_grad():
        text_pos = encoder.encode_shared(ctx_pos.to(device), prompts, chunk_size=text_chunk)[0].cpu()
        text_neg = None
        if ctx_neg is not None:
            text_neg = encoder.encode_shared(ctx_neg.to(device), prompts, chunk_size=text_chunk)
            text_neg = text_neg.transpose(0, 1).contiguous().cpu()
    return text_pos, text_neg


HAND_TEMPLATE = "a photo of a {}."


def hand_template_features(encoder: SoftPromptTextEncoder, names: list[str],
                           template: str = HAND_TEMPLATE) -> torch.Tensor:
    """Zero-shot class features of the hand template (MCM's "a photo of a {}."), as ``encode_text`` gives them."""
    return encode_texts(encoder, [template.format(n) for n in names])


def encode_texts(encoder: SoftPromptTextEncoder, texts: list[str], *, batch: int = 1024, quiet: bool = True,
                 description: str = "Encoding text") -> torch.Tensor:
    """Unit CPU features of plain texts, equal to the model's own ``encode_text`` (to float rounding), for lists
    as long as a lexicon (~70k prompts): texts are sorted by token length and each batch runs only up to its
    longest end-of-text token, which is exact for CLIP's causal text tower and skips most of the padding."""
    with torch.no_grad(), progress(quiet) as bar:
        task = bar.add_task(description, total=len(texts), status="")
        return _length_bucketed(encoder, texts, batch, normalize=True, done=lambda n: bar.advance(task, n))


def _length_bucketed(encoder: SoftPromptTextEncoder, texts: list[str], batch: int, *, normalize: bool,
                     done: Callable[[int], None] = lambda n: None) -> torch.Tensor:
    """Float32 CPU features of ``texts`` in their order; computed sorted by token length, each batch cut at its
    longest end-of-text token."""
    tokens = encoder.tokenizer(texts)
    order = torch.argsort(encoder.eot_positions(tokens), stable=True)
    parts = []
    for start in range(0, len(texts), batch):
        rows = order[start:start + batch]
        parts.append(encoder.encode_tokens(tokens[rows], normalize=normalize).float().cpu())
        done(len(rows))
    if not parts:
        return torch.empty(0, 0)
    return torch.cat(parts)[torch.argsort(order)]


def template_features(encoder: SoftPromptTextEncoder, words: list[str], templates: tuple[str, ...], *,
                      batch: int = 1024, quiet: bool = True, description: str = "Encoding text",
                      share_prefix: bool = True) -> torch.Tensor:
    """Unit CPU features of ``words`` under a template ensemble, as CLIP-OOD code builds them (CSP, NegLabel):
    the raw ``encode_text`` outputs of every template are averaged, then normalised once.

    A template with words before the ``{}`` ("a photo of the nice {}.") shares that prefix across all words:
    its hidden states run once (``encode_shared``, exact under the causal mask), and each word runs only its
    own tokens; a template that starts with the word ("{}", "{} environment") takes the plain path.
    """
    total = None
    with torch.no_grad(), progress(quiet) as bar:
        task = bar.add_task(description, total=len(words) * len(templates), status="")
        for template in templates:
            raw = _one_template(encoder, words, template, batch, share_prefix)
            total = raw if total is None else total + raw
            bar.advance(task, len(words))
    if total is None or not words:
        return torch.empty(0, 0)
    return torch.nn.functional.normalize(total / len(templates), dim=-1)


def _one_template(encoder: SoftPromptTextEncoder, words: list[str], template: str, batch: int,
                  share_prefix: bool = True) -> torch.Tensor:
    """Raw (unnormalised) float32 CPU features of one template over every word."""
    head, _, tail = template.partition("{}")
    prefix = head.strip()
    if share_prefix and prefix and head.endswith(" ") and encoder.shares_prefix:
        ctx = encoder.word_embeddings(prefix)
        prompts = encoder.tokenize(words, int(ctx.shape[0]), tail)
        device = encoder.device
        return encoder.encode_shared(ctx.to(device), prompts, normalize=False, chunk_size=batch)[0].float().cpu()
    return _length_bucketed(encoder, [template.format(w) for w in words], batch, normalize=False)
