"""Benchmark protocols as data and `negprompt benchmark list | check` (issue #11) on miniature trees in every
layout the check accepts, and on each kind of broken layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke
from PIL import Image

from negprompt_cli.benchmark.protocol import imagenet_wnids, load_protocol, protocol_names

WNIDS = imagenet_wnids()
KNOWN, UNKNOWN = WNIDS[:3], WNIDS[500:502]


def test_the_shipped_protocols_load_with_their_class_lists():
    splits = [f"imagenet1k-hard-split{n}{suffix}" for n in range(1, 5) for suffix in ("", "-open-vocabulary")]
    assert protocol_names() == [*splits, "imagenet1k-mcm", "imagenet1k-mcm-open-vocabulary", "imagenet1k-openood-v1.5"]
    assert len(WNIDS) == 1000 and WNIDS == sorted(WNIDS) and WNIDS[0] == "n01440764"
    sizes = {1: (116, 166), 2: (30, 55), 3: (151, 164), 4: (100, 900)}  # NegPrompt Table 7
    for split, (known, unknown) in sizes.items():
        protocol = load_protocol(f"imagenet1k-hard-split{split}")
        assert (len(protocol.wnids), len(protocol.ood[0].classes)) == (known, unknown)
        assert not set(protocol.wnids) & set(protocol.ood[0].classes)
        open_vocabulary = load_protocol(f"imagenet1k-hard-split{split}-open-vocabulary")
        assert (open_vocabulary.wnids, open_vocabulary.ood) == (protocol.wnids, protocol.ood)
        assert open_vocabulary.open_vocabulary == {"train_fraction": 0.1} and protocol.open_vocabulary is None
    assert load_protocol("imagenet1k-hard-split4").wnids == tuple(WNIDS[:100])
    mcm = load_protocol("imagenet1k-mcm")
    assert [o.name for o in mcm.ood] == ["iNaturalist", "SUN", "Places", "Textures"] and mcm.seeds == (1, 2, 3)
    assert load_protocol("imagenet1k-mcm-open-vocabulary").open_vocabulary == {"train_fraction": 0.1}
    assert {o.group for o in load_protocol("imagenet1k-openood-v1.5").ood} == {"near", "far"}
    listed = invoke(["benchmark", "list", "--json"])
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == 11


def _jpegs(folder, n, start=0, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for k in range(n):
        name = names[k] if names else f"{start + k:05d}.JPEG"
        Image.fromarray(rng.integers(0, 255, size=(12, 12, 3), dtype=np.uint8)).save(folder / name, format="JPEG")


def miniature(tmp_path, val_layout="folders"):
    """A miniature protocol (3 known, 2 unknown ImageNet classes, 2 val images each, 2 shots, one OOD folder)
    and a root in the requested val layout."""
    protocol = {"schema": 1, "name": "mini", "classes": KNOWN,
                "id": {"path": "imagenet/val", "images_per_class": 2, "source": "ImageNet val"},
                "train": {"path": "imagenet/train", "shots": 2, "source": "ImageNet train"},
                "ood": [{"name": "unknown", "classes": UNKNOWN, "images_per_class": 2, "group": "near"},
                        {"name": "Textures", "path": "dtd/images", "images": 4, "group": "far", "source": "DTD"}],
                "seeds": [1]}
    (tmp_path / "mini.json").write_text(json.dumps(protocol))
    root = tmp_path / "root"
    for wnid in KNOWN:
        _jpegs(root / "imagenet" / "train" / wnid, 3)
    _jpegs(root / "dtd" / "images" / "banded", 4)
    val = root / "imagenet" / "val"
    labelled = [(w, k) for w in KNOWN + UNKNOWN for k in range(2)]
    if val_layout == "folders":
        for wnid in KNOWN + UNKNOWN:
            _jpegs(val / wnid, 2)
        return tmp_path / "mini.json", root
    names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(labelled))]
    pairs = list(zip(names, [w for w, _ in labelled], strict=True))
    _jpegs(val, len(names), names=names)
    if val_layout == "val.txt":
        (val / "val.txt").write_text("".join(f"{n} {WNIDS.index(w)}\n" for n, w in pairs))
    elif val_layout == "kaggle":
        (root / "imagenet" / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n" + "".join(f"{n[:-5]},{w} 1 2 3 4\n" for n, w in pairs))
    elif val_layout == "devkit":
        from scipy.io import savemat

        data = root / "imagenet" / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        ids = {w: 1000 - i for i, w in enumerate(WNIDS)}  # devkit IDs are not the sorted-wnid order
        synsets = np.array([(ids[w], w) for w in WNIDS], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
        savemat(str(data / "meta.mat"), {"synsets": synsets})
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w, _ in labelled))
    return tmp_path / "mini.json", root


@pytest.mark.parametrize("layout", ["folders", "val.txt", "kaggle", "devkit"])
def test_a_complete_miniature_tree_passes_in_every_val_layout(tmp_path, layout):
    protocol, root = miniature(tmp_path, layout)
    result = invoke(["benchmark", "check", str(protocol), "--root", str(root), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and [d["found"] for d in report["datasets"]][0].endswith("6 images")
    assert f"{root} holds everything mini needs." in result.stderr


def test_every_problem_of_a_broken_tree_is_listed_at_once(tmp_path):
    protocol, root = miniature(tmp_path)
    (root / "imagenet" / "val" / KNOWN[0] / "00000.JPEG").write_bytes(b"not a jpeg")  # unreadable
    for f in (root / "imagenet" / "val" / UNKNOWN[1]).iterdir():  # an OOD class with no images
        f.unlink()
    (root / "imagenet" / "train" / "dogs").mkdir()  # not a wnid
    for f in list((root / "imagenet" / "train" / KNOWN[1]).iterdir())[:2]:  # 1 image < 2 shots
        f.unlink()
    (root / "dtd" / "images" / "banded" / "00000.JPEG").unlink()  # 3 textures, 4 expected
    result = invoke(["benchmark", "check", str(protocol), "--root", str(root), "--json"])
    assert result.exit_code == 2
    problems = {d["name"]: d["problems"] for d in json.loads(result.stdout)["datasets"]}
    assert problems["ImageNet-1k val"] == [f"1 unreadable image(s): {root}/imagenet/val/{KNOWN[0]}/00000.JPEG"]
    assert problems["unknown"] == [f"1 class(es) without images: {UNKNOWN[1]}"]
    assert problems["ImageNet-1k train"] == ["1 folder(s) that are not ImageNet-1k wnids: dogs",
                                             f"1 class folder(s) with fewer than 2 images: {KNOWN[1]} (1)"]
    assert problems["Textures"] == ["3 images, expected 4"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: 5 problem(s) in the layout under {root} for mini (listed above)"]


def test_missing_folders_empty_ood_sets_and_unlabelled_val(tmp_path):
    protocol, root = miniature(tmp_path, "val.txt")
    (root / "imagenet" / "val" / "val.txt").unlink()
    for f in (root / "dtd" / "images" / "banded").iterdir():
        f.unlink()
    result = invoke(["benchmark", "check", str(protocol), "--root", str(root), "--json"])
    assert result.exit_code == 2
    problems = {d["name"]: d["problems"] for d in json.loads(result.stdout)["datasets"]}
    assert problems["ImageNet-1k val"][0].startswith("ImageNet val without labels (flat, no label file)")
    assert problems["unknown"] == ["needs the labelled ImageNet val images (see the ID test row)"]
    assert problems["Textures"] == [f"no images under {root}/dtd/images"]
    real = invoke(["benchmark", "check", "imagenet1k-mcm", "--root", str(root), "--json"])
    assert real.exit_code == 2
    missing = {d["name"]: d["problems"] for d in json.loads(real.stdout)["datasets"]}
    assert missing["iNaturalist"] == [f"folder missing: {root}/iNaturalist"]
    assert missing["ImageNet-1k train"][0] == "997 class folder(s) missing: " + ", ".join(WNIDS[3:6]) + \
        " ... (997 in all)"


def test_bad_protocols_and_roots_are_one_line(tmp_path):
    result = invoke(["benchmark", "check", "imagenet1k-nope", "--root", str(tmp_path)])
    assert result.exit_code == 3
    assert "Error: no benchmark protocol named 'imagenet1k-nope'" in result.stderr
    assert "imagenet1k-mcm, imagenet1k-mcm-open-vocabulary" in result.stderr
    result = invoke(["benchmark", "check", "imagenet1k-mcm", "--root", str(tmp_path / "absent")])
    assert result.exit_code == 3 and f"Error: benchmark root not found: {tmp_path / 'absent'}" in result.stderr
    (tmp_path / "broken.json").write_text(json.dumps({"schema": 1, "name": "x", "classes": ["n99999999"],
                                                      "id": {"path": "v"}, "train": {"path": "t"},
                                                      "ood": [{"name": "o", "path": "o"}]}))
    result = invoke(["benchmark", "check", str(tmp_path / "broken.json"), "--root", str(tmp_path)])
    assert result.exit_code == 2 and "not ImageNet-1k wnids: n99999999" in result.stderr


HOSTILE = [
    ({"train": {"path": "../../etc"}}, "train.path '../../etc' leaves the data root"),
    ({"id": {"path": "/etc"}}, "id.path '/etc' leaves the data root"),
    ({"ood": [{"name": "o", "path": "ok/../../x"}]}, "ood[0].path 'ok/../../x' leaves the data root"),
    ({"train": {"path": "t", "shots": -1}}, "train.shots is -1, not a whole number from 1 to 10,000"),
    ({"train": {"path": "t", "shots": 1e12}}, "train.shots is 1000000000000.0, not a whole number"),
    ({"train": {"path": "t", "shots": "16"}}, "train.shots is '16', not a whole number"),
    ({"train": {"path": "t", "shots": True}}, "train.shots is True, not a whole number"),
    ({"seeds": list(range(100_000))}, "seeds is not a list of 1 to 100 seeds"),
    ({"seeds": [1, "2"]}, "seeds[1] is '2', not a whole number"),
    ({"ood": [{"name": "o", "path": "o", "images": -5}]}, "ood[0].images is -5"),
    ({"ood": [{"name": "o", "path": "o", "group": "middle"}]}, "ood[0].group is 'middle', not near or far"),
    ({"ood": [{"name": "o", "path": "a"}, {"name": "o", "path": "b"}]}, "ood names a set twice"),
]


@pytest.mark.parametrize(("change", "message"), HOSTILE)
def test_hostile_protocol_files_are_refused_as_protocol_errors(tmp_path, change, message):
    """#30 item 8: these used to surface as layout problems (or worse, as a walk of /etc); now the protocol file
    is refused before the root is looked at, with the field named."""
    spec = {"schema": 1, "name": "x", "classes": [imagenet_wnids()[0]], "id": {"path": "v"},
            "train": {"path": "t"}, "ood": [{"name": "o", "path": "o"}], **change}
    (tmp_path / "hostile.json").write_text(json.dumps(spec))
    result = invoke(["benchmark", "check", str(tmp_path / "hostile.json"), "--root", str(tmp_path)])
    assert result.exit_code == 2, result.stderr
    error = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
    assert f"hostile.json is not a valid benchmark protocol: {message}" in error, error
    assert "Hint: see the schema in docs/benchmarks.md" in result.stderr


# -- benchmark run ----------------------------------------------------------------------------------------------
def test_run_a_miniature_protocol_end_to_end_and_rerun_for_free(tmp_path, tiny_vit_dir):
    from sklearn.metrics import roc_auc_score

    from negprompt_cli.outputs.score_file import read_score_file

    protocol_file, root = miniature(tmp_path)
    for wnid in KNOWN:  # enough training images for 2 shots and val images that are not all alike
        _jpegs(root / "imagenet" / "train" / wnid, 3, start=10)
    spec = json.loads(protocol_file.read_text())
    backbone = f"local-dir:{tiny_vit_dir}"
    spec["published"] = [
        {"method": "MCM", "scorer": "mcm", "training": "zero-shot", "backbone": backbone, "pretrained": None,
         "source": "a test table", "fpr95": {"average": 12.5}, "auroc": {"average": 90.0}},
        {"method": "MCM", "scorer": "mcm", "training": "zero-shot", "backbone": backbone, "pretrained": "openai",
         "source": "other weights", "fpr95": {"average": 1.0}, "auroc": {"average": 99.0}}]
    protocol_file.write_text(json.dumps(spec))
    (tmp_path / "lexicon.txt").write_text("".join(f"thing{k}\n" for k in range(40)))  # 15 % -> 6 labels
    out = tmp_path / "run"
    args = ["benchmark", "run", str(protocol_file), "--root", str(root), "--out", str(out), "--backbone", backbone,
            "--seeds", "1,2", "--shots", "2", "--pos-epochs", "2", "--neg-epochs", "2", "--zero-shot-scorers",
            "mcm,neglabel", "--lexicon", str(tmp_path / "lexicon.txt"), "--json"]
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["row"] for r in report["rows"]] == ["negprompt/negprompt", "negprompt/mcm", "negprompt/energy",
                                                  "zero-shot/mcm", "zero-shot/neglabel"]
    assert report["ood_sets"] == ["unknown", "Textures"] and report["seeds"] == [1, 2]
    # each zero-shot row ran with its paper's ID prompts, and the report says which
    assert report["zero_shot_templates"] == {"mcm": ["a photo of a {}."], "neglabel": ["the nice {}"]}
    assert {f.name for f in out.iterdir()} >= {"report.json", "report.md", "report.html", "seed-1", "seed-2"}

    # every number from the score files, recomputed independently
    row = report["rows"][0]
    aurocs = []
    for seed in (1, 2):
        scores = out / f"seed-{seed}" / "scores" / "negprompt"
        id_scores = [r["score"] for r in read_score_file(scores / "ID.csv")]
        ood = [r["score"] for r in read_score_file(scores / "Textures.csv")]
        aurocs.append(roc_auc_score([1] * len(id_scores) + [0] * len(ood), id_scores + ood))
    assert row["sets"]["Textures"]["auroc"]["mean"] == pytest.approx(np.mean(aurocs), abs=1e-12)
    assert row["sets"]["Textures"]["auroc"]["std"] == pytest.approx(np.std(aurocs, ddof=1), abs=1e-12)
    assert 0.0 <= row["id_accuracy"]["mean"] <= 1.0 and report["rows"][3]["id_accuracy"]["mean"] is not None
    # the published numbers sit only beside the row with the same method and weights
    published = {r["row"]: [p["source"] for p in r["published"]] for r in report["rows"]}
    assert published == {"negprompt/negprompt": [], "negprompt/mcm": [], "negprompt/energy": [],
                         "zero-shot/mcm": ["a test table"], "zero-shot/neglabel": []}
    assert "12.50 / 90.00 (a test table)" in (out / "report.md").read_text()

    # a rerun trains and scores nothing: every artifact and score file is reused
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".csv", ".safetensors")}
    again = invoke(args)
    assert again.exit_code == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads(again.stdout)["rows"] == report["rows"]
    # ... but not with other weights or training settings in the same folder
    other = invoke([*args[:-1], "--neg-epochs", "3"])
    assert other.exit_code == 5 and f"Error: {out} holds a run with other negative" in other.stderr
    assert report["prompt"] == {"n_ctx": 16, "ctx_init": None, "csc": False, "suffix": ".",
                                "class_token_position": "end"}
    other = invoke([*args[:-1], "--n-ctx", "4"])
    assert other.exit_code == 5 and f"Error: {out} holds a run with other prompt" in other.stderr
    # nor with other negative labels: a lexicon edited under the same name included (its scores would be stale)
    assert json.loads((out / "run.json").read_text())["labels"]["lexicon"] is not None
    (tmp_path / "lexicon.txt").write_text("".join(f"thing{k}\n" for k in range(41)))
    other = invoke(args)
    assert other.exit_code == 5 and f"Error: {out} holds a run with other labels" in other.stderr
    # a list of negatives as given instead of mining (score --negatives), checked before anything runs
    (tmp_path / "negs.txt").write_text("spaceship\nvolcano\nlighthouse\n")
    listed = tmp_path / "listed"
    base = [*args[:5], "--backbone", backbone, "--scorers", "", "--zero-shot-scorers", "mcm,neglabel"]
    both = invoke([*base, "--out", str(listed), "--negatives", str(tmp_path / "negs.txt"), "--lexicon",
                   str(tmp_path / "lexicon.txt")])
    assert both.exit_code == 2 and "--negatives is the list of negative labels itself" in both.stderr
    unread = invoke([*base[:-1], "mcm", "--out", str(listed), "--negatives", str(tmp_path / "negs.txt")])
    assert unread.exit_code == 2 and "--negatives sets the negative labels, and no requested scorer" in unread.stderr
    missing = invoke([*base, "--out", str(listed), "--negatives", str(tmp_path / "absent.txt")])
    assert missing.exit_code == 3 and "Error: negative-label list not found: " in missing.stderr
    assert not listed.exists()
    run = invoke([*base, "--out", str(listed), "--negatives", str(tmp_path / "negs.txt"), "--json"])
    assert run.exit_code == 0, run.stderr
    assert json.loads((listed / "run.json").read_text())["labels"]["negatives"] is not None
    assert [r["row"] for r in json.loads(run.stdout)["rows"]] == ["zero-shot/mcm", "zero-shot/neglabel"]


def test_run_refuses_a_broken_layout_and_trains_open_vocabulary_negatives_on_the_fraction(tmp_path, tiny_vit_dir):
    from negprompt_cli.outputs.artifact import load_prompts

    protocol_file, root = miniature(tmp_path)
    (root / "dtd").rename(tmp_path / "elsewhere")
    backbone = f"local-dir:{tiny_vit_dir}"
    args = ["benchmark", "run", str(protocol_file), "--root", str(root), "--out", str(tmp_path / "run"),
            "--backbone", backbone, "--seeds", "1", "--shots", "2", "--pos-epochs", "1", "--neg-epochs", "1",
            "--zero-shot-scorers", "", "--scorers", "negprompt", "--ctx-init", "a photo of a", "--suffix", ""]
    broken = invoke(args)
    assert broken.exit_code == 2 and "1 problem(s) in the layout" in broken.stderr
    assert not (tmp_path / "run").exists()
    (tmp_path / "elsewhere").rename(root / "dtd")
    # a run that stops before producing anything leaves a folder that takes corrected settings
    bad = invoke([*args, "--ctx-init", "", "--n-ctx", "0"])
    assert bad.exit_code == 2 and "--n-ctx must be at least 1" in bad.stderr
    assert (tmp_path / "run" / "run.json").exists() and not list((tmp_path / "run").glob("seed-*/*"))
    spec = json.loads(protocol_file.read_text())
    spec["open_vocabulary"] = {"train_fraction": 0.34}
    protocol_file.write_text(json.dumps(spec))
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    artifact = load_prompts(tmp_path / "run" / "seed-1" / "neg.safetensors")
    assert len(artifact.training["train_classes"]) == 1 and len(artifact.class_names) == 3
    # the released code's prompt layout (--ctx-init 'a photo of a' --suffix ''): 4 context tokens, no full stop
    positive = load_prompts(tmp_path / "run" / "seed-1" / "pos.safetensors")
    assert (positive.prompt["n_ctx"], positive.prompt["ctx_init"], positive.prompt["suffix"]) == (4, "a photo of a", "")
    assert positive.tensors["ctx_pos"].shape[0] == 4


def shrink(name: str, tmp_path):
    """The shipped protocol ``name`` with its exact paths, groups and class lists cut to 2 classes and tiny
    counts, and a tree in that exact layout (flat val with the devkit's label files for the hard splits)."""
    shipped = load_protocol(name)
    spec = json.loads(shipped.file.read_text())
    known = list(shipped.wnids[:10 if shipped.open_vocabulary else 2])  # 10 % of 10 classes is one
    spec.update(name=f"mini-{name}", classes=known)
    spec["id"]["images_per_class"] = 1
    spec["train"]["shots"] = 1
    root = tmp_path / "root"
    labelled = [(w, 0) for w in known]
    for ood, shipped_ood in zip(spec["ood"], shipped.ood, strict=True):
        if "classes" in ood:
            ood["classes"] = list(shipped_ood.classes[:2])
            ood["images_per_class"] = 1
            labelled += [(w, 0) for w in ood["classes"]]
        else:
            ood["images"] = 2
            _jpegs(root / ood["path"] / "some_class", 2)
    for wnid in known:
        _jpegs(root / spec["train"]["path"] / wnid, 2, start=7)
    val = root / spec["id"]["path"]
    if name.startswith("imagenet1k-hard"):
        from scipy.io import savemat

        names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(labelled))]
        _jpegs(val, len(names), names=names)
        data = val.parent / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        ids = {w: 1000 - i for i, w in enumerate(WNIDS)}
        synsets = np.array([(ids[w], w) for w in WNIDS], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
        savemat(str(data / "meta.mat"), {"synsets": synsets})
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w, _ in labelled))
    else:
        for wnid, _ in labelled:
            _jpegs(val / wnid, 1, start=3)
    (tmp_path / "mini.json").write_text(json.dumps(spec))
    return tmp_path / "mini.json", root, shipped


@pytest.mark.parametrize("name", protocol_names())
def test_every_shipped_protocol_runs_end_to_end_on_a_miniature_tree(name, tmp_path, tiny_vit_dir):
    protocol_file, root, shipped = shrink(name, tmp_path)
    checked = invoke(["benchmark", "check", str(protocol_file), "--root", str(root)])
    assert checked.exit_code == 0, checked.stderr
    result = invoke(["benchmark", "run", str(protocol_file), "--root", str(root), "--out", str(tmp_path / "run"),
                     "--backbone", f"local-dir:{tiny_vit_dir}", "--seeds", "1", "--pos-epochs", "1",
                     "--neg-epochs", "1", "--scorers", "negprompt", "--zero-shot-scorers", "mcm", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ood_sets"] == [o.name for o in shipped.ood]
    assert report["open_vocabulary"] == shipped.open_vocabulary
    for row in report["rows"]:
        for name_ in report["ood_sets"]:
            assert 0.0 <= row["sets"][name_]["auroc"]["mean"] <= 1.0
        assert row["published"] == []  # the tiny model's weights match no published row


def test_ood_sets_from_an_image_list_are_checked_and_scored_as_listed(tmp_path, tiny_vit_dir):
    protocol_file, root, _ = shrink("imagenet1k-openood-v1.5", tmp_path)
    largescale = tmp_path / "images_largescale"
    _jpegs(largescale / "ssb_hard" / "n01", 3, start=40)
    _jpegs(largescale / "ssb_hard" / "n02", 1, start=50)  # on disk but not listed: not part of the set
    listing = tmp_path / "test_ssb_hard.txt"
    listing.write_text("ssb_hard/n01/00040.JPEG -1\nssb_hard/n01/00041.JPEG -1\nssb_hard/n01/00099.JPEG -1\n")
    lists = ["--imglist", f"SSB-hard={listing}", "--imglist-root", str(largescale)]
    checked = invoke(["benchmark", "check", str(protocol_file), "--root", str(root), *lists, "--json"])
    assert checked.exit_code == 2
    rows = {d["name"]: d for d in json.loads(checked.stdout)["datasets"]}
    assert rows["SSB-hard"]["problems"] == [f"1 listed image(s) missing: {largescale}/ssb_hard/n01/00099.JPEG"]
    listing.write_text("ssb_hard/n01/00040.JPEG -1\nssb_hard/n01/00041.JPEG -1\nssb_hard/n01/00042.JPEG -1\n")
    result = invoke(["benchmark", "run", str(protocol_file), "--root", str(root), "--out", str(tmp_path / "run"),
                     "--backbone", f"local-dir:{tiny_vit_dir}", "--seeds", "1", "--pos-epochs", "1", "--neg-epochs",
                     "1", "--scorers", "negprompt", "--zero-shot-scorers", "", *lists, "--json"])
    assert result.exit_code == 0, result.stderr
    scores = tmp_path / "run" / "seed-1" / "scores" / "negprompt" / "SSB-hard.csv"
    assert len(scores.read_text().splitlines()) == 1 + 3  # exactly the listed images
    wrong = invoke(["benchmark", "check", str(protocol_file), "--root", str(root), "--imglist", f"SSB={listing}"])
    assert wrong.exit_code == 2 and "Error: --imglist names 'SSB', which is not an OOD set of" in wrong.stderr


def test_run_checks_the_train_folders_against_its_own_shots(tmp_path, tiny_vit_dir):
    protocol_file, root = miniature(tmp_path)  # the protocol takes 2 shots; every train folder holds 3 images
    args = ["benchmark", "run", str(protocol_file), "--root", str(root), "--out", str(tmp_path / "run"),
            "--backbone", f"local-dir:{tiny_vit_dir}", "--seeds", "1", "--pos-epochs", "1", "--neg-epochs", "1",
            "--zero-shot-scorers", "", "--scorers", "mcm"]
    more = invoke([*args, "--shots", "4"])
    assert more.exit_code == 2 and "1 problem(s) in the layout" in more.stderr
    assert not (tmp_path / "run").exists()
    for image in sorted((root / "imagenet" / "train" / KNOWN[0]).iterdir())[1:]:
        image.unlink()  # 1 image: too few for the protocol's 2 shots, enough for --shots 1
    fewer = invoke([*args, "--shots", "1"])
    assert fewer.exit_code == 0, fewer.stderr
    assert invoke(args).exit_code == 2  # the protocol's 2 shots


def test_a_run_on_a_hub_hosted_backbone_uses_its_own_artifacts_without_asking_again(tmp_path, tiny_vit_dir, hub):
    """The user named hf-hub:lab/clip for the run: its fit and score stages trust it (artifacts from elsewhere that
    name a Hub backbone are refused, tests/test_untrusted_input.py)."""
    hub.store.create("lab/clip", {name: (tiny_vit_dir / name).read_bytes()
                                  for name in ("open_clip_config.json", "open_clip_model.safetensors")})
    protocol_file, root = miniature(tmp_path)
    for wnid in KNOWN:
        _jpegs(root / "imagenet" / "train" / wnid, 3, start=10)
    result = invoke(["benchmark", "run", str(protocol_file), "--root", str(root), "--out", str(tmp_path / "run"),
                     "--backbone", "hf-hub:lab/clip", "--seeds", "1", "--shots", "2", "--pos-epochs", "1",
                     "--neg-epochs", "1", "--scorers", "energy", "--zero-shot-scorers", "mcm", "--json"])
    assert result.exit_code == 0, result.stderr
    assert [r["row"] for r in json.loads(result.stdout)["rows"]] == ["negprompt/energy", "zero-shot/mcm"]
