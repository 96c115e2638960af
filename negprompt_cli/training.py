"""The optimisation loop shared by every prompt learner.

It works on cached image features only (the image tower never runs here), so one epoch
costs one text-encoder pass per batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .backbone import autocast
from .console import progress
from .errors import UsageError
from .learners import PromptModule
from .schedule import cosine_with_warmup


@dataclass
class OptimConfig:
    """Optimiser settings. Defaults are CoOp's published ImageNet settings (vit_b16_ep50)."""

    optimizer: str = "sgd"  # "sgd" (CoOp) or "adamw" (better conditioned on small/random models)
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    seed: int = 1
    precision: str = "fp32"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    selected_epoch: int = 0  # 1-based epoch whose prompts were kept
    selection: str = "last"  # "last" or "best-val-accuracy"


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(params: list[torch.Tensor], config: OptimConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise UsageError(f"unknown optimizer {config.optimizer!r}", hint=f"choose one of {', '.join(OPTIMIZERS)}")


def accuracy(module: PromptModule, features: torch.Tensor, labels: torch.Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy of the module's class logits (text features computed once)."""
    if len(labels) == 0:
        return float("nan")
    device = next(module.parameters()).device
    with torch.no_grad():
        correct = 0
        for start in range(0, len(labels), batch):
            logits = module.class_logits(features[start:start + batch].to(device))
            correct += int((logits.argmax(1).cpu() == labels[start:start + batch]).sum())
    return correct / len(labels)


def train(
    module: PromptModule,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: OptimConfig,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    quiet: bool = False,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """SGD over the module's trainable parameters.

    ``features`` is ``[N, E]`` or ``[N, V, E]`` (V cached augmented views; epoch ``e`` uses
    view ``e % V``). Shuffling uses a generator seeded from ``config.seed``. With ``val``,
    the epoch with the best validation accuracy is kept; otherwise the last epoch.
    """
    if features.dim() == 2:
        features = features.unsqueeze(1)
    params = [p for p in module.parameters() if p.requires_grad]
    device = params[0].device
    optimizer = make_optimizer(params, config)
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult(selection="best-val-accuracy" if val is not None else "last")
    best_state: dict[str, torch.Tensor] | None = None
    best_val = -math.inf
    n = len(labels)
    steps_per_epoch = math.ceil(n / config.batch_size)
    with progress(quiet) as bar:
        task = bar.add_task("Training prompts", total=config.epochs * steps_per_epoch, status="")
        for epoch in range(config.epochs):
            lr = cosine_with_warmup(epoch, epochs=config.epochs, lr=config.lr,
                                    warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            view = features[:, epoch % features.shape[1]]
            order = torch.randperm(n, generator=generator)
            total_loss, correct = 0.0, 0
            for start in range(0, n, config.batch_size):
                idx = order[start:start + config.batch_size]
                batch = view[idx].to(device)
                target = labels[idx].to(device)
                with autocast(device, config.precision):
                    loss, logits = module.loss(batch, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == target).sum())
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{config.epochs} loss {float(loss.detach()):.4f}")
            record = {"epoch": epoch + 1, "lr": lr, "loss": total_loss / n, "train_accuracy": correct / n}
            if val is not None:
                record["val_accuracy"] = accuracy(module, *val)
                if record["val_accuracy"] > best_val:
                    best_val = record["val_accuracy"]
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in module.state_dict().items()})
                    result.selected_epoch = epoch + 1
            result.history.append(record)
            if on_epoch is not None:
                on_epoch(epoch, record)
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        result.selected_epoch = config.epochs
    return result
