"""One command as N cooperating processes, launched by ``torchrun`` (torch.distributed).

The rule that makes an N-process run give the *same bytes* as a one-process run: work is split
in whole encoder batches. The sorted image list is cut into batches of ``--batch-size`` exactly as
one process would cut it, and each rank takes a contiguous run of those batches. Every image is
therefore encoded in the same batch, with the same neighbours, as in a one-process run with the same threads
per process on CPU (torchrun starts ranks with one), and the same GPU model and precision on CUDA (docs/scale.md).
``score`` scores each rank's share where it was encoded and writes it to the rank's own part, which rank 0
joins in order (``score_output``); ``cache build`` keeps each share in the cache; the prompt stages
gather their (small) training sets on every rank.

Backends: nccl when the ranks run on CUDA (each on ``cuda:LOCAL_RANK``), gloo on CPU. Collectives
that fail because another rank died become :class:`RankLost`, one clear line instead of a hang or a
traceback; torchrun then stops the remaining ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .devices import resolve_device
from .errors import NegPromptError, UsageError

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


class RankLost(NegPromptError):
    """Another rank stopped (crashed, killed or refused its input) while this one waited for it."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job: rank ``rank`` of ``world_size`` (one process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in LAUNCH_ENV)


def ranks_from_environment() -> Ranks:
    try:
        ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except (KeyError, ValueError) as exc:
        raise UsageError(f"torchrun's environment is incomplete or invalid ({exc})") from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise UsageError(f"RANK={ranks.rank} is outside WORLD_SIZE={ranks.world_size}")
    return ranks


def rank_device(requested: str, ranks: Ranks) -> str:
    """``auto`` and ``cuda`` mean this rank's own GPU (``cuda:LOCAL_RANK``); an explicit one is kept."""
    if requested in ("auto", "cuda", "", None):
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            if ranks.local_rank >= count:  # nccl refuses two ranks on one GPU
                error = UsageError(f"local rank {ranks.local_rank} has no GPU of its own ({count} visible)",
                                   hint=f"launch at most {count} process(es) per node, or use --device cpu")
                error.rank_specific = True
                raise error
            return f"cuda:{ranks.local_rank}"
        if requested == "cuda":
            resolve_device("cuda")  # the usual one-line error
        return "cpu"
    return requested


def _timeout() -> timedelta:
    value = os.environ.get("NEGPROMPT_DIST_TIMEOUT", "1800")
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        raise UsageError(f"NEGPROMPT_DIST_TIMEOUT must be a number of seconds (got {value!r})") from None


@contextmanager
def process_group(requested: bool | None, device: str) -> Iterator[tuple[Ranks, str]]:
    """Join the torchrun job this process belongs to, if any: yields (ranks, this rank's device).

    ``requested``: True demands a torchrun launch (``--distributed``), False refuses one, None follows
    the environment. Outside torchrun (or with one process) nothing is initialised.
    """
    if requested is False or not launched_by_torchrun():
        if requested:
            raise UsageError("--distributed needs a torchrun launch",
                             hint="torchrun --nproc-per-node N -m negprompt_cli score ... (see docs/scale.md)")
        yield SINGLE, device
        return
    ranks = ranks_from_environment()
    if not ranks.distributed:
        yield SINGLE, device
        return
    device = rank_device(device, ranks)
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(torch.device(device))
    started = not dist.is_initialized()
    if started:
        try:
            dist.init_process_group("nccl" if on_cuda else "gloo", timeout=_timeout())
        except Exception as exc:
            raise RankLost(f"could not join the torchrun job as rank {ranks.rank}: {exc}",
                           hint="check the rendezvous flags (--nnodes, --rdzv-endpoint) and the network") from None
    finished = False
    try:
        yield ranks, device
        finished = True
    finally:
        if started and dist.is_initialized():
            try:
                if finished:  # every rank done before any tears down: a gloo peer torn down mid-exchange aborts
                    dist.barrier()
                dist.destroy_process_group()
            except Exception:  # a peer already gone: nothing left to tidy
                pass


def _collective(ranks: Ranks, what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except NegPromptError:
        raise
    except Exception as exc:  # gloo: connection closed by peer; nccl: watchdog / remote error; timeouts
        raise RankLost(f"rank {ranks.rank} lost another rank while {what} (see that rank's error); "
                       "nothing was written", hint=f"underlying error: {str(exc).splitlines()[0][:200]}") from None


def gather_to_main(value: T, ranks: Ranks, what: str) -> list[T] | None:
    """Every rank's ``value``, in rank order, on rank 0 (None elsewhere)."""
    if not ranks.distributed:
        return [value]
    out: list[Any] | None = [None] * ranks.world_size if ranks.is_main else None
    _collective(ranks, what, lambda: dist.gather_object(value, out, dst=0))
    return out


def gather_to_all(value: T, ranks: Ranks, what: str) -> list[T]:
    if not ranks.distributed:
        return [value]
    out: list[Any] = [None] * ranks.world_size
    _collective(ranks, what, lambda: dist.all_gather_object(out, value))
    return out


def from_main(value: T, ranks: Ranks, what: str) -> T:
    """Rank 0's ``value`` on every rank (the others pass anything, e.g. None)."""
    if not ranks.distributed:
        return value
    box: list[Any] = [value if ranks.is_main else None]
    _collective(ranks, what, lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def agree(value: Any, ranks: Ranks, what: str) -> None:
    """Every rank must hold the same ``value`` (backbone weights, image list): one error on every rank if not."""
    values = gather_to_all(value, ranks, f"comparing {what}")
    different = [r for r, v in enumerate(values) if v != values[0]]
    if different:
        # every rank stops here; meeting once more first lets gloo finish the gather's sends, else a rank whose
        # peer tore down mid-send dies with "terminate called" instead of this error
        _collective(ranks, f"stopping on {what}", dist.barrier)
        raise UsageError(f"the ranks disagree on {what}: rank 0 has {values[0]}, rank {different[0]} has "
                         f"{values[different[0]]}", hint="every rank must see the same files and options")


def batch_shard(count: int, batch_size: int, ranks: Ranks) -> range:
    """This rank's contiguous run of whole batches of ``range(count)`` (see the module docstring)."""
    batches = -(-count // batch_size)
    first = ranks.rank * batches // ranks.world_size
    last = (ranks.rank + 1) * batches // ranks.world_size
    return range(min(first * batch_size, count), min(last * batch_size, count))


def check_enough_items(count: int, ranks: Ranks, what: str = "image(s)") -> None:
    if ranks.world_size > count:
        raise UsageError(f"{ranks.world_size} processes for {count} {what}: every process needs at least one",
                         hint=f"launch at most {count} process(es) (torchrun --nproc-per-node)")


def concat_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows from every rank in order; ranks with nothing to contribute send an empty tensor."""
    filled = [p for p in parts if p.numel()]
    return torch.cat(filled) if filled else torch.empty(0, 0)
