"""The optimisation loop shared by every prompt learner.

It works on cached image features only (the image tower never runs here), so one epoch
costs one text-encoder pass per batch.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..console import progress
from ..devices import autocast
from ..errors import NegPromptWarning, OutOfMemory, UsageError
from ..presets import OptimConfig
from .checkpoint import Checkpointing, LoopState, load_checkpoint, save_checkpoint
from .learners import PromptModule


# Learning-rate schedule, stepped once per epoch.
def cosine_with_warmup(epoch: int, *, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """CoOp's schedule: constant ``warmup_lr`` for the warm-up epochs, then cosine from ``lr`` to 0.

    Epoch ``e`` (0-based) after warm-up uses ``lr * (1 + cos(pi * k / K)) / 2`` with
    ``k = e - warmup_epochs`` and ``K = epochs - warmup_epochs``, so the first real epoch
    trains at the full ``lr``.
    """
    if epoch < warmup_epochs:
        return warmup_lr
    span = max(1, epochs - warmup_epochs)
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


@dataclass
class Selection:
    """Keep the epoch whose prompts score highest on held-out ID data (never on test data)."""

    name: str  # recorded per epoch in the history, e.g. "val_accuracy"
    score: Callable[[PromptModule], float]  # higher is better


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    selected_epoch: int = 0  # 1-based epoch whose prompts were kept
    selection: str = "last"  # "last" or "best-<selection name>"


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(params: Sequence[torch.Tensor], config: OptimConfig) -> torch.optim.Optimizer:
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
    selection: Selection | None = None,
    precision: str = "fp32",
    quiet: bool = False,
    checkpointing: Checkpointing | None = None,
    description: str = "Training prompts",
) -> TrainResult:
    """SGD/AdamW over the module's trainable parameters.

    ``features`` is ``[N, E]`` or ``[N, V, E]`` (V cached augmented views; epoch ``e`` uses
    view ``e % V``). ``precision`` is the autocast of each step (a choice about this machine, not part of the
    recipe ``config``). Shuffling uses a generator seeded from ``config.seed``. With
    ``selection``, the epoch with the best held-out score is kept; otherwise the last epoch. With
    ``checkpointing``, Ctrl-C writes the state after the last completed epoch and re-raises;
    ``resume`` continues from it and ends exactly where an uninterrupted run would.
    """
    if features.dim() == 2:
        features = features.unsqueeze(1)
    params = [p for p in module.parameters() if p.requires_grad]
    device = params[0].device
    optimizer = make_optimizer(params, config)
    generator = torch.Generator().manual_seed(config.seed)
    state = LoopState(epoch=0, module=_snapshot(module), optimizer=copy.deepcopy(optimizer.state_dict()),
                      generator=generator.get_state())
    writes = checkpointing is not None and checkpointing.writer
    if checkpointing is not None and checkpointing.resume and not checkpointing.path.exists() and writes:
        warnings.warn(f"no checkpoint at {checkpointing.path} (interrupted before one was written?): "
                      "starting from the beginning", NegPromptWarning, stacklevel=2)
    elif checkpointing is not None and checkpointing.resume and checkpointing.path.exists():
        state = load_checkpoint(checkpointing.path, checkpointing.fingerprint)
        module.load_state_dict(state.module)
        optimizer.load_state_dict(state.optimizer)
        generator.set_state(state.generator)
    n = len(labels)
    steps_per_epoch = math.ceil(n / config.batch_size)
    try:
        with progress(quiet) as bar:
            task = bar.add_task(description, total=config.epochs * steps_per_epoch,
                                completed=state.epoch * steps_per_epoch, status="")
            for epoch in range(state.epoch, config.epochs):
                record = _run_epoch(module, optimizer, generator, features, labels, config, precision, epoch,
                                    device, lambda status: bar.update(task, advance=1, status=status))
                if selection is not None:
                    record[selection.name] = selection.score(module)
                    if record[selection.name] > state.best_val:
                        state.best_val = record[selection.name]
                        state.best = _snapshot(module)
                        state.selected_epoch = epoch + 1
                state.history.append(record)
                state.epoch = epoch + 1
                state.module = _snapshot(module)
                state.optimizer = copy.deepcopy(optimizer.state_dict())
                state.generator = generator.get_state()
    except KeyboardInterrupt as exc:
        if checkpointing is not None and writes:
            save_checkpoint(checkpointing.path, state, checkpointing.fingerprint)
            exc.add_note(f"Saved a checkpoint after epoch {state.epoch} to {checkpointing.path}; "
                         "continue with --resume.")
        raise
    except torch.OutOfMemoryError as exc:
        kept = ""
        if checkpointing is not None and writes:
            optimizer.zero_grad(set_to_none=True)
            save_checkpoint(checkpointing.path, state, checkpointing.fingerprint)
            kept = f"; epochs done so far are saved in {checkpointing.path}"
        raise OutOfMemory(
            f"out of {device.type.upper()} memory in epoch {state.epoch + 1} of {description.lower()}{kept}",
            hint="use a smaller --text-chunk (e.g. 64; --resume continues from the checkpoint) or a smaller "
                 "--batch-size (starts over)") from exc
    if checkpointing is not None and writes:
        checkpointing.path.unlink(missing_ok=True)
    result = TrainResult(history=state.history, selection=f"best-{selection.name}" if selection else "last")
    if selection is not None and state.best is not None:
        module.load_state_dict(state.best)
        result.selected_epoch = state.selected_epoch
    else:
        result.selected_epoch = config.epochs
    return result


def _snapshot(module: PromptModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _run_epoch(module, optimizer, generator, features, labels, config, precision, epoch, device, tick):
    lr = cosine_with_warmup(epoch, epochs=config.epochs, lr=config.lr, warmup_epochs=config.warmup_epochs,
                            warmup_lr=config.warmup_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    view = features[:, epoch % features.shape[1]]
    n = len(labels)
    order = torch.randperm(n, generator=generator)
    total_loss, correct = 0.0, 0
    for start in range(0, n, config.batch_size):
        idx = order[start:start + config.batch_size]
        batch = view[idx].to(device)
        target = labels[idx].to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, logits = module.loss_and_backward(batch, target)
        optimizer.step()
        value = float(loss.detach())
        total_loss += value * len(idx)
        correct += int((logits.detach().argmax(1) == target).sum())
        tick(f"epoch {epoch + 1}/{config.epochs} loss {value:.4f}")
    return {"epoch": epoch + 1, "lr": lr, "loss": total_loss / n, "train_accuracy": correct / n}
