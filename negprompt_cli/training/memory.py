"""``--text-chunk auto``: chunk the text graph only when the whole graph would not fit.

Gradient caching (``--text-chunk K``) keeps fit-neg's memory flat at any class count but costs
one extra no-grad pass over the text tower per step, and on a large GPU that pass is pure loss.
So ``auto`` estimates the autograd graph of one unchunked step and chunks only above the budget:

    bytes ≈ rows × layers × width × (11·S + 2·Lp) × bytes-per-value × 1.5

with rows = C·P prompts, S the longest suffix (class name, suffix, EOT; the shared-prefix path
only runs those), Lp = 1 + n_ctx prefix tokens (their keys and values are gathered per row), or
13·(Lp + S) per row for the plain path (class-specific contexts). The coefficients are the saved
activations of open_clip's text block measured with autograd's saved-tensor hooks (ViT-B/16,
fp32: 3.3 MB per prompt row at S = 9, Lp = 17); 1.5 covers the allocator and workspaces.
bf16/fp16 autocast keeps about 0.6 of the fp32 bytes (norms and softmax stay fp32).

The budget is 80 % of the GPU's free memory at the time of the decision, or 3 GiB on the CPU
(which keeps a CPU step at C = 1000 under about 8 GB in all).
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError

AUTO = "auto"
CPU_BUDGET_BYTES = 3 * 2**30
GPU_FREE_FRACTION = 0.8
SAFETY = 1.5
BYTES_PER_VALUE = {"fp32": 4.0, "bf16": 2.4, "fp16": 2.4}


def parse_text_chunk(value: str | int | None) -> int | str | None:
    """``auto``, a positive class count, or 0/None for "never chunk"."""
    if value is None or value == AUTO:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--text-chunk must be auto or a whole number (got {value!r})") from None
    if number < 0:
        raise UsageError(f"--text-chunk must be auto, 0 (never chunk) or positive (got {number})")
    return number or None


def no_grad_text_chunk(value: str | int | None) -> int | None:
    """``--text-chunk`` for a pass that keeps no graph (score, transfer): auto is one pass, as is 0."""
    chunk = parse_text_chunk(value)
    return None if chunk == AUTO else chunk  # type: ignore[return-value]


def graph_bytes(*, rows: int, layers: int, width: int, suffix_tokens: int, prefix_tokens: int, shared: bool,
                precision: str = "fp32") -> float:
    """Estimated autograd memory of encoding ``rows`` prompts with gradients (see the module docstring)."""
    per_row = 11 * suffix_tokens + 2 * prefix_tokens if shared else 13 * (prefix_tokens + suffix_tokens)
    return rows * layers * width * per_row * BYTES_PER_VALUE.get(precision, 4.0) * SAFETY


def memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return GPU_FREE_FRACTION * free
    return float(CPU_BUDGET_BYTES)


def auto_text_chunk(*, classes: int, prompts_per_class: int, layers: int, width: int, suffix_tokens: int,
                    prefix_tokens: int, shared: bool, precision: str, budget: float) -> int | None:
    """None when the whole graph fits ``budget``; else the most classes per chunk that fit (a multiple of 16)."""
    per_class = graph_bytes(rows=prompts_per_class, layers=layers, width=width, suffix_tokens=suffix_tokens,
                            prefix_tokens=prefix_tokens, shared=shared, precision=precision)
    if per_class * classes <= budget:
        return None
    fitting = math.floor(budget / per_class)
    return max(1, fitting - fitting % 16 if fitting >= 16 else fitting)


def resolve_text_chunk(value: int | str | None, *, backbone, prompts, prompts_per_class: int,
                       class_specific: bool, precision: str) -> int | None:
    """The chunk size fit-neg runs with: ``value`` itself unless it is ``auto``."""
    from ..features.text_encoder import SoftPromptTextEncoder

    if value != AUTO:
        return value  # type: ignore[return-value]
    encoder = SoftPromptTextEncoder(backbone)
    prefix = 1 + prompts.n_ctx
    # a tower that cannot be cut at the end-of-text token runs its whole context
    suffix = int(prompts.eot.max()) + 1 - prefix if encoder.truncates else encoder.context_length - prefix
    return auto_text_chunk(
        classes=len(prompts), prompts_per_class=prompts_per_class,
        layers=len(encoder.tower.transformer.resblocks), width=backbone.text_width,
        suffix_tokens=max(1, suffix), prefix_tokens=prefix,
        shared=encoder.shares_prefix and not class_specific, precision=precision,
        budget=memory_budget(backbone.device))
