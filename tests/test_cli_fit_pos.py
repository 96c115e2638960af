"""End-to-end fit-pos through the CLI, its outputs, and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import invoke, make_image_folder, pos_fast

from negprompt_cli.outputs.artifact import load_prompts

FAST = [*pos_fast(30), "--json"]


def fit_pos(args: list[str]):
    return invoke(["fit-pos", *args])


@pytest.fixture
def train_dir(tmp_path) -> Path:
    return make_image_folder(tmp_path / "train", per_class=16)


def test_fit_pos_learns_and_writes_a_complete_artifact(tiny_vit_dir, train_dir, tmp_path):
    out = tmp_path / "pos.safetensors"
    result = fit_pos(["--data", str(train_dir), "--out", str(out), "--backbone", f"local-dir:{tiny_vit_dir}",
                      "--shots", "12", "--seed", "5", *FAST])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert summary["train_images"] == 36 and summary["classes"] == 3
    assert summary["zero_shot_accuracy"] < 0.5  # random weights: chance level
    assert summary["final_train_accuracy"] > summary["zero_shot_accuracy"] + 0.3
    assert summary["final_train_accuracy"] > summary["initial_train_accuracy"]
    assert summary["images_encoded"] == 36
    assert "Wrote" in result.stderr

    artifact = load_prompts(out, kind="positive")
    assert artifact.tensors["ctx_pos"].shape == (4, 32)
    assert artifact.class_names == ["blue dots", "green bars", "red stripes"]
    assert artifact.backbone["backbone"] == f"local-dir:{tiny_vit_dir}"
    assert artifact.training["optim"]["seed"] == 5 and artifact.training["data"]["shots"] == 12
    # the precision run is a choice about the machine, recorded beside the recipe, not inside it
    assert artifact.training["precision"] == "fp32" and "precision" not in artifact.training["optim"]
    assert len(artifact.training["history"]) == 30

    # same seed -> same few-shot subset and same prompts; the features now come from the cache
    again = fit_pos(["--data", str(train_dir), "--out", str(tmp_path / "again.safetensors"), "--backbone",
                     f"local-dir:{tiny_vit_dir}", "--shots", "12", "--seed", "5", *FAST])
    assert json.loads(again.stdout)["images_encoded"] == 0
    torch.testing.assert_close(load_prompts(tmp_path / "again.safetensors").tensors["ctx_pos"],
                               artifact.tensors["ctx_pos"])


def test_ctx_init_and_validation_selection(tiny_vit_dir, train_dir, tmp_path):
    out = tmp_path / "pos.safetensors"
    result = fit_pos(["--data", str(train_dir), "--out", str(out), "--backbone", f"local-dir:{tiny_vit_dir}",
                      "--shots", "8", "--val-fraction", "0.25", "--ctx-init", "a photo of a", "--suffix", "",
                      "--epochs", "3", "--json", "--optimizer", "adamw", "--lr", "0.01"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["val_images"] == 12 and summary["selection"] == "best-val_accuracy"
    artifact = load_prompts(out)
    assert artifact.prompt["n_ctx"] == 4 and artifact.prompt["suffix"] == ""
    assert 1 <= artifact.training["selected_epoch"] <= 3


def test_class_specific_contexts_and_aug_views(tiny_rn_dir, train_dir, tmp_path):
    out = tmp_path / "pos.safetensors"
    result = fit_pos(["--data", str(train_dir), "--out", str(out), "--backbone", f"local-dir:{tiny_rn_dir}",
                      "--csc", "--aug-views", "2", "--epochs", "2", "--shots", "4", "--n-ctx", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["images_encoded"] == 24  # 12 images x 2 views
    assert load_prompts(out).tensors["ctx_pos"].shape == (3, 3, 32)


def run_bad(args: list[str]):
    result = invoke(["fit-pos", *args])
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    return result.exit_code, lines


def test_bad_inputs(tiny_vit_dir, train_dir, tmp_path):
    backbone = ["--backbone", f"local-dir:{tiny_vit_dir}", "--epochs", "1"]
    out = tmp_path / "p.safetensors"
    code, lines = run_bad(["--data", str(tmp_path / "absent"), "--out", str(out), *backbone])
    assert code == 3 and lines[0] == f"Error: data directory not found: {tmp_path / 'absent'}"
    (tmp_path / "empty").mkdir()
    code, lines = run_bad(["--data", str(tmp_path / "empty"), "--out", str(out), *backbone])
    assert code == 2 and "no class folders" in lines[0]
    names = tmp_path / "names.txt"
    names.write_text("one\ntwo\n")
    code, lines = run_bad(["--data", str(train_dir), "--classes", str(names), "--out", str(out), *backbone])
    assert code == 2 and "has 2 class names but the data has 3" in lines[0]
    code, lines = run_bad(["--data", str(train_dir), "--out", str(tmp_path / "no" / "p.safetensors"), *backbone])
    assert code == 3 and "output directory does not exist" in lines[0]
    code, lines = run_bad(["--data", str(train_dir), "--out", str(out), "--backbone", "ViT-B/61"])
    assert code == 2 and lines[0] == "Error: unknown backbone 'ViT-B/61'" and "ViT-B/16" in lines[1]
    code, lines = run_bad(["--data", str(train_dir), "--out", str(out), "--pretrained", "laion5b"])
    assert code == 2 and "unknown pretrained tag 'laion5b'" in lines[0]
    code, lines = run_bad(["--data", str(train_dir), "--out", str(out), "--learner", "coopp", *backbone])
    assert code == 2 and "unknown prompt learner 'coopp'" in lines[0]
    code, lines = run_bad(["--data", str(train_dir), "--out", str(out), "--learner-option", "n_ctx=4", *backbone])
    assert code == 2 and lines[0] == "Error: learner 'coop' takes no options (got n_ctx)"  # its layout: --n-ctx
    code, lines = run_bad(["--data", str(train_dir), "--out", str(out), "--epochs", "0"])
    assert code == 2
    assert not out.exists()


def test_interrupt_exits_130_without_output(tiny_vit_dir, train_dir, tmp_path, monkeypatch):
    import negprompt_cli.stages.fit_pos as fit_pos_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_pos_module, "train", interrupted)
    out = tmp_path / "p.safetensors"
    code, lines = run_bad(["--data", str(train_dir), "--out", str(out), "--backbone", f"local-dir:{tiny_vit_dir}"])
    assert code == 130 and lines == ["Interrupted."]
    assert not out.exists()


def test_unexpected_errors_are_one_line_unless_debug(tiny_vit_dir, train_dir, tmp_path, monkeypatch):
    import negprompt_cli.stages.fit_pos as fit_pos_module

    def boom(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(fit_pos_module, "train", boom)
    args = ["fit-pos", "--data", str(train_dir), "--out", str(tmp_path / "p.safetensors"), "--backbone",
            f"local-dir:{tiny_vit_dir}"]
    result = invoke(args)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "Error: unexpected ZeroDivisionError: boom"
    assert "Traceback" not in result.stderr
    result = invoke(args, env={"NEGPROMPT_DEBUG": "1"})
    assert result.exit_code == 1 and "Traceback" in result.stderr


@pytest.mark.slow
def test_installed_command_and_module_entry_points(tmp_path):
    env = {**os.environ, "NEGPROMPT_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "negprompt_cli", "--version"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("negprompt ")
    exe = Path(sys.executable).with_name("negprompt")
    if exe.exists():
        proc = subprocess.run([str(exe), "inspect", str(tmp_path / "absent.safetensors")], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 3 and proc.stderr.startswith("Error: prompts file not found")
