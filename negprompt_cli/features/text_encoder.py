"""Soft-prompt text encoder: open_clip's text tower with learnable context vectors injected.

A prompt is ``[SOS] ctx_1 ... ctx_M <class name tokens> . [EOT] pad...``. The context
vectors replace the embeddings of M placeholder tokens, everything else is exactly
``CLIP.encode_text``. Because the tower is causal and pools at the EOT token, every batch is
cut to its longest EOT position (+1): the cut-off padding can never influence the result,
so this is exact and saves most of the compute (77 -> ~20 tokens for ImageNet names).
Rows are processed in EOT-sorted chunks so each chunk is cut as short as its own longest row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .backbone import Backbone

PLACEHOLDER = "X"  # one BPE token in the CLIP vocabulary; its embedding is replaced by a context vector


@dataclass(frozen=True)
class TokenizedPrompts:
    """Token ids of ``n_ctx`` placeholders followed by each class name, and where each ends."""

    tokens: torch.Tensor  # [N, context_length] long
    eot: torch.Tensor  # [N] long: index of the pooled (end-of-text) token
    n_ctx: int
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, rows: torch.Tensor | list[int]) -> TokenizedPrompts:
        index = torch.as_tensor(rows, dtype=torch.long)
        return TokenizedPrompts(self.tokens[index], self.eot[index], self.n_ctx,
                                tuple(self.names[i] for i in index.tolist()))

    def repeat(self, times: int) -> TokenizedPrompts:
        """The same names ``times`` over (one copy per prompt of a multi-prompt learner)."""
        return TokenizedPrompts(self.tokens.repeat(times, 1), self.eot.repeat(times), self.n_ctx,
                                self.names * times)


class SoftPromptTextEncoder:
    """Encodes learned context vectors + class names with a frozen open_clip text tower."""

    def __init__(self, backbone: Backbone) -> None:
        model = backbone.model
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(model, attr):
                raise UsageError(
                    f"backbone {backbone.name!r} has no CLIP-style text tower ({attr} missing); "
                    "soft prompts need open_clip's built-in text transformer",
                    hint="choose a CLIP backbone such as ViT-B/16, ViT-B/32, RN50 or RN101",
                )
        self.pool_type = getattr(model, "text_pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos"):
            raise UsageError(f"backbone {backbone.name!r} pools text with {self.pool_type!r}; "
                             "soft prompts need end-of-text pooling")
        self.backbone = backbone
        self.model = model
        self.tokenizer = backbone.tokenizer
        self.context_length = int(model.positional_embedding.shape[0])
        self.eos_id = getattr(model, "text_eos_id", None)

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, names: Sequence[str], n_ctx: int, suffix: str = ".") -> TokenizedPrompts:
        """Tokenize ``X X ... X {name}{suffix}``; refuse names that would not fit the context."""
        texts = [" ".join([PLACEHOLDER] * n_ctx + [name]) + suffix for name in names]
        if n_ctx == 0:
            texts = [f"{name}{suffix}" for name in names]
        tokens = self.tokenizer(texts)
        if tokens.shape[1] != self.context_length:
            raise UsageError(f"tokenizer context {tokens.shape[1]} differs from the text tower's "
                             f"{self.context_length}")
        eot = self.eot_positions(tokens)
        # open_clip truncates silently and forces EOT into the last slot: detect that.
        full = self.context_length - 1
        overflow = [names[i] for i in torch.nonzero(eot == full).flatten().tolist()
                    if len(self._raw_length(texts[i])) > full - 1]
        if overflow:
            raise UsageError(
                f"class name {overflow[0]!r} is too long for {n_ctx} context tokens in a "
                f"{self.context_length}-token text tower",
                hint="shorten the name or use fewer context tokens (--n-ctx)",
            )
        return TokenizedPrompts(tokens, eot, n_ctx, tuple(names))

    def _raw_length(self, text: str) -> list[int]:
        encode = getattr(self.tokenizer, "encode", None)
        return encode(text) if encode is not None else []

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos" and self.eos_id is not None:
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def word_embeddings(self, text: str) -> torch.Tensor:
        """Embeddings of the tokens of ``text`` (no SOS/EOT): how ``--ctx-init`` starts the context."""
        tokens = self.tokenizer([text])[0]
        eot = int(self.eot_positions(tokens[None])[0])
        ids = tokens[1:eot].to(self.model.token_embedding.weight.device)
        with torch.no_grad():
            return self.model.token_embedding(ids).float().clone()

    # -- encoding --------------------------------------------------------------------------
    def encode(self, ctx: torch.Tensor, prompts: TokenizedPrompts, *, normalize: bool = True,
               chunk_size: int | None = None, truncate: bool = True) -> torch.Tensor:
        """Text features for each prompt row.

        ``ctx`` is ``[n_ctx, D]`` (shared by every row) or ``[N, n_ctx, D]`` (one per row).
        Returns ``[N, E]``. Gradients flow to ``ctx``; the tower's weights stay frozen.
        """
        n = len(prompts)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n, -1, -1)
        if ctx.shape[0] != n or ctx.shape[1] != prompts.n_ctx:
            raise ValueError(f"context of shape {tuple(ctx.shape)} does not fit {n} prompts with "
                             f"{prompts.n_ctx} context tokens")
        device = self.model.token_embedding.weight.device
        tokens = prompts.tokens.to(device)
        eot = prompts.eot.to(device)
        if chunk_size is None or chunk_size >= n:
            return self._encode_rows(ctx, tokens, eot, normalize, truncate)
        order = torch.argsort(eot, stable=True)
        outputs = []
        for start in range(0, n, chunk_size):
            rows = order[start:start + chunk_size]
            outputs.append(self._encode_rows(ctx[rows.to(ctx.device)], tokens[rows], eot[rows], normalize,
                                             truncate))
        features = torch.cat(outputs)
        return features[torch.argsort(order)]

    def encode_tokens(self, tokens: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Features of plain token rows (no context vectors), cut at their longest end-of-text token: the same
        numbers as ``CLIP.encode_text`` without running the padding (a 4-word lexicon prompt is ~8 of 77
        tokens). Callers bucket rows by length so each batch is cut as short as it can be."""
        device = self.model.token_embedding.weight.device
        tokens = tokens.to(device)
        empty = torch.zeros(tokens.shape[0], 0, self.model.token_embedding.weight.shape[1], device=device)
        return self._encode_rows(empty, tokens, self.eot_positions(tokens), normalize, truncate=True)

    def encode_shared(self, ctx: torch.Tensor, prompts: TokenizedPrompts, *, normalize: bool = True,
                      chunk_size: int | None = None) -> torch.Tensor:
        """Features of every (context, class) pair: ``ctx`` [P, n_ctx, D] -> [P, C, E].

        Exact: the same numbers as :meth:`encode` on the P·C expanded rows, but each context's
        prefix runs once per layer (see ``shared_prefix``). ``chunk_size`` bounds how many
        classes run at once; classes are bucketed by suffix length so padding stays small.
        """
        from . import shared_prefix

        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0)
        p, c = ctx.shape[0], len(prompts)
        if not shared_prefix.supported(self.model):
            rows = ctx.repeat_interleave(c, dim=0)
            return self.encode(rows, prompts.repeat(p), normalize=normalize, chunk_size=chunk_size).view(p, c, -1)
        model = self.model
        device = model.token_embedding.weight.device
        cast = model.transformer.get_cast_dtype()
        n_ctx = prompts.n_ctx
        lp = 1 + n_ctx
        tokens = prompts.tokens.to(device)
        eot = prompts.eot.to(device)
        positions = model.positional_embedding.to(cast)
        sos = model.token_embedding(tokens[:1, :1]).to(cast)  # the SOS embedding is the same for every row
        prefix = torch.cat([sos.expand(p, -1, -1), ctx.to(device=device, dtype=cast)], dim=1) + positions[:lp]
        order = torch.argsort(eot, stable=True)
        step = chunk_size or c
        outputs = []
        for start in range(0, c, step):
            rows = order[start:start + step]
            length = int(eot[rows].max()) + 1
            suffix = model.token_embedding(tokens[rows, lp:length]).to(cast) + positions[lp:length]
            suffix = suffix.unsqueeze(0).expand(p, -1, -1, -1).reshape(p * len(rows), length - lp, -1)
            owner = torch.arange(p, device=device).repeat_interleave(len(rows))
            suffix_eot = (eot[rows] - lp).repeat(p)
            pooled = shared_prefix.encode(model, prefix, suffix, suffix_eot, owner)
            outputs.append(self._project(pooled, normalize).view(p, len(rows), -1))
        features = torch.cat(outputs, dim=1)
        return features[:, torch.argsort(order)]

    def _project(self, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        projection = self.model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return F.normalize(x, dim=-1) if normalize else x

    def _encode_rows(self, ctx: torch.Tensor, tokens: torch.Tensor, eot: torch.Tensor,
                     normalize: bool, truncate: bool) -> torch.Tensor:
        model = self.model
        attn_mask = getattr(model, "attn_mask", None)
        # Cutting is exact only with a causal mask: without one, padding would be attended to.
        length = int(eot.max()) + 1 if (truncate and attn_mask is not None) else tokens.shape[1]
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        n_ctx = ctx.shape[1]
        emb = model.token_embedding(tokens).to(cast)
        x = torch.cat([emb[:, :1], ctx.to(device=emb.device, dtype=cast), emb[:, 1 + n_ctx:]], dim=1)
        x = x + model.positional_embedding[:length].to(cast)
        mask = attn_mask[:length, :length] if attn_mask is not None else None
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self._project(x, normalize)
