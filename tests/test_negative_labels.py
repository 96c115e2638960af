"""Training-free negative labels (issue #10): lexicons, candidate pools, NegLabel's mining and score, CSP's pool,
checked against hand computations and through `negprompt score`."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import error_line, invoke, make_image_folder

from negprompt_cli.errors import UsageError
from negprompt_cli.registry import get_host
from negprompt_cli.scoring.lexicon import Lexicon, load_lexicon
from negprompt_cli.scoring.negative_labels import CSP_PHRASES, POOLS, MiningOptions, candidates, closeness, select

NAMES = ["red stripes", "green bars", "blue dots"]


def test_the_shipped_lexicon_is_wordnet_deduplicated():
    lexicon = load_lexicon()
    assert lexicon.source == "default"
    assert len(lexicon.nouns) > 55_000 and len(lexicon.adjectives) > 5_000
    assert len({w.lower() for w in lexicon.nouns + lexicon.adjectives}) == len(lexicon)
    assert not any("_" in w for w in lexicon.nouns[:1000])


def test_lexicon_files_and_folders(tmp_path):
    (tmp_path / "words.txt").write_text("# my words\nzebra\nhot_dog\n\n  Zebra \nkite\n", encoding="utf-8")
    assert load_lexicon(tmp_path / "words.txt").nouns == ("zebra", "hot dog", "kite")
    folder = tmp_path / "wn"
    folder.mkdir()
    (folder / "noun.a.txt").write_text("cat\ndog\n")
    (folder / "adj.all.txt").write_text("shiny\ncat\n")  # a word already a noun counts once, as a noun
    lexicon = load_lexicon(folder)
    assert lexicon.nouns == ("cat", "dog") and lexicon.adjectives == ("shiny",)
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        load_lexicon(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(UsageError, match="has no words"):
        load_lexicon(tmp_path / "empty.txt")


def test_candidates_count_id_names_and_csp_joins_superclass_words_as_released():
    lexicon = Lexicon(("Red Stripes", "zebra", "kite"), ("shiny", "dull"), "test")
    found = candidates(lexicon, NAMES, "neglabel")
    assert found.dropped_id_names == 1 and found.id_name == [True, False, False, False, False]
    assert found.prompts == ["the nice Red Stripes", "the nice zebra", "the nice kite", "This is a shiny photo",
                             "This is a dull photo"]
    assert found.kinds == ["noun", "noun", "noun", "adjective", "adjective"]
    csp = candidates(lexicon, NAMES, "csp", seed=3)
    draw = random.Random(3)  # the release: random.seed(seed); random.choice(csp_templates) per adjective
    assert csp.words[3:] == [draw.choice(CSP_PHRASES).format(a) for a in ("shiny", "dull")]
    assert csp.templates("noun") == POOLS["csp"].id_templates and len(csp.templates("noun")) == 8
    assert csp.templates("adjective") == ("{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}")
    assert candidates(lexicon, NAMES, "csp", seed=3).words == csp.words  # seeded
    with pytest.raises(UsageError, match="every word of the lexicon"):
        candidates(Lexicon(("blue dots",), (), "test"), NAMES, "neglabel")


def test_csp_leaves_out_the_four_files_its_release_excludes(tmp_path):
    folder = tmp_path / "wn"
    folder.mkdir()
    (folder / "noun.artifact.txt").write_text("kite\nteapot\n")
    (folder / "noun.person.txt").write_text("baker\nkite\n")  # kite is also an artifact: it stays
    (folder / "noun.group.txt").write_text("crowd\n")
    (folder / "adj.all.txt").write_text("shiny\n")
    (folder / "adj.pert.txt").write_text("solar\n")
    lexicon = load_lexicon(folder)
    assert lexicon.nouns == ("kite", "teapot", "crowd", "baker") and lexicon.adjectives == ("shiny", "solar")
    csp = candidates(lexicon, [], "csp")
    assert csp.words[:2] == ["kite", "teapot"] and len(csp.words) == 3 and csp.excluded == 3
    assert candidates(lexicon, [], "neglabel").words[:4] == ["kite", "teapot", "crowd", "baker"]


def test_the_shipped_wordnet_gives_the_releases_pool_sizes_for_imagenet():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    lexicon = load_lexicon()
    for pool, pool_size, kept in (("neglabel", 70_000, 10_499), ("csp", 56_620, 8_492)):  # as the papers report
        found = candidates(lexicon, list(IMAGENET_CLASSNAMES), pool)
        assert len(found.words) == pool_size
        close = torch.linspace(0, 1, len(found.words))
        close[torch.tensor(found.id_name)] = float("inf")  # as mine() does: counted, never kept
        chosen = select(found.kinds, close, MiningOptions(fraction=0.15))
        assert len(chosen) == kept and not any(found.id_name[i] for i in chosen)


def test_csp_never_keeps_a_near_duplicate_of_an_id_class():
    id_feats = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=-1)
    cand = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.3, 0.3, 1.0], [1.0, 0.5, 0.0]]), dim=-1)
    plain = closeness(cand, id_feats, 0.5)
    marked = closeness(cand, id_feats, 0.5, near_duplicate=0.95)
    assert float((cand[0] @ id_feats.t()).max()) > 0.95 and marked[0] == 1.0 and plain[0] < 1.0
    assert torch.equal(marked[1:], plain[1:])


def test_mining_keeps_the_candidates_farthest_from_the_id_classes_per_kind():
    gen = torch.Generator().manual_seed(0)
    id_feats = F.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    cand = F.normalize(torch.randn(12, 8, generator=gen), dim=-1)
    close = closeness(cand, id_feats, 0.95)
    sims = (cand @ id_feats.t()).numpy()
    import numpy as np

    np.testing.assert_allclose(close.numpy(), np.quantile(sims, 0.95, axis=1), rtol=1e-6, atol=1e-6)
    kinds = ["noun"] * 8 + ["adjective"] * 4
    kept = select(kinds, close, MiningOptions(fraction=0.5))
    by_close = lambda idx: sorted(idx, key=lambda i: float(close[i]))  # noqa: E731
    assert kept == by_close(range(8))[:4] + by_close(range(8, 12))[:2]
    assert len(select(kinds, close, MiningOptions(count=6))) == 6  # 4 nouns + 2 adjectives (8:4)
    with pytest.raises(UsageError, match="13 negative labels requested, but the lexicon has only 12"):
        select(kinds, close, MiningOptions(count=13))


def _neglabel_by_hand(pos, neg, temperature, groups, seed):
    """The released code's grouping, step by step: drop the last M mod G, permute, split, softmax each group."""
    count = neg.shape[1]
    drop = count % groups
    kept = neg[:, :count - drop] if drop else neg
    idx = torch.randperm(kept.shape[1], generator=torch.Generator().manual_seed(seed))
    split = kept[:, idx].reshape(pos.shape[0], groups, -1)
    scores = []
    for g in range(groups):
        probs = torch.cat([pos, split[:, g]], dim=1).div(temperature).softmax(dim=1)
        scores.append(probs[:, :pos.shape[1]].sum(dim=1))
    return torch.stack(scores, dim=1).mean(dim=1)


@pytest.mark.parametrize("groups", [1, 3, 7])
def test_the_neglabel_score_equals_the_grouped_softmax_by_hand(groups):
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(6, 4, generator=gen, dtype=torch.float64) * 0.4
    neg = torch.rand(6, 23, generator=gen, dtype=torch.float64) * 0.4
    scorer = get_host().scorer("neglabel")
    ours = scorer(pos, None, temperature=0.01, mined=neg, groups=groups, seed=0)
    torch.testing.assert_close(ours, _neglabel_by_hand(pos, neg, 0.01, groups, 0), rtol=0, atol=1e-12)
    # more negatives close to an image -> lower score (more OOD)
    closer = neg.clone()
    closer[0] += 0.2
    assert scorer(pos, None, mined=closer, groups=groups)[0] < ours[0]


def test_negative_label_scorers_are_listed():
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0
    text = result.stdout
    assert '"neglabel"' in text and '"csp"' in text


@pytest.fixture
def scored(tmp_path, tiny_vit_dir):
    make_image_folder(tmp_path / "images", per_class=4, seed=2)
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    words = ["zebra", "kite", "violin", "Blue Dots", "meadow", "rocket", "teapot", "harbor", "red_stripes", "cloud"]
    (tmp_path / "lexicon.txt").write_text("\n".join(words) + "\n")
    common = ["score", str(tmp_path / "images"), "--zero-shot", "--names", str(tmp_path / "names.txt"),
              "--backbone", f"local-dir:{tiny_vit_dir}", "--lexicon", str(tmp_path / "lexicon.txt"), "--quiet"]
    return tmp_path, common


def test_score_with_mined_labels_end_to_end(scored, tiny_vit_dir):
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.image_features import encode_images
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.features.text_features import encode_texts, hand_template_features
    from negprompt_cli.inputs.image_folders import find_images

    root, common = scored
    result = invoke([*common, "--scorer", "neglabel", "--mine-fraction", "0.5", "--groups", "2", "--out",
                     str(root / "s.csv"), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["temperature"] == 0.01  # NegLabel's τ unless --temperature says otherwise
    # the 2 ID names count in the pool (10 * 0.5 = 5 labels, as the release counts) but are never kept
    assert summary["negative_labels"]["candidates"] == 10 and summary["negative_labels"]["labels"] == 5
    assert summary["negative_labels"]["dropped_id_names"] == 2
    assert "(2 lexicon entries equal to ID class names never kept)" in result.stderr
    assert len(list((root / "cache" / "text-features").glob("*.safetensors"))) == 1
    rows = list(csv.DictReader((root / "s.csv").open()))

    # the same numbers from the pieces, mining by hand
    backbone = load_backbone(BackboneRequest(name=f"local-dir:{tiny_vit_dir}", device="cpu"))
    feats, _, _ = encode_images(backbone, find_images(root / "images"), use_cache=False, quiet=True)
    encoder = SoftPromptTextEncoder(backbone)
    id_feats = hand_template_features(encoder, NAMES, "the nice {}")  # NegLabel's ID prompt, its nouns' too
    words = ["zebra", "kite", "violin", "meadow", "rocket", "teapot", "harbor", "cloud"]
    cand = encode_texts(encoder, [f"the nice {w}" for w in words])
    close = torch.quantile(cand @ id_feats.t(), 0.95, dim=1)
    mined = cand[torch.argsort(close, stable=True)[:5]]
    expected = _neglabel_by_hand((feats @ id_feats.t()).double(), (feats @ mined.t()).double(), 0.01, 2, 0)
    ours = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)

    again = invoke([*common, "--scorer", "neglabel", "--mine-fraction", "0.5", "--groups", "2", "--out",
                    str(root / "t.csv")])
    assert again.exit_code == 0 and (root / "t.csv").read_bytes() == (root / "s.csv").read_bytes()
    csp = invoke([*common, "--scorer", "csp", "--negative-labels", "3", "--calibrate", str(root / "images"),
                  "--keep", "0.8", "--out", str(root / "c.csv"), "--json"])
    assert csp.exit_code == 0, csp.stderr
    assert json.loads(csp.stdout)["negative_labels"]["labels"] == 3
    assert {r["ood"] for r in csv.DictReader((root / "c.csv").open())} <= {"True", "False"}


def test_keep_id_names_mines_them_as_the_releases_do_and_is_part_of_the_threshold_settings(scored):
    """#40 item 4: NegLabel's released ImageNet list holds 32 ImageNet class names; --keep-id-names mines as
    released (an ID name is an ordinary candidate); the default never keeps one. Thresholds calibrated before the
    option existed still apply (the setting is named only when it is not the default)."""
    from types import SimpleNamespace

    from negprompt_cli.scoring.negative_labels import settings_fingerprint

    root, common = scored
    every = ["--scorer", "neglabel", "--mine-fraction", "1.0", "--groups", "1", "--json"]
    kept = invoke([*common, *every, "--keep-id-names", "--out", str(root / "k.csv")])
    dropped = invoke([*common, *every, "--out", str(root / "d.csv")])
    assert kept.exit_code == dropped.exit_code == 0, kept.stderr + dropped.stderr
    k, d = json.loads(kept.stdout)["negative_labels"], json.loads(dropped.stdout)["negative_labels"]
    assert (k["labels"], k["mined_id_names"], k["id_names"]) == (10, 2, "keep")
    assert (d["labels"], d["mined_id_names"], d["id_names"]) == (8, 0, "drop")
    assert "(2 of them ID class names: --keep-id-names)" in kept.stderr
    # the ID names only join the denominator: no image gains, and some lose mass to their own class name
    k_rows, d_rows = (list(csv.DictReader((root / f).open())) for f in ("k.csv", "d.csv"))
    assert all(float(a["score"]) <= float(b["score"]) for a, b in zip(k_rows, d_rows, strict=True))
    assert any(float(a["score"]) < float(b["score"]) for a, b in zip(k_rows, d_rows, strict=True))
    record = {"pool": "neglabel", "pool_digest": "p", "lexicon": "l", "percentile": 0.95, "fraction": 0.15,
              "count": None, "seed": 0}
    default = settings_fingerprint(SimpleNamespace(record=lambda: {**record, "id_names": "drop"}), {"groups": 1})
    assert default == {**record, "groups": 1}  # as thresholds stored before --keep-id-names recorded them
    keep = settings_fingerprint(SimpleNamespace(record=lambda: {**record, "id_names": "keep"}), {"groups": 1})
    assert keep == {**record, "id_names": "keep", "groups": 1}


@pytest.mark.parametrize("args, message", [
    (["--negative-labels", "50"], "Error: 50 negative labels requested, but the lexicon has only 8 candidates"),
    (["--groups", "0"], "Error: --groups must be at least 1 (got 0)"),
    (["--mine-fraction", "0"], "Error: the mined fraction must be in (0, 1] (got 0.0)"),
])
def test_bad_negative_label_settings_are_one_line(scored, args, message):
    root, common = scored
    result = invoke([*common, "--scorer", "neglabel", *args, "--out", str(root / "x.csv")])
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")][0].startswith(message)
    assert not (root / "x.csv").exists()


def test_label_settings_for_a_scorer_that_reads_no_labels_are_refused_not_ignored(scored, tmp_path):
    """--lexicon, --negatives, --groups ... given to mcm or gl-mcm would do nothing: one line, exit 2, nothing written;
    the Detector refuses them alike. A test-time scorer (TANL) takes a --negatives list as its whole corpus."""
    import negprompt

    root, with_lexicon = scored
    at = with_lexicon.index("--lexicon")
    common = [*with_lexicon[:at], *with_lexicon[at + 2:]]
    (root / "negs.txt").write_text("spaceship\nvolcano\nlighthouse\n")
    refused = invoke([*common, "--scorer", "mcm", "--negatives", str(root / "negs.txt"), "--groups", "2", "--out",
                      str(root / "x.csv")])
    assert refused.exit_code == 2 and not (root / "x.csv").exists()
    assert error_line(refused) == "Error: --negatives and --groups set the negative labels, and the mcm scorer " \
                                  "reads none"
    assert "--scorer neglabel, csp" in refused.stderr
    local = invoke([*with_lexicon, "--scorer", "gl-mcm", "--keep-id-names"])
    assert local.exit_code == 2
    assert "--lexicon and --keep-id-names set the negative labels, and the gl-mcm scorer" in local.stderr
    with pytest.raises(UsageError, match="--lexicon sets the negative labels, and the mcm scorer reads none"):
        negprompt.Detector.zero_shot(NAMES, backbone="toy", scorer="mcm", lexicon=root / "lexicon.txt", device="cpu")
    tanl = invoke([*common, "--scorer", "tanl", "--negatives", str(root / "negs.txt"), "--out", str(root / "t.csv"),
                   "--json"])
    assert tanl.exit_code == 0, tanl.stderr
    summary = json.loads(tanl.stdout)
    assert summary["negative_labels"]["labels"] == 3


def test_a_non_utf8_or_empty_lexicon_is_one_line(scored):
    root, common = scored
    (root / "lexicon.txt").write_bytes(b"zebra\n\xff\xfe kite\n")
    result = invoke([*common, "--scorer", "csp", "--out", str(root / "x.csv")])
    assert result.exit_code == 2 and "is not UTF-8 text (byte 6 cannot be decoded)" in result.stderr
    (root / "lexicon.txt").write_text("\n")
    result = invoke([*common, "--scorer", "csp", "--out", str(root / "x.csv")])
    assert result.exit_code == 2 and "has no words" in result.stderr
    assert not (root / "x.csv").exists()


# -- hybrids and NegPrompt-score variants -----------------------------------------------------------------------
def test_the_hybrid_puts_learned_negatives_in_every_groups_denominator():
    gen = torch.Generator().manual_seed(2)
    pos = torch.rand(5, 3, generator=gen, dtype=torch.float64) * 0.4
    learned = torch.rand(5, 3, 2, generator=gen, dtype=torch.float64) * 0.4
    mined = torch.rand(5, 10, generator=gen, dtype=torch.float64) * 0.4
    ours = get_host().scorer("negprompt+neglabel")(pos, learned, temperature=0.01, mined=mined, groups=3, seed=0)
    idx = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    split = mined[:, :9][:, idx].reshape(5, 3, 3)
    by_hand = torch.stack([torch.cat([pos, learned.flatten(1), split[:, g]], dim=1).div(0.01).softmax(1)[:, :3].sum(1)
                           for g in range(3)], dim=1).mean(1)
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-12)


def test_negprompt_sum_and_maxlogit_variants_by_hand():
    gen = torch.Generator().manual_seed(3)
    pos = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    neg = torch.rand(4, 3, 2, generator=gen, dtype=torch.float64)
    summed = get_host().scorer("negprompt-sum")(pos, neg, temperature=0.5)
    by_hand = torch.cat([pos, neg.flatten(1)], dim=1).div(0.5).softmax(1)[:, :3].sum(1)
    torch.testing.assert_close(summed, by_hand, rtol=0, atol=1e-12)
    maxlogit = get_host().scorer("negprompt-maxlogit")(pos, neg, logit_scale=100.0)
    torch.testing.assert_close(maxlogit, 100.0 * (pos.max(1).values - neg.flatten(1).max(1).values))


@pytest.mark.parametrize("scorer", ["negprompt+neglabel", "negprompt-sum", "negprompt-maxlogit"])
def test_scorers_that_need_negative_prompts_refuse_prompts_without_them(scored, scorer):
    root, common = scored
    result = invoke([*common, "--scorer", scorer, "--out", str(root / "x.csv")])
    assert result.exit_code == 5
    assert f"Error: the {scorer} scorer needs negative prompts, and these prompts have none" in result.stderr
    assert not (root / "x.csv").exists()


def test_hybrid_scoring_with_a_fit_neg_artifact(scored, tiny_vit_dir):
    from conftest import NEG_FAST

    root, common = scored
    make_image_folder(root / "train", per_class=6, seed=5)
    backbone = ["--backbone", f"local-dir:{tiny_vit_dir}"]
    fit = invoke(["fit-neg", "--data", str(root / "train"), "--out", str(root / "neg.safetensors"), *backbone,
                  *NEG_FAST, "--pos-epochs", "2", "--n-ctx", "4", "--quiet"])
    assert fit.exit_code == 0, fit.stderr
    args = ["score", str(root / "images"), "--prompts", str(root / "neg.safetensors"), "--lexicon",
            str(root / "lexicon.txt"), "--quiet"]
    hybrid = invoke([*args, "--scorer", "negprompt+neglabel", "--groups", "2", "--out", str(root / "h.csv"),
                     "--json"])
    assert hybrid.exit_code == 0, hybrid.stderr
    assert json.loads(hybrid.stdout)["negative_labels"]["labels"] >= 1
    plain = invoke([*args, "--scorer", "neglabel", "--groups", "2", "--out", str(root / "n.csv")])
    assert plain.exit_code == 0, plain.stderr
    h_rows = list(csv.DictReader((root / "h.csv").open()))
    n_rows = list(csv.DictReader((root / "n.csv").open()))
    # the learned negatives only add to the denominator: every hybrid score is at most the plain one
    assert all(float(h["score"]) <= float(n["score"]) + 1e-12 for h, n in zip(h_rows, n_rows, strict=True))
    assert any(float(h["score"]) < float(n["score"]) for h, n in zip(h_rows, n_rows, strict=True))


def test_a_threshold_calibrated_with_mined_labels_applies_only_to_the_same_settings():
    from negprompt_cli.scoring.thresholds import applicable, class_list_id

    names = ["cat", "dog"]
    settings = {"pool": "neglabel", "lexicon": "abc", "percentile": 0.95, "fraction": 0.15, "count": None,
                "seed": 0, "groups": 100}
    record = {"value": 0.4, "scorer": "neglabel", "temperature": 0.01, "classes": class_list_id(names),
              "settings": settings}
    kwargs = {"names": names, "scorer": "neglabel", "temperature": 0.01}
    assert applicable(record, names, **kwargs, settings=settings) == (0.4, None)
    value, reason = applicable(record, names, **kwargs, settings={**settings, "groups": 10})
    assert value is None and "other negative-label settings" in reason
    value, reason = applicable({**record, "settings": None}, names, **kwargs, settings=settings)
    assert value is None and "without negative labels" in reason


# -- mining settings belong to the lexicon (#21) ----------------------------------------------------------------
def test_each_shipped_lexicon_carries_its_validated_mining_settings():
    from negprompt_cli.scoring.lexicon import PAPER_MINING, load_lexicon
    from negprompt_cli.world import lexicon_dir

    assert load_lexicon(None).mining == {"fraction": 0.15, "groups": 100, "percentile": 0.95} == PAPER_MINING
    quality = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "quality.json").read_text())
    chosen = min(quality["validation"]["zero-shot CSP"], key=lambda r: r["criterion"])["setting"]
    world = load_lexicon(lexicon_dir()).mining
    assert (world["fraction"], world["groups"]) == (chosen["fraction"], chosen["groups"])
    assert chosen["temperature"] == 0.01  # the negative-label scorers' own default τ: nothing to carry


def test_score_with_no_flags_mines_with_the_lexicons_settings_and_flags_override_them(tmp_path):
    images = make_image_folder(tmp_path / "img", classes=("red_stripes",), per_class=2)
    names = tmp_path / "names.txt"
    names.write_text("square\nhouse\n")
    base = ["score", str(images), "--zero-shot", "--names", str(names), "--backbone", "toy", "--scorer", "csp",
            "--out", str(tmp_path / "s.csv"), "--json"]

    def record(*extra):  # type: ignore[no-untyped-def]
        result = invoke([*base, *extra])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["negative_labels"]

    shipped = record()  # the toy backbone's lexicon: the world lexicon and its manifest
    assert (shipped["fraction"], shipped["groups"], shipped["percentile"]) == (0.5, 1, 0.95)
    assert (lambda r: (r["fraction"], r["groups"]))(record("--mine-fraction", "0.3", "--groups", "4")) == (0.3, 4)
    plain = tmp_path / "words.txt"
    plain.write_text("".join(f"thing{k}\n" for k in range(40)))
    assert (lambda r: (r["fraction"], r["groups"]))(record("--lexicon", str(plain))) == (0.15, 100)


@pytest.mark.parametrize(("manifest", "message"), [
    ('{"mining": {"fraction": 2}}', "mining.fraction must be in (0, 1] (got 2)"),
    ('{"mining": {"groups": 0}}', "mining.groups must be a whole number >= 1 (got 0)"),
    ('{"mining": {"groups": true}}', "mining.groups must be a whole number >= 1 (got True)"),
    ('{"mining": {"tau": 0.1}}', "unknown mining setting(s) tau"),
    ('{"mining": []}', '"mining" must be an object'),
    ("[1]", '"mining" must be an object'),
    ("not json", "is not a lexicon manifest"),
])
def test_a_bad_lexicon_manifest_is_one_line(tmp_path, manifest, message):
    folder = tmp_path / "lex"
    folder.mkdir()
    (folder / "noun.mine.txt").write_text("thing\nstuff\n")
    (folder / "manifest.json").write_text(manifest)
    images = make_image_folder(tmp_path / "img", classes=("red_stripes",), per_class=1)
    names = tmp_path / "names.txt"
    names.write_text("square\n")
    result = invoke(["score", str(images), "--zero-shot", "--names", str(names), "--backbone", "toy", "--scorer",
                     "neglabel", "--lexicon", str(folder)])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr


def test_the_templates_each_scorer_uses_are_the_ones_docs_method_names():
    """#40 item 4: docs/method.md's release-vs-ours table names every template; the code must use those."""
    import re
    from pathlib import Path

    from negprompt_cli.features.text_features import HAND_TEMPLATE
    from negprompt_cli.registry import get_host
    from negprompt_cli.scoring.negative_labels import CSP_ADJECTIVE_TEMPLATES, CSP_NOUN_TEMPLATES, CSP_PHRASES, POOLS
    from negprompt_cli.scoring.setup import zero_shot_prompts

    doc = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    rows = {cells[0]: cells[1:] for line in doc.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]}

    def quoted(cell: str) -> tuple[str, ...]:
        return tuple(re.findall(r'"([^"]*)"', cell))

    neglabel, csp, ours = rows["noun prompts"][:3]
    assert quoted(neglabel) == POOLS["neglabel"].noun_templates and quoted(csp) == CSP_NOUN_TEMPLATES
    assert ours.startswith("same as each release") and POOLS["csp"].noun_templates == CSP_NOUN_TEMPLATES
    neglabel, csp, _ = rows["adjective prompts"][:3]
    assert quoted(neglabel) == POOLS["neglabel"].adjective_templates
    assert quoted(csp) == CSP_PHRASES + CSP_ADJECTIVE_TEMPLATES
    assert (POOLS["csp"].phrases, POOLS["csp"].adjective_templates) == (CSP_PHRASES, CSP_ADJECTIVE_TEMPLATES)
    neglabel, csp, ours = rows["zero-shot ID prompt"][:3]
    assert quoted(neglabel) == POOLS["neglabel"].id_templates and "8 noun templates" in csp
    assert POOLS["csp"].id_templates == CSP_NOUN_TEMPLATES
    assert quoted(ours)[0] == HAND_TEMPLATE
    for spec in get_host().scorer_specs():  # the built-ins: a mined-label scorer its pool's, the rest the hand one
        expected = POOLS[spec.pool].id_templates if spec.pool else (HAND_TEMPLATE,)
        assert zero_shot_prompts(spec.name) == expected, spec.name


def test_a_list_of_negatives_is_used_as_given_and_scores_as_by_hand(scored, tiny_vit_dir):
    """--negatives FILE (#34 item 2, EOE-style): the listed labels, ID class names left out, one group, under the
    scorer's noun template; the scores equal NegLabel's formula on encode_text's features of those prompts, and
    a threshold follows the list."""
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.image_features import encode_images
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.features.text_features import encode_texts, hand_template_features
    from negprompt_cli.inputs.image_folders import find_images

    root, common = scored
    common = [a for a in common if a not in ("--lexicon", str(root / "lexicon.txt"))]
    listed = root / "negatives.txt"
    listed.write_text("# an LLM's list\nspaceship\nBlue dots\n\nvolcano\nspaceship\nlighthouse\n")
    result = invoke([*common, "--scorer", "neglabel", "--negatives", str(listed), "--out", str(root / "n.csv"),
                     "--calibrate", str(root / "images"), "--keep", "0.5", "--json"])
    assert result.exit_code == 0, result.stderr
    labels = json.loads(result.stdout)["negative_labels"]
    assert (labels["source"], labels["labels"], labels["candidates"], labels["dropped_id_names"],
            labels["groups"]) == ("list", 3, 4, 1, 1)
    assert "3 negative labels from the --negatives list of 4 (1 list entries equal to ID class names" in \
        " ".join(result.stderr.split())
    backbone = load_backbone(BackboneRequest(name=f"local-dir:{tiny_vit_dir}", device="cpu"))
    feats, _, _ = encode_images(backbone, find_images(root / "images"), use_cache=False, quiet=True)
    encoder = SoftPromptTextEncoder(backbone)
    id_feats = hand_template_features(encoder, NAMES, "the nice {}")
    negatives = encode_texts(encoder, [f"the nice {w}" for w in ("spaceship", "volcano", "lighthouse")])
    expected = _neglabel_by_hand((feats @ id_feats.t()).double(), (feats @ negatives.t()).double(), 0.01, 1, 0)
    ours = torch.tensor([float(r["score"]) for r in csv.DictReader((root / "n.csv").open())], dtype=torch.float64)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    record = json.loads(result.stdout)["calibration"]
    assert record["settings"]["lexicon"].startswith("list:")  # another list: the threshold does not apply
    refused = invoke([*common, "--scorer", "neglabel", "--negatives", str(listed), "--lexicon",
                      str(root / "lexicon.txt")])
    assert refused.exit_code == 2 and "--negatives is the list of negative labels itself" in error_line(refused)
    (root / "empty.txt").write_text("# nothing\n")
    empty = invoke([*common, "--scorer", "neglabel", "--negatives", str(root / "empty.txt")])
    assert empty.exit_code == 2 and error_line(empty).endswith("names no label")


def test_a_folder_of_negatives_reads_negrefines_release_layout(tmp_path, tiny_vit_dir):
    """NegRefine publishes its refined ImageNet list as neg_labels_noun.txt and neg_labels_adj.txt (MIT; we read
    a clone in place rather than ship it): nouns run under the pool's noun templates, the adjective phrases under
    its adjective templates, as the release encodes them."""
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.features.text_features import template_features
    from negprompt_cli.scoring.negative_labels import (
        CSP_ADJECTIVE_TEMPLATES,
        CSP_NOUN_TEMPLATES,
        MiningOptions,
        listed,
        read_negatives,
    )

    release = tmp_path / "seed_0"
    release.mkdir()
    (release / "neg_labels_noun.txt").write_text("white currant\npasqueflower\nred stripes\n")
    (release / "neg_labels_adj.txt").write_text("gooey landscape\nrutted creature\n")
    assert read_negatives(release) == (["white currant", "pasqueflower", "red stripes", "gooey landscape",
                                        "rutted creature"], ["noun"] * 3 + ["adjective"] * 2)
    backbone = load_backbone(BackboneRequest(name=f"local-dir:{tiny_vit_dir}", device="cpu"))
    labels = listed(backbone, release, NAMES, MiningOptions(pool="csp"))
    assert labels.words == ["white currant", "pasqueflower", "gooey landscape", "rutted creature"]
    assert labels.dropped_id_names == 1 and labels.source == "list"
    encoder = SoftPromptTextEncoder(backbone)
    expected = torch.cat([template_features(encoder, ["white currant", "pasqueflower"], CSP_NOUN_TEMPLATES),
                          template_features(encoder, ["gooey landscape", "rutted creature"], CSP_ADJECTIVE_TEMPLATES)])
    torch.testing.assert_close(labels.features, expected, rtol=0, atol=1e-6)


def test_a_lexicon_is_named_by_its_registration(tmp_path, monkeypatch):
    """--lexicon NAME reads a registered lexicon (the built-ins: wordnet, world; a plugin's own); a misspelt name
    is one error naming the close one; a plugin registering a path that does not exist is refused when it loads."""
    import warnings as _warnings

    from negprompt_cli import registry
    from negprompt_cli.hookspecs import hookimpl
    from negprompt_cli.scoring.lexicon import load_lexicon
    from negprompt_cli.world import lexicon_dir

    assert load_lexicon(Path("world")).digest() == load_lexicon(lexicon_dir()).digest()
    assert load_lexicon(Path("wordnet")).digest() == load_lexicon(None).digest()
    with pytest.raises(UsageError, match="unknown lexicon 'wrold'") as caught:
        load_lexicon(Path("wrold"))
    assert "world" in (caught.value.hint or "")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "noun.mine.txt").write_text("teapot\nkettle\n")

    class Mine:
        @hookimpl
        def register_lexicons(self, register):  # type: ignore[no-untyped-def]
            register("teaware", mine, description="pots")
            register("ghost", tmp_path / "absent")

    host = registry.PluginHost()
    host.load_entry_points(None)
    monkeypatch.setattr(registry, "_host", host)
    with _warnings.catch_warnings(record=True) as said:
        _warnings.simplefilter("always")
        host.register_object(Mine(), "mine")
        assert host.lexicon("teaware") == mine
    assert any("registers lexicon 'ghost'" in str(w.message) and "does not exist" in str(w.message) for w in said)
    assert load_lexicon(Path("teaware")).nouns == ("teapot", "kettle")
    rows = [r for r in host.describe() if r["name"] == "mine"][0]["entries"]["lexicon"]
    assert rows == [{"name": "teaware", "aliases": [], "description": "pots"}]


def test_score_takes_a_lexicon_by_name(tmp_path):
    make_image_folder(tmp_path / "imgs", classes=("red_stripes", "green_bars"), per_class=2)
    names = tmp_path / "names.txt"
    names.write_text("red stripes\ngreen bars\n")
    base = ["score", str(tmp_path / "imgs"), "--zero-shot", "--names", str(names), "-b", "toy", "--scorer",
            "neglabel", "--cache-dir", str(tmp_path / "cache"), "--format", "jsonl"]
    by_name = invoke([*base, "--lexicon", "world"])
    default = invoke(base)  # the toy backbone's own lexicon is the world's
    assert by_name.exit_code == 0 and default.exit_code == 0, by_name.stderr
    assert by_name.stdout == default.stdout
    wrong = invoke([*base, "--lexicon", "wrold"])
    assert wrong.exit_code == 2 and "Error: unknown lexicon 'wrold'" in wrong.stderr and "world" in wrong.stderr
    missing = invoke([*base, "--lexicon", str(tmp_path / "absent.txt")])
    assert missing.exit_code == 3 and "lexicon not found" in missing.stderr
