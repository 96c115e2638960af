"""Where a run executes and in which precision: ``--device`` and ``--precision`` resolved once, checked early."""

from __future__ import annotations

import warnings

import torch

from .errors import NegPromptWarning, UsageError


def resolve_device(requested: str | None) -> torch.device:
    """'auto' (default) picks CUDA when present; anything else is passed to torch."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise UsageError(f"invalid --device {requested!r}", hint="use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {requested} asked for CUDA, but no CUDA device is available",
                         hint="use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {requested}: this machine has {count} CUDA device(s)",
                         hint=f"use cuda:0 .. cuda:{count - 1}, or cuda")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {requested}: only cpu and cuda devices are supported",
                         hint="use auto, cpu, cuda or cuda:N")
    return device


PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(device: torch.device, precision: str) -> str:
    """The precision that will actually run: CPU always runs fp32 (CPU autocast is slower here), and says so."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" and precision != "fp32":
        # stacklevel 1: one location, so the warning shows once per run even when several stages ask
        warnings.warn(f"--precision {precision} applies to CUDA only; running fp32 on {device.type}",
                      PrecisionWarning, stacklevel=1)
        return "fp32"
    return precision


class PrecisionWarning(NegPromptWarning):
    """A requested precision that this device does not run."""


def autocast(device: torch.device, precision: str):
    """Mixed precision on CUDA (bf16/fp16 autocast); fp32 elsewhere. Stages call check_precision first."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    enabled = device.type == "cuda" and precision != "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)
