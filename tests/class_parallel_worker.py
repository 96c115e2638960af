"""Run by tests/test_scale.py under torchrun (2 CPU processes, gloo): the class-parallel NegPrompt gradient
against the one-process gradient of the same module, in float64. Rank 0 writes the largest differences as JSON."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from negprompt_cli.distributed import process_group
from negprompt_cli.features.backbone import BackboneRequest, load_backbone
from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
from negprompt_cli.registry import get_host
from negprompt_cli.training.class_parallel import ClassParallel
from negprompt_cli.training.learners import PromptSettings

NAMES = ["cat", "dog", "school bus", "red square", "green bars", "blue dots", "tiny star"]  # 7: uneven shares


def gradient(backbone, ranks, *, chunk, variant, neg_csc):  # type: ignore[no-untyped-def]
    encoder = SoftPromptTextEncoder(backbone)
    prompts = encoder.tokenize(NAMES, 4)
    builder = get_host().learner("negprompt")
    module = builder(encoder, prompts, PromptSettings(n_ctx=4), torch.Generator().manual_seed(0),
                     ctx_pos=encoder.word_embeddings("a photo of a").double(), n_neg=2, loss_variant=variant,
                     neg_csc=neg_csc, text_chunk=chunk)
    module.ctx_neg.data = module.ctx_neg.data.double()
    if ranks is not None:
        module.class_parallel = ClassParallel(ranks)
    features = torch.nn.functional.normalize(torch.randn(9, 32, generator=torch.Generator().manual_seed(1)),
                                             dim=-1).double()
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 3])
    loss, _ = module.loss_and_backward(features, labels)
    return float(loss), module.ctx_neg.grad.clone(), module.export()["text_neg"]


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    with process_group(True, "cpu") as (ranks, device):
        backbone = load_backbone(BackboneRequest(name=f"local-dir:{model_dir}", device=device))
        backbone.model.double()
        results = {}
        for chunk in (None, 2):
            for variant in ("official", "paper"):
                for neg_csc in (False, True):
                    one_loss, one_grad, one_text = gradient(backbone, None, chunk=chunk, variant=variant,
                                                            neg_csc=neg_csc)
                    par_loss, par_grad, par_text = gradient(backbone, ranks, chunk=chunk, variant=variant,
                                                            neg_csc=neg_csc)
                    results[f"chunk={chunk},{variant},csc={neg_csc}"] = {
                        "grad": float((par_grad - one_grad).abs().max()), "grad_max": float(one_grad.abs().max()),
                        "loss": abs(par_loss - one_loss), "text_neg": float((par_text - one_text).abs().max())}
        gathered = [None] * ranks.world_size
        dist.all_gather_object(gathered, results)
        if ranks.is_main:
            with open(out, "w") as handle:
                json.dump({"world_size": ranks.world_size, "ranks": gathered}, handle)
        # leave together: a rank that tears its gloo pairs down while the other still completes the last
        # collective can abort it ("terminate called without an active exception", seen once in CI)
        dist.barrier()


if __name__ == "__main__":
    main()
