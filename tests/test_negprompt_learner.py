"""The NegPrompt learner on real (tiny) text towers: what is trained, what is frozen, what is encoded."""

from __future__ import annotations

import pytest
import torch

from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
from negprompt_cli.registry import get_host
from negprompt_cli.training.learners import PromptSettings
from negprompt_cli.training.losses import negprompt_loss

NAMES = ["cat", "dog", "school bus"]


def build(backbone, **options):
    encoder = SoftPromptTextEncoder(backbone)
    prompts = encoder.tokenize(NAMES, 4)
    ctx_pos = encoder.word_embeddings("a photo of a")
    builder = get_host().learner("negprompt")
    module = builder(encoder, prompts, PromptSettings(n_ctx=4), torch.Generator().manual_seed(0), ctx_pos=ctx_pos,
                     **options)
    return encoder, prompts, ctx_pos, module


def test_only_negative_contexts_are_trained(tiny_backbone):
    _, _, _, module = build(tiny_backbone, n_neg=2)
    assert [name for name, p in module.named_parameters() if p.requires_grad] == ["ctx_neg"]
    device = tiny_backbone.device
    f = torch.nn.functional.normalize(torch.randn(5, 32, device=device), dim=-1)
    loss, _ = module.loss(f, torch.tensor([0, 1, 2, 0, 1], device=device))
    loss.backward()
    assert module.ctx_neg.grad is not None and module.ctx_neg.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.model.parameters())


def test_fp32_noise_breaks_symmetry(tiny_backbone):
    _, _, ctx_pos, module = build(tiny_backbone, n_neg=2, init_noise=1e-5)
    neg = module.ctx_neg.detach()
    assert not torch.equal(neg[0], neg[1])
    assert (neg - ctx_pos).abs().max() <= 1e-5 and (neg - ctx_pos).abs().max() > 0


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_loss_uses_separately_encoded_features(tiny_backbone, variant):
    """Batched [C, P] negative encoding equals encoding each negative prompt on its own, untruncated."""
    encoder, prompts, ctx_pos, module = build(tiny_backbone, n_neg=3, loss_variant=variant)
    with torch.no_grad():
        pos = encoder.encode(ctx_pos, prompts, truncate=False)
        neg = torch.stack([encoder.encode(module.ctx_neg[k], prompts, truncate=False) for k in range(3)], dim=1)
        torch.testing.assert_close(module.negative_features(), neg, atol=1e-6, rtol=0)
        torch.testing.assert_close(module.text_pos, pos, atol=1e-6, rtol=0)
        f = torch.nn.functional.normalize(torch.randn(4, 32, device=tiny_backbone.device), dim=-1)
        labels = torch.tensor([2, 0, 1, 1], device=tiny_backbone.device)
        expected = negprompt_loss(variant, f, pos, neg, labels, tiny_backbone.logit_scale)["loss"]
        ours, _ = module.loss(f, labels)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


def test_class_specific_negatives(tiny_backbone):
    encoder, prompts, _, module = build(tiny_backbone, n_neg=2, neg_csc=True)
    assert module.ctx_neg.shape == (3, 2, 4, 32)
    with torch.no_grad():
        feats = module.negative_features()
        direct = encoder.encode(module.ctx_neg[1, 0], prompts.__class__(prompts.tokens[1:2], prompts.eot[1:2], 4,
                                                                       prompts.names[1:2]))
    torch.testing.assert_close(feats[1, 0], direct[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("neg_csc", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_caching_equals_the_unchunked_gradient(tiny_backbone, variant, neg_csc, dtype):
    """Chunked re-encoding with cached feature gradients == one unchunked backward pass.

    In float64 the text tower's arithmetic is exact enough to show the algorithm is identical
    (<= 1e-5 absolute); in float32 the two only differ by summation order (relative to the norm)."""
    tiny_backbone.model.to(dtype)
    device = tiny_backbone.device
    f = torch.nn.functional.normalize(torch.randn(6, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    f, labels = f.to(device, dtype), torch.tensor([0, 1, 2, 2, 1, 0], device=device)
    grads, losses = [], []
    for chunk in (None, 1, 2):
        _, _, _, module = build(tiny_backbone, n_neg=2, loss_variant=variant, neg_csc=neg_csc, text_chunk=chunk)
        loss, _ = module.loss_and_backward(f, labels)
        grads.append(module.ctx_neg.grad.clone())
        losses.append(loss.item())
    for g, value in zip(grads[1:], losses[1:], strict=True):
        assert value == pytest.approx(losses[0], abs=1e-5)
        if dtype == torch.float64:
            assert (g - grads[0]).abs().max() <= 1e-5
        else:
            assert (g - grads[0]).norm() / grads[0].norm() <= 1e-5
