"""Backbone resolution: names, tags, local files, QuickGELU, offline failures, devices."""

from __future__ import annotations

import json
import subprocess
import sys

import open_clip
import pytest
import torch
from conftest import VIT_CFG
from safetensors.torch import save_file

from negprompt_cli.devices import resolve_device
from negprompt_cli.errors import HubError, NotFoundError, UsageError
from negprompt_cli.features.backbone import BackboneRequest, load_backbone


def test_local_dir_backbone_loads_offline(tiny_vit_dir):
    backbone = load_backbone(BackboneRequest(name=f"local-dir:{tiny_vit_dir}", device="cpu"))
    assert backbone.image_size == 32 and backbone.text_width == 32
    assert backbone.logit_scale == pytest.approx(100.0, rel=1e-4)
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_open_clip_arch_with_local_checkpoint_file(tmp_path):
    """Any open_clip architecture name + --pretrained FILE (here a tiny arch added to open_clip)."""
    (tmp_path / "negprompt-test-tiny.json").write_text(json.dumps(VIT_CFG))
    open_clip.add_model_config(tmp_path / "negprompt-test-tiny.json")
    torch.manual_seed(3)
    reference = open_clip.CLIP(**VIT_CFG)
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    backbone = load_backbone(BackboneRequest(name="negprompt-test-tiny", pretrained=str(weights), device="cpu"))
    assert backbone.pretrained == str(weights)
    torch.testing.assert_close(backbone.model.token_embedding.weight, reference.token_embedding.weight)
    random = load_backbone(BackboneRequest(name="negprompt-test-tiny", pretrained="none", device="cpu"))
    assert random.pretrained == "none"
    with pytest.raises(UsageError, match="no default weights"):
        load_backbone(BackboneRequest(name="negprompt-test-tiny", device="cpu"))


def test_unknown_backbone_names_closest():
    with pytest.raises(UsageError) as info:
        load_backbone(BackboneRequest(name="ViT-B/61", device="cpu"))
    assert "ViT-B/16" in info.value.hint


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(UsageError) as info:
        load_backbone(BackboneRequest(name="ViT-B/16", pretrained="laion2b_s34b_b89k", device="cpu"))
    assert "did you mean 'laion2b_s34b_b88k'" in info.value.message
    assert "datacomp_xl_s13b_b90k" in info.value.hint


def test_missing_weights_file_is_not_found():
    with pytest.raises(NotFoundError):
        load_backbone(BackboneRequest(name="ViT-B/16", pretrained="/nope/weights.safetensors", device="cpu"))


def test_missing_local_dir_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        load_backbone(BackboneRequest(name=f"local-dir:{tmp_path / 'absent'}", device="cpu"))


def test_uncached_weights_offline_is_a_hub_error(tmp_path):
    """The paper's default weights, not cached and no network: exit-code-4 error naming the remedies."""
    with pytest.raises(HubError) as info:
        load_backbone(BackboneRequest(name="ViT-B/16", device="cpu", weights_cache=str(tmp_path / "hub"), offline=True))
    assert "laion2b_s34b_b88k" in info.value.message
    assert "--pretrained FILE" in info.value.hint and "local-dir:" in info.value.hint


@pytest.mark.slow
def test_uncached_weights_cli_exit_code_4(tmp_path):
    env = {"PATH": "", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "NEGPROMPT_CACHE": str(tmp_path)}
    import os

    env = {**os.environ, **env}
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    import numpy as np
    from conftest import draw

    draw("blue_dots", np.random.default_rng(0)).save(data / "a.png")
    proc = subprocess.run([sys.executable, "-m", "negprompt_cli", "fit-pos", "--data", str(tmp_path / "data"),
                           "--out", str(tmp_path / "p.safetensors"), "--weights-cache", str(tmp_path / "w")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0].startswith("Error: could not fetch ViT-B-16 weights")
    assert proc.stdout == ""
    assert not (tmp_path / "p.safetensors").exists()


def test_quick_gelu_follows_the_tag():
    import negprompt_plugins.openclip_backbones as oc

    assert oc._tag_quick_gelu("RN50", "openai") is True
    assert oc._tag_quick_gelu("RN101", "yfcc15m") is True
    assert oc._tag_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert oc._tag_quick_gelu("ViT-B-16", "openai") is True
    assert oc._tag_quick_gelu("ViT-B-16-quickgelu", "none") is True


def test_registered_defaults_match_the_paper():
    import negprompt_plugins.openclip_backbones as oc

    assert oc.KNOWN["ViT-B/16"] == ("ViT-B-16", "laion2b_s34b_b88k")
    for arch, tag in oc.KNOWN.values():
        assert tag in open_clip.list_pretrained_tags_by_model(arch)


def test_device_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UsageError):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda")
