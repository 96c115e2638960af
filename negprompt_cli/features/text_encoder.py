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
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UsageError
from . import shared_prefix
from .backbone import Backbone, text_tower

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


POOLS = ("argmax", "eos", "last", "first")  # open_clip's pool types that give one feature per text


class SoftPromptTextEncoder:
    """Encodes learned context vectors + class names with a frozen open_clip text tower.

    Any open_clip text tower of the CLIP shape takes soft prompts: the ``CLIP`` model's own (causal, pooled at the
    end-of-text token) and a ``CustomTextCLIP``'s ``text`` (SigLIP's: bidirectional, pooled at the last position;
    also ``first`` pooling). The exact shortcuts are used only where they are exact: a batch is cut after its
    longest end-of-text token, and a shared prefix runs once, only for a causal tower pooled at that token; other
    towers run the whole context. A tower of another shape (a Hugging Face text model, CoCa's class token) encodes
    plain texts through the model's own ``encode_text`` and refuses soft prompts (:meth:`require_soft_prompts`).
    """

    def __init__(self, backbone: Backbone) -> None:
        model = backbone.model
        self.backbone = backbone
        self.model = model
        self.tokenizer = backbone.tokenizer
        tower = text_tower(model)
        self.tower: Any = tower  # None: plain texts only, through encode_text
        own = tower is model  # an open_clip CLIP keeps its text tower's settings under text_* names
        self.pool_type = getattr(model, "text_pool_type", None) if own else getattr(tower, "pool_type", None)
        self.pool_type = self.pool_type or "argmax"
        self.eos_id = getattr(model, "text_eos_id", None) if own else getattr(tower, "eos_id", None)
        self.why_no_soft_prompts = self._why_no_soft_prompts(backbone.name)
        self.ctx_start = 1  # where the context vectors go: after the start-of-text token, if the tokenizer has one
        self.placeholder_id = -1
        if tower is not None:
            self.context_length = int(tower.positional_embedding.shape[0])
            # exact only for a causal tower pooled at the end-of-text token: what comes after it is never seen
            self.truncates = getattr(tower, "attn_mask", None) is not None and self.pool_type in ("argmax", "eos")
            self.ctx_start = self._placeholder_position()
        else:
            self.context_length = int(self.tokenizer(["x"]).shape[1])
            self.truncates = False
        self.shares_prefix = bool(self.truncates and self.ctx_start == 1 and shared_prefix.supported(tower))

    def _placeholder_position(self) -> int:
        """The first position a placeholder takes: 1 after open_clip's start-of-text token, 0 for a tokenizer
        without one (SigLIP's). Found by tokenizing with and without a placeholder, whatever the tokenizer."""
        with_it, without = self.tokenizer([f"{PLACEHOLDER} a", "a"])
        differs = torch.nonzero(with_it != without).flatten()
        position = int(differs[0]) if len(differs) else 1
        self.placeholder_id = int(with_it[position])
        return position

    def _why_no_soft_prompts(self, name: str) -> str | None:
        tower = self.tower
        if tower is None:
            return (f"backbone {name!r} has no CLIP-style text tower (token_embedding, positional_embedding, "
                    "transformer, ln_final): soft prompts need one")
        if getattr(tower, "cls_emb", None) is not None:
            return f"backbone {name!r} appends a class token to its texts (CoCa): soft prompts are not supported"
        if self.pool_type not in POOLS:
            return f"backbone {name!r} pools text with {self.pool_type!r}: soft prompts need one feature per text"
        if self.pool_type == "eos" and self.eos_id is None:
            return f"backbone {name!r} pools at an end-of-text token it does not name"
        return None

    def require_soft_prompts(self) -> None:
        """One line (exit 2) when this text tower cannot take learned context vectors: before any work."""
        if self.why_no_soft_prompts is not None:
            raise UsageError(self.why_no_soft_prompts,
                             hint="score it with --zero-shot, or learn prompts on a CLIP or SigLIP-style backbone "
                                  "(ViT-B/16, ViT-B-16-SigLIP, ...)")

    @property
    def device(self) -> torch.device:
        """Where the text tower's weights are (where context vectors must be)."""
        module = self.tower if self.tower is not None else self.model
        return next(module.parameters()).device

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
        start = self.ctx_start
        if n_ctx and self.tower is not None and not bool((tokens[:, start:start + n_ctx] == self.placeholder_id).all()):
            raise UsageError(f"this backbone's tokenizer does not keep {n_ctx} placeholders {PLACEHOLDER!r} as "
                             f"{n_ctx} tokens at position {start}: soft prompts cannot be placed")
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
        """Embeddings of the tokens of ``text`` (no start/end tokens): how ``--ctx-init`` starts the context."""
        self.require_soft_prompts()
        tokens = self.tokenizer([text])[0]
        eot = int(self.eot_positions(tokens[None])[0])
        ids = tokens[self.ctx_start:eot].to(self.device)
        with torch.no_grad():
            return self.tower.token_embedding(ids).float().clone()

    # -- encoding --------------------------------------------------------------------------
    def encode(self, ctx: torch.Tensor, prompts: TokenizedPrompts, *, normalize: bool = True,
               chunk_size: int | None = None, truncate: bool = True) -> torch.Tensor:
        """Text features for each prompt row.

        ``ctx`` is ``[n_ctx, D]`` (shared by every row) or ``[N, n_ctx, D]`` (one per row).
        Returns ``[N, E]``. Gradients flow to ``ctx``; the tower's weights stay frozen.
        """
        self.require_soft_prompts()
        n = len(prompts)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n, -1, -1)
        if ctx.shape[0] != n or ctx.shape[1] != prompts.n_ctx:
            raise ValueError(f"context of shape {tuple(ctx.shape)} does not fit {n} prompts with "
                             f"{prompts.n_ctx} context tokens")
        device = self.device
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
        """Features of plain token rows (no context vectors), the same numbers as the model's ``encode_text``. On a
        causal tower pooled at the end-of-text token each batch is cut at its longest one (a 4-word lexicon prompt
        is ~8 of 77 tokens; callers bucket rows by length); a tower of another shape runs ``encode_text`` itself."""
        device = self.device
        tokens = tokens.to(device)
        if self.why_no_soft_prompts is not None:
            return self.model.encode_text(tokens, normalize=normalize)
        width = self.tower.token_embedding.weight.shape[1]
        empty = torch.zeros(tokens.shape[0], 0, width, device=device)
        return self._encode_rows(empty, tokens, self.eot_positions(tokens), normalize, truncate=True)

    def encode_shared(self, ctx: torch.Tensor, prompts: TokenizedPrompts, *, normalize: bool = True,
                      chunk_size: int | None = None) -> torch.Tensor:
        """Features of every (context, class) pair: ``ctx`` [P, n_ctx, D] -> [P, C, E].

        Exact: the same numbers as :meth:`encode` on the P·C expanded rows, but each context's
        prefix runs once per layer (see ``shared_prefix``; a causal tower pooled at the end-of-text token only:
        other towers run the expanded rows). ``chunk_size`` bounds how many classes run at once; classes are
        bucketed by suffix length so padding stays small.
        """
        self.require_soft_prompts()
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0)
        p, c = ctx.shape[0], len(prompts)
        if not self.shares_prefix:
            rows = ctx.repeat_interleave(c, dim=0)
            return self.encode(rows, prompts.repeat(p), normalize=normalize, chunk_size=chunk_size).view(p, c, -1)
        tower = self.tower
        device = self.device
        cast = tower.transformer.get_cast_dtype()
        n_ctx = prompts.n_ctx
        lp = 1 + n_ctx
        tokens = prompts.tokens.to(device)
        eot = prompts.eot.to(device)
        positions = tower.positional_embedding.to(cast)
        sos = tower.token_embedding(tokens[:1, :1]).to(cast)  # the SOS embedding is the same for every row
        prefix = torch.cat([sos.expand(p, -1, -1), ctx.to(device=device, dtype=cast)], dim=1) + positions[:lp]
        order = torch.argsort(eot, stable=True)
        step = chunk_size or c
        outputs = []
        for start in range(0, c, step):
            rows = order[start:start + step]
            length = int(eot[rows].max()) + 1
            suffix = tower.token_embedding(tokens[rows, lp:length]).to(cast) + positions[lp:length]
            suffix = suffix.unsqueeze(0).expand(p, -1, -1, -1).reshape(p * len(rows), length - lp, -1)
            owner = torch.arange(p, device=device).repeat_interleave(len(rows))
            suffix_eot = (eot[rows] - lp).repeat(p)
            pooled = shared_prefix.encode(tower, prefix, suffix, suffix_eot, owner)
            outputs.append(self._project(pooled, normalize).view(p, len(rows), -1))
        features = torch.cat(outputs, dim=1)
        return features[:, torch.argsort(order)]

    def _project(self, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        projection = self.tower.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return F.normalize(x, dim=-1) if normalize else x

    def _encode_rows(self, ctx: torch.Tensor, tokens: torch.Tensor, eot: torch.Tensor,
                     normalize: bool, truncate: bool) -> torch.Tensor:
        tower = self.tower
        # Cutting is exact only when nothing after the pooled token is seen (``truncates``)
        length = int(eot.max()) + 1 if (truncate and self.truncates) else tokens.shape[1]
        tokens = tokens[:, :length]
        cast = tower.transformer.get_cast_dtype()
        start, n_ctx = self.ctx_start, ctx.shape[1]
        emb = tower.token_embedding(tokens).to(cast)
        x = torch.cat([emb[:, :start], ctx.to(device=emb.device, dtype=cast), emb[:, start + n_ctx:]], dim=1)
        x = x + tower.positional_embedding[:length].to(cast)
        x = tower.transformer(x, attn_mask=self._mask(tokens, length, x.dtype))
        x = tower.ln_final(x)
        return self._project(self._pool(x, eot), normalize)

    def _mask(self, tokens: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The attention mask open_clip's tower uses for these tokens: its causal mask, and for a bidirectional
        tower built with ``use_pad_mask`` the additive mask that hides the padding."""
        causal = getattr(self.tower, "attn_mask", None)
        causal = causal[:length, :length] if causal is not None else None
        if getattr(self.tower, "use_pad_mask", False):
            pad = self.tower._build_additive_mask(tokens, length, dtype)
            return pad if causal is None else causal.unsqueeze(0) + pad
        return causal

    def _pool(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "last":
            return x[:, -1]
        if self.pool_type == "first":
            return x[:, 0]
        return x[torch.arange(x.shape[0], device=x.device), eot]
