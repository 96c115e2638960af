"""The Python API in one import (``import negprompt``) and the in-memory ``Detector``: the same scores as
``negprompt score`` on the same images (same setup, same encoding), from files, PIL images or arrays."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import invoke, make_image_folder
from PIL import Image

import negprompt
from negprompt_cli.errors import UsageError


@pytest.fixture
def trained(tmp_path, tiny_vit_dir):
    make_image_folder(tmp_path / "train", classes=("red_stripes", "green_bars"), per_class=4)
    make_image_folder(tmp_path / "test", classes=("red_stripes", "green_bars", "blue_dots"), per_class=5, seed=3)
    result = invoke(["fit-neg", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "neg.safetensors"),
                     "--backbone", f"local-dir:{tiny_vit_dir}", "--pos-epochs", "2", "--epochs", "2",
                     "--n-ctx", "4"])
    assert result.exit_code == 0, result.stderr
    return tmp_path


def cli_rows(args: list[str]) -> list[dict]:
    result = invoke([*args, "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_detector_scores_exactly_as_the_score_command(trained):
    rows = cli_rows(["score", str(trained / "test"), "--prompts", str(trained / "neg.safetensors"),
                        "--scorer", "negprompt"])
    paths = [r["path"] for r in rows]
    detector = negprompt.Detector.from_prompts(trained / "neg.safetensors", scorer="negprompt")
    for images in (paths, [Image.open(p) for p in paths], [np.asarray(Image.open(p).convert("RGB")) for p in paths],
                   [detector.preprocess(Image.open(p)) for p in paths]):
        mine = detector.score(images)
        assert [m["score"] for m in mine] == [r["score"] for r in rows]  # identical, not just close
        assert [m["prediction"] for m in mine] == [r["prediction"] for r in rows]
        assert [m["max_neg_cos"] for m in mine] == [r["max_neg_cos"] for r in rows]
    default = negprompt.Detector.from_prompts(trained / "neg.safetensors")  # energy + the stored threshold
    stored_rows = cli_rows(["score", str(trained / "test"), "--prompts", str(trained / "neg.safetensors")])
    decided = default.score(paths)
    assert default.threshold == stored_rows[0]["threshold"] and default.threshold_source == "stored"
    assert [d["ood"] for d in decided] == [r["ood"] for r in stored_rows]
    assert [d["score"] for d in decided] == [r["score"] for r in stored_rows]


def test_calibrating_a_detector_gives_score_calibrates_threshold(trained):
    calibration = trained / "test" / "red_stripes"
    result = invoke(["score", str(trained / "test"), "--prompts", str(trained / "neg.safetensors"), "--calibrate",
                     str(calibration), "--keep", "0.75", "--out", str(trained / "c.csv"), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = summary["threshold"]
    detector = negprompt.Detector.from_prompts(trained / "neg.safetensors")
    images = sorted(calibration.iterdir())
    assert detector.calibrate(images, keep=0.75) == expected and detector.threshold_source == "calibrated"
    assert detector.calibration == {**summary["calibration"], "source": "Detector.calibrate"}
    assert detector.with_threshold(None).score(images[:1])[0]["ood"] is None
    assert detector.threshold == expected  # the copy did not change the original


def test_a_zero_shot_detector_mines_the_same_labels_as_score(tmp_path):
    images = make_image_folder(tmp_path / "img", classes=("red_stripes", "blue_dots"), per_class=3)
    names = tmp_path / "names.txt"
    names.write_text("square\nhouse\nring\n")
    rows = cli_rows(["score", str(images), "--zero-shot", "--names", str(names), "--backbone", "toy"])
    detector = negprompt.Detector.zero_shot(["square", "house", "ring"], backbone="toy")
    assert detector.scorer == "csp" and detector.names == ["square", "house", "ring"]
    mine = detector.score([r["path"] for r in rows])
    assert [m["score"] for m in mine] == [r["score"] for r in rows]


def test_bad_images_are_one_clear_error(trained):
    detector = negprompt.Detector.from_prompts(trained / "neg.safetensors")
    (trained / "notes.txt").write_text("not an image")
    cases = [([torch.zeros(2, 3, 32, 32)], "one preprocessed [3, H, W] image"),
             ([trained / "notes.txt"], "is not an image PIL can read"),
             ([trained / "absent.png"], "cannot read"), ([{"a": 1}], "cannot score a dict"), ([], "no images given")]
    for images, message in cases:
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
            detector.score(images)
    with pytest.raises(UsageError, match="batch_size must be at least 1"):
        negprompt.Detector(detector.setup, batch_size=0)


def test_one_import_gives_the_whole_api_and_stays_cheap():
    for name in negprompt.__all__:
        assert getattr(negprompt, name) is not None, name
    assert negprompt.report.__name__ == "build_report"
    assert negprompt.load_prompts.__module__ == "negprompt_cli.outputs.artifact"
    with pytest.raises(AttributeError):
        negprompt.no_such_thing  # noqa: B018
    done = subprocess.run([sys.executable, "-c", "import sys, negprompt; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


# -- the first hour (#36 item 1) -------------------------------------------------------------------------------
def test_one_image_gives_one_row_and_every_form_of_a_batch_a_list(trained):
    """`detector.score(Image.open(p))` (the first call anyone types) used to fail with "'PngImageFile' object is
    not iterable"."""
    detector = negprompt.Detector.from_prompts(trained / "neg.safetensors", scorer="negprompt", device="cpu")
    paths = sorted((trained / "test").rglob("*.png"))[:3]
    as_list = detector.score(paths)
    assert isinstance(as_list, list) and len(as_list) == 3
    with Image.open(paths[0]) as image:
        image.load()
        one_pil = detector.score(image)
    one_path, one_str = detector.score(paths[0]), detector.score(str(paths[0]))
    one_array = detector.score(np.asarray(Image.open(paths[0]).convert("RGB")))
    for row in (one_pil, one_path, one_str, one_array):
        assert isinstance(row, dict) and row["score"] == pytest.approx(as_list[0]["score"], abs=1e-6)
    pixels = torch.stack([detector.preprocess(Image.open(p)) for p in paths])  # N x 3 x H x W, preprocessed
    batch = detector.score(pixels)
    assert [r["score"] for r in batch] == pytest.approx([r["score"] for r in as_list], abs=1e-6)
    single = detector.score(pixels[1])  # one preprocessed 3 x H x W tensor
    assert single["score"] == pytest.approx(as_list[1]["score"], abs=1e-6)
    assert detector(paths[0])["score"] == one_path["score"]  # calling it is scoring


def test_the_detector_says_what_it_is_and_warns_once_without_a_threshold(trained):
    detector = negprompt.Detector.from_prompts(trained / "neg.safetensors", scorer="mcm", device="cpu")
    text = repr(detector)
    assert text.startswith("Detector(backbone='local-dir:") and "classes=2 ['green bars', 'red stripes']" in text
    assert "scorer='mcm'" in text and "threshold=None" in text  # the stored one is for another scorer
    image = sorted((trained / "test").rglob("*.png"))[0]
    with pytest.warns(negprompt.NegPromptWarning, match="no threshold for this class list and scorer") as caught:
        assert detector.score(image)["ood"] is None
        detector.score([image, image])
    assert len(caught) == 1 and "calibrate(id_images)" in str(caught[0].message)
    decided = detector.with_threshold(0.5)
    assert "threshold=0.5 (given)" in repr(decided) and decided.score(image)["ood"] in (True, False)
    doc = negprompt.Detector.__doc__
    for name in ("threshold", "threshold_source", "why_no_threshold", "names", "scorer"):
        assert f"{name}:" in doc or f"{name}," in doc, name
