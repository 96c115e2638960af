"""A new user's first hour (issue #22): fit-neg keeps the class names of its positive prompts, names files are
checked, and the scorer that runs says whether it uses the negative prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import NEG_FAST, error_line, invoke, make_image_folder, pos_fast

from negprompt_cli.errors import UsageError
from negprompt_cli.inputs.image_folders import load_image_folder, read_names_file
from negprompt_cli.outputs.artifact import load_prompts

POS_FAST = pos_fast(2)
CLASSES = ("red_stripes", "green_bars", "blue_dots")


@pytest.fixture
def wnid_data(tmp_path):
    """ImageNet-style folders (wnids) named by a names file, and fit-pos prompts trained with those names."""
    root = make_image_folder(tmp_path / "src", classes=CLASSES, per_class=4)
    data = tmp_path / "train"
    data.mkdir()
    for i, cls in enumerate(sorted(CLASSES)):  # n00000000 ... in the sorted order of the names below
        (root / cls).rename(data / f"n{i:08d}")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{c.replace('_', ' ')}\n" for c in sorted(CLASSES)))
    backbone = ["--backbone", "toy"]  # the world's evidence chooses its default scorer (energy): the note's case
    pos = invoke(["fit-pos", "--data", str(data), "--classes", str(names), "--out", str(tmp_path / "pos.safetensors"),
                  *backbone, *POS_FAST])
    assert pos.exit_code == 0, pos.stderr
    return tmp_path, data, names


def test_fit_neg_takes_the_class_names_stored_in_its_positive_prompts(wnid_data):
    root, data, names = wnid_data
    pos = root / "pos.safetensors"
    without = invoke(["fit-neg", "--data", str(data), "--pos", str(pos), "--out", str(root / "a.safetensors"),
                      *NEG_FAST, "--json"])
    assert without.exit_code == 0, without.stderr
    given = invoke(["fit-neg", "--data", str(data), "--pos", str(pos), "--classes", str(names), "--out",
                    str(root / "b.safetensors"), *NEG_FAST, "--json"])
    assert given.exit_code == 0, given.stderr
    a, b = load_prompts(root / "a.safetensors"), load_prompts(root / "b.safetensors")
    assert a.class_names == b.class_names == load_prompts(pos).class_names == ["blue dots", "green bars",
                                                                               "red stripes"]
    assert json.loads(without.stdout)["threshold"]["value"] == json.loads(given.stdout)["threshold"]["value"]


def test_fit_neg_refuses_a_classes_file_that_contradicts_its_positive_prompts(wnid_data):
    root, data, _ = wnid_data
    other = root / "other.txt"
    other.write_text("blue dots\ngreen bars\nred squares\n")
    result = invoke(["fit-neg", "--data", str(data), "--pos", str(root / "pos.safetensors"), "--classes", str(other),
                     "--out", str(root / "c.safetensors"), *NEG_FAST])
    assert result.exit_code == 2
    assert error_line(result) == (f"Error: --classes {other} names folder 'n00000002' 'red squares', but the positive "
                                  f"prompts {root / 'pos.safetensors'} were trained with 'red stripes'")
    assert "drop --classes" in result.stderr and not (root / "c.safetensors").exists()


def test_fit_neg_refuses_data_folders_its_positives_never_saw_unless_they_are_named(wnid_data):
    root, data, _ = wnid_data
    (data / "n00000009").mkdir()
    (data / "n00000000" / "000.png").rename(data / "n00000009" / "000.png")
    result = invoke(["fit-neg", "--data", str(data), "--pos", str(root / "pos.safetensors"), "--out",
                     str(root / "d.safetensors"), *NEG_FAST])
    assert result.exit_code == 2
    assert "has class folder(s) the positive prompts" in error_line(result) and "n00000009" in error_line(result)


# -- names files ----------------------------------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path) -> Path:
    for name in ("cat", "dog", "red_fox"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "x.png").write_bytes(b"")
    return tmp_path / "data"


def names(tmp_path, content: bytes, name: str = "names.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_a_names_file_in_another_order_than_the_folders_is_refused(tmp_path, folders):
    path = names(tmp_path, b"dog\ncat\nred fox\n")
    with pytest.raises(UsageError) as caught:
        load_image_folder(folders, path)
    assert str(caught.value) == f"{path}:1: 'dog' is the name of folder 'dog', but line 1 names folder 'cat' " \
                                "(sorted-folder order)"
    shuffled = names(tmp_path, b"Cat\nRed-Fox\ndog\n")  # case and separators do not hide it
    with pytest.raises(UsageError, match="'Red-Fox' is the name of folder 'red_fox'"):
        load_image_folder(folders, shuffled)
    fine = names(tmp_path, b"cat\ndog\nfox\n")  # own names for the folders are fine
    assert load_image_folder(folders, fine).class_names == ["cat", "dog", "fox"]


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path, folders):
    path = names(tmp_path, "\ufeffcat\r\ndog\r\nred fox\r\n".encode())
    assert read_names_file(path) == ["cat", "dog", "red fox"]
    assert load_image_folder(folders, path).class_names == ["cat", "dog", "red fox"]


def test_names_files_that_are_not_utf8_or_hold_control_characters_are_one_line_errors(tmp_path):
    latin1 = names(tmp_path, "café\nthé\n".encode("latin-1"), "latin1.txt")
    with pytest.raises(UsageError) as caught:
        read_names_file(latin1)
    assert str(caught.value) == f"{latin1} is not UTF-8 text (byte 3: b'\\xe9')"
    for bad, code in (("a\x1b[31mb\nc\n", "001B"), ("a\x00\nb\n", "0000"), ("one\u2028two\n", "2028")):
        path = names(tmp_path, bad.encode())
        with pytest.raises(UsageError, match=f"{path}:1: control character U\\+{code}"):
            read_names_file(path)
    images = make_image_folder(tmp_path / "images", classes=("red_stripes",), per_class=1)
    result = invoke(["score", str(images), "--zero-shot", "--names", str(latin1), "--backbone", "toy"])
    assert result.exit_code == 2 and error_line(result) == f"Error: {latin1} is not UTF-8 text (byte 3: b'\\xe9')"


def test_only_newlines_separate_names(tmp_path):
    # U+0085, form feed and the like are split points of str.splitlines, not of a names file: refused, not split
    path = names(tmp_path, b"one\x0ctwo\nthree\n")
    with pytest.raises(UsageError, match="control character U\\+000C"):
        read_names_file(path)
    plain = names(tmp_path, "São Paulo\nZürich\n".encode())
    assert read_names_file(plain) == ["São Paulo", "Zürich"]


# -- which scorer runs, and whether it reads the negative prompts ---------------------------------------------
def test_fit_neg_and_score_say_that_the_default_scorer_does_not_use_the_negative_prompts(wnid_data):
    root, data, _ = wnid_data
    neg = root / "neg.safetensors"
    fit = invoke(["fit-neg", "--data", str(data), "--pos", str(root / "pos.safetensors"), "--out", str(neg),
                  *NEG_FAST, "--json"])
    assert fit.exit_code == 0, fit.stderr
    assert json.loads(fit.stdout)["scorer_uses_negative_prompts"] is False
    from negprompt_cli.presets import NEGATIVES_EVIDENCE  # the stored validation result (checked below)

    fpr = NEGATIVES_EVIDENCE["default"][1]
    note = "Note: energy, the default scorer for these prompts, does not use the negative prompts: on validation " \
           f"energy on the positive prompts (mean FPR95 {fpr}) beat every scorer that uses them"
    assert note in " ".join(fit.stderr.split())
    scored = {}
    for scorer in (None, "negprompt", "mcm"):
        out = root / f"{scorer}.csv"
        result = invoke(["score", str(data), "--prompts", str(neg), "--out", str(out), "--json",
                         *(["--scorer", scorer] if scorer else [])])
        assert result.exit_code == 0, result.stderr
        scored[scorer] = (json.loads(result.stdout), " ".join(result.stderr.split()))
    summary, stderr = scored[None]
    assert summary["scorer"] == "energy" and summary["scorer_source"] == "stored threshold"
    assert summary["negative_prompts"] == {"per_class": 2, "used": False}
    assert "Note:" not in stderr  # fit-neg said it for these prompts and this scorer: once (#36 item 5)
    fresh = invoke(["score", str(data), "--prompts", str(neg), "--out", str(root / "again.csv"), "--cache-dir",
                    str(root / "another-cache")])  # remembered per feature cache
    stderr = " ".join(fresh.stderr.split())
    assert note in stderr and "--scorer negprompt+csp or --scorer negprompt uses them" in stderr
    quiet = invoke(["score", str(data), "--prompts", str(neg), "--out", str(root / "q.csv"), "--cache-dir",
                    str(root / "a-third-cache"), "--quiet"])
    assert "Note:" not in quiet.stderr
    summary, stderr = scored["negprompt"]
    assert summary["negative_prompts"]["used"] is True and "Note:" not in stderr
    summary, stderr = scored["mcm"]
    assert summary["scorer_source"] == "--scorer" and summary["negative_prompts"]["used"] is False
    assert "Note: the mcm scorer does not use the negative prompts" in stderr
    positive_only = invoke(["score", str(data), "--prompts", str(root / "pos.safetensors"), "--out",
                            str(root / "p.csv"), "--json"])
    assert json.loads(positive_only.stdout)["negative_prompts"] is None and "Note:" not in positive_only.stderr


def test_the_stated_evidence_is_the_stored_validation_result():
    from negprompt_cli.presets import DEFAULT_SCORERS, NEGATIVES_EVIDENCE

    quality = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "quality.json").read_text())
    best = {method: min(r["criterion"] for r in rows) for method, rows in quality["validation"].items()}
    official = {m: best[m] for m, spec in quality["methods"].items()
                if spec["positives"] == "negprompt-official" and not spec["adaptive"]}
    winner = min(official, key=official.get)
    assert quality["methods"][winner]["scorer"] == NEGATIVES_EVIDENCE["best_using_negatives"][0]
    assert round(100 * official[winner], 1) == NEGATIVES_EVIDENCE["best_using_negatives"][1]
    assert round(100 * best["CoOp + energy"], 1) == NEGATIVES_EVIDENCE["default"][1]
    assert round(100 * best["NegPrompt (official)"], 1) == NEGATIVES_EVIDENCE["paper"][1]
    assert DEFAULT_SCORERS["negatives"] == NEGATIVES_EVIDENCE["default"][0]
    assert NEGATIVES_EVIDENCE["default"][1] < NEGATIVES_EVIDENCE["best_using_negatives"][1]  # still the better one


# -- information commands print their results on stdout -------------------------------------------------------
def test_information_commands_write_their_human_readable_result_to_stdout(wnid_data):
    root, _, _ = wnid_data
    for args, expected in ((["env"], "packages: "), (["plugins"], "openclip"), (["benchmark", "list"],
                                                                              "imagenet1k-mcm: "),
                           (["inspect", str(root / "pos.safetensors")], "positive prompts (fit-pos, learner coop)")):
        result = invoke(args)
        assert result.exit_code == 0, (args, result.stderr)
        assert expected in result.stdout and result.stderr == "", args


def test_inspect_says_what_a_user_asks_of_a_prompts_file(wnid_data):
    root, data, _ = wnid_data
    neg = root / "neg.safetensors"
    assert invoke(["fit-neg", "--data", str(data), "--pos", str(root / "pos.safetensors"), "--out", str(neg),
                   *NEG_FAST]).exit_code == 0
    text = invoke(["inspect", str(neg)]).stdout
    assert f"{neg}: negative prompts (fit-neg, learner negprompt), schema 1" in text
    assert "4 context tokens, shared, suffix '.', 2 negative prompt(s) per class" in text
    assert "classes:   3 (blue dots, green bars, red stripes)" in text
    assert "threshold: " in text and "for the energy scorer (keeps " in text and "training images" in text
    assert "no guarantee for new images" in text  # calibrated on the images the prompts were fitted on
    assert "None" not in text and "{" not in text  # no Python reprs


# -- progress in a log file -----------------------------------------------------------------------------------
def test_without_a_terminal_progress_is_plain_lines_every_n_seconds(tmp_path, tiny_vit_dir, monkeypatch):
    data = make_image_folder(tmp_path / "train", classes=CLASSES[:2], per_class=4)
    args = ["fit-pos", "--data", str(data), "--out", str(tmp_path / "p.safetensors"), "--backbone",
            f"local-dir:{tiny_vit_dir}", *POS_FAST]
    monkeypatch.setenv("NEGPROMPT_PROGRESS_SECONDS", "0")
    logged = invoke(args)
    assert logged.exit_code == 0, logged.stderr
    lines = [line for line in logged.stderr.splitlines() if line.startswith("Training positive prompts: ")]
    assert lines, logged.stderr
    assert lines[0].startswith("Training positive prompts: 1/2 (50%), epoch 1/2 loss ")
    assert "elapsed, ETA " in lines[0] and lines[-1].startswith("Training positive prompts: 2/2 (100%)")
    assert any(line.startswith("Encoding training images: ") for line in logged.stderr.splitlines())
    monkeypatch.setenv("NEGPROMPT_PROGRESS_SECONDS", "3600")  # a short run in a log: no progress lines at all
    quiet = invoke([*args[:4], str(tmp_path / "q.safetensors"), *args[5:]])
    assert quiet.exit_code == 0 and "Training positive prompts:" not in quiet.stderr
    monkeypatch.setenv("NEGPROMPT_PROGRESS_SECONDS", "0")
    hushed = invoke([*args[:4], str(tmp_path / "r.safetensors"), *args[5:], "--quiet"])
    assert hushed.exit_code == 0 and "Training positive prompts:" not in hushed.stderr


def test_augmented_views_cached_ahead_are_the_ones_fit_reads_by_default(tmp_path, tiny_vit_dir):
    data = make_image_folder(tmp_path / "train", classes=CLASSES[:2], per_class=3)
    backbone = ["--backbone", f"local-dir:{tiny_vit_dir}"]
    built = invoke(["cache", "build", str(data), *backbone, "--aug-views", "2", "--json"])
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["views"] == ["eval", "aug0-s1-p4", "aug1-s1-p4"]
    fit = invoke(["fit-pos", "--data", str(data), "--out", str(tmp_path / "p.safetensors"), *backbone, *POS_FAST,
                  "--aug-views", "2", "--json"])
    assert fit.exit_code == 0, fit.stderr
    assert json.loads(fit.stdout)["images_encoded"] == 0  # every view came from the cache


def test_resized_crop_views_are_cached_ahead_read_by_fit_and_recorded(tmp_path, tiny_vit_dir):
    """--augment resized-crop (CoOp's and LoCoOp's random_resized_crop): its own views in the cache, the ones fit
    reads with the same flags, recorded in the artifact; without --aug-views, or unknown, it is one line, exit 2."""
    from negprompt_cli.outputs.artifact import load_prompts

    data = make_image_folder(tmp_path / "train", classes=CLASSES[:2], per_class=3)
    backbone = ["--backbone", f"local-dir:{tiny_vit_dir}"]
    built = invoke(["cache", "build", str(data), *backbone, "--aug-views", "2", "--augment", "resized-crop",
                    "--json"])
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["views"] == ["eval", "rrc0-s1", "rrc1-s1"]
    out = tmp_path / "p.safetensors"
    fit = invoke(["fit-pos", "--data", str(data), "--out", str(out), *backbone, *POS_FAST, "--aug-views", "2",
                  "--augment", "resized-crop", "--json"])
    assert fit.exit_code == 0, fit.stderr
    assert json.loads(fit.stdout)["images_encoded"] == 0  # every view came from the cache
    assert load_prompts(out).training["data"]["augment"] == "resized-crop"
    inspected = invoke(["inspect", str(out)])
    assert "2 augmented view(s) (resized-crop)" in inspected.stdout, inspected.stdout
    for extra, message in ((["--augment", "resized-crop"], "--augment resized-crop says how augmented views are "
                            "made, and --aug-views asks for none"),
                           (["--aug-views", "2", "--augment", "zoom"], "unknown --augment 'zoom'")):
        bad = invoke(["fit-pos", "--data", str(data), "--out", str(tmp_path / "x.safetensors"), *backbone,
                      *POS_FAST, *extra])
        assert bad.exit_code == 2 and message in error_line(bad), bad.stderr
        built = invoke(["cache", "build", str(data), *backbone, *extra])
        assert built.exit_code == 2 and message in error_line(built), built.stderr
    assert not (tmp_path / "x.safetensors").exists()


# -- offline: fast, with hints that name what works -----------------------------------------------------------
def test_uncached_weights_without_network_fail_at_once_with_the_remedies(tmp_path, monkeypatch):
    import socket

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    asked = []

    def no_dns(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(host)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    data = make_image_folder(tmp_path / "train", classes=CLASSES[:2], per_class=2)
    result = invoke(["fit-neg", "--data", str(data), "--out", str(tmp_path / "n.safetensors")])
    assert result.exit_code == 4, result.stderr
    assert error_line(result) == ("Error: could not fetch ViT-B-16 weights 'laion2b_s34b_b88k': not in the local "
                                  "cache, and huggingface.co cannot be resolved (Temporary failure in name "
                                  "resolution)")
    assert "--offline" in result.stderr and "--backbone toy" in result.stderr and asked == ["huggingface.co"]


def test_a_mistyped_path_fails_before_anything_heavy_is_imported(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from negprompt_cli.composers.cli import app\n"
            "try:\n    app(['fit-pos', '--data', sys.argv[1], '--out', sys.argv[2]])\n"
            "except SystemExit as e:\n    print('torch' in sys.modules, e.code)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-such-data"), str(tmp_path / "p.st")],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False 3", done.stderr
    assert f"Error: data directory not found: {tmp_path / 'no-such-data'}" in done.stderr


def test_labeled_scoring_names_the_folders_that_are_no_class(wnid_data):
    root, data, _ = wnid_data
    (root / "mixed").mkdir()
    make_image_folder(root / "mixed", classes=("red_stripes", "not_a_class"), per_class=2)
    result = invoke(["score", str(root / "mixed"), "--prompts", str(root / "pos.safetensors"), "--labeled",
                     "--out", str(root / "m.csv")])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "--labeled: 2 image(s) are in folders that name no class ('not_a_class')" in said
    clean = invoke(["score", str(data), "--prompts", str(root / "pos.safetensors"), "--labeled", "--out",
                    str(root / "c.csv")])
    assert clean.exit_code == 0 and "--labeled:" not in clean.stderr  # the training folders (wnids) are known


def test_help_texts_say_what_a_newcomer_needs():
    top = invoke(["-h"])
    assert top.exit_code == 0 and "Commands:" in top.stdout
    summaries = [line for line in top.stdout.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert summaries and not [line for line in summaries if line.rstrip().endswith("...")]
    assert "toy (the offline world's CLIP" in " ".join(invoke(["fit-pos", "-h"]).stdout.split())
    assert "--ood NAME=FILE" in invoke(["report", "--help"]).stdout
    score = " ".join(invoke(["score", "-h"]).stdout.split())
    assert "Usage: negprompt score [OPTIONS] [IMAGES]..." in score and "{IMAGES}" not in score
    assert "in the order images are given" in score and "sorted path order" not in score
    assert "default: up to 4 when 64 or more images are encoded" in score
    assert "cached weights" not in " ".join(invoke(["pull", "-h"]).stdout.split())
    assert "few-shot" not in " ".join(invoke(["world", "export", "-h"]).stdout.split())
    for group in (["cache", "-h"], ["benchmark", "-h"], ["world", "-h"]):
        assert invoke(group).exit_code == 0, group
    readme = str(Path(__file__).parents[1] / "README.md")  # exists: the missing images are found first
    for command in (["score", "--prompts", readme], ["cache", "build"]):  # no IMAGES: one line, exit 2
        none = invoke(command)
        assert none.exit_code == 2 and "Error: no images given: name an image file or a folder" in none.stderr


def test_a_real_ctrl_c_during_an_in_process_run_stops_the_test_suite(tmp_path, tiny_vit_dir, monkeypatch):
    """The command saves its checkpoint and exits 130 as always; the test harness (conftest) passes a real
    Ctrl-C on, so pytest stops instead of going on to the next test. Code that raises KeyboardInterrupt itself
    (as test_faults does) still just gets exit 130."""
    import os
    import signal

    import negprompt_cli.training.loop as training
    from negprompt_cli.composers import cli

    data = make_image_folder(tmp_path / "train", classes=CLASSES[:2], per_class=2)
    args = ["fit-pos", "--data", str(data), "--out", str(tmp_path / "p.safetensors"), "--backbone",
            f"local-dir:{tiny_vit_dir}", *POS_FAST]
    original = training.cosine_with_warmup

    def ctrl_c(epoch, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)  # what the terminal sends
        return original(epoch, **kwargs)

    monkeypatch.setattr(training, "cosine_with_warmup", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        invoke(args)
    assert (tmp_path / "p.safetensors.ckpt").exists()  # the checkpoint was saved on the way out
    assert cli.interrupted_by_user()

    def raise_it(epoch, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "cosine_with_warmup", raise_it)
    assert invoke([*args, "--resume"]).exit_code == 130 and not cli.interrupted_by_user()


# -- the two threshold messages (#21 item 4) -------------------------------------------------------------------
def test_scores_without_any_threshold_say_so(wnid_data):
    root, data, _ = wnid_data
    positive = invoke(["score", str(data), "--prompts", str(root / "pos.safetensors"), "--out",
                       str(root / "p.csv")])
    assert positive.exit_code == 0
    said = " ".join(positive.stderr.split())
    assert "Warning: these prompts carry no ID threshold (fit-pos prompts, or a transfer without --calibrate), " \
           "so scores carry no OOD decision" in said
    names = root / "zs.txt"
    names.write_text("square\nhouse\n")
    zero = invoke(["score", str(data), "--zero-shot", "--names", str(names), "--backbone", "toy", "--scorer", "mcm",
                   "--out", str(root / "z.csv")])
    assert zero.exit_code == 0 and "zero-shot scoring has no stored ID threshold" in " ".join(zero.stderr.split())


def test_a_reordered_class_list_is_named_as_such(wnid_data):
    root, data, _ = wnid_data
    neg = root / "neg.safetensors"
    assert invoke(["fit-neg", "--data", str(data), "--pos", str(root / "pos.safetensors"), "--out", str(neg),
                   *NEG_FAST]).exit_code == 0
    reordered = root / "reordered.txt"
    reordered.write_text("red stripes\nblue dots\ngreen bars\n")
    result = invoke(["score", str(data), "--prompts", str(neg), "--names", str(reordered), "--out",
                     str(root / "r.csv")])
    assert result.exit_code == 0
    assert "it was calibrated for the same 3 classes in another order" in " ".join(result.stderr.split())
    other = root / "other.txt"
    other.write_text("blue dots\ngreen bars\nyellow stars\n")
    result = invoke(["score", str(data), "--prompts", str(neg), "--names", str(other), "--out", str(root / "o.csv")])
    assert "it was calibrated for another list of 3 classes (1 of the names differ)" in " ".join(result.stderr.split())


def test_a_quick_quality_run_never_replaces_the_stored_results(tmp_path, monkeypatch):
    import sys

    bench = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    import quality

    payload = {"test": {}, "default": "x", "seconds": 0}
    monkeypatch.setattr(quality, "ROOT", tmp_path)
    monkeypatch.setattr(quality, "run", lambda args: payload)
    monkeypatch.setattr(quality, "write_docs", lambda *a: pytest.fail("a quick run must not rewrite the docs"))
    monkeypatch.setattr(sys, "argv", ["quality.py", "--quick"])
    quality.main()
    assert json.loads((tmp_path / "benchmarks" / "results" / "quality-quick.json").read_text()) == payload
    assert not (tmp_path / "benchmarks" / "results" / "quality.json").exists()


def test_the_note_is_said_once_per_prompts_file_and_scorer(wnid_data, tmp_path):
    """#36 item 5: the three-line note repeated on every score; now once per prompts file and scorer, remembered
    in the feature cache (without disturbing it: `cache verify` finds nothing foreign)."""
    root, data, _ = wnid_data
    neg = tmp_path / "neg.safetensors"
    assert invoke(["fit-neg", "--data", str(data), "--pos", str(root / "pos.safetensors"), "--out", str(neg),
                   *NEG_FAST, "--quiet"]).exit_code == 0
    cache = tmp_path / "cache"
    args = ["score", str(data), "--prompts", str(neg), "--scorer", "maxlogit", "--cache-dir",
            str(cache), "--out"]
    first = invoke([*args, str(tmp_path / "1.csv")])
    second = invoke([*args, str(tmp_path / "2.csv")])
    assert first.exit_code == second.exit_code == 0
    assert "Note: the maxlogit scorer does not use the negative prompts" in first.stderr
    assert "Note:" not in second.stderr
    other_scorer = invoke([*args[:5], "msp", *args[6:], str(tmp_path / "3.csv")])
    assert "Note: the msp scorer does not use the negative prompts" in other_scorer.stderr
    verified = invoke(["cache", "verify", "--cache-dir", str(cache)])
    assert verified.exit_code == 0 and "not written by negprompt" not in verified.stderr
