"""A backbone plugin: a one-layer CLIP with seeded random weights, built offline (an example)."""

import torch

from negprompt.plugin import Backbone, hookimpl, world_lexicon_dir

CONFIG = {"embed_dim": 32,
          "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def tiny_factory(*, pretrained, device, cache_dir, quick_gelu):
    import open_clip  # here, not at the top: every negprompt command loads the plugins, few build a model

    torch.manual_seed(0)  # the same weights every time: features can be cached
    model = open_clip.CLIP(**CONFIG, quick_gelu=bool(quick_gelu)).to(device).eval().requires_grad_(False)
    return Backbone(name="tiny-random", pretrained=pretrained, model=model,
                    preprocess=open_clip.image_transform(32, is_train=False),
                    tokenizer=open_clip.get_tokenizer("ViT-B-16"), image_size=32, quick_gelu=bool(quick_gelu),
                    # random weights know no words: mine negative labels from a small lexicon, not WordNet's
                    default_lexicon=str(world_lexicon_dir()))


@hookimpl
def register_backbones(register):
    register("tiny-random", tiny_factory, description="one-layer CLIP, seeded random weights (an example)")
