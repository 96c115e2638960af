"""The README's Python API section runs as written (offline, toy CLIP), and what it returns agrees with the
files it wrote and with an independent metric."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_python_api_runs_and_returns_what_it_wrote(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the example is clean: no warnings on its own data
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr()
    assert printed.err == ""  # the library prints nothing; the one line is the example's own print
    assert len(printed.out.splitlines()) == 1

    rows = namespace["scored"]
    for name, file_rows in rows.items():
        with open(tmp_path / f"{name}.csv", newline="") as handle:
            written = list(csv.DictReader(handle))
        assert [r["path"] for r in file_rows] == [r["path"] for r in written]
        assert [r["score"] for r in file_rows] == pytest.approx([float(r["score"]) for r in written])
    assert len(rows["test"]) == 6 * 20 and len(rows["ood_far"]) == 40
    assert all(r["label"] is not None for r in rows["test"])

    id_scores = [r["score"] for r in rows["test"]]
    near = [r["score"] for r in rows["ood_near"]]
    expected = roc_auc_score([1] * len(id_scores) + [0] * len(near), id_scores + near)
    report = namespace["report"]
    assert report["ood"]["near"]["auroc"] == pytest.approx(expected)
    assert report["ood"]["near"]["auroc"] > 0.8  # the toy CLIP with learned prompts separates its world
    artifact = namespace["artifact"]
    assert artifact.tensors["text_neg"].shape[0] == len(artifact.class_names) == 6  # per class: its negatives


def test_the_readme_detector_gives_the_score_rows_own_scores(tmp_path, monkeypatch):
    """The in-memory Detector in the README example scores its PIL images exactly as `score` scored the files."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    near = namespace["scored"]["ood_near"][:8]
    # other batches than score's: equal up to float rounding (tests/test_detector.py checks bit-equality)
    assert [v["score"] for v in namespace["verdicts"]] == pytest.approx([r["score"] for r in near], rel=1e-5)
    assert [v["prediction"] for v in namespace["verdicts"]] == [r["prediction"] for r in near]
