"""NegRefine (``--scorer negrefine``): against a port of the released score, the texts it composes, and the command
line."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import invoke
from negprompt_plugins.scorers import NegativeLabelScore, NegRefineScore
from test_adaptive import world_images  # noqa: F401  (fixture)

from negprompt_cli.registry import get_host


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class FakeTexts:
    """Stands for the core's ComposedTexts: a text's feature is a random unit vector seeded by the text itself."""

    def __init__(self, class_names: list[str], label_names: list[str], dim: int) -> None:
        self.class_names, self.label_names, self.dim = class_names, label_names, dim
        self.asked: list[str] = []

    def features(self, texts: list[str]) -> torch.Tensor:
        self.asked += texts
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return torch.stack([unit(torch.randn(self.dim, generator=torch.Generator().manual_seed(s),
                                             dtype=torch.float64)).float() for s in seeds])


# -- a port of the release (ah-ansari/NegRefine @72e4b82, src/clip_ood.py: CLIPood._grouping, _neg_label_score,
# _multi_matching_score, detection_score), one image at a time as released, in float64 (its e^{100·cos} would
# overflow float32 for cosines near 0.9); the encoder is passed in (the release encodes with CLIP).

def release_grouping(pos, neg, ngroup):  # type: ignore[no-untyped-def]
    drop = neg.shape[1] % ngroup
    if drop > 0:
        neg = neg[:, :-drop]
    torch.manual_seed(0)
    idx = torch.randperm(neg.shape[1])
    negs = neg.T[idx].T.reshape(pos.shape[0], ngroup, -1).contiguous()
    scores = []
    for i in range(ngroup):
        full_sim = torch.cat([pos, negs[:, i, :]], dim=-1).softmax(dim=-1)
        scores.append(full_sim[:, :pos.shape[1]].sum(dim=-1).unsqueeze(-1))
    return torch.cat(scores, dim=-1).mean(dim=-1)


def release_multi_matching(pos_sim, neg_sim, image_features, pos_labels, neg_labels, encode, k_pos, k_neg):  # type: ignore[no-untyped-def]
    vals, ind = torch.topk(pos_sim, k_pos)
    top_pos_labels = [pos_labels[ind[0, i]] for i in range(k_pos)]
    vals, ind = torch.topk(neg_sim, k_neg)
    top_neg_labels = [neg_labels[ind[0, i]] for i in range(k_neg)]
    texts, neg_sims = [], []
    for p in top_pos_labels:
        for i, n in enumerate(top_neg_labels):
            neg_sims.append(vals[0, i])
            texts.append(p + " and " + n)
    features = encode(texts).double()
    neg_sims = torch.tensor(neg_sims, dtype=torch.float64)
    sim = 100.0 * image_features @ features.T
    return torch.max(torch.exp(sim) / (torch.exp(sim) + torch.exp(neg_sims)))


def release_detection_score(image, pos_features, neg_features, pos_labels, neg_labels, encode, *, ngroup=100,
                            k_pos=5, k_neg=5, weight=2.0):  # type: ignore[no-untyped-def]
    image = image[None].double()
    pos_sim = 100.0 * image @ pos_features.double().T
    neg_sim = 100.0 * image @ neg_features.double().T
    neg_label_score = release_grouping(pos_sim, neg_sim, ngroup)
    matching = release_multi_matching(pos_sim, neg_sim, image, pos_labels, neg_labels, encode, k_pos, k_neg)
    return neg_label_score.item() + weight * matching.item()


@pytest.mark.parametrize(("classes", "labels", "groups", "options"), [
    (20, 1003, 100, {}), (3, 40, 4, {}), (20, 300, 10, {"weight": 4.0, "top_classes": 2, "top_labels": 7})])
def test_negrefine_equals_a_port_of_the_release(classes, labels, groups, options):
    """The scorer, a batch at a time at τ = 0.01, against the release's per-image score at CLIP's scale 100 (the
    same number), with the same text features for every "<class> and <label>" it writes."""
    generator = torch.Generator().manual_seed(classes + labels)
    dim = 32
    pos_features = unit(torch.randn(classes, dim, generator=generator))
    neg_features = unit(torch.randn(labels, dim, generator=generator))
    images = unit(torch.randn(24, dim, generator=generator) + 2.0 * pos_features[torch.arange(24) % classes])
    class_names = [f"class {i}" for i in range(classes)]
    label_names = [f"label {i}" for i in range(labels)]
    texts = FakeTexts(class_names, label_names, dim)
    ours = NegRefineScore()(images @ pos_features.T, None, temperature=0.01, mined=images @ neg_features.T,
                            groups=groups, seed=0, features=images, texts=texts, **options)
    k_pos, k_neg = min(options.get("top_classes", 5), classes), options.get("top_labels", 5)
    port = torch.tensor([release_detection_score(x, pos_features, neg_features, class_names, label_names,
                                                 texts.features, ngroup=groups, k_pos=k_pos, k_neg=k_neg,
                                                 weight=options.get("weight", 2.0)) for x in images],
                        dtype=torch.float64)
    assert (ours.double() - port).abs().max().item() < 1e-5  # 2.0e-6 at most: float32 rounding
    plain = NegativeLabelScore()(images @ pos_features.T, None, temperature=0.01, mined=images @ neg_features.T,
                                 groups=groups, seed=0)
    assert bool((ours >= plain - 1e-6).all()) and bool((ours > plain + 1e-3).any())  # the pairs only ever add


def test_the_texts_are_encoded_once_under_the_id_templates(tiny_vit_dir):
    """ComposedTexts: each text encoded once a run, its feature the normalised mean of encode_text's raw outputs over
    the templates (an independent computation with open_clip's own tokenizer)."""
    import open_clip

    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.scoring.composed_texts import ComposedTexts

    backbone = load_backbone(BackboneRequest(name=f"local-dir:{tiny_vit_dir}"))
    templates = ("a photo of the nice {}.", "{}", "the {}")
    texts = ComposedTexts(backbone, ["cat"], ["sofa"], templates)
    first = texts.features(["cat and sofa", "dog and sofa", "cat and sofa"])
    assert texts.encoded == 2 and torch.equal(first[0], first[2])
    again = texts.features(["dog and sofa"])
    assert texts.encoded == 2 and torch.equal(again[0], first[1])
    bounded = ComposedTexts(backbone, ["cat"], ["sofa"], templates, keep=2)  # memory bounded: the oldest go
    kept = bounded.features(["a", "b", "c"])  # more than it keeps, in one call: all returned
    assert bounded.encoded == 3 and list(bounded._known) == ["b", "c"]
    assert torch.equal(bounded.features(["c", "a"])[0], kept[2]) and bounded.encoded == 4  # "a" again
    assert list(bounded._known) == ["c", "a"]
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_vit_dir}")
    with torch.no_grad():
        raw = torch.stack([backbone.model.encode_text(tokenizer([t.format("dog and sofa")]))[0] for t in templates])
    expected = unit(raw.float().mean(0))
    assert (again[0] - expected).abs().max().item() < 1e-5


def test_negrefine_on_the_command_line(world_images, tmp_path):  # noqa: F811
    """Zero-shot on the world: every score is CSP's plus twice a probability (weight 0 gives CSP's scores exactly),
    it is listed with its options, and a scorer that composes texts without a pool is refused when it registers."""
    base = ["score", str(world_images["test"]), "--zero-shot", "--names", str(world_images["names"]), "-b", "toy",
            "--cache-dir", str(tmp_path / "cache"), "--format", "jsonl", "--groups", "10"]

    def scores(*extra: str) -> list[float]:
        result = invoke([*base, *extra])
        assert result.exit_code == 0, result.stderr
        return [json.loads(line)["score"] for line in result.stdout.splitlines()]

    csp = scores("--scorer", "csp")
    refined = scores("--scorer", "negrefine")
    assert len(refined) == len(csp) > 0
    assert all(c - 1e-6 <= r <= c + 2.0 + 1e-6 for c, r in zip(csp, refined, strict=True))
    assert any(r > c + 1e-3 for c, r in zip(csp, refined, strict=True))
    assert scores("--scorer", "negrefine", "--scorer-option", "weight=0") == pytest.approx(csp, abs=1e-7)
    bad = invoke([*base, "--scorer", "negrefine", "--scorer-option", "top_labels=0"])
    assert bad.exit_code == 2 and "top_classes and top_labels must be 1 or more" in bad.stderr
    listed = invoke(["plugins", "--json"])
    assert listed.exit_code == 0 and "negrefine" in listed.stdout
    spec = get_host().scorer_spec("negrefine")
    assert spec.composes_texts and spec.pool == "csp" and not spec.probability


def test_a_scorer_that_composes_texts_needs_a_pool():
    from negprompt_cli.registry import _scorer_spec

    with pytest.raises(TypeError, match="composes_texts and no pool"):
        _scorer_spec("mine", "pairs", NegRefineScore(), "", {"composes_texts": True})
