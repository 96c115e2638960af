"""Start-up (#36 item 4): a score whose images are all in the feature cache and whose prompts hold their text
features builds no model and imports neither open_clip nor torchvision; the facts it uses instead are exactly the
built backbone's, and are trusted only while the weights files are unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import TEST_DEVICE, VIT_CFG, copy_tree, invoke, make_image_folder, pos_fast, train_positives

from negprompt_cli.features.backbone import BackboneRequest, load_backbone
from negprompt_cli.features.backbone_facts import DeferredBackbone, remembered_backbone
from negprompt_cli.features.feature_cache import BACKBONES_DIR, foreign_entries

# Runs the CLI in a fresh interpreter, then says on its last stderr line which heavy modules it imported.
RUN_AND_TELL = (
    "import json, sys\n"
    "from negprompt_cli.composers.cli import main\n"
    "sys.argv = ['negprompt', *sys.argv[1:]]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "print(json.dumps({'code': code, 'open_clip': 'open_clip' in sys.modules,\n"
    "                  'torchvision': 'torchvision' in sys.modules}), file=sys.stderr)\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_vit_dir):
    """Positive prompts (they store their text features) on a copy of the tiny ViT, and test images."""
    root = tmp_path_factory.mktemp("startup")
    backbone = copy_tree(tiny_vit_dir, root / "vit")
    return train_positives(root, backbone, root / "train-cache", pos_fast(1), train=4, test=6)


@pytest.fixture
def work(trained, tmp_path):
    return copy_tree(trained, tmp_path / "work")


def run(args: list[str], **extra_env: str) -> tuple[dict, str]:
    env = {**os.environ, "NEGPROMPT_DEVICE": TEST_DEVICE, "OMP_NUM_THREADS": "1", **extra_env}
    done = subprocess.run([sys.executable, "-c", RUN_AND_TELL, *args], capture_output=True, text=True, env=env)
    told = json.loads(done.stderr.strip().splitlines()[-1])
    assert told["code"] in (0, None), done.stderr
    return told, done.stderr


def score_args(work: Path, out: str, *images: Path) -> list[str]:
    return ["score", *map(str, images or (work / "test",)), "--prompts", str(work / "pos.safetensors"),
            "--cache-dir", str(work / "cache"), "--out", str(work / out), "--quiet"]


def test_a_warm_score_builds_no_model_and_imports_neither_open_clip_nor_torchvision(work):
    first, _ = run(score_args(work, "first.csv"))
    assert first["open_clip"]  # the first run builds the model, encodes, and remembers the backbone's facts
    assert len(list((work / "cache" / BACKBONES_DIR).glob("*.json"))) == 1
    again, _ = run(score_args(work, "again.csv"))
    assert again == {"code": 0, "open_clip": False, "torchvision": False}
    assert (work / "again.csv").read_bytes() == (work / "first.csv").read_bytes()
    assert foreign_entries(work / "cache") == []  # the facts are the cache's own: gc and verify leave them be


def test_the_tensor_decoding_path_keys_the_cache_from_the_remembered_facts(work):
    """The GPU's decoding path (nvJPEG and tensor preprocessing; NEGPROMPT_DECODE=tensor runs it on the CPU) keys
    its features by the preprocessing the facts remember: a warm run finds every image without the model."""
    first, _ = run(score_args(work, "first.csv"), NEGPROMPT_DECODE="tensor")
    again, _ = run(score_args(work, "again.csv"), NEGPROMPT_DECODE="tensor")
    assert first["open_clip"] and again == {"code": 0, "open_clip": False, "torchvision": False}
    assert (work / "again.csv").read_bytes() == (work / "first.csv").read_bytes()
    pil, _ = run(score_args(work, "pil.csv"))  # the PIL path is another key: its first run encodes, so builds
    assert pil["open_clip"]


def test_a_new_image_builds_the_model_then_and_scores_as_a_run_that_built_it_first(work, tmp_path):
    invoke(score_args(work, "warm.csv"))  # every test image cached, facts remembered
    eager = copy_tree(work, tmp_path / "eager")
    shutil.rmtree(eager / "cache" / BACKBONES_DIR)  # the same cached images, no facts: the model is built first
    extra = make_image_folder(tmp_path / "extra", classes=("red_stripes",), per_class=2, seed=7)
    deferred, _ = run(score_args(work, "mixed.csv", work / "test", extra))
    built, _ = run(score_args(eager, "mixed.csv", eager / "test", extra))
    assert deferred["open_clip"] and built["open_clip"]
    rows = (work / "mixed.csv").read_text().replace(str(work), "ROOT")
    assert rows == (eager / "mixed.csv").read_text().replace(str(eager), "ROOT")
    assert len(rows.splitlines()) == 1 + 12 + 2


def test_the_remembered_facts_are_the_built_backbones(work):
    request = BackboneRequest(f"local-dir:{work / 'vit'}", device=TEST_DEVICE)
    built = remembered_backbone(request, work / "cache")  # nothing remembered yet: built, and remembered
    assert not isinstance(built, DeferredBackbone)
    deferred = remembered_backbone(request, work / "cache")
    assert isinstance(deferred, DeferredBackbone) and not deferred.is_built
    reference = load_backbone(request)
    for fact in ("name", "pretrained", "quick_gelu", "image_size", "base_model", "default_lexicon", "text_width",
                 "context_length", "embed_dim", "logit_scale", "device", "weights_files"):
        assert getattr(deferred, fact) == getattr(reference, fact), fact
    assert deferred.identity() == reference.identity()
    assert deferred.weights_fingerprint() == reference.weights_fingerprint()
    assert deferred.text_fingerprint() == reference.text_fingerprint()
    assert deferred.preprocess_repr() == reference.preprocess_repr()
    assert deferred.tensor_preprocess() == reference.tensor_preprocess() is not None
    assert deferred.feature_key("x") == reference.feature_key("x")
    assert not deferred.is_built and "not built yet" in repr(deferred)
    pixels = torch.rand(2, 3, 32, 32, device=reference.device)
    torch.testing.assert_close(deferred.model.encode_image(pixels), reference.model.encode_image(pixels))
    assert deferred.is_built and deferred.tokenizer is not None and deferred.preprocess is not None


def test_facts_are_forgotten_when_a_weights_file_changes(work):
    request = BackboneRequest(f"local-dir:{work / 'vit'}", device=TEST_DEVICE)
    remembered_backbone(request, work / "cache")
    assert isinstance(remembered_backbone(request, work / "cache"), DeferredBackbone)
    weights = work / "vit" / "open_clip_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same bytes, touched: built again
    assert not isinstance(remembered_backbone(request, work / "cache"), DeferredBackbone)
    assert isinstance(remembered_backbone(request, work / "cache"), DeferredBackbone)  # and remembered anew


def test_facts_that_do_not_match_the_weights_stop_the_run_before_anything_is_written(work, tmp_path):
    invoke(score_args(work, "warm.csv"))
    [facts] = (work / "cache" / BACKBONES_DIR).glob("*.json")
    data = json.loads(facts.read_text())
    data["extra"]["fingerprint"] = "0" * 16
    facts.write_text(json.dumps(data))
    extra = make_image_folder(tmp_path / "extra", classes=("red_stripes",), per_class=1, seed=7)
    result = invoke(score_args(work, "bad.csv", work / "test", extra))
    assert result.exit_code == 1, result.stderr
    assert "is not the one whose facts were remembered" in result.stderr
    assert not (work / "bad.csv").exists()


def test_random_weights_are_always_built(work, tmp_path):
    (tmp_path / "negprompt-test-tiny.json").write_text(json.dumps(VIT_CFG))
    open_clip.add_model_config(tmp_path / "negprompt-test-tiny.json")
    request = BackboneRequest("negprompt-test-tiny", pretrained="none", device=TEST_DEVICE)
    assert load_backbone(request).weights_files == ()
    remembered_backbone(request, work / "cache")
    assert not isinstance(remembered_backbone(request, work / "cache"), DeferredBackbone)
    assert not (work / "cache" / BACKBONES_DIR).exists()


def test_the_toy_backbone_names_its_lexicon_and_remembers_it(tmp_path):
    from negprompt.plugin import world_lexicon_dir

    request = BackboneRequest("toy", device=TEST_DEVICE)
    built = remembered_backbone(request, tmp_path / "cache")
    deferred = remembered_backbone(request, tmp_path / "cache")
    assert isinstance(deferred, DeferredBackbone)
    assert built.default_lexicon == deferred.default_lexicon == str(world_lexicon_dir())
