"""TANL: test-time activated negative labels (Zhang et al., CVPR 2026, "Activation Matters"), a test-time scorer.

Our implementation of the released postprocessor (YBZh/OpenOOD-VLM, ``openood/postprocessors/
activated_neg_postprocessor.py``, registered as ``actneg``; ImageNet script ``scripts/ood/TANL/official.sh``).
Settings are the release's unless docs/method.md ("TANL") says otherwise.

The corpus is every candidate of NegLabel's pool (``--scorer tanl`` mines nothing by default), not a mined list.
Two *activation memories* hold, per remembered image, its softmax probabilities (logits cos/τ over the ID classes
and the whole corpus) on the corpus labels: one for confidently-ID images, one for confidently-OOD images. They
start from the ID class prompts themselves (as pseudo-ID images, a seeded choice of ``memory`` of them) and from
15 noise images (3 each of Gaussian, uniform, Poisson, Gamma and salt-and-pepper noise, fed unnormalised to the
image tower, as released). A label's *activation* is its mean probability in the OOD memory minus that in the ID
memory; the ``labels`` most activated labels are the negatives. Per batch of the stream:

1. score the batch against the current negatives (the activation-aware score, below);
2. add those scores to the score memory (the last ``score_memory``, seeded with the memories' own scores) and
   split it at the threshold with the least within-class variance (Otsu's rule on a 0.01 grid); a batch image
   above t + g(1 − t) is confidently ID, below t − g·t confidently OOD;
3. re-rank the corpus with the activations of this batch's confident images (weight 1 − ``history``; the
   memories' weight ``history`` = 0 as released: the batch-adaptive variant) and score the batch again against
   the new negatives: that is its TANL score;
4. push the confident images' probabilities into the memories (the last ``memory`` images each).

The activation-aware score with ``step`` k averages NegLabel's ID probability over the nested sets of the first
k, 2k, ... negatives in activation order, so stronger-activated labels weigh more; each term is
σ(logsumexp(pos/τ) − logcumsumexp(neg/τ)[n]), which gives the release's loop of softmaxes in one pass.
``step`` 0 is NegLabel's plain sum over all selected labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from negprompt.plugin import BatchStream, StreamContext, UsageError, hookimpl

NOISE_KINDS = ("gaussian", "uniform", "poisson", "gamma", "salt-and-pepper")
NOISE_PER_KIND = 3


@dataclass(frozen=True)
class TanlOptions:
    """TANL's own settings (``--scorer-option KEY=VALUE``); the defaults are the released ImageNet script's."""

    labels: int = 1000  # β: negative labels selected by activation (the corpus has about 70,000)
    step: int = 1  # γ: the activation-aware score's step; 0 = NegLabel's sum over the selected labels
    history: float = 0.0  # α: weight of the memories against the current batch's confident images
    gap: float = 0.5  # g: confident ID above t + g(1 − t), confident OOD below t − g·t
    memory: int = 300  # images each activation memory keeps (memleng)
    score_memory: int = 20000  # scores the threshold is chosen from

    def __post_init__(self) -> None:
        if self.labels < 1 or self.memory < 1 or self.score_memory < 2:
            raise UsageError("TANL's labels and memory must be at least 1 and score_memory at least 2")
        if self.step < 0:
            raise UsageError(f"TANL's step must be 0 (plain sum) or more (got {self.step})")
        if not (0.0 <= self.history <= 1.0 and 0.0 <= self.gap < 1.0):
            raise UsageError("TANL's history must lie in [0, 1] and its gap in [0, 1)")


def noise_images(size: int, generator: torch.Generator) -> torch.Tensor:
    """The release's 15 noise images [15, 3, size, size] in [0, 1] (each kind min-max scaled over its 3 images),
    drawn from ``generator``; Gamma(2, 1) as the sum of two Exp(1) draws (the same law)."""
    shape = (NOISE_PER_KIND, 3, size, size)

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return (x - x.min()) / (x.max() - x.min())

    gaussian = scaled(torch.randn(shape, generator=generator))
    uniform = torch.rand(shape, generator=generator)
    poisson = scaled(torch.poisson(torch.full(shape, 5.0), generator=generator))
    exp = -torch.log1p(-torch.rand((2, *shape), generator=generator))
    gamma = scaled(exp.sum(0))
    salt = (torch.rand(shape, generator=generator) >= 0.5).float()
    return torch.cat([gaussian, uniform, poisson, gamma, salt])


def activation_aware(pos_logits: torch.Tensor, neg_logits: torch.Tensor, step: int) -> torch.Tensor:
    """The ID probability averaged over the nested negative sets of sizes step, 2·step, ..., all (the release's
    ``activation_aware_score``); ``neg_logits`` [B, L] in activation order. ``step`` 0: over all L at once."""
    id_part = torch.logsumexp(pos_logits, dim=1, keepdim=True)
    count = neg_logits.shape[1]
    if step == 0 or count == 0:
        return torch.sigmoid(id_part[:, 0] - torch.logsumexp(neg_logits, dim=1)) if count else torch.ones(
            pos_logits.shape[0], device=pos_logits.device)
    sizes = torch.tensor([min(i + step, count) for i in range(0, count, step)], device=neg_logits.device)
    cumulative = torch.logcumsumexp(neg_logits, dim=1)[:, sizes - 1]  # [B, terms]
    return torch.sigmoid(id_part - cumulative).mean(dim=1)


GRID = torch.arange(0, 1, 0.01)  # the release's thresholds (float32, as torch.arange gives them)


def least_variance_threshold(scores: torch.Tensor) -> float:
    """The grid threshold that splits ``scores`` into two groups of least weighted within-group (population)
    variance; among equal minima the middle one; a split leaving a group empty never counts (the release's
    ``find_best_threshold``). Sorted prefix sums: one pass, not one per threshold."""
    values = scores.detach().double().flatten().sort().values
    n = values.numel()
    grid = GRID.to(values.device)
    below = torch.searchsorted(values.float(), grid, right=False)  # images < t (the release keeps >= t above)
    prefix = torch.cat([values.new_zeros(1), values.cumsum(0)])
    prefix_sq = torch.cat([values.new_zeros(1), (values * values).cumsum(0)])
    n0 = below.double()
    n1 = n - n0
    s0, q0 = prefix[below], prefix_sq[below]
    s1, q1 = prefix[-1] - s0, prefix_sq[-1] - q0
    var0 = (q0 / n0.clamp(min=1) - (s0 / n0.clamp(min=1)) ** 2).clamp(min=0)
    var1 = (q1 / n1.clamp(min=1) - (s1 / n1.clamp(min=1)) ** 2).clamp(min=0)
    criteria = (n0 / n) * var0 + (n1 / n) * var1
    criteria[(below == 0) | (below == n)] = float("inf")
    best = torch.nonzero(criteria == criteria.min()).flatten()
    return float(grid[best[len(best) // 2]])


class ActivationMemory:
    """The last ``size`` rows of activations [rows, M] pushed in, oldest first (the release's queue)."""

    def __init__(self, rows: torch.Tensor, size: int) -> None:
        self.size = size
        self.rows = rows[-size:]

    def push(self, rows: torch.Tensor) -> None:
        if rows.shape[0]:
            self.rows = torch.cat([self.rows, rows])[-self.size:]

    def mean(self) -> torch.Tensor:
        return self.rows.mean(dim=0)


class TanlStream(BatchStream):
    """TANL over one stream of unit image features (module docstring)."""

    def __init__(self, text_pos: torch.Tensor, corpus: torch.Tensor, noise: torch.Tensor, *, temperature: float,
                 options: TanlOptions, batch: int, seed: int = 0, device: torch.device | None = None) -> None:
        device = device or text_pos.device
        super().__init__(batch, text_pos.shape[1], device)
        self.options, self.temperature = options, temperature
        self.pos = text_pos.to(device, torch.float32)
        self.corpus = corpus.to(device, torch.float32)
        self.c, self.m = self.pos.shape[0], self.corpus.shape[0]
        self.selected = min(options.labels, self.m)  # a corpus smaller than β: all of it
        self.batches = self.id_rows = self.ood_rows = 0
        self.threshold: float | None = None
        # the memories start from the class prompts as pseudo-ID images and the noise images, each in a seeded
        # order (the ID memory keeps the last ``memory`` of them); the score memory from their scores, in given order
        generator = torch.Generator().manual_seed(seed)
        noise = noise.to(device, torch.float32)
        id_order = torch.randperm(self.c, generator=generator).to(device)
        noise_order = torch.randperm(noise.shape[0], generator=generator).to(device)
        pseudo_id, noise_logits = self._logits(self.pos), self._logits(noise)
        self.id_memory = ActivationMemory(self._activations(*pseudo_id)[id_order], options.memory)
        self.ood_memory = ActivationMemory(self._activations(*noise_logits)[noise_order], options.memory)
        chosen = self._choose(self.ood_memory.mean() - self.id_memory.mean())
        self.scores = torch.cat([self._score(*pseudo_id, chosen),
                                 self._score(*noise_logits, chosen)])[-options.score_memory:]

    def _logits(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos/τ to the ID classes [N, C], to every corpus label [N, M]): computed once per batch, read thrice."""
        return f @ self.pos.t() / self.temperature, f @ self.corpus.t() / self.temperature

    def _activations(self, pos: torch.Tensor, corpus: torch.Tensor) -> torch.Tensor:
        """[N, M]: each image's softmax probability on each corpus label, among the ID classes and the corpus."""
        return torch.softmax(torch.cat([pos, corpus], dim=1), dim=1)[:, self.c:]

    def _choose(self, activation: torch.Tensor) -> torch.Tensor:
        return torch.argsort(activation, descending=True, stable=True)[:self.selected]

    def _score(self, pos: torch.Tensor, corpus: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        return activation_aware(pos, corpus[:, chosen], self.options.step)

    def _batch(self, f: torch.Tensor) -> torch.Tensor:
        options = self.options
        logits = self._logits(f)
        activations = self._activations(*logits)
        first = self._score(*logits, self._choose(self.ood_memory.mean() - self.id_memory.mean()))
        self.scores = torch.cat([self.scores, first])[-options.score_memory:]
        t = self.threshold = least_variance_threshold(self.scores)
        confident_id = first > t + options.gap * (1 - t)
        confident_ood = first < t - options.gap * t

        def blended(memory: ActivationMemory, mask: torch.Tensor) -> torch.Tensor:
            if not bool(mask.any()):
                return memory.mean()
            return options.history * memory.mean() + (1 - options.history) * activations[mask].mean(dim=0)

        chosen = self._choose(blended(self.ood_memory, confident_ood) - blended(self.id_memory, confident_id))
        final = self._score(*logits, chosen)
        self.id_memory.push(activations[confident_id])
        self.ood_memory.push(activations[confident_ood])
        self.batches += 1
        self.id_rows += int(confident_id.sum())
        self.ood_rows += int(confident_ood.sum())
        return final

    def record(self) -> dict[str, Any]:
        return {"method": "TANL (CVPR 2026), batch-adaptive activated negative labels", **asdict(self.options),
                "batch": self.batch, "corpus": self.m, "labels_used": self.selected, "batches": self.batches,
                "confident_id": self.id_rows, "confident_ood": self.ood_rows, "last_threshold": self.threshold}


class ActivatedNegativeLabels:
    """The registered scorer: ``start(context)`` opens one stream; it scores no batch on its own (test-time)."""

    Options = TanlOptions

    def start(self, context: StreamContext) -> TanlStream:
        if context.labels is None or context.labels.shape[0] == 0:
            raise UsageError("TANL needs a corpus of negative labels (its pool's candidates, or --negatives)")
        generator = torch.Generator().manual_seed(context.seed)
        noise = context.encode_pixels(noise_images(context.image_size, generator))
        return TanlStream(context.text_pos, context.labels, noise, temperature=context.temperature,
                          options=context.options or TanlOptions(), batch=context.batch, seed=context.seed,
                          device=context.device)

    def __call__(self, pos: torch.Tensor, neg: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        raise ValueError("TANL scores a stream of images (negprompt score), not one batch of cosines")


@hookimpl
def register_scorers(register: Callable[..., None]) -> None:
    register("tanl", ActivatedNegativeLabels(), description="TANL (CVPR 2026): test-time activated negative labels "
             "from the whole NegLabel corpus, re-chosen per batch from confident test images (depends on the "
             "stream's order and --batch-size; 256 as released)", pool="neglabel", whole_pool=True,
             test_time=True, default_temperature=0.01)
