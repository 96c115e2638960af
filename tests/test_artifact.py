"""Prompt artifacts: round trip, validation, backbone compatibility, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from negprompt_cli.errors import IncompatibleArtifactError, NotFoundError
from negprompt_cli.outputs.artifact import PromptArtifact, load_prompts, save_prompts


def make_artifact(**overrides) -> PromptArtifact:
    fields = dict(
        kind="positive",
        tensors={"ctx_pos": torch.randn(4, 8)},
        backbone={"backbone": "ViT-B/16", "pretrained": "laion2b_s34b_b88k", "quick_gelu": False},
        prompt={"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "suffix": ".", "class_token_position": "end"},
        class_names=["cat", "dog"],
        training={"optim": {"seed": 3}},
    )
    fields.update(overrides)
    return PromptArtifact(**fields)


def test_round_trip(tmp_path):
    artifact = make_artifact()
    save_prompts(artifact, tmp_path / "p.safetensors")
    loaded = load_prompts(tmp_path / "p.safetensors", kind="positive")
    assert torch.equal(loaded.tensors["ctx_pos"], artifact.tensors["ctx_pos"])
    assert loaded.class_names == ["cat", "dog"] and loaded.prompt["ctx_init"] == "a photo of a"
    assert loaded.training["optim"]["seed"] == 3
    assert {"negprompt", "torch", "open_clip", "python"} <= set(loaded.versions)
    assert list(tmp_path.iterdir()) == [tmp_path / "p.safetensors"]  # no temp files left


def test_wrong_kind_and_backbone_mismatch(tmp_path):
    save_prompts(make_artifact(), tmp_path / "p.safetensors")
    with pytest.raises(IncompatibleArtifactError, match="expected a fit-neg artifact"):
        load_prompts(tmp_path / "p.safetensors", kind="negative")
    loaded = load_prompts(tmp_path / "p.safetensors")
    loaded.check_backbone({"backbone": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"})  # same, other spelling
    loaded.check_backbone({"backbone": "ViT-B/16", "pretrained": None})  # weights not named: any weights
    with pytest.raises(IncompatibleArtifactError, match="openai"):
        loaded.check_backbone({"backbone": "ViT-B/16", "pretrained": "openai"})
    with pytest.raises(IncompatibleArtifactError) as info:
        loaded.check_backbone({"backbone": "RN50", "pretrained": "openai"})
    assert info.value.exit_code == 5
    assert "ViT-B/16 (laion2b_s34b_b88k)" in info.value.message and "RN50 (openai)" in info.value.message


def test_not_an_artifact(tmp_path):
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(IncompatibleArtifactError, match="not a negprompt prompts file"):
        load_prompts(tmp_path / "text.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(IncompatibleArtifactError, match="not a negprompt artifact"):
        load_prompts(tmp_path / "model.safetensors")
    with pytest.raises(NotFoundError):
        load_prompts(tmp_path / "absent.safetensors")


def test_truncated_artifact(tmp_path):
    save_prompts(make_artifact(), tmp_path / "p.safetensors")
    data = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 20])
    with pytest.raises(IncompatibleArtifactError, match="truncated"):
        load_prompts(tmp_path / "cut.safetensors")


def test_unknown_schema_version(tmp_path):
    meta = make_artifact().metadata()
    meta["schema_version"] = 99
    save_file({"ctx_pos": torch.zeros(4, 8)}, str(tmp_path / "future.safetensors"),
              metadata={"format": "pt", "negprompt": json.dumps(meta)})
    with pytest.raises(IncompatibleArtifactError, match="schema 99") as info:
        load_prompts(tmp_path / "future.safetensors")
    assert "upgrade" in info.value.hint


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import negprompt_cli.outputs.artifact as artifact_module

    def explode(path, data):
        with open(path, "wb") as handle:
            handle.write(data[:len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact_module, "write_bytes", explode)
    with pytest.raises(KeyboardInterrupt):
        save_prompts(make_artifact(), tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_output_directory_must_exist(tmp_path):
    with pytest.raises(NotFoundError, match="output directory does not exist"):
        save_prompts(make_artifact(), tmp_path / "nope" / "p.safetensors")


def write_with_valid_checksum(artifact: PromptArtifact, path) -> None:
    """The artifact's bytes as negprompt writes them, whatever the tensors hold: the checksum matches."""
    from negprompt_cli.outputs.artifact import METADATA_KEY, tensors_digest

    meta = artifact.metadata()
    meta["tensors_sha256"] = tensors_digest(artifact.tensors)
    save_file(artifact.tensors, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(meta)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tensors_are_refused_at_load_although_the_checksum_matches(tmp_path, bad):
    """#30 item 7: such a file used to pass validation and fail only after every image was encoded."""
    ctx = torch.randn(4, 8)
    ctx[2, 5] = bad
    write_with_valid_checksum(make_artifact(tensors={"ctx_pos": ctx}), tmp_path / "p.safetensors")
    with pytest.raises(IncompatibleArtifactError, match=r"tensor ctx_pos holds 1 non-finite value") as info:
        load_prompts(tmp_path / "p.safetensors")
    assert info.value.exit_code == 5


def test_the_cli_refuses_non_finite_prompts_before_any_image_work(tmp_path):
    from conftest import invoke, make_image_folder

    names = make_artifact().class_names
    images = make_image_folder(tmp_path / "images", per_class=1)
    ctx = torch.full((4, 8), float("nan"))
    write_with_valid_checksum(make_artifact(tensors={"ctx_pos": ctx, "text_pos": torch.randn(len(names), 8)}),
                              tmp_path / "p.safetensors")
    result = invoke(["score", str(images), "--prompts", str(tmp_path / "p.safetensors"), "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(tmp_path / "s.csv"), "--quiet"])
    assert result.exit_code == 5 and "non-finite" in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "s.csv").exists()  # no image was encoded


def test_diverged_prompts_are_never_written(tmp_path):
    from negprompt_cli.errors import NegPromptError

    ctx = torch.randn(4, 8)
    ctx[0, 0] = float("nan")
    with pytest.raises(NegPromptError, match="non-finite values .* in ctx_pos: training diverged"):
        save_prompts(make_artifact(tensors={"ctx_pos": ctx}), tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_two_saves_of_the_same_prompts_are_the_same_bytes(tmp_path, monkeypatch):
    """safetensors orders its header from a hash map; the artifact writer sorts it (and SOURCE_DATE_EPOCH fixes
    the creation time), so identical prompts make identical files, as reproducible builds expect."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1765000000")
    artifact = make_artifact(tensors={"ctx_pos": torch.randn(4, 8), "text_pos": torch.randn(2, 8)})
    for name in ("a", "b", "c"):
        save_prompts(artifact, tmp_path / f"{name}.safetensors")
    files = {(tmp_path / f"{name}.safetensors").read_bytes() for name in ("a", "b", "c")}
    assert len(files) == 1
    loaded = load_prompts(tmp_path / "a.safetensors")
    assert loaded.training == artifact.training
    assert torch.equal(loaded.tensors["text_pos"], artifact.tensors["text_pos"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "pt" and json.loads(meta["negprompt"])["created"] == "2025-12-06T05:46:40Z"
