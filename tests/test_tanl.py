"""TANL (``--scorer tanl``): against a port of the released postprocessor, its parts, and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import invoke
from negprompt_plugins.tanl_scorer import (
    TanlOptions,
    TanlStream,
    activation_aware,
    least_variance_threshold,
    noise_images,
)
from test_adaptive import world_images  # noqa: F401  (fixture)

from negprompt_cli.errors import UsageError
from negprompt_cli.registry import get_host


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# -- a port of the release (YBZh/OpenOOD-VLM @804f331, openood/postprocessors/activated_neg_postprocessor.py) ---------
# Written as the release computes, loops and all; the only change is that the two random permutations it draws
# from torch's global generator are passed in.

def release_activation_aware_score(output, id_num, ood_num, step):  # type: ignore[no-untyped-def]
    if step != 0:
        sums = []
        for i in range(id_num, id_num + ood_num, step):
            softmax_output = output[:, :i + step].softmax(dim=-1)
            sums.append(softmax_output[:, :id_num].sum(dim=-1))
        return torch.stack(sums, dim=-1).mean(dim=-1)
    return output.softmax(dim=-1)[:, :id_num].sum(dim=-1)


def release_variance(os_tensor, th):  # type: ignore[no-untyped-def]
    mask = (os_tensor >= th).float()
    weight1 = torch.sum(mask) / os_tensor.numel()
    weight0 = 1 - weight1
    if weight1 == 0 or weight0 == 0:
        return torch.tensor(float("inf"))
    class1, class0 = os_tensor[mask.bool()], os_tensor[~mask.bool()]
    return weight0 * torch.var(class0, unbiased=False) + weight1 * torch.var(class1, unbiased=False)


def release_threshold(queue):  # type: ignore[no-untyped-def]
    grid = torch.arange(0, 1, 0.01)
    criteria = torch.stack([release_variance(queue, th) for th in grid])
    candidates = torch.where(criteria == torch.min(criteria))[0]
    return grid[candidates[len(candidates) // 2]].item()


def release_queue(to_add, queue, max_len, init=False):  # type: ignore[no-untyped-def]
    queue = queue if init else torch.cat((queue, to_add), dim=0)
    return queue[-max_len:, :] if queue.size(0) > max_len else queue


class ReleaseTanl:
    def __init__(self, text_id, corpus, noise, *, scale, beta, gamma, alpha, gap, memleng, id_perm, noise_perm):  # type: ignore[no-untyped-def]
        self.c, self.scale, self.beta, self.gamma, self.alpha, self.gap = len(text_id), scale, beta, gamma, alpha, gap
        self.memleng = memleng
        self.all = torch.cat([text_id, corpus]).t()  # dim x (C + M), the release's text_features_all
        self.text_id = text_id
        pos = torch.softmax(scale * text_id @ self.all, dim=1)[id_perm][:, self.c:].float()
        self.score_from_pos = release_queue(pos, pos, memleng, init=True)
        neg = torch.softmax(scale * noise @ self.all, dim=1)[noise_perm][:, self.c:].float()
        self.score_from_neg = release_queue(neg, neg, memleng, init=True)
        selected = self.select(self.score_from_neg.mean(0) - self.score_from_pos.mean(0))
        conf_id = release_activation_aware_score(scale * text_id @ selected, self.c, beta, gamma)
        conf_ood = release_activation_aware_score(scale * noise @ selected, self.c, beta, gamma)
        self.scoretensor = torch.cat((conf_id, conf_ood), dim=0)

    def select(self, combined):  # type: ignore[no-untyped-def]
        order = combined.sort(descending=True)[1][:self.beta]
        return torch.cat([self.all[:, :self.c], self.all[:, self.c:].t()[order].t()], dim=-1)

    def postprocess(self, image_features):  # type: ignore[no-untyped-def]
        c = self.c
        actscore = torch.softmax((self.scale * image_features @ self.all).float(), dim=1)
        selected = self.select(self.score_from_neg.mean(0) - self.score_from_pos.mean(0))
        conf_in_domain = release_activation_aware_score((self.scale * image_features @ selected).float(), c,
                                                        self.beta, self.gamma)
        self.scoretensor = torch.cat((self.scoretensor, conf_in_domain), dim=0)[-20000:]
        thres = release_threshold(self.scoretensor)
        activate_id = conf_in_domain > (thres + self.gap * (1 - thres))
        activate_ood = conf_in_domain < (thres - self.gap * thres)
        if torch.any(activate_id):
            pos = self.alpha * self.score_from_pos.mean(0) + (1 - self.alpha) * actscore[activate_id][:, c:].mean(0)
        else:
            pos = self.score_from_pos.mean(0)
        if torch.any(activate_ood):
            neg = self.alpha * self.score_from_neg.mean(0) + (1 - self.alpha) * actscore[activate_ood][:, c:].mean(0)
        else:
            neg = self.score_from_neg.mean(0)
        selected = self.select(neg - pos)
        conf_in = release_activation_aware_score(self.scale * image_features @ selected, c, self.beta, self.gamma)
        if torch.any(activate_id):
            self.score_from_pos = release_queue(actscore[activate_id][:, c:], self.score_from_pos, self.memleng)
        if torch.any(activate_ood):
            self.score_from_neg = release_queue(actscore[activate_ood][:, c:], self.score_from_neg, self.memleng)
        return conf_in


def random_problem(seed: int, *, classes=12, corpus=400, dim=24, images=200):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    text_id = unit(torch.randn(classes, dim, generator=g))
    labels = unit(torch.randn(corpus, dim, generator=g))
    noise = unit(torch.randn(15, dim, generator=g))
    # half the stream near a class prompt (ID-like), half near a corpus label (OOD-like), shuffled
    near_id = unit(text_id[torch.randint(classes, (images // 2,), generator=g)] * 3
                   + torch.randn(images // 2, dim, generator=g))
    near_ood = unit(labels[torch.randint(corpus, (images - images // 2,), generator=g)] * 3
                    + torch.randn(images - images // 2, dim, generator=g))
    stream = torch.cat([near_id, near_ood])[torch.randperm(images, generator=g)]
    return text_id, labels, noise, stream


@pytest.mark.parametrize(("step", "history", "labels", "batch"), [(1, 0.0, 100, 32), (0, 0.0, 100, 50),
                                                                   (7, 0.5, 90, 64), (1, 1.0, 400, 40)])
def test_tanl_matches_a_port_of_the_release(step, history, labels, batch):
    """Every score of a 200-image stream equals the ported release's within float32 rounding (max abs diff over
    these four settings: 3.1e-6; the release sums softmax columns, ours takes σ of a log-sum-exp difference), for
    the release's setting and for other steps, blends and label counts."""
    text_id, corpus, noise, stream = random_problem(step + labels)
    options = TanlOptions(labels=labels, step=step, history=history, memory=30)
    ours = TanlStream(text_id, corpus, noise, temperature=0.01, options=options, batch=batch, seed=3)
    g = torch.Generator().manual_seed(3)  # the permutations TanlStream draws, in its order
    id_perm, noise_perm = torch.randperm(len(text_id), generator=g), torch.randperm(15, generator=g)
    release = ReleaseTanl(text_id, corpus, noise, scale=100.0, beta=labels, gamma=step, alpha=history, gap=0.5,
                          memleng=30, id_perm=id_perm, noise_perm=noise_perm)
    expected = torch.cat([release.postprocess(stream[s:s + batch]) for s in range(0, len(stream), batch)])
    # fed in uneven pieces: the stream cuts the release's batches itself
    got = torch.cat([ours.feed(stream[:45]), ours.feed(stream[45:46]), ours.feed(stream[46:]), ours.finish()])
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-5, float((got - expected).abs().max())
    assert ours.record()["batches"] == -(-len(stream) // batch)
    assert ours.record()["confident_id"] > 0 and ours.record()["confident_ood"] > 0


def test_activation_aware_score_is_the_release_loop_in_one_pass():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(5, 8, generator=g) * 10, torch.randn(5, 23, generator=g) * 10
    for step in (0, 1, 2, 5, 23, 40):
        expected = release_activation_aware_score(torch.cat([pos, neg], dim=1), 8, 23, step)
        assert torch.allclose(activation_aware(pos, neg, step), expected, atol=1e-6), step


def test_least_variance_threshold_is_the_release_search():
    g = torch.Generator().manual_seed(1)
    for trial in range(20):
        scores = torch.cat([torch.rand(300, generator=g) * 0.3, 0.6 + torch.rand(200 + trial, generator=g) * 0.4])
        assert least_variance_threshold(scores) == pytest.approx(release_threshold(scores), abs=1e-9)
    # ties: every threshold between two clusters splits them alike; the middle one is taken, as released
    assert least_variance_threshold(torch.tensor([0.1, 0.1, 0.9, 0.9])) == pytest.approx(
        release_threshold(torch.tensor([0.1, 0.1, 0.9, 0.9])))


def test_noise_images_are_the_releases_five_kinds_and_seeded():
    images = noise_images(32, torch.Generator().manual_seed(0))
    assert images.shape == (15, 3, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1
    salt = images[12:]
    assert set(salt.unique().tolist()) == {0.0, 1.0}
    for kind in range(4):  # each min-max scaled kind reaches 0 and 1 (uniform: nearly)
        block = images[3 * kind:3 * kind + 3]
        assert float(block.min()) < 0.01 and float(block.max()) > 0.99
    assert torch.equal(images, noise_images(32, torch.Generator().manual_seed(0)))
    assert not torch.equal(images, noise_images(32, torch.Generator().manual_seed(1)))


def test_options_refuse_bad_values():
    for bad in ({"labels": 0}, {"step": -1}, {"history": 1.5}, {"gap": 1.0}, {"memory": 0}):
        with pytest.raises(UsageError):
            TanlOptions(**bad)


def test_tanl_is_registered_as_a_test_time_scorer_with_options():
    spec = get_host().scorer_spec("tanl")
    assert spec.test_time and spec.whole_pool and spec.pool == "neglabel" and not spec.probability
    rows = [r for r in get_host().describe() if r["name"] == "tanl"][0]["entries"]["scorer"]
    assert [o["name"] for o in rows[0]["options"]] == ["labels", "step", "history", "gap", "memory", "score_memory"]
    with pytest.raises(ValueError, match="scores a stream"):
        spec.fn(torch.zeros(1, 2), None)


def test_score_tanl_cli(world_images, tmp_path):  # noqa: F811
    """End to end on the world: the whole lexicon is the corpus, the stream gives every row a score, order and
    batch change them, settings come through --scorer-option, and bad requests exit 2 with one line."""
    base = ["score", str(world_images["test"]), "--zero-shot", "--names", str(world_images["names"]), "-b", "toy",
            "--cache-dir", str(tmp_path / "cache"), "--scorer", "tanl"]
    result = invoke([*base, "--batch-size", "8", "--scorer-option", "labels=50", "--format", "jsonl", "--out",
                     str(tmp_path / "t.jsonl"), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    record, labels = summary["test_time"], summary["negative_labels"]
    assert summary["adaptive"] is None and record["labels"] == 50 and record["batch"] == 8
    assert record["corpus"] == labels["labels"] == labels["candidates"] - labels["dropped_id_names"]
    assert labels["fraction"] == 1.0  # the whole pool: nothing mined
    assert record["batches"] == -(-summary["images"] // 8)
    assert summary["threshold"] is None and "tanl scores depend on the test stream" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(rows) == summary["images"] and all(0.0 <= r["score"] <= 1.0 for r in rows)
    again = invoke([*base, "--batch-size", "8", "--scorer-option", "labels=50", "--format", "jsonl", "--out",
                    str(tmp_path / "t2.jsonl")])
    assert again.exit_code == 0 and (tmp_path / "t2.jsonl").read_bytes() == (tmp_path / "t.jsonl").read_bytes()
    other = invoke([*base, "--batch-size", "5", "--scorer-option", "labels=50", "--format", "jsonl", "--out",
                    str(tmp_path / "t3.jsonl")])
    assert other.exit_code == 0 and (tmp_path / "t3.jsonl").read_bytes() != (tmp_path / "t.jsonl").read_bytes()
    for extra, message in ((["--adaptive"], "tanl adapts to the test stream itself"),
                           (["--calibrate", str(world_images["test"])], "--calibrate cannot be combined with "
                                                                         "--scorer tanl"),
                           (["--scorer-option", "lables=5"], "scorer 'tanl' has no option 'lables' (did you mean "
                                                             "'labels'?)"),
                           (["--scorer-option", "step=-1"], "scorer 'tanl': TANL's step must be 0"),
                           (["--scorer-option", "labels=many"], "scorer 'tanl' option labels takes int"),
                           (["--scorer-option", "labels"], "--scorer-option takes KEY=VALUE")):
        bad = invoke([*base, *extra, "--out", str(tmp_path / "bad.csv")])
        assert bad.exit_code == 2, (extra, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (tmp_path / "bad.csv").exists()
    unnamed = invoke([a for a in base if a not in ("--scorer", "tanl")] + ["--scorer-option", "labels=5"])
    assert unnamed.exit_code == 2 and "--scorer-option sets a setting of the scorer named by --scorer" in \
        unnamed.stderr
    plain = invoke(["score", str(world_images["test"]), "--zero-shot", "--names", str(world_images["names"]), "-b",
                    "toy", "--cache-dir", str(tmp_path / "cache"), "--scorer", "neglabel", "--scorer-option", "x=1",
                    "--out", str(tmp_path / "bad.csv")])
    assert plain.exit_code == 2 and "scorer 'neglabel' takes no options (got x)" in plain.stderr


def test_a_detector_refuses_a_test_time_scorer(world_images, tmp_path):  # noqa: F811
    import negprompt

    names = world_images["names"].read_text().split("\n")
    with pytest.raises(UsageError, match="scores a stream of images in order") as caught:
        negprompt.Detector.zero_shot([n for n in names if n], backbone="toy", scorer="tanl", cache_dir=tmp_path)
    assert "negprompt score --scorer tanl" in (caught.value.hint or "")


def test_benchmark_run_refuses_a_test_time_scorer(tmp_path):
    """The protocol runner scores the ID and OOD sets one by one: a test-time score needs them in one stream."""
    result = invoke(["benchmark", "run", "imagenet1k-mcm", "--root", str(tmp_path), "--out", str(tmp_path / "run"),
                     "--scorers", "", "--zero-shot-scorers", "csp,tanl"])
    assert result.exit_code == 2 and "tanl is a test-time scorer whose scores depend on the stream" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
