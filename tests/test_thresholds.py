"""A stored ID threshold is used only for the class list, scorer and τ it was calibrated for.

On the world (shipped toy CLIP): prompts learned on 6 categories, re-targeted to 60 colour-category
names. The Eq. 3 score shrinks with the class count (energy, the default scorer, grows with it),
so the 6-class threshold would not keep 95 % of ID images; with --calibrate the new threshold keeps
95 % ± 3 % of held-out ID images, and without it no OOD decision is made (and a warning says how to get one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke

from negprompt_cli import world
from negprompt_cli.outputs.artifact import load_prompts
from negprompt_cli.presets import default_scorer
from negprompt_cli.scoring.thresholds import applicable, class_list_id


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    root = tmp_path_factory.mktemp("thresholds")
    shapes = world.default_spec(3).id_shapes
    others = world.default_spec(3).ood_shapes
    # training data, a calibration set and a held-out set of ID images (every colour of the ID shapes)
    for folder, seed in (("data", 0), ("calib", 1), ("heldout", 2)):
        world.export_world(root / folder, world.WorldSpec(shapes, others, shapes, shots=16, test_per_class=100,
                                                          far=0, seed=seed, unnamed_shapes=()))
    (root / "names60.txt").write_text("".join(f"{c} {s}\n" for s in sorted(shapes) for c in world.COLOUR_NAMES))
    cache = root / "cache"
    result = invoke(["fit-neg", "--data", str(root / "data" / "train"), "--out", str(root / "six.safetensors"),
                     "--backbone", "toy", "--pos-epochs", "20", "--pos-lr", "0.01", "--pos-optimizer", "adamw",
                     "--epochs", "5", "--val-fraction", "0", "--cache-dir", str(cache), "--quiet"])
    assert result.exit_code == 0, result.stderr
    return root, cache


def id_kept(stdout: str) -> tuple[float, list]:
    rows = [json.loads(line) for line in stdout.splitlines()]
    decisions = [r["ood"] for r in rows]
    return (float(np.mean([d is False for d in decisions])) if None not in decisions else float("nan")), decisions


def test_transfer_to_60_classes_recalibrates_or_decides_nothing(six):
    root, cache = six
    heldout = root / "heldout" / "test"
    source = load_prompts(root / "six.safetensors")
    assert source.extra["threshold"]["classes"]["count"] == 6

    plain = invoke(["transfer", "--prompts", str(root / "six.safetensors"), "--names", str(root / "names60.txt"),
                    "--out", str(root / "sixty.safetensors")])
    assert plain.exit_code == 0, plain.stderr
    assert "calibrated for 6 classes, not these 60" in plain.stderr and "--calibrate" in plain.stderr
    scored = invoke(["score", str(heldout), "--prompts", str(root / "sixty.safetensors"), "--format", "jsonl",
                     "--cache-dir", str(cache)])
    assert scored.exit_code == 0, scored.stderr
    _, decisions = id_kept(scored.stdout)
    assert len(decisions) == 600 and set(decisions) == {None}  # never a silent all-OOD
    assert "no OOD decision" in scored.stderr
    # what carrying the old threshold over would have done: not keep 95 % of ID images (Eq. 3 shrinks with the
    # class count and would reject nearly all of them; energy, the default, grows with it and would keep more
    # than 98 %, letting OOD through)
    scores = np.array([json.loads(line)["score"] for line in scored.stdout.splitlines()])
    assert abs(np.mean(scores >= source.extra["threshold"]["value"]) - 0.95) > 0.03

    calibrated = invoke(["transfer", "--prompts", str(root / "six.safetensors"), "--names",
                         str(root / "names60.txt"), "--out", str(root / "sixty_cal.safetensors"), "--calibrate",
                         str(root / "calib" / "test"), "--cache-dir", str(cache), "--json"])
    assert calibrated.exit_code == 0, calibrated.stderr
    record = json.loads(calibrated.stdout)["threshold"]
    assert record["classes"] == class_list_id((root / "names60.txt").read_text().splitlines())
    assert record["n_images"] == 600 and record["scorer"] == default_scorer(True)
    scored = invoke(["score", str(heldout), "--prompts", str(root / "sixty_cal.safetensors"), "--format", "jsonl",
                     "--cache-dir", str(cache)])
    kept, _ = id_kept(scored.stdout)
    assert kept == pytest.approx(0.95, abs=0.03)


def test_score_with_new_names_recalibrates_or_decides_nothing(six):
    root, cache = six
    heldout = root / "heldout" / "test"
    base = ["score", str(heldout), "--prompts", str(root / "six.safetensors"), "--names", str(root / "names60.txt"),
            "--format", "jsonl", "--cache-dir", str(cache)]
    plain = invoke(base)
    assert plain.exit_code == 0, plain.stderr
    assert "calibrated for 6 classes, not these 60" in plain.stderr
    assert set(id_kept(plain.stdout)[1]) == {None}
    calibrated = invoke([*base, "--calibrate", str(root / "calib" / "test")])
    assert calibrated.exit_code == 0, calibrated.stderr
    kept, _ = id_kept(calibrated.stdout)
    assert kept == pytest.approx(0.95, abs=0.03)
    # the training class list itself keeps its stored threshold
    same = invoke(["score", str(heldout), "--prompts", str(root / "six.safetensors"), "--format", "jsonl",
                   "--cache-dir", str(cache)])
    assert None not in id_kept(same.stdout)[1] and "does not apply" not in same.stderr


def test_missing_calibration_folder_fails_before_any_work(six, tmp_path):
    root, _ = six
    out = tmp_path / "x.safetensors"
    result = invoke(["transfer", "--prompts", str(root / "six.safetensors"), "--names", str(root / "names60.txt"),
                     "--out", str(out), "--calibrate", str(tmp_path / "absent")])
    assert result.exit_code == 3 and "calibration images not found" in result.stderr and not out.exists()


def test_applicable_checks_names_scorer_and_temperature():
    names = ["cat", "dog"]
    record = {"value": 0.4, "scorer": "negprompt", "temperature": 1.0, "classes": class_list_id(names)}
    assert applicable(record, names, names=names, scorer="negprompt", temperature=1.0) == (0.4, None)
    assert applicable(None, names, names=names, scorer="negprompt", temperature=1.0) == (None, None)
    for kwargs, why in ((dict(names=["dog", "cat"], scorer="negprompt", temperature=1.0), "2 classes"),
                        (dict(names=names, scorer="mcm", temperature=1.0), "negprompt scorer"),
                        (dict(names=names, scorer="negprompt", temperature=0.5), "temperature")):
        value, reason = applicable(record, names, **kwargs)
        assert value is None and why in reason
    # artifacts written before thresholds recorded their class list
    legacy = {"value": 0.4, "scorer": "negprompt", "temperature": 1.0, "transferred": False}
    assert applicable(legacy, names, names=names, scorer="negprompt", temperature=1.0) == (0.4, None)
    legacy_transferred = {**legacy, "transferred": True}
    assert applicable(legacy_transferred, names, names=names, scorer="negprompt", temperature=1.0)[0] is None


def test_an_old_threshold_record_reads_as_what_it_meant():
    """Records written before the scorer and τ were stored: Eq. 3 at the training τ (one reader, ThresholdRecord)."""
    from negprompt_cli.scoring.thresholds import ThresholdRecord, applicable

    names = ["a", "b"]
    old = {"value": 0.4}
    assert ThresholdRecord.read(old) == ThresholdRecord(0.4, "negprompt", 1.0, None)
    assert ThresholdRecord.read(old, {"temperature": 0.5}).temperature == 0.5
    # an artifact trained at τ 0.5 whose threshold predates the τ field applies at τ 0.5, not at 1
    assert applicable(old, names, names=names, scorer="negprompt", temperature=0.5,
                      extra={"temperature": 0.5}) == (0.4, None)
    assert applicable(old, names, names=names, scorer="negprompt", temperature=1.0,
                      extra={"temperature": 0.5})[1] == "it was calibrated at temperature 0.5, not 1.0"
