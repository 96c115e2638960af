"""The device rule (docs/architecture.md) and mixed precision: what runs where, and gradients that survive bf16.

These run on NEGPROMPT_TEST_DEVICE (cpu in CI, cuda under scripts/gpu-check.sh)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import TEST_DEVICE, VIT_CFG, invoke, make_image_folder, write_local_dir
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from negprompt_cli.devices import PrecisionWarning, check_precision, resolve_device
from negprompt_cli.errors import UsageError
from negprompt_cli.features import image_features as features_module
from negprompt_cli.features.backbone import BackboneRequest, load_backbone
from negprompt_cli.features.text_encoder import SoftPromptTextEncoder
from negprompt_cli.inputs.image_folders import find_images
from negprompt_cli.registry import get_host
from negprompt_cli.training.learners import PromptSettings, exported_tensors


def test_device_names_that_cannot_run_here_are_usage_errors():
    with pytest.raises(UsageError, match="only cpu and cuda"):
        resolve_device("meta")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        with pytest.raises(UsageError, match=f"has {count} CUDA device"):
            resolve_device(f"cuda:{count}")
        assert resolve_device("cuda:0").type == "cuda"
    else:
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda:7")


def test_cli_device_errors_are_one_line_exit_2(tmp_path):
    make_image_folder(tmp_path / "train", per_class=2)
    bad = "cuda:7" if torch.cuda.device_count() < 8 else "cuda:99"
    result = invoke(["fit-pos", "--data", str(tmp_path / "train"), "--out",
                                      str(tmp_path / "p.safetensors"), "--backbone", "toy", "--device", bad])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --device") and "Traceback" not in result.stderr
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="what CPU does with a mixed-precision request")
def test_low_precision_on_cpu_runs_fp32_and_says_so_once(tmp_path):
    with pytest.warns(PrecisionWarning, match="running fp32 on cpu"):
        assert check_precision(torch.device("cpu"), "fp16") == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_precision(torch.device("cpu"), "fp32") == "fp32"
    with pytest.raises(UsageError, match="unknown precision"):
        check_precision(torch.device("cpu"), "fp8")
    make_image_folder(tmp_path / "train", per_class=4)
    out = tmp_path / "neg.safetensors"
    result = invoke(["fit-neg", "--data", str(tmp_path / "train"), "--out", str(out), "--backbone",
                                      "toy", "--precision", "fp16", "--pos-epochs", "1", "--epochs", "1",
                                      "--n-ctx", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("running fp32 on cpu") == 1  # two stages, one warning
    assert json.loads(result.stdout)["threshold"]["value"] > 0


def test_stage_outputs_are_cpu_fp32(tiny_backbone):
    """Exports cross the stage boundary on the CPU, whatever device trained them."""
    encoder = SoftPromptTextEncoder(tiny_backbone)
    prompts = encoder.tokenize(["cat", "dog"], 4)
    module = get_host().learner("negprompt")(encoder, prompts, PromptSettings(n_ctx=4), torch.Generator(),
                                             ctx_pos=encoder.word_embeddings("a photo of a"))
    for name, tensor in exported_tensors(module).items():
        assert tensor.device.type == "cpu" and tensor.dtype == torch.float32 and not tensor.requires_grad, name


@pytest.mark.slow
def test_decoding_workers_from_a_forkserver_give_the_same_features(tiny_backbone, tmp_path, monkeypatch):
    """On CUDA the DataLoader starts its workers from a forkserver; the features must not change."""
    assert features_module.worker_context(torch.device("cuda"), 2) == "forkserver"
    assert features_module.worker_context(torch.device("cpu"), 0) is None
    assert features_module.worker_context(torch.device("cpu"), 2) is None  # no process group here
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # a torchrun rank's: its sockets stay
    assert features_module.worker_context(torch.device("cpu"), 2) == "forkserver"  # out of the workers
    monkeypatch.undo()
    paths = find_images(make_image_folder(tmp_path / "imgs", per_class=3))
    inline, _, _ = features_module.encode_images(tiny_backbone, paths, use_cache=False, num_workers=0, quiet=True)
    monkeypatch.setattr(features_module, "worker_context", lambda device, workers: "forkserver")
    pooled, keep, stats = features_module.encode_images(tiny_backbone, paths, use_cache=False, num_workers=2,
                                                        batch_size=4, quiet=True)
    assert keep == list(range(len(paths))) and stats.encoded == len(paths)
    torch.testing.assert_close(pooled, inline, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def wide_text_dir(tmp_path_factory):
    cfg = json.loads(json.dumps(VIT_CFG))
    cfg["text_cfg"].update(width=64, heads=4, layers=4)
    return write_local_dir(tmp_path_factory.mktemp("wide") / "clip", cfg)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [None, 256])
def test_bf16_gradient_at_1000_classes_within_2_percent(wide_text_dir, chunk):
    """fit-neg's gradient under bf16 autocast vs the float64 gradient, C = 1000, P = 2.

    The shared prefix's key/value gradient is a sum over all classes; accumulated in bf16 it was
    off by a third of the gradient's size. Now the sum and the loss are fp32."""
    names = list(IMAGENET_CLASSNAMES)

    def gradient(dtype, autocast):
        backbone = load_backbone(BackboneRequest(f"local-dir:{wide_text_dir}", device=TEST_DEVICE))
        backbone.model.to(dtype)
        encoder = SoftPromptTextEncoder(backbone)
        generator = torch.Generator().manual_seed(0)
        ctx_pos = (torch.randn(4, 64, generator=generator) * 0.02).to(backbone.device, dtype)
        module = get_host().learner("negprompt")(encoder, encoder.tokenize(names, 4), PromptSettings(n_ctx=4),
                                                 torch.Generator().manual_seed(0), ctx_pos=ctx_pos, n_neg=2,
                                                 text_chunk=chunk, init_noise=1e-2)
        module.ctx_neg.data = module.ctx_neg.data.to(dtype)
        feats = torch.nn.functional.normalize(torch.randn(64, VIT_CFG["embed_dim"], generator=generator), dim=-1)
        labels = torch.randint(0, len(names), (64,), generator=generator)
        with torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=autocast):
            module.loss_and_backward(feats.to(backbone.device, dtype), labels.to(backbone.device))
        return module.ctx_neg.grad.double().cpu()

    reference = gradient(torch.float64, False)
    for autocast, bound in ((False, 1e-5), (True, 0.02)):
        grad = gradient(torch.float32, autocast)
        relative = float((grad - reference).abs().max() / reference.abs().max())
        assert relative <= bound, (autocast, relative)
