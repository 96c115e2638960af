"""`negprompt demo` (the README's run command) end to end on the shipped world CLIP, and the quality
effects that random weights could not show."""

from __future__ import annotations

import json

import pytest
from conftest import invoke


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "run"
    result = invoke(["demo", "--workdir", str(work), "--json"])
    assert result.exit_code == 0, result.stderr
    return work, json.loads(result.stdout), result.stderr


@pytest.mark.slow
def test_demo_writes_every_stage(demo):
    work, report, stderr = demo
    for name in ("pos.safetensors", "negprompt.safetensors", "negprompt_all.safetensors", "id.csv", "ood_near.csv",
                 "ood_unnamed.csv", "ood_far.csv", "report/report.html", "report/report.json", "report/roc.png"):
        assert (work / name).is_file(), name
    assert "[6/6] report" in stderr and "AUROC" in stderr and "report.html" in stderr
    assert report["fpr_convention"] == "id-positive"
    # the transferred prompts carry a threshold recalibrated for all six names, so ID rows get decisions
    from negprompt_cli.outputs.artifact import load_prompts

    threshold = load_prompts(work / "negprompt_all.safetensors").extra["threshold"]
    assert threshold["classes"]["count"] == 6 and threshold["source"].startswith("calibration images")
    rows = (work / "id.csv").read_text().splitlines()
    assert all(line.split(",")[4] in ("True", "False") for line in rows[1:])


def test_demo_quality(demo):
    _, report, _ = demo
    fit_pos = report["demo"]["fit_pos"]
    assert fit_pos["zero_shot_accuracy"] > 0.8  # a trained CLIP, not random weights
    assert fit_pos["final_train_accuracy"] > fit_pos["initial_train_accuracy"]
    assert report["id"]["accuracy"] > 0.8  # 6 ID categories, 2 of them only transferred by name
    assert report["ood"]["near (other categories)"]["auroc"] > 0.75  # random weights sit near 0.5
    assert report["ood"]["near (never seen)"]["n_ood"] > 0
    # paper Fig. 3: relative to the positive prompts, OOD images lie closer to the negative prompts than ID images
    view = report["similarity"]

    def gap(name):
        return view[name]["max_neg_cos"] - view[name]["max_pos_cos"]

    assert gap("near (other categories)") > gap("id") and gap("far (noise)") > gap("id")
