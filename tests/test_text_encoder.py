"""The soft-prompt text path must be exactly open_clip's encode_text, truncated or not."""

from __future__ import annotations

import pytest
import torch

from negprompt_cli.features.text_encoder import SoftPromptTextEncoder

NAMES = ["tench", "great white shark", "a very long class name with many words in it", "x"]


def photo_context(encoder: SoftPromptTextEncoder) -> torch.Tensor:
    return encoder.word_embeddings("a photo of a")


def test_word_embedding_context_equals_encode_text(tiny_backbone):
    encoder = SoftPromptTextEncoder(tiny_backbone)
    ctx = photo_context(encoder)
    assert ctx.shape[0] == 4
    prompts = encoder.tokenize(NAMES, n_ctx=4, suffix=".")
    with torch.no_grad():
        ours = encoder.encode(ctx, prompts, normalize=False)
        reference = tiny_backbone.model.encode_text(
            tiny_backbone.tokenizer([f"a photo of a {n}." for n in NAMES]).to(tiny_backbone.device))
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_truncated_equals_untruncated_exactly(tiny_backbone):
    encoder = SoftPromptTextEncoder(tiny_backbone)
    torch.manual_seed(0)
    ctx = torch.randn(len(NAMES), 16, tiny_backbone.text_width, device=tiny_backbone.device) * 0.02
    prompts = encoder.tokenize(NAMES, n_ctx=16)
    with torch.no_grad():
        full = encoder.encode(ctx, prompts, truncate=False)
        cut = encoder.encode(ctx, prompts)
        chunked = encoder.encode(ctx, prompts, chunk_size=1)
    # Mathematically identical (masked keys get exactly zero weight); BLAS may round a
    # different-shaped matmul differently, so allow float32 rounding and nothing more.
    torch.testing.assert_close(cut, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=0)
    assert int(prompts.eot.max()) + 1 < encoder.context_length  # the cut really is shorter


def test_gradients_reach_only_the_context(tiny_backbone):
    encoder = SoftPromptTextEncoder(tiny_backbone)
    ctx = torch.nn.Parameter(torch.randn(8, tiny_backbone.text_width, device=tiny_backbone.device) * 0.02)
    prompts = encoder.tokenize(NAMES, n_ctx=8)
    encoder.encode(ctx, prompts).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.model.parameters())


def test_truncated_gradient_equals_untruncated(tiny_backbone):
    encoder = SoftPromptTextEncoder(tiny_backbone)
    prompts = encoder.tokenize(NAMES, n_ctx=6)
    base = torch.randn(6, tiny_backbone.text_width, device=tiny_backbone.device) * 0.02
    grads = []
    for truncate in (False, True):
        ctx = torch.nn.Parameter(base.clone())
        (encoder.encode(ctx, prompts, truncate=truncate) ** 2).sum().backward()
        grads.append(ctx.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_name_too_long_is_a_clear_error(tiny_backbone):
    import pytest

    from negprompt_cli.errors import UsageError

    encoder = SoftPromptTextEncoder(tiny_backbone)
    with pytest.raises(UsageError, match="too long"):
        encoder.tokenize(["word " * 80], n_ctx=16)


def test_gradient_checkpointing_gives_the_same_gradient(tiny_backbone, monkeypatch):
    """--grad-checkpoint recomputes activations in both the plain and the shared-prefix path."""
    from negprompt_cli.features import shared_prefix
    from negprompt_cli.features.backbone import set_text_checkpointing

    calls = []
    original = shared_prefix.checkpoint
    monkeypatch.setattr(shared_prefix, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))

    encoder = SoftPromptTextEncoder(tiny_backbone)
    prompts = encoder.tokenize(NAMES, n_ctx=6)
    base = torch.randn(2, 6, tiny_backbone.text_width, device=tiny_backbone.device) * 0.02
    for encode in (lambda c: encoder.encode(c[0], prompts), lambda c: encoder.encode_shared(c, prompts)):
        grads = []
        for enabled in (False, True):
            set_text_checkpointing(tiny_backbone, enabled)
            ctx = torch.nn.Parameter(base.clone())
            (encode(ctx) ** 2).sum().backward()
            grads.append(ctx.grad)
        set_text_checkpointing(tiny_backbone, False)
        torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-6)
    assert len(calls) == len(tiny_backbone.model.transformer.resblocks)  # the shared path did recompute


def test_shared_prefix_equals_plain_path_values_and_gradients(tiny_backbone):
    """Prefix computed once per context + per-class suffixes == encoding every (context, class) row."""
    encoder = SoftPromptTextEncoder(tiny_backbone)
    prompts = encoder.tokenize(NAMES, n_ctx=5)
    base = torch.randn(3, 5, tiny_backbone.text_width, device=tiny_backbone.device) * 0.02
    weights = torch.randn(3, len(NAMES), tiny_backbone.model.text_projection.shape[1], device=tiny_backbone.device)

    shared_ctx = torch.nn.Parameter(base.clone())
    shared = encoder.encode_shared(shared_ctx, prompts, chunk_size=2)
    (shared * weights).sum().backward()

    plain_ctx = torch.nn.Parameter(base.clone())
    plain = encoder.encode(plain_ctx.repeat_interleave(len(NAMES), dim=0), prompts.repeat(3), truncate=False)
    (plain.view(3, len(NAMES), -1) * weights).sum().backward()

    torch.testing.assert_close(shared, plain.view(3, len(NAMES), -1).detach(), atol=1e-6, rtol=0)
    # the prefix gradient is summed over classes in another order: compare relative to its norm
    relative = (shared_ctx.grad - plain_ctx.grad).norm() / plain_ctx.grad.norm()
    assert relative < 1e-5, relative


def test_mixed_precision_paths_agree(tiny_backbone):
    """--precision bf16 runs the text paths under autocast (CUDA in practice; CPU autocast here)."""
    encoder = SoftPromptTextEncoder(tiny_backbone)
    prompts = encoder.tokenize(NAMES, n_ctx=4)
    ctx = torch.nn.Parameter(torch.randn(2, 4, tiny_backbone.text_width, device=tiny_backbone.device) * 0.02)
    with torch.autocast(tiny_backbone.device.type, dtype=torch.bfloat16):
        shared = encoder.encode_shared(ctx, prompts)
        plain = encoder.encode(ctx[1], prompts)
        shared.float().sum().backward()
    assert ctx.grad is not None and torch.isfinite(ctx.grad).all()
    torch.testing.assert_close(shared[1].float(), plain.float(), atol=3e-2, rtol=0)
    with torch.no_grad():
        reference = encoder.encode(ctx[1], prompts)
    torch.testing.assert_close(plain.float(), reference, atol=3e-2, rtol=0)


@pytest.mark.parametrize("which", ["tiny", "toy", "ViT-B/16"])
def test_lexicon_prompts_cut_at_their_end_and_ensembles_equal_the_models_own_encode_text(which, tiny_vit_dir):
    """encode_texts runs each length bucket only up to its longest end-of-text token (exact for the causal text
    tower): the features must equal CLIP.encode_text at the full context, here on the tiny test CLIP, the
    shipped toy CLIP and a randomly initialised ViT-B/16 text tower."""
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
    from negprompt_cli.features.text_features import encode_texts

    request = {"tiny": BackboneRequest(f"local-dir:{tiny_vit_dir}", device="cpu"),
               "toy": BackboneRequest("toy", device="cpu"),
               "ViT-B/16": BackboneRequest("ViT-B/16", pretrained="none", device="cpu")}[which]
    torch.manual_seed(0)
    backbone = load_backbone(request)
    words = ["cat", "school bus", "the nice red fox", "a", "hippopotamus", "very small striped wooden toy car",
             "Zürich", "x" * 30]
    texts = [f"a photo of a {w}." for w in words] + [f"This is a {w} photo" for w in words]
    ours = encode_texts(SoftPromptTextEncoder(backbone), texts, batch=5)  # several buckets of several lengths
    with torch.no_grad():
        reference = backbone.model.encode_text(backbone.tokenizer(texts), normalize=True).float()
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-5

    # template ensembles (CSP's 8 noun templates, NegLabel's adjective one): prefixes shared, raw outputs averaged
    from negprompt_cli.features.text_features import template_features
    from negprompt_cli.scoring.negative_labels import CSP_NOUN_TEMPLATES

    for templates in (CSP_NOUN_TEMPLATES, ("This is a {} photo",)):
        ours = template_features(SoftPromptTextEncoder(backbone), words, templates, batch=3)
        with torch.no_grad():
            raw = torch.stack([backbone.model.encode_text(backbone.tokenizer([t.format(w) for w in words])).float()
                               for t in templates])
        reference = torch.nn.functional.normalize(raw.mean(dim=0), dim=-1)
        assert (ours - reference).abs().max() < 1e-5
