"""Epoch checkpoints so Ctrl-C loses at most the epoch in progress.

A checkpoint holds everything the loop needs to continue bit-for-bit: the module state, the
optimiser state, the shuffling generator, the history and the best-validation state. It is a
safetensors file (tensors) with the scalars as JSON metadata — no pickle. A fingerprint of
the run's settings guards against resuming a different run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import IncompatibleArtifactError, UsageError
from ..outputs.atomic import write_atomic


@dataclass
class Checkpointing:
    path: Path
    fingerprint: str
    resume: bool = False
    writer: bool = True  # False on the ranks of a torchrun job other than 0: they resume from it, never write it


@dataclass
class LoopState:
    epoch: int  # number of completed epochs
    module: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, torch.Tensor] | None = None
    best_val: float = float("-inf")
    selected_epoch: int = 0


def save_checkpoint(path: Path, state: LoopState, fingerprint: str) -> None:
    tensors: dict[str, torch.Tensor] = {"generator": state.generator.clone()}
    tensors.update({f"module.{k}": v for k, v in state.module.items()})
    if state.best is not None:
        tensors.update({f"best.{k}": v for k, v in state.best.items()})
    optim_scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state.optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                optim_scalars.setdefault(str(index), {})[name] = value
    meta = {"fingerprint": fingerprint, "epoch": state.epoch, "history": state.history, "best_val": state.best_val,
            "selected_epoch": state.selected_epoch, "param_groups": state.optimizer["param_groups"],
            "optim_scalars": optim_scalars}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"negprompt_checkpoint": json.dumps(meta)}))


def load_checkpoint(path: Path, fingerprint: str) -> LoopState:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["negprompt_checkpoint"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise IncompatibleArtifactError(f"{path} is not a readable negprompt checkpoint: {exc}") from exc
    if meta["fingerprint"] != fingerprint:
        raise UsageError(f"checkpoint {path} belongs to a run with other settings or data",
                         hint="resume with the same options, or delete the checkpoint to start over")
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    for index, scalars in meta["optim_scalars"].items():
        optim_state.setdefault(int(index), {}).update(scalars)
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return LoopState(
        epoch=meta["epoch"],
        module={k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")},
        optimizer={"state": optim_state, "param_groups": meta["param_groups"]},
        generator=tensors["generator"],
        history=meta["history"],
        best=best,
        best_val=meta["best_val"],
        selected_epoch=meta["selected_epoch"],
    )


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")
