"""fit-pos -> fit-neg -> transfer -> score -> report through the CLI, resume, and the bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import NEG_FAST, TEST_DEVICE, copy_tree, invoke, make_image_folder, pos_fast, train_positives

from negprompt_cli.composers.cli import app
from negprompt_cli.errors import UsageError
from negprompt_cli.features.image_features import EncodeOptions
from negprompt_cli.outputs.artifact import load_prompts
from negprompt_cli.presets import default_scorer
from negprompt_cli.scoring.thresholds import class_list_id

QUIET = EncodeOptions(quiet=True)

POS_FAST = pos_fast(20)


@pytest.fixture(scope="module")
def trained_world(tmp_path_factory, tiny_vit_dir):
    """The folders and their positive prompts, trained once for this module (its own feature cache)."""
    root = train_positives(tmp_path_factory.mktemp("world"), tiny_vit_dir, tmp_path_factory.mktemp("world-cache"),
                           POS_FAST, train=12, test=6)
    make_image_folder(root / "ood", classes=("blue_dots",), per_class=6, seed=2)
    (root / "new.txt").write_text("red stripes\ngreen bars\nblue dots\n")
    return root


@pytest.fixture
def world(trained_world, tmp_path):
    """Each test's own copy of the trained world (the test's feature cache starts empty)."""
    return copy_tree(trained_world, tmp_path)


def test_full_pipeline(world):
    neg = invoke(["fit-neg", "--data", str(world / "train"), "--pos", str(world / "pos.safetensors"),
                  "--out", str(world / "neg.safetensors"), *NEG_FAST, "--json"])
    assert neg.exit_code == 0, neg.stderr
    summary = json.loads(neg.stdout)
    assert summary["learner_options"]["loss_variant"] == "official" and summary["train_classes"] == 2
    assert summary["final_loss"]["loss"] < summary["initial_loss"]["loss"]
    artifact = load_prompts(world / "neg.safetensors", kind="negative")
    assert artifact.tensors["ctx_neg"].shape == (2, 4, 32)
    assert artifact.tensors["text_neg"].shape == (2, 2, 32)
    threshold = artifact.extra["threshold"]
    assert threshold["source"] == "training" and threshold["id_kept"] == 0.95
    # calibrated for the scorer `score` uses by default on fit-neg prompts on this (not toy) backbone: Eq. 3,
    # after the NegPrompt paper's Table 2; the record says which evidence chose it
    assert threshold["classes"] == class_list_id(["green bars", "red stripes"])
    assert threshold["scorer"] == default_scorer(True, backbone="local-dir:x") == "negprompt"
    assert threshold["chosen_by"].startswith("the NegPrompt paper's Table 2")

    # a new class list: the 2-class threshold does not carry over, and nothing is decided without one
    tr = invoke(["transfer", "--prompts", str(world / "neg.safetensors"), "--names", str(world / "new.txt"),
                 "--out", str(world / "tr.safetensors")])
    assert tr.exit_code == 0, tr.stderr
    assert "does not carry over (it was calibrated for 2 classes, not these 3)" in tr.stderr
    transferred = load_prompts(world / "tr.safetensors")
    assert transferred.class_names == ["red stripes", "green bars", "blue dots"]
    assert "threshold" not in transferred.extra
    assert transferred.extra["transfer"]["source_threshold"] == threshold

    ident = invoke(["score", str(world / "test"), "--prompts", str(world / "tr.safetensors"), "--labeled",
                    "--out", str(world / "id.csv")])
    assert ident.exit_code == 0, ident.stderr
    ood = invoke(["score", str(world / "ood"), "--prompts", str(world / "tr.safetensors"), "--format", "jsonl"])
    assert ood.exit_code == 0, ood.stderr
    rows = [json.loads(line) for line in ood.stdout.splitlines()]  # stdout is pure JSONL
    assert len(rows) == 6 and all(r["scorer"] == default_scorer(True, backbone="local-dir:x") for r in rows)
    # no decision, and one warning saying how to get one (docs/method.md)
    assert all(r["ood"] is None for r in rows) and " ".join(ood.stderr.split()).count("carry no OOD decision") == 1
    # ... while the original class list keeps its stored threshold
    same = invoke(["score", str(world / "ood"), "--prompts", str(world / "neg.safetensors"), "--format", "jsonl"])
    same_rows = [json.loads(line) for line in same.stdout.splitlines()]
    assert all(r["ood"] == (r["score"] < threshold["value"]) for r in same_rows)
    (world / "ood.jsonl").write_text(ood.stdout)

    report = invoke(["report", "--id", str(world / "id.csv"), "--ood", f"blue={world / 'ood.jsonl'}",
                     "--out", str(world / "report"), "--json"])
    assert report.exit_code == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["fpr_convention"] == "id-positive"
    for key in ("auroc", "fpr", "aupr_in", "aupr_out", "threshold"):
        assert math.isfinite(data["ood"]["blue"][key])
    assert set(data["average"]) == {"auroc", "fpr", "aupr_in", "aupr_out"}
    assert 0.0 <= data["id"]["accuracy"] <= 1.0 and data["id"]["n"] == 12
    assert set(data["similarity"]) == {"id", "blue"}
    for name in ("report.html", "report.md", "report.json", "roc.png", "histogram.png", "similarity.png"):
        assert (world / "report" / name).stat().st_size > 0
    assert "AUROC" in report.stderr and "id-positive" in report.stderr


def test_transfer_equals_direct_encoding(world, tiny_vit_dir):
    invoke(["fit-neg", "--data", str(world / "train"), "--pos", str(world / "pos.safetensors"),
            "--out", str(world / "neg.safetensors"), *NEG_FAST])
    result = invoke(["transfer", "--prompts", str(world / "neg.safetensors"), "--names", str(world / "new.txt"),
                     "--out", str(world / "tr.safetensors")])
    assert result.exit_code == 0, result.stderr
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder

    q = load_prompts(world / "tr.safetensors")
    encoder = SoftPromptTextEncoder(load_backbone(BackboneRequest(f"local-dir:{tiny_vit_dir}", device=TEST_DEVICE)))
    prompts = encoder.tokenize(["red stripes", "green bars", "blue dots"], 4, ".")
    with torch.no_grad():
        pos = encoder.encode(q.tensors["ctx_pos"], prompts, truncate=False)
        neg = torch.stack([encoder.encode(q.tensors["ctx_neg"][k], prompts, truncate=False) for k in range(2)], 1)
    torch.testing.assert_close(q.tensors["text_pos"], pos, atol=1e-6, rtol=0)
    torch.testing.assert_close(q.tensors["text_neg"], neg, atol=1e-6, rtol=0)


def test_one_command_open_vocabulary_and_paper_variant(tmp_path, tiny_vit_dir):
    train = make_image_folder(tmp_path / "train", classes=("red_stripes", "green_bars", "blue_dots"), per_class=6)
    out = tmp_path / "neg.safetensors"
    result = invoke(["fit-neg", "--data", str(train), "--out", str(out), "--backbone", f"local-dir:{tiny_vit_dir}",
                     "--train-fraction", "0.34", "--loss-variant", "paper", "--n-neg", "3", "--pos-epochs", "2",
                     "--pos-optimizer", "adamw", "--pos-lr", "0.01", "--n-ctx", "4", *NEG_FAST, "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["train_classes"] == 1 and summary["classes"] == 3
    assert (tmp_path / "neg.pos.safetensors").exists()  # the positive stage's artifact is kept
    artifact = load_prompts(out)
    assert artifact.training["train_classes"] == ["blue dots"]
    assert artifact.training["learner_options"]["loss_variant"] == "paper"
    assert artifact.tensors["text_neg"].shape == (3, 3, 32)  # features for every ID class, not just trained ones


def test_interrupt_and_resume_match_an_uninterrupted_run(world, monkeypatch):
    base = ["fit-neg", "--data", str(world / "train"), "--pos", str(world / "pos.safetensors"), *NEG_FAST,
            "--epochs", "5"]
    assert invoke([*base, "--out", str(world / "full.safetensors")]).exit_code == 0

    import negprompt_cli.training.loop as training

    original = training.cosine_with_warmup
    calls = {"n": 0}

    def interrupt_in_epoch_three(epoch, **kwargs):
        if epoch == 2 and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt
        return original(epoch, **kwargs)

    monkeypatch.setattr(training, "cosine_with_warmup", interrupt_in_epoch_three)
    out = world / "resumed.safetensors"
    first = invoke([*base, "--out", str(out)])
    assert first.exit_code == 130 and not out.exists()
    assert (world / "resumed.safetensors.ckpt").exists() and "after epoch 2" in first.stderr
    second = invoke([*base, "--out", str(out), "--resume"])
    assert second.exit_code == 0, second.stderr
    assert not (world / "resumed.safetensors.ckpt").exists()
    full, resumed = load_prompts(world / "full.safetensors"), load_prompts(out)
    assert torch.equal(full.tensors["ctx_neg"], resumed.tensors["ctx_neg"])
    assert full.training["history"] == resumed.training["history"]
    # a checkpoint from other settings is refused
    monkeypatch.setattr(training, "cosine_with_warmup", interrupt_in_epoch_three)
    calls["n"] = 0
    assert invoke([*base, "--out", str(out)]).exit_code == 130
    other = invoke([*base, "--out", str(out), "--resume", "--lr", "0.07"])
    assert other.exit_code == 2 and "other settings" in other.stderr


def test_out_of_memory_keeps_the_checkpoint_and_names_the_remedies(world, monkeypatch):
    """A device OOM mid-training: one line naming --text-chunk and --batch-size, exit 1, epochs kept, and
    --resume with a smaller chunk ends exactly where an uninterrupted run does."""
    base = ["fit-neg", "--data", str(world / "train"), "--pos", str(world / "pos.safetensors"), *NEG_FAST,
            "--epochs", "4"]
    assert invoke([*base, "--out", str(world / "full.safetensors")]).exit_code == 0
    import negprompt_cli.training.loop as training

    original, calls = training.cosine_with_warmup, {"n": 0}

    def oom_in_epoch_three(epoch, **kwargs):
        if epoch == 2 and calls["n"] == 0:
            calls["n"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(epoch, **kwargs)

    monkeypatch.setattr(training, "cosine_with_warmup", oom_in_epoch_three)
    out = world / "oom.safetensors"
    first = invoke([*base, "--out", str(out)])
    assert first.exit_code == 1 and not out.exists()
    lines = first.stderr.strip().splitlines()
    assert lines[-2].startswith("Error: out of CPU memory in epoch 3") and "oom.safetensors.ckpt" in lines[-2]
    assert "--text-chunk" in lines[-1] and "--batch-size" in lines[-1]
    second = invoke([*base, "--out", str(out), "--resume", "--text-chunk", "1"])
    assert second.exit_code == 0, second.stderr
    full, resumed = load_prompts(world / "full.safetensors"), load_prompts(out)
    torch.testing.assert_close(full.tensors["ctx_neg"], resumed.tensors["ctx_neg"], atol=1e-6, rtol=0)


def test_bad_inputs(world, tmp_path, tiny_rn_dir):
    pos = str(world / "pos.safetensors")
    neg_out = str(world / "neg.safetensors")
    assert invoke(["fit-neg", "--data", str(world / "train"), "--pos", pos, "--out", neg_out, *NEG_FAST]).exit_code == 0

    def error(args, code, text):
        result = invoke(args)
        assert result.exit_code == code, result.stderr
        first_error = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
        assert text in first_error, result.stderr
        return result

    # fit-pos artifact from another backbone than requested
    error(["fit-neg", "--data", str(world / "train"), "--pos", pos, "--out", str(tmp_path / "x.safetensors"),
           "--backbone", f"local-dir:{tiny_rn_dir}"], 5, "was trained on")
    # a fit-neg artifact where a fit-pos one is expected, and a fit-pos one where negatives are needed
    error(["fit-neg", "--data", str(world / "train"), "--pos", neg_out, "--out", str(tmp_path / "x.safetensors")],
          5, "expected a fit-pos artifact")
    error(["score", str(world / "test"), "--prompts", pos, "--scorer", "negprompt"], 5, "needs negative prompts")
    # names files
    (tmp_path / "empty.txt").write_text("")
    error(["transfer", "--prompts", neg_out, "--names", str(tmp_path / "empty.txt"), "--out",
           str(tmp_path / "t.safetensors")], 2, "is empty")
    error(["fit-neg", "--data", str(world / "train"), "--pos", pos, "--out", str(tmp_path / "x.safetensors"),
           "--train-fraction", "0.1"], 2, "is zero classes")
    # images dir with no images
    (tmp_path / "noimages").mkdir()
    (tmp_path / "noimages" / "a.txt").write_text("x")
    error(["score", str(tmp_path / "noimages"), "--prompts", neg_out], 2, "no images found")
    # score files that disagree, and reports missing a side
    invoke(["score", str(world / "test"), "--prompts", neg_out, "--out", str(tmp_path / "id.csv")])
    invoke(["score", str(world / "ood"), "--prompts", neg_out, "--scorer", "mcm", "--out", str(tmp_path / "o.csv")])
    error(["report", "--id", str(tmp_path / "id.csv"), "--ood", f"o={tmp_path / 'o.csv'}"], 2,
          "score files disagree")
    error(["report", "--id", str(tmp_path / "id.csv")], 2, "at least one OOD score file")
    error(["report", "--ood", f"o={tmp_path / 'o.csv'}"], 2, "needs the ID scores")
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    error(["report", "--id", str(tmp_path / "id.csv"), "--ood", f"j={tmp_path / 'junk.csv'}"], 2,
          "not a negprompt score file")
    # the ID file given as an OOD set: the numbers are computed, with a warning naming the overlap
    same = invoke(["report", "--id", str(tmp_path / "id.csv"), "--ood", f"same={tmp_path / 'id.csv'}", "--json"])
    assert same.exit_code == 0, same.stderr
    n = json.loads(same.stdout)["id"]["n"]
    assert f"OOD set 'same' shares {n} of its {n} image(s) with the ID set" in same.stderr
    assert json.loads(same.stdout)["ood"]["same"]["auroc"] == pytest.approx(0.5)
    # nothing half-written anywhere
    assert not (tmp_path / "t.safetensors").exists() and not (tmp_path / "x.safetensors").exists()


def test_score_checks_a_named_backbone(world, tiny_vit_dir, tiny_rn_dir):
    neg = str(world / "neg.safetensors")
    invoke(["fit-neg", "--data", str(world / "train"), "--pos", str(world / "pos.safetensors"), "--out", neg,
            *NEG_FAST])
    same = invoke(["score", str(world / "test"), "--prompts", neg, "--backbone", f"local-dir:{tiny_vit_dir}"])
    assert same.exit_code == 0, same.stderr
    other = invoke(["score", str(world / "test"), "--prompts", neg, "--backbone", f"local-dir:{tiny_rn_dir}"])
    assert other.exit_code == 5 and "was trained on" in other.stderr


def test_zero_shot_scoring_and_scorer_plugins(world, tiny_vit_dir):
    (world / "names.txt").write_text("red stripes\ngreen bars\n")
    for scorer in ("mcm", "energy", "maxlogit", "msp"):
        result = invoke(["score", str(world / "test"), "--zero-shot", "--names", str(world / "names.txt"),
                         "--backbone", f"local-dir:{tiny_vit_dir}", "--scorer", scorer, "--format", "jsonl"])
        assert result.exit_code == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(rows) == 12 and all(r["ood"] is None and r["scorer"] == scorer for r in rows)
    unknown = invoke(["score", str(world / "test"), "--zero-shot", "--names", str(world / "names.txt"),
                      "--backbone", f"local-dir:{tiny_vit_dir}", "--scorer", "mcn"])
    assert unknown.exit_code == 2 and "did you mean mcm" in unknown.stderr


def test_score_output_file_is_atomic_and_reuses_cache(world):
    from negprompt_cli.stages.score import ScoreOptions, score

    neg_out = world / "neg.safetensors"
    invoke(["fit-neg", "--data", str(world / "train"), "--pos", str(world / "pos.safetensors"), "--out",
            str(neg_out), *NEG_FAST])
    out_dir = world / "scores"
    out_dir.mkdir()
    first = invoke(["score", str(world / "test"), "--prompts", str(neg_out), "--out", str(out_dir / "s.csv")])
    assert first.exit_code == 0
    lines = (out_dir / "s.csv").read_text().splitlines()
    assert lines[0].startswith("path,score,prediction") and len(lines) == 13
    assert [p.name for p in out_dir.iterdir()] == ["s.csv"]  # no temporary files left behind
    again = score(ScoreOptions(images=world / "test", prompts=neg_out, out=out_dir / "t.csv", encode=QUIET))
    assert again["encoded"] == 0 and again["cached"] == 12
    assert (out_dir / "t.csv").read_text() == (out_dir / "s.csv").read_text()


def test_validation_selects_and_calibrates(world):
    out = world / "neg.safetensors"
    result = invoke(["fit-neg", "--data", str(world / "train"), "--pos", str(world / "pos.safetensors"),
                     "--out", str(out), "--shots", "8", "--val-fraction", "0.25", *NEG_FAST, "--json"])
    assert result.exit_code == 0, result.stderr
    artifact = load_prompts(out)
    assert artifact.training["selection"] == "best-val_neg_loss"
    history = artifact.training["history"]
    best = max(range(len(history)), key=lambda i: history[i]["val_neg_loss"])
    assert artifact.training["selected_epoch"] == best + 1
    assert artifact.extra["threshold"]["source"] == "validation" and artifact.extra["threshold"]["n_images"] == 6


def test_fit_neg_help_quotes_the_learner_and_preset_defaults():
    """The CLI declares its options unset; where --help quotes a default, it is the learner's or the preset's."""
    import typer.main

    from negprompt_cli.presets import NEGATIVE_OPTIM, POSITIVE_OPTIM
    from negprompt_cli.registry import get_host

    params = {p.name: p.help or "" for p in typer.main.get_command(app).commands["fit-neg"].params}
    learner = get_host().learner("negprompt").Options()
    assert f"paper: {learner.n_neg}, the default" in params["n_neg"]
    assert f"default {learner.beta})" in params["beta"] and f"default {learner.gamma})" in params["gamma"]
    assert float(params["init_noise"].split("default ")[1].rstrip(").")) == learner.init_noise
    assert f"{learner.loss_variant} (released code, default)" in params["loss_variant"]
    assert params["epochs"] == f"Default: {NEGATIVE_OPTIM.epochs}." and params["lr"] == f"Default: {NEGATIVE_OPTIM.lr}."
    assert f"Default: {POSITIVE_OPTIM.epochs}." in params["pos_epochs"]
    fit_pos = {p.name: p.help or "" for p in typer.main.get_command(app).commands["fit-pos"].params}
    assert fit_pos["epochs"] == f"Default: {POSITIVE_OPTIM.epochs}."
    assert fit_pos["lr"] == f"Default: {POSITIVE_OPTIM.lr}."


def test_score_takes_several_images_and_folders_in_order(world):
    pos = str(world / "pos.safetensors")

    def rows(*inputs, extra=()):
        result = invoke(["score", *map(str, inputs), "--prompts", pos, "--format", "jsonl", *extra])
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()], result.stderr

    test, _ = rows(world / "test", extra=["--labeled"])
    ood, _ = rows(world / "ood")
    one_file = sorted((world / "ood" / "blue_dots").iterdir())[0]
    both, stderr = rows(world / "test", world / "ood", one_file, extra=["--labeled"])
    assert "1 image(s) were given more than once; each is read once" in stderr
    assert [r["path"] for r in both] == [r["path"] for r in test + ood]  # the file is already in ood/: once
    # float32 matmuls over a different number of rows: equal to rounding
    assert [r["score"] for r in both] == pytest.approx([r["score"] for r in test + ood], rel=1e-5)
    # --labeled: the class is the first folder below the input each image came from
    assert [r["label"] for r in both[:len(test)]] == [r["label"] for r in test]
    assert {r["label_folder"] for r in both[len(test):]} == {"blue_dots"}
    assert {r["label"] for r in both[len(test):]} == {None}  # not a trained class: no class name
    assert {r["label_index"] for r in both[len(test):]} == {-1}
    # a file first: its position is kept
    first, _ = rows(one_file, world / "test")
    assert first[0]["path"] == str(one_file) and len(first) == 1 + len(test)
    # one missing input fails before any work, naming it
    missing = invoke(["score", str(world / "test"), str(world / "nope"), "--prompts", pos,
                      "--out", str(world / "x.csv")])
    assert missing.exit_code == 3 and f"not found: {world / 'nope'}" in missing.stderr
    assert not (world / "x.csv").exists()


def test_score_api_takes_a_list_of_inputs(world):
    from negprompt_cli.scoring.thresholds import ThresholdWarning
    from negprompt_cli.stages.score import ScoreOptions, score

    with pytest.warns(ThresholdWarning, match="these prompts carry no ID threshold"):  # fit-pos prompts
        one = score(ScoreOptions(images=world / "test", prompts=world / "pos.safetensors", encode=QUIET))
        many = score(ScoreOptions(images=[world / "test", world / "ood"], prompts=world / "pos.safetensors",
                                  encode=QUIET))
    assert many["images"] == one["images"] + 6
    head = many["rows"][: one["images"]]
    assert [r["path"] for r in head] == [r["path"] for r in one["rows"]]
    assert [r["score"] for r in head] == pytest.approx([r["score"] for r in one["rows"]], rel=1e-5)
    with pytest.raises(UsageError, match="no images given"):
        score(ScoreOptions(images=[], prompts=world / "pos.safetensors", encode=QUIET))


def test_cache_build_takes_several_inputs_and_score_then_encodes_nothing(world, tiny_vit_dir):
    cache = world / "fresh-cache"
    built = invoke(["cache", "build", str(world / "test"), str(world / "ood"), "--backbone",
                    f"local-dir:{tiny_vit_dir}", "--cache-dir", str(cache), "--json"])
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["images"] == 12 + 6
    scored = invoke(["score", str(world / "test"), str(world / "ood"), "--prompts", str(world / "pos.safetensors"),
                     "--cache-dir", str(cache), "--out", str(world / "all.csv"), "--json"])
    assert scored.exit_code == 0, scored.stderr
    summary = json.loads(scored.stdout)
    assert summary["images"] == 18 and summary["encoded"] == 0 and summary["cached"] == 18
