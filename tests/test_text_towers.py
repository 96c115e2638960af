"""Every open_clip text tower (#31 items 1-2): the CLIP model's own, a CustomTextCLIP's (SigLIP's bidirectional
tower pooled at the last position, with a learned logit bias; first, eos and argmax pooling; a padding mask), and
a tower of no CLIP shape. Plain texts equal the model's own encode_text; soft prompts equal encode_text of the
same words; the fast paths run only where they are exact; the whole CLI runs on the SigLIP-shaped model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import NEG_FAST, TEST_DEVICE, error_line, invoke, make_image_folder, pos_fast
from PIL import Image
from safetensors.torch import save_file

import negprompt_cli
from negprompt_cli import registry
from negprompt_cli.features.backbone import Backbone, BackboneRequest, load_backbone
from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
from negprompt_cli.features.text_features import encode_texts, template_features

VISION = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}
TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
SIGLIP_TEXT = {**TEXT, "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}
TOWERS = {  # name -> text_cfg of a CustomTextCLIP (the text tower lives in model.text)
    "siglip": SIGLIP_TEXT,
    "causal-argmax": {**TEXT, "pool_type": "argmax"},
    "causal-eos": {**TEXT, "pool_type": "eos", "eos_id": 49407},
    "bidirectional-first": {**TEXT, "no_causal_mask": True, "pool_type": "first"},
}


def write_custom_text_dir(path: Path, text_cfg: dict, seed: int = 0) -> Path:
    """A CustomTextCLIP in open_clip's local-dir layout (``custom_text``: the text tower is ``model.text``), with
    SigLIP's learned logit bias."""
    cfg = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True, "vision_cfg": VISION, "text_cfg": text_cfg}
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
    model.logit_scale.data.fill_(float(np.log(100.0)))  # as a trained model's (random init: 10)
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {name: write_custom_text_dir(root / name, cfg, seed=k) for k, (name, cfg) in enumerate(TOWERS.items())}


def load(path: Path) -> Backbone:
    return load_backbone(BackboneRequest(f"local-dir:{path}", device=TEST_DEVICE))


TEXTS = ["a photo of a cat.", "dog", "the nice red stripes pattern", "a close-up photo of the nice green bars."]


@pytest.mark.parametrize("name", list(TOWERS))
def test_plain_texts_and_template_ensembles_equal_encode_text(tower_dirs, name):
    backbone = load(tower_dirs[name])
    assert type(backbone.model).__name__ == "CustomTextCLIP"
    encoder = SoftPromptTextEncoder(backbone)
    assert encoder.why_no_soft_prompts is None
    # the shortcuts only where exact: a causal tower pooled at the end-of-text token
    assert encoder.truncates == encoder.shares_prefix == name.startswith("causal")
    with torch.no_grad():
        reference = backbone.model.encode_text(backbone.tokenizer(TEXTS).to(backbone.device), normalize=True).cpu()
        torch.testing.assert_close(encode_texts(encoder, TEXTS, batch=2), reference, rtol=0, atol=1e-5)
        templates = ("a photo of the nice {}.", "{}", "the {}")
        words = ["cat", "green bars", "kite"]
        raw = torch.stack([backbone.model.encode_text(backbone.tokenizer([t.format(w) for w in words])
                                                      .to(backbone.device)).cpu() for t in templates])
        expected = torch.nn.functional.normalize(raw.mean(0), dim=-1)
        torch.testing.assert_close(template_features(encoder, words, templates), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(TOWERS))
def test_soft_prompts_equal_encode_text_of_the_same_words(tower_dirs, name):
    """Context vectors set to the embeddings of "a photo of a" give encode_text("a photo of a NAME."): the splice
    is exact whatever the mask and pooling; encode_shared equals encode on the expanded rows."""
    backbone = load(tower_dirs[name])
    encoder = SoftPromptTextEncoder(backbone)
    names = ["cat", "green bars", "a very long class name with many words"]
    ctx = encoder.word_embeddings("a photo of a")
    prompts = encoder.tokenize(names, ctx.shape[0], ".")
    with torch.no_grad():
        reference = backbone.model.encode_text(backbone.tokenizer([f"a photo of a {n}." for n in names])
                                               .to(backbone.device), normalize=True)
        torch.testing.assert_close(encoder.encode(ctx.to(backbone.device), prompts), reference, rtol=0, atol=1e-5)
        two = torch.stack([ctx, ctx.flip(0)]).to(backbone.device)
        shared = encoder.encode_shared(two, prompts, chunk_size=2)
        expanded = encoder.encode(two.repeat_interleave(len(names), dim=0), prompts.repeat(2)).view(2, len(names), -1)
        torch.testing.assert_close(shared, expanded, rtol=0, atol=1e-5)
    ctx = ctx.clone().to(backbone.device).requires_grad_(True)
    encoder.encode(ctx, prompts).sum().backward()
    assert ctx.grad is not None and float(ctx.grad.abs().sum()) > 0


def test_a_bidirectional_tower_that_masks_its_padding_is_encoded_with_that_mask(tower_dirs):
    """open_clip's ``use_pad_mask`` (not settable from a config in this open_clip version: set on the tower)."""
    backbone = load(tower_dirs["siglip"])
    backbone.model.text.use_pad_mask, backbone.model.text.pad_id = True, 0
    encoder = SoftPromptTextEncoder(backbone)
    ctx = encoder.word_embeddings("a photo of a")
    prompts = encoder.tokenize(["cat", "green bars"], ctx.shape[0], ".")
    with torch.no_grad():
        reference = backbone.model.encode_text(backbone.tokenizer(["a photo of a cat.", "a photo of a green bars."])
                                               .to(backbone.device), normalize=True)
        torch.testing.assert_close(encoder.encode(ctx.to(backbone.device), prompts), reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(encode_texts(encoder, TEXTS), backbone.model.encode_text(
            backbone.tokenizer(TEXTS).to(backbone.device), normalize=True).cpu(), rtol=0, atol=1e-5)
        backbone.model.text.use_pad_mask = False  # the mask matters: without it the numbers differ
        assert not torch.allclose(encoder.encode(ctx.to(backbone.device), prompts), reference, atol=1e-4)


@pytest.fixture(scope="module")
def siglip_world(tmp_path_factory, tower_dirs):
    root = tmp_path_factory.mktemp("siglip-world")
    make_image_folder(root / "train", classes=("red_stripes", "green_bars"), per_class=6, seed=0)
    make_image_folder(root / "test", classes=("red_stripes", "green_bars"), per_class=4, seed=1)
    make_image_folder(root / "ood", classes=("blue_dots",), per_class=4, seed=2)
    (root / "names.txt").write_text("red stripes\ngreen bars\n")
    (root / "new_names.txt").write_text("red stripes\ngreen bars\nblue dots\n")
    return root


def test_the_whole_cli_runs_on_a_siglip_shaped_model(siglip_world, tower_dirs, tmp_path):
    root, backbone = siglip_world, ["--backbone", f"local-dir:{tower_dirs['siglip']}"]
    pos, neg, moved = tmp_path / "pos.safetensors", tmp_path / "neg.safetensors", tmp_path / "moved.safetensors"
    steps = [
        ["fit-pos", "--data", str(root / "train"), "--out", str(pos), *backbone, *pos_fast(2)],
        ["fit-neg", "--data", str(root / "train"), "--pos", str(pos), "--out", str(neg), *NEG_FAST],
        ["transfer", "--prompts", str(neg), "--names", str(root / "new_names.txt"), "--out", str(moved)],
        ["score", str(root / "test"), "--prompts", str(neg), "--labeled", "--out", str(tmp_path / "id.csv")],
        ["score", str(root / "ood"), "--prompts", str(neg), "--out", str(tmp_path / "ood.csv")],
        ["score", str(root / "ood"), "--prompts", str(moved), "--scorer", "negprompt", "--out",
         str(tmp_path / "moved.csv")],
        ["report", "--id", str(tmp_path / "id.csv"), "--ood", f"ood={tmp_path / 'ood.csv'}", "--out",
         str(tmp_path / "report"), "--json"],
    ]
    for args in steps:
        result = invoke([*args, "--quiet"] if args[0] != "report" else args)
        assert result.exit_code == 0, (args[0], result.stderr)
    report = json.loads(result.stdout)
    assert report["id"]["n"] == 8 and report["ood"]["ood"]["n_ood"] == 4 and 0.0 <= report["ood"]["ood"]["auroc"] <= 1
    assert report["id"]["accuracy"] is not None
    moved_rows = list(csv.DictReader((tmp_path / "moved.csv").open()))
    assert {r["prediction"] for r in moved_rows} <= {"red stripes", "green bars", "blue dots"}


def test_zero_shot_on_a_siglip_shaped_model_matches_open_clips_own_features(siglip_world, tower_dirs, tmp_path):
    """MCM, computed independently from open_clip's encode_image / encode_text on the same preprocessing."""
    root = siglip_world
    result = invoke(["score", str(root / "test"), "--zero-shot", "--names", str(root / "names.txt"), "--backbone",
                     f"local-dir:{tower_dirs['siglip']}", "--scorer", "mcm", "--out", str(tmp_path / "z.csv"),
                     "--quiet"])
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "z.csv").open()))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tower_dirs['siglip']}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tower_dirs['siglip']}")
    with torch.no_grad():
        text = model.encode_text(tokenizer(["a photo of a red stripes.", "a photo of a green bars."]), normalize=True)
        images = torch.stack([preprocess(Image.open(r["path"]).convert("RGB")) for r in rows])
        cos = model.encode_image(images, normalize=True) @ text.t()
    expected = cos.softmax(dim=1).max(dim=1).values  # MCM at its default τ = 1
    ours = torch.tensor([float(r["score"]) for r in rows])
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)
    assert [r["prediction"] for r in rows] == [["red stripes", "green bars"][i] for i in cos.argmax(1).tolist()]
    (tmp_path / "lexicon.txt").write_text("zebra\nkite\nviolin\nmeadow\nrocket\nteapot\nharbor\ncloud\n")
    for scorer in ("neglabel", "csp"):  # mined negative labels, through the same text path
        mined = invoke(["score", str(root / "test"), "--zero-shot", "--names", str(root / "names.txt"),
                        "--backbone", f"local-dir:{tower_dirs['siglip']}", "--scorer", scorer, "--lexicon",
                        str(tmp_path / "lexicon.txt"), "--mine-fraction", "0.5", "--out", str(tmp_path / "m.csv"),
                        "--json", "--quiet"])
        assert mined.exit_code == 0, mined.stderr
        assert json.loads(mined.stdout)["negative_labels"]["labels"] >= 1


class NoTowerCLIP(torch.nn.Module):
    """A model with encode_image / encode_text and no CLIP-style text tower (like a Hugging Face text model)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(3 * 32 * 32, 16)
        self.words = torch.nn.EmbeddingBag(49408, 16)
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(100.0))))

    def encode_image(self, images, normalize=False):
        x = self.image(images.flatten(1))
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens, normalize=False):
        x = self.words(tokens)
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x


@pytest.fixture
def no_tower_backbone():
    class Plugin:
        @negprompt_cli.hookimpl
        def register_backbones(self, register):
            def factory(*, pretrained, device, cache_dir, quick_gelu):
                model = NoTowerCLIP().to(device).eval().requires_grad_(False)
                return Backbone(name="no-tower", pretrained=pretrained, model=model,
                                preprocess=open_clip.image_transform(32, is_train=False),
                                tokenizer=open_clip.get_tokenizer("ViT-B-32"), image_size=32)
            register("no-tower", factory)

    host = registry.get_host()
    host.register_object(Plugin(), "no_tower_plugin")
    yield
    host.unregister("no_tower_plugin")


def test_a_model_without_a_clip_style_tower_scores_zero_shot_and_refuses_soft_prompts_before_work(
        siglip_world, no_tower_backbone, tmp_path):
    root = siglip_world
    backbone = load_backbone(BackboneRequest("no-tower", device="cpu"))
    encoder = SoftPromptTextEncoder(backbone)
    with torch.no_grad():
        torch.testing.assert_close(encode_texts(encoder, TEXTS), backbone.model.encode_text(
            backbone.tokenizer(TEXTS), normalize=True), rtol=0, atol=1e-6)
    scored = invoke(["score", str(root / "test"), "--zero-shot", "--names", str(root / "names.txt"), "--backbone",
                     "no-tower", "--scorer", "mcm", "--out", str(tmp_path / "z.csv"), "--quiet"])
    assert scored.exit_code == 0, scored.stderr
    cache = tmp_path / "fit-cache"
    refused = invoke(["fit-pos", "--data", str(root / "train"), "--backbone", "no-tower", "--out",
                      str(tmp_path / "p.safetensors"), "--cache-dir", str(cache), "--epochs", "1"])
    assert refused.exit_code == 2
    assert error_line(refused) == ("Error: backbone 'no-tower' has no CLIP-style text tower (token_embedding, "
                                   "positional_embedding, transformer, ln_final): soft prompts need one")
    assert not cache.exists()  # refused before any image was encoded


@pytest.mark.slow
def test_each_registered_architecture_runs_its_text_tower_as_negprompt_plugins_says():
    """The registered families (random weights, offline): the text path each description states is the one the
    encoder takes, and on EVA-02's CustomTextCLIP tower the shortcuts are exact against encode_text."""
    from negprompt_plugins.openclip_backbones import BIDIRECTIONAL_TEXT, FAMILIES, KNOWN, text_path
    from open_clip.tokenizer import SimpleTokenizer

    host = registry.get_host()
    host.fill()
    architectures = {arch for arch, *_ in [*KNOWN.values(), *FAMILIES.values()]}
    for name in [*KNOWN, *FAMILIES]:
        arch = (KNOWN.get(name) or FAMILIES[name])[0]
        assert text_path(arch) in host.backbones.get(name).description
    for arch in sorted(architectures):
        model = open_clip.create_model(arch, pretrained=None).eval()
        tokenizer = SimpleTokenizer(context_length=open_clip.get_model_config(arch)["text_cfg"]["context_length"])
        backbone = Backbone(name=arch, pretrained=None, model=model, preprocess=None, tokenizer=tokenizer,
                            image_size=224)
        encoder = SoftPromptTextEncoder(backbone)
        causal = arch not in BIDIRECTIONAL_TEXT
        assert encoder.why_no_soft_prompts is None and encoder.truncates == encoder.shares_prefix == causal, arch
        assert open_clip.get_model_config(arch)["text_cfg"].get("no_causal_mask", False) == (not causal), arch
        if arch == "EVA02-B-16":
            ctx = encoder.word_embeddings("a photo of a")
            prompts = encoder.tokenize(["cat", "green bars"], ctx.shape[0], ".")
            with torch.no_grad():
                reference = model.encode_text(tokenizer(["a photo of a cat.", "a photo of a green bars."]),
                                              normalize=True)
                torch.testing.assert_close(encoder.encode_shared(ctx, prompts)[0], reference, rtol=0, atol=1e-5)
                torch.testing.assert_close(encode_texts(encoder, TEXTS), model.encode_text(tokenizer(TEXTS),
                                                                                           normalize=True),
                                           rtol=0, atol=1e-5)


def test_sigmoid_scores_on_a_siglip_shaped_model_use_its_scale_and_bias(siglip_world, tower_dirs, tmp_path):
    """#31 item 3: sigmoid-mcm and sigmoid-energy computed independently from open_clip's features and the model's
    own logit_scale and logit_bias; a second run from the warm feature cache (no model built: the bias is
    remembered with the backbone's facts) writes the same bytes."""
    root = siglip_world
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tower_dirs['siglip']}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tower_dirs['siglip']}")
    scale, bias = model.logit_scale.exp().item(), model.logit_bias.item()
    assert bias == -10.0  # the config's init_logit_bias: a bias the softmax scorers would erase
    for scorer in ("sigmoid-mcm", "sigmoid-energy"):
        args = ["score", str(root / "test"), "--zero-shot", "--names", str(root / "names.txt"), "--backbone",
                f"local-dir:{tower_dirs['siglip']}", "--scorer", scorer, "--cache-dir", str(tmp_path / "cache"),
                "--quiet"]
        first = invoke([*args, "--out", str(tmp_path / f"{scorer}.csv")])
        assert first.exit_code == 0, first.stderr
        rows = list(csv.DictReader((tmp_path / f"{scorer}.csv").open()))
        with torch.no_grad():
            text = model.encode_text(tokenizer(["a photo of a red stripes.", "a photo of a green bars."]),
                                     normalize=True)
            images = torch.stack([preprocess(Image.open(r["path"]).convert("RGB")) for r in rows])
            logits = (scale * (model.encode_image(images, normalize=True) @ text.t()) + bias).double()
        expected = (torch.sigmoid(logits).max(dim=1).values if scorer == "sigmoid-mcm"
                    else torch.log1p(torch.exp(logits)).sum(dim=1))
        ours = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
        again = invoke([*args, "--out", str(tmp_path / f"{scorer}-warm.csv")])
        assert again.exit_code == 0, again.stderr
        assert (tmp_path / f"{scorer}-warm.csv").read_bytes() == (tmp_path / f"{scorer}.csv").read_bytes()
    facts = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "backbones").rglob("*.json")]
    assert facts and all(f["logit_bias"] == -10.0 for f in facts)


def test_inspect_says_how_a_registered_backbone_runs_and_which_scores_use_its_bias():
    """#31 item 4: inspect shows the plugin's words for the prompts' backbone (text path, score family)."""
    from types import SimpleNamespace

    from negprompt_cli.composers.commands_info import describe_artifact

    def lines(name: str) -> str:
        artifact = SimpleNamespace(backbone={"backbone": name, "pretrained": None}, prompt={"n_ctx": 4}, training={},
                                   extra={}, class_names=["a"], kind="positive", schema_version=1, tensors={})
        return "\n".join(describe_artifact(Path("p.safetensors"), artifact))

    assert "trained with a sigmoid: the sigmoid-* scorers use its logit scale and bias" in lines("SigLIP2-B/16")
    assert "trained with a softmax: scorers read cosines or its logit scale" in lines("ViT-B/16")
