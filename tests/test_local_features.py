"""Patch (local) features and GL-MCM: against a port of the release's modified CLIP block and score, the cache, the
command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TEST_DEVICE, invoke
from test_adaptive import world_images  # noqa: F401  (fixture)

from negprompt_cli.errors import UsageError
from negprompt_cli.features.backbone import BackboneRequest, load_backbone
from negprompt_cli.features.image_features import ImageStream, encode_images
from negprompt_cli.features.local_features import encode_local, local_support, split_rows
from negprompt_cli.registry import get_host


def release_local_features(model, pixels):  # type: ignore[no-untyped-def]
    """AtsuMiyai/GL-MCM @8708a08 clip/model.py, VisionTransformer.forward and ResidualAttentionBlock.forward,
    written out on an open_clip model: every block returns (x, q, k, v) with v its own value path; the last block's
    v goes through ln_post and the projection. Sequence-first, as the release runs."""
    visual = model.visual
    x = visual.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = visual.ln_pre(x + visual.positional_embedding).permute(1, 0, 2)  # NLD -> LND
    for block in visual.transformer.resblocks:
        y = block.ln_1(x).permute(1, 0, 2)
        y = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias)
        n, length, c = y.shape
        y = y.view(n, length, 3, c // 3).permute(2, 0, 1, 3).reshape(3 * n, length, c // 3)
        y = F.linear(y, block.attn.out_proj.weight, block.attn.out_proj.bias)
        _, _, v = y.tensor_split(3, dim=0)
        v = v.permute(1, 0, 2)
        v = v + x
        v = v + block.mlp(block.ln_2(v))
        normed = block.ln_1(x).permute(1, 0, 2)  # open_clip's attention is batch-first; the release's is not
        x = x + block.attn(normed, normed, normed, need_weights=False)[0].permute(1, 0, 2)
        x = x + block.mlp(block.ln_2(x))
    x, v = x.permute(1, 0, 2), v.permute(1, 0, 2)
    local = visual.ln_post(v)[:, 1:] @ visual.proj
    pooled = visual.ln_post(x[:, 0]) @ visual.proj
    return pooled, local


@pytest.fixture
def vit(tiny_vit_dir):  # type: ignore[no-untyped-def]
    return load_backbone(BackboneRequest(name=f"local-dir:{tiny_vit_dir}", device=TEST_DEVICE))


def test_local_features_are_the_releases_value_path(vit):
    """Our hook on open_clip's own forward gives the release's patch features (and the global feature is
    encode_image's): max abs diff below 1e-5 on unit vectors."""
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = vit.model.float().eval()
    with torch.no_grad():
        pooled, local = release_local_features(model.cpu(), pixels)
    rows = encode_local(vit, pixels)
    ours_global, ours_local = split_rows(rows, 32)
    assert ours_local is not None and ours_local.shape == (3, 16, 32)  # (32 / 8)^2 patches
    assert float((ours_local - F.normalize(local, dim=-1)).abs().max()) < 1e-5
    assert float((ours_global - F.normalize(pooled, dim=-1)).abs().max()) < 1e-5
    with torch.no_grad():
        assert torch.allclose(ours_global, F.normalize(vit.model.encode_image(pixels.to(vit.device)).float(),
                                                       dim=-1).cpu(), atol=1e-6)


def test_resnets_and_other_towers_say_why_they_have_no_local_features(tiny_rn_dir):
    rn = load_backbone(BackboneRequest(name=f"local-dir:{tiny_rn_dir}", device=TEST_DEVICE))
    assert "not a vision transformer" in local_support(rn)
    with pytest.raises(UsageError, match="local \\(patch\\) features are not available"):
        ImageStream(rn, [], local=True)


def test_the_cache_keeps_local_rows_under_their_own_key(vit, image_folder, tmp_path):
    from negprompt_cli.inputs.image_folders import find_images

    paths, cache = find_images(image_folder)[:6], tmp_path / "cache"
    first, _, stats = encode_images(vit, paths, cache_dir=cache, local=True, quiet=True)
    again, _, stats2 = encode_images(vit, paths, cache_dir=cache, local=True, quiet=True)
    glob, _, stats3 = encode_images(vit, paths, cache_dir=cache, quiet=True)
    assert first.shape == (6, 17 * 32) and stats.encoded == 6 and stats2.cached == 6 and torch.equal(first, again)
    assert stats3.encoded == 6 and torch.allclose(split_rows(first, 32)[0], glob, atol=1e-6)  # same global part
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2  # one key each


def release_gl_mcm(global_cos, local_cos, lambda_local, temperature=1.0):  # type: ignore[no-untyped-def]
    """utils/detection_util.py get_ood_scores_clip, score 'GL-MCM' (negated back to higher = ID)."""
    def softmax(z):  # type: ignore[no-untyped-def]
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    grid = local_cos.reshape(local_cos.shape[0], 4, 4, -1)  # the release keeps patches as a grid
    return np.max(softmax(global_cos / temperature), axis=1) + lambda_local * np.max(
        softmax(grid / temperature), axis=(1, 2, 3))


def test_gl_mcm_is_the_released_score():
    g = torch.Generator().manual_seed(0)
    pos, local = torch.rand(5, 7, generator=g), torch.rand(5, 16, 7, generator=g)
    spec = get_host().scorer_spec("gl-mcm")
    assert spec.local and spec.fn.Options().weight == 0.5
    for weight, tau in ((0.5, 1.0), (1.0, 1.0), (0.5, 0.01)):
        ours = spec.fn(pos, None, temperature=tau, local=local, weight=weight).double().numpy()
        theirs = release_gl_mcm(pos.double().numpy(), local.double().numpy(), weight, tau)
        assert np.abs(ours - theirs).max() < 1e-6
    only = get_host().scorer_spec("l-mcm").fn(pos, None, local=local)
    assert torch.allclose(only, torch.softmax(local, dim=-1).amax(dim=(1, 2)))


def test_score_gl_mcm_cli(world_images, tmp_path):  # noqa: F811
    """End to end on the world's toy ViT: patch rows are encoded once and cached, the weight comes through
    --scorer-option and is part of what a threshold is valid for, and requests that cannot work exit 2."""
    base = ["score", str(world_images["test"]), "--zero-shot", "--names", str(world_images["names"]), "-b", "toy",
            "--cache-dir", str(tmp_path / "cache"), "--scorer", "gl-mcm"]
    first = invoke([*base, "--out", str(tmp_path / "a.csv"), "--json"])
    assert first.exit_code == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["encoded"] == summary["images"] > 0
    again = invoke([*base, "--out", str(tmp_path / "b.csv"), "--json"])
    assert json.loads(again.stdout)["cached"] == summary["images"]
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    heavier = invoke([*base, "--scorer-option", "weight=2", "--out", str(tmp_path / "c.csv")])
    assert heavier.exit_code == 0 and (tmp_path / "c.csv").read_bytes() != (tmp_path / "a.csv").read_bytes()
    calibrated = invoke([*base, "--calibrate", str(world_images["test"]), "--out", str(tmp_path / "d.csv"),
                         "--json"])
    assert calibrated.exit_code == 0, calibrated.stderr
    record = json.loads(calibrated.stdout)["calibration"]
    assert record["settings"]["scorer_options"] == {"weight": 0.5}
    saved = invoke([*base[:-1], "mcm", "--save-features", str(tmp_path / "saved"), "--out", str(tmp_path / "m.csv")])
    assert saved.exit_code == 0, saved.stderr
    for extra, message in ((["--features", str(tmp_path / "saved")], "--features holds global embeddings only"),
                           (["--save-features", str(tmp_path / "f")], "--save-features holds global embeddings "
                                                                      "only"),
                           (["--scorer-option", "weight=-1"], "the local weight must be 0 or more")):
        args = [a for a in base if a != str(world_images["test"])] if extra[0] == "--features" else base
        bad = invoke([*args, *extra, "--out", str(tmp_path / "bad.csv")])
        assert bad.exit_code == 2, (extra, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_score_gl_mcm_refuses_a_resnet(tiny_rn_dir, image_folder, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("red stripes\ngreen bars\nblue dots\n")
    result = invoke(["score", str(image_folder), "--zero-shot", "--names", str(names), "-b",
                     f"local-dir:{tiny_rn_dir}", "--scorer", "gl-mcm", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2 and "local (patch) features are not available" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_detector_scores_with_gl_mcm_as_score_does(world_images, tmp_path):  # noqa: F811
    import negprompt

    names = [n for n in world_images["names"].read_text().splitlines() if n]
    detector = negprompt.Detector.zero_shot(names, backbone="toy", scorer="gl-mcm", cache_dir=tmp_path,
                                            scorer_options={"weight": 1.0})
    images = sorted(world_images["test"].rglob("*.png"))[:4]
    rows = detector.score(images)
    result = invoke(["score", *map(str, images), "--zero-shot", "--names", str(world_images["names"]), "-b", "toy",
                     "--cache-dir", str(tmp_path / "cache"), "--scorer", "gl-mcm", "--scorer-option", "weight=1",
                     "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    cli = [json.loads(line) for line in result.stdout.splitlines()]
    assert [round(r["score"], 5) for r in rows] == [round(r["score"], 5) for r in cli]


# -- LoCoOp ------------------------------------------------------------------------------------------------------
def release_entropy_select_topk(p, top_k, label, num_of_local_feature):  # type: ignore[no-untyped-def]
    """AtsuMiyai/LoCoOp @a311b39 trainers/locoop.py, as released (bar .cuda())."""
    label_repeat = label.repeat_interleave(num_of_local_feature)
    p = F.softmax(p, dim=-1)
    pred_topk = torch.topk(p, k=top_k, dim=1)[1]
    contains_label = pred_topk.eq(label_repeat.clone().detach().unsqueeze(1)).any(dim=1)
    selected_p = p[~contains_label]
    if selected_p.shape[0] == 0:
        return torch.tensor([0])
    return -torch.mean(torch.sum(selected_p * torch.log(selected_p + 1e-5), 1))


def test_locoop_loss_is_the_released_one():
    from negprompt_plugins.locoop_learner import LoCoOpOptions, LoCoOpPrompts, background_entropy

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(4, 9, 12, generator=g) * 5, torch.tensor([0, 3, 11, 5])
    for k in (1, 3, 12):
        ours = background_entropy(logits, labels, k)
        theirs = release_entropy_select_topk(logits.flatten(0, 1), k, labels, 9)
        assert torch.allclose(ours, theirs.float().reshape(()), atol=1e-6), k
    assert float(background_entropy(logits, labels, 12)) == 0.0  # K = C: no patch misses its label

    class Fixed(LoCoOpPrompts):  # the text features held fixed: the loss alone is under test
        def __init__(self, text: torch.Tensor) -> None:
            torch.nn.Module.__init__(self)
            self.text, self.options = text, LoCoOpOptions(weight=0.25, top_k=3)
            self.register_buffer("logit_scale", torch.tensor(100.0))

        def text_features(self) -> torch.Tensor:
            return self.text

    text = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    glob, patches = F.normalize(torch.randn(4, 8, generator=g), dim=-1), F.normalize(torch.randn(4, 9, 8,
                                                                                               generator=g), dim=-1)
    module = Fixed(text)
    loss, out = module.loss(torch.cat([glob, patches.flatten(1)], dim=1), labels)
    expected = F.cross_entropy(100 * glob @ text.t(), labels) - 0.25 * release_entropy_select_topk(
        (100 * patches @ text.t()).flatten(0, 1), 3, labels, 9).reshape(())
    assert torch.allclose(loss, expected, atol=1e-5) and torch.allclose(out, 100 * glob @ text.t(), atol=1e-5)
    plain, _ = module.loss(glob, labels)  # rows without patches: CoOp's cross-entropy
    assert torch.allclose(plain, F.cross_entropy(100 * glob @ text.t(), labels), atol=1e-6)


def test_fit_pos_locoop_trains_on_patch_rows_and_scores_with_gl_mcm(tiny_vit_dir, tiny_rn_dir, tmp_path):
    from conftest import make_image_folder, pos_fast

    from negprompt_cli.outputs.artifact import load_prompts

    make_image_folder(tmp_path / "train", classes=("red_stripes", "green_bars", "blue_dots"), per_class=6)
    base = ["fit-pos", "--data", str(tmp_path / "train"), "--cache-dir", str(tmp_path / "cache"), *pos_fast(2),
            "--learner", "locoop"]
    result = invoke([*base, "--backbone", f"local-dir:{tiny_vit_dir}", "--out", str(tmp_path / "l.safetensors"),
                     "--learner-option", "top_k=1", "--json"])
    assert result.exit_code == 0, result.stderr
    artifact = load_prompts(tmp_path / "l.safetensors")
    assert artifact.prompt["learner"] == "locoop"
    assert artifact.training["learner_options"] == {"weight": 0.25, "top_k": 1}
    inspected = invoke(["inspect", str(tmp_path / "l.safetensors")])
    assert "  learner:   locoop: top_k 1, weight 0.25" in inspected.stdout  # what it was trained with
    keys = [d for d in (tmp_path / "cache").iterdir() if d.is_dir()]
    assert len(keys) == 1 and json.loads((keys[0] / "info.json").read_text())["preprocess"].endswith("local-vv1")
    scored = invoke(["score", str(tmp_path / "train"), "--prompts", str(tmp_path / "l.safetensors"), "--scorer",
                     "gl-mcm", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "s.csv"), "--json"])
    assert scored.exit_code == 0, scored.stderr
    assert json.loads(scored.stdout)["cached"] == 18  # the training rows, patches and all
    refused = invoke([*base, "--backbone", f"local-dir:{tiny_rn_dir}", "--out", str(tmp_path / "r.safetensors")])
    assert refused.exit_code == 2 and "local (patch) features are not available" in refused.stderr
    assert not (tmp_path / "r.safetensors").exists()


def test_cache_build_patches_fills_what_gl_mcm_reads(world_images, tmp_path, tiny_rn_dir):  # noqa: F811
    cache = str(tmp_path / "cache")
    built = invoke(["cache", "build", str(world_images["test"]), "-b", "toy", "--patches", "--cache-dir", cache,
                    "--json"])
    assert built.exit_code == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["patches"] and summary["encoded"] == summary["images"] > 0
    assert "with their patch features" in built.stderr
    scored = invoke(["score", str(world_images["test"]), "--zero-shot", "--names", str(world_images["names"]), "-b",
                     "toy", "--scorer", "gl-mcm", "--cache-dir", cache, "--out", str(tmp_path / "s.csv"), "--json"])
    assert scored.exit_code == 0 and json.loads(scored.stdout)["cached"] == summary["images"]
    refused = invoke(["cache", "build", str(world_images["test"]), "-b", f"local-dir:{tiny_rn_dir}", "--patches",
                      "--cache-dir", cache])
    assert refused.exit_code == 2 and "local (patch) features are not available" in refused.stderr
