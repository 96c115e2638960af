"""``--text-chunk auto``: chunk only when one unchunked fit-neg step's graph would not fit the budget."""

from __future__ import annotations

import pytest
import torch
from conftest import invoke, make_image_folder
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from negprompt_cli.errors import UsageError
from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
from negprompt_cli.registry import get_host
from negprompt_cli.training.learners import PromptSettings
from negprompt_cli.training.memory import (
    CPU_BUDGET_BYTES,
    auto_text_chunk,
    graph_bytes,
    parse_text_chunk,
    resolve_text_chunk,
)

VIT_B16 = dict(layers=12, width=512, suffix_tokens=9, prefix_tokens=17, shared=True)


def test_parse_text_chunk():
    assert parse_text_chunk("auto") == "auto" and parse_text_chunk("0") is None and parse_text_chunk("64") == 64
    for bad in ("-1", "lots", "1.5"):
        with pytest.raises(UsageError, match="--text-chunk"):
            parse_text_chunk(bad)


def test_auto_rule_at_imagenet_scale():
    """ViT-B/16, P = 2: CPU chunks at C = 1000 within its 3 GiB graph budget; a big GPU never needs to."""
    chunk = auto_text_chunk(classes=1000, prompts_per_class=2, precision="fp32", budget=CPU_BUDGET_BYTES, **VIT_B16)
    assert chunk is not None and chunk % 16 == 0 and 128 <= chunk < 1000
    assert chunk * graph_bytes(rows=2, precision="fp32", **VIT_B16) <= CPU_BUDGET_BYTES
    assert auto_text_chunk(classes=100, prompts_per_class=2, precision="fp32", budget=CPU_BUDGET_BYTES,
                           **VIT_B16) is None
    h200_free = 0.8 * 130 * 2**30
    for precision in ("fp32", "bf16"):
        assert auto_text_chunk(classes=1000, prompts_per_class=2, precision=precision, budget=h200_free,
                               **VIT_B16) is None
    # bf16 keeps fewer bytes, so it chunks later; a tiny budget still yields a valid chunk
    assert graph_bytes(rows=2, precision="bf16", **VIT_B16) < graph_bytes(rows=2, precision="fp32", **VIT_B16)
    assert auto_text_chunk(classes=1000, prompts_per_class=2, precision="fp32", budget=1.0, **VIT_B16) == 1


def test_estimate_bounds_the_real_graph(tiny_backbone):
    """The estimate (with its 1.5 safety factor) is above the saved activations autograd really keeps, but not
    wildly so: counted with saved-tensor hooks on a real text tower."""
    encoder = SoftPromptTextEncoder(tiny_backbone)
    prompts = encoder.tokenize(list(IMAGENET_CLASSNAMES[:64]), 4)
    module = get_host().learner("negprompt")(encoder, prompts, PromptSettings(n_ctx=4), torch.Generator(),
                                             ctx_pos=encoder.word_embeddings("a photo of a"), n_neg=2)
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module.negative_features()
    model = tiny_backbone.model
    estimate = graph_bytes(rows=2 * len(prompts), layers=len(model.transformer.resblocks),
                           width=tiny_backbone.text_width, suffix_tokens=int(prompts.eot.max()) + 1 - 5,
                           prefix_tokens=5, shared=True)
    assert estimate / 3 <= sum(storages.values()) <= estimate
    assert resolve_text_chunk("auto", backbone=tiny_backbone, prompts=prompts, prompts_per_class=2,
                              class_specific=False, precision="fp32") is None
    assert resolve_text_chunk(8, backbone=tiny_backbone, prompts=prompts, prompts_per_class=2,
                              class_specific=False, precision="fp32") == 8


def test_cli_text_chunk_values(tmp_path, tiny_vit_dir):
    make_image_folder(tmp_path / "train", per_class=3)
    bad = invoke(["fit-neg", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "n.st"),
                                   "--backbone", f"local-dir:{tiny_vit_dir}", "--text-chunk", "lots"])
    assert bad.exit_code == 2 and "--text-chunk must be auto or a whole number" in bad.stderr
