"""Test-time negatives (score --adaptive): against a plain re-implementation, determinism, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import error_line, invoke

from negprompt_cli.errors import UsageError
from negprompt_cli.registry import get_host
from negprompt_cli.scoring.adaptive import AdaptiveOptions, LabelMemory, adaptive_scores


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def naive(feats, pos, neg, *, tau, scale, slots, weight, batch, thres=0.5, gap=0.5):  # type: ignore[no-untyped-def]
    """AdaNeg with one group, written out with Python lists (no shared code with the library)."""
    labels = [list(map(float, t)) for t in torch.cat([pos, neg])]
    c = pos.shape[0]
    memory: list[list[tuple[list[float], float]]] = [[] for _ in labels]

    def dot(a, b):  # type: ignore[no-untyped-def]
        return sum(x * y for x, y in zip(a, b, strict=True))

    def id_probability(f, proxies):  # type: ignore[no-untyped-def]
        exps = [math.exp(dot(f, p) / tau) for p in proxies]
        return sum(exps[:c]) / sum(exps)

    def entropy(logits):  # type: ignore[no-untyped-def]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        z = sum(e)
        return -sum(v / z * math.log(v / z) for v in e)

    out = []
    rows = [list(map(float, f)) for f in feats]
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        vanilla = [id_probability(f, labels) for f in chunk]
        for f, v in zip(chunk, vanilla, strict=True):
            cos = [dot(f, t) for t in labels]
            if v > thres + gap * (1 - thres):
                label = max(range(c), key=lambda k: cos[k])
                h = entropy([scale * x for x in cos[:c]])
            elif v < thres - gap * thres:
                label = c + max(range(len(labels) - c), key=lambda k: cos[c + k])
                h = entropy([scale * x for x in cos[c:]])
            else:
                continue
            if len(memory[label]) < slots:
                memory[label].append((f, h))
            else:
                worst = max(range(slots), key=lambda k: memory[label][k][1])
                if h < memory[label][worst][1]:
                    memory[label][worst] = (f, h)
        proxies = []
        for t, stored in zip(labels, memory, strict=True):
            s = [t[d] + sum(f[d] for f, _ in stored) for d in range(len(t))]
            n = math.sqrt(sum(x * x for x in s))
            proxies.append([x / n for x in s])
        out += [id_probability(f, proxies) + weight * v for f, v in zip(chunk, vanilla, strict=True)]
    return torch.tensor(out, dtype=torch.float64)


def toy_problem(seed: int = 0, n: int = 40):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    pos = unit(torch.randn(3, 8, generator=g, dtype=torch.float64))
    neg = unit(torch.randn(6, 8, generator=g, dtype=torch.float64))
    centres = torch.cat([pos, neg[:2]])
    which = torch.randint(0, len(centres), (n,), generator=g)
    feats = unit(centres[which] + 0.35 * torch.randn(n, 8, generator=g, dtype=torch.float64))
    return feats, pos, neg


@pytest.mark.parametrize("slots,batch", [(2, 4), (10, 7), (1, 40)])
def test_adaptive_matches_plain_reimplementation(slots, batch):
    feats, pos, neg = toy_problem()
    scorer = get_host().scorer("neglabel")
    got, stats = adaptive_scores(feats, pos, None, neg, scorer=scorer, temperature=0.1, logit_scale=20.0,
                                 options=AdaptiveOptions(slots=slots, batch=batch), scorer_options={"groups": 1})
    want = naive(feats, pos, neg, tau=0.1, scale=20.0, slots=slots, weight=0.1, batch=batch)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert stats["id_writes"] > 0 and stats["ood_writes"] > 0  # the problem exercises both memories


def test_adaptive_is_deterministic_and_order_dependent():
    feats, pos, neg = toy_problem(1, 60)
    scorer = get_host().scorer("neglabel")

    def run(x):  # type: ignore[no-untyped-def]
        return adaptive_scores(x, pos, None, neg, scorer=scorer, temperature=0.1, logit_scale=20.0,
                               options=AdaptiveOptions(batch=8), scorer_options={"groups": 1})[0]

    assert torch.equal(run(feats), run(feats))
    flipped = run(feats.flip(0)).flip(0)
    assert not torch.allclose(flipped, run(feats))  # the memory depends on the stream order


def test_without_confident_images_the_score_is_the_static_one_scaled():
    feats, pos, neg = toy_problem(2)
    scorer = get_host().scorer("neglabel")
    options = AdaptiveOptions(threshold=0.5, gap=0.0, batch=8)  # gap 0: every image is "confident"
    assert options.gap == 0.0
    # a gap so wide nothing qualifies: t + g(1 - t) = 0.995 and t - g t = 0.005 (nothing below or above)
    never = AdaptiveOptions(threshold=0.5, gap=0.99, batch=8)
    static = scorer(feats.float() @ pos.float().t(), None, temperature=1.0, mined=feats.float() @ neg.float().t(),
                    groups=1)
    got, stats = adaptive_scores(feats, pos, None, neg, scorer=scorer, temperature=1.0, logit_scale=20.0,
                                 options=never, scorer_options={"groups": 1})
    assert stats["id_writes"] == stats["ood_writes"] == 0
    assert torch.allclose(got, 1.1 * static, atol=1e-6)


def test_hybrid_gives_learned_negatives_memory_slots():
    feats, pos, neg = toy_problem(3)
    prompts = unit(torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    got, stats = adaptive_scores(feats, pos, prompts, neg, scorer=get_host().scorer("negprompt+neglabel"),
                                 temperature=0.1, logit_scale=20.0, options=AdaptiveOptions(batch=8),
                                 scorer_options={"groups": 1})
    assert got.shape == (feats.shape[0],) and torch.isfinite(got).all()
    with pytest.raises(UsageError, match="needs negatives"):
        adaptive_scores(feats, pos, None, None, scorer=get_host().scorer("negprompt-sum"), temperature=1.0,
                        logit_scale=20.0, options=AdaptiveOptions())


def test_memory_replaces_the_highest_entropy_entry():
    memory = LabelMemory.empty(1, 2, 2, torch.device("cpu"))
    assert memory.write(0, torch.tensor([1.0, 0.0]), 0.5) and memory.write(0, torch.tensor([0.0, 1.0]), 0.9)
    assert not memory.write(0, torch.tensor([1.0, 1.0]), 0.95)  # worse than everything stored
    assert memory.write(0, torch.tensor([2.0, 2.0]), 0.1)  # replaces the 0.9 entry
    assert memory.entropy[0].tolist() == pytest.approx([0.5, 0.1])
    assert torch.equal(memory.features[0, 1], torch.tensor([2.0, 2.0]))


def test_options_reject_bad_values():
    with pytest.raises(UsageError, match="batch of at least 2"):
        AdaptiveOptions(batch=1)
    with pytest.raises(UsageError, match="at least 1"):
        AdaptiveOptions(slots=0)


@pytest.fixture
def world_images(tmp_path):
    from negprompt_cli import world

    spec = world.WorldSpec(id_shapes=("circle", "house", "letter e"), ood_shapes=("star", "key"),
                           train_shapes=("circle",), shots=1, test_per_class=6, far=0, calib_per_class=0,
                           unnamed_shapes=())
    paths = world.export_world(tmp_path / "world", spec)
    # one stream: ID test images and near-OOD images together
    stream = tmp_path / "stream"
    for split in ("test", "ood_near"):
        for image in paths[split].rglob("*.png"):
            target = stream / split / image.parent.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.read_bytes())
    return {"test": stream, "names": paths["id_names"]}


def test_score_adaptive_cli(world_images, tmp_path):
    """End to end on the world: zero-shot NegLabel with and without --adaptive; bad requests exit 2."""
    base = ["score", str(world_images["test"]), "--zero-shot", "--names", str(world_images["names"]), "-b", "toy",
            "--cache-dir", str(tmp_path / "cache"), "--scorer", "neglabel", "--groups", "1"]
    static = invoke([*base, "--out", str(tmp_path / "s.csv"), "--json"])
    assert static.exit_code == 0, static.stderr
    adaptive = invoke([*base, "--adaptive", "--batch-size", "8", "--out", str(tmp_path / "a.csv"),
                                   "--json"])
    assert adaptive.exit_code == 0, adaptive.stderr
    summary = json.loads(adaptive.stdout)
    assert summary["adaptive"]["slots"] == 10 and summary["adaptive"]["batch"] == 8
    assert summary["threshold"] is None and "no OOD decision" in adaptive.stderr
    assert (tmp_path / "s.csv").read_text() != (tmp_path / "a.csv").read_text()
    for extra, message in ((["--batch-size", "1"], "batch of at least 2"),
                           (["--scorer", "mcm"], "ID probability"),
                           (["--adaptive-slots", "0"], "--adaptive-slots must be at least 1 (got 0)"),
                           (["--calibrate", str(world_images["test"])], "cannot be combined with --calibrate")):
        bad = invoke([*base, "--adaptive", *extra, "--out", str(tmp_path / "bad.csv")])
        assert bad.exit_code == 2, (extra, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad.csv").exists()
    # the memory's settings without --adaptive would do nothing: refused, not ignored
    alone = invoke([*base, "--adaptive-slots", "3", "--adaptive-weight", "0.5", "--out", str(tmp_path / "bad.csv")])
    assert alone.exit_code == 2 and not (tmp_path / "bad.csv").exists()
    assert error_line(alone) == ("Error: --adaptive-slots and --adaptive-weight set the adaptive memory, and there "
                                 "is no --adaptive")
    # which scorers can run adaptively comes from the registry (each registered with probability=True)
    wrong = invoke([*base, "--adaptive", "--scorer", "energy", "--out", str(tmp_path / "bad.csv")])
    assert ("Hint: use --scorer with one of: neglabel, csp, negprompt-sum, negprompt+neglabel, negprompt+csp"
            in wrong.stderr)
