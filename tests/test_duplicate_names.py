"""Class lists where two classes share a name: the standard ImageNet-1k list (open_clip's IMAGENET_CLASSNAMES,
OpenAI's) names two classes "missile" and two "sunglasses", and a reproduction must be able to use it.
Classes stay distinct by position; the user is warned once that such classes cannot be told apart."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import invoke, make_image_folder
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from negprompt_cli.errors import NegPromptWarning, UsageError
from negprompt_cli.inputs.image_folders import load_image_folder, read_names_file
from negprompt_cli.scoring.true_labels import training_folders
from negprompt_cli.stages.fit_neg import FitNegOptions, select_train_classes
from negprompt_cli.training.data import DataOptions


def test_a_names_file_with_repeated_names_loads_with_one_warning(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\na\nc\nb\n")
    with pytest.warns(NegPromptWarning) as caught:
        assert read_names_file(names) == ["a", "b", "a", "c", "b"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 class name(s) given to more than one class" in message
    assert "'a' (classes 1, 3)" in message and "'b' (classes 2, 5)" in message


def test_unique_names_do_not_warn(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_names_file(names) == ["a", "b"]


def test_folder_tab_name_files_keep_folders_distinct(image_folder, tmp_path):
    mapping = tmp_path / "map.tsv"
    mapping.write_text("red_stripes\tpattern\nblue_dots\tpattern\ngreen_bars\tbars\n")
    with pytest.warns(NegPromptWarning, match="'pattern' \\(classes 1, 3\\)"):
        folder = load_image_folder(image_folder, mapping)
    assert folder.class_dirs == ["blue_dots", "green_bars", "red_stripes"]
    assert folder.class_names == ["pattern", "bars", "pattern"]


def test_training_folders_map_by_position_when_names_repeat():
    artifact = SimpleNamespace(training={"data": {"class_dirs": ["n1", "n2", "n3"]}}, extra={},
                               class_names=["missile", "kite", "missile"])
    # the artifact's own list: every folder keeps its own class, the second "missile" included
    assert training_folders(artifact, ["missile", "kite", "missile"]) == {"n1": 0, "n2": 1, "n3": 2}
    # another list: a name that is unique there maps; one given to two classes there is ambiguous
    assert training_folders(artifact, ["kite", "missile"]) == {"n1": 1, "n2": 0, "n3": 1}
    assert training_folders(artifact, ["missile", "missile", "kite"]) == {"n2": 2}


def test_train_classes_by_name_takes_every_class_of_that_name(tmp_path):
    wanted = tmp_path / "train.txt"
    wanted.write_text("missile\n")
    options = FitNegOptions(data=DataOptions(tmp_path), out=tmp_path / "x.safetensors", train_classes=wanted)
    assert select_train_classes(["n1", "n2", "n3"], ["missile", "kite", "missile"], options, 0) == [0, 2]


def test_zero_shot_scoring_with_the_standard_imagenet_list(tmp_path):
    """The regression: `score --names` with the 1,000 ImageNet names used to stop with "duplicate class name"."""
    assert {n for n in IMAGENET_CLASSNAMES if IMAGENET_CLASSNAMES.count(n) > 1} == {"missile", "sunglasses"}
    names = tmp_path / "imagenet.txt"
    names.write_text("".join(f"{n}\n" for n in IMAGENET_CLASSNAMES))
    images = make_image_folder(tmp_path / "images", per_class=2)
    out = tmp_path / "scores.csv"
    result = invoke(["score", str(images), "--zero-shot", "--names", str(names), "--backbone", "toy",
                     "--scorer", "mcm", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "given to more than one class" in line]
    assert len(warned) == 1 and "'missile'" in warned[0] and "'sunglasses'" in warned[0]
    rows = list(csv.DictReader(Path(out).open()))
    assert len(rows) == 6 and all(0 <= int(r["prediction_index"]) < 1000 for r in rows)


# Names that differ only in case or Unicode form (#30 item 3) ------------------------------------------------------
CAFE_COMPOSED, CAFE_DECOMPOSED = "caf\u00e9", "cafe\u0301"  # one letter é, and e + a combining acute accent


def test_names_differing_in_case_are_named_with_both_lines(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("House\ncat\nhouse\n")
    with pytest.warns(NegPromptWarning) as caught:
        assert read_names_file(names) == ["House", "cat", "house"]  # still loads: a warning, not an error
    (message,) = [str(w.message) for w in caught]
    assert "line 1 'House' and line 3 'house'" in message and "differ only in case or Unicode form" in message
    assert "identical prompts" in message  # CLIP's tokenizer lower-cases: the two classes get one prompt


def test_two_spellings_of_the_same_word_are_caught(tmp_path):
    assert CAFE_COMPOSED != CAFE_DECOMPOSED
    names = tmp_path / "names.txt"
    names.write_text(f"{CAFE_COMPOSED}\ntea\n{CAFE_DECOMPOSED}\n", encoding="utf-8")
    with pytest.warns(NegPromptWarning, match="line 1 'café' and line 3") as caught:
        read_names_file(names)
    assert len(caught) == 1
    with pytest.raises(UsageError, match=r"line 1 'café' and line 3 .* identical prompts"):
        read_names_file(names, strict=True)


def test_strict_refuses_only_what_gives_identical_prompts(tmp_path):
    """Full-width letters are the same name after NFKC but CLIP's tokenizer keeps them apart: a warning, also with
    --strict. Exact repeats (the ImageNet list) stay a warning with --strict too."""
    wide = tmp_path / "wide.txt"
    wide.write_text("\uff28\uff4f\uff55\uff53\uff45\nhouse\n", encoding="utf-8")  # "Ｈｏｕｓｅ"
    with pytest.warns(NegPromptWarning, match="differ only in case or Unicode form") as caught:
        read_names_file(wide, strict=True)
    assert "identical prompts" not in str(caught[0].message)
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("missile\nkite\nmissile\n")
    with pytest.warns(NegPromptWarning, match="given to more than one class"):
        read_names_file(repeated, strict=True)


def test_folder_names_and_folder_tab_name_files_are_checked(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("House", "cat", "house"), per_class=2)
    with pytest.warns(NegPromptWarning, match="folder 1 'House' and folder 3 'house'"):
        load_image_folder(root)
    with pytest.raises(UsageError, match="folder 1 'House' and folder 3 'house'"):
        load_image_folder(root, strict=True)
    mapping = tmp_path / "classes.tsv"
    mapping.write_text("House\tBarn\ncat\tcat\nhouse\tbarn\n")
    with pytest.raises(UsageError, match="class 1 'Barn' and class 3 'barn'"):
        load_image_folder(root, mapping, strict=True)


def test_the_cli_warns_and_refuses_with_strict(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("House\ncat\nhouse\n")
    images = make_image_folder(tmp_path / "images", per_class=1)
    base = ["score", str(images), "--zero-shot", "--names", str(names), "--backbone", "toy", "--scorer", "mcm",
            "--quiet"]
    result = invoke(base + ["--out", str(tmp_path / "a.csv")])
    assert result.exit_code == 0, result.stderr
    assert "line 1 'House' and line 3 'house'" in result.stderr
    result = invoke(base + ["--out", str(tmp_path / "b.csv"), "--strict"])
    assert result.exit_code == 2 and not (tmp_path / "b.csv").exists()
    error, hint = [line for line in result.stderr.splitlines() if line.strip()]
    assert error.startswith("Error: ") and "identical prompts" in error and hint.startswith("Hint: ")
