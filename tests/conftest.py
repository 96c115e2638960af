"""Shared fixtures: tiny open_clip CLIPs (ViT and ResNet towers) written in open_clip's
``local-dir:`` layout, and generated image folders. Nothing touches the network."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (it reads these once, at import): no network, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# The device every test runs on: CPU in CI; `NEGPROMPT_TEST_DEVICE=cuda pytest` runs the same suite on a GPU
# (scripts/gpu-check.sh does). CLI invocations pick it up through NEGPROMPT_DEVICE (the --device envvar).
TEST_DEVICE = os.environ.get("NEGPROMPT_TEST_DEVICE", "cpu")

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
VIT_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                            "patch_size": 8}, "text_cfg": TEXT_CFG}
RN_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16,
                                           "head_width": 16}, "text_cfg": TEXT_CFG}
PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def write_local_dir(path: Path, cfg: dict, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    # Pretrained CLIPs sit at logit scale ~100 (random init: 14.3); match them so that the
    # small differences between a random tower's features are visible to training.
    model.logit_scale.data.fill_(float(np.log(100.0)))
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": PREPROCESS}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    return write_local_dir(tmp_path_factory.mktemp("tiny") / "vit", VIT_CFG)


@pytest.fixture(scope="session")
def tiny_rn_dir(tmp_path_factory) -> Path:
    return write_local_dir(tmp_path_factory.mktemp("tiny") / "rn", RN_CFG)


@pytest.fixture(params=["vit", "rn"])
def tiny_backbone(request, tiny_vit_dir, tiny_rn_dir):
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone

    path = tiny_vit_dir if request.param == "vit" else tiny_rn_dir
    return load_backbone(BackboneRequest(name=f"local-dir:{path}", device=TEST_DEVICE))


def draw(kind: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """Visually distinct procedural classes: red horizontal stripes, green vertical, blue dots."""
    img = rng.integers(0, 40, size=(size, size, 3)).astype(np.uint8)
    if kind == "red_stripes":
        img[::4, :, 0] = 255
        img[1::4, :, 0] = 200
    elif kind == "green_bars":
        img[:, ::4, 1] = 255
        img[:, 1::4, 1] = 200
    else:
        img[::6, ::6, 2] = 255
        img[size // 4: size * 3 // 4, size // 4: size * 3 // 4, 2] = 180
    return Image.fromarray(img)


def make_image_folder(root: Path, classes=("red_stripes", "green_bars", "blue_dots"), per_class: int = 8,
                      seed: int = 0, ext: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(cls, rng).save(root / cls / f"{i:03d}{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "train")


def error_line(result) -> str:  # type: ignore[no-untyped-def]
    """The one "Error:" line a failing command prints."""
    return next(line for line in result.stderr.splitlines() if line.startswith("Error:"))


NEG_FAST = ["--epochs", "4", "--batch-size", "16", "--lr", "0.05"]  # fit-neg settings that train in a second


def pos_fast(epochs: int = 2) -> list[str]:
    """fit-pos settings that train the tiny test models in about a second (AdamW, no warm-up, 4 context tokens);
    the number of epochs is each test's own."""
    return ["--epochs", str(epochs), "--batch-size", "16", "--lr", "0.01", "--optimizer", "adamw",
            "--warmup-epochs", "0", "--n-ctx", "4"]


def train_positives(root: Path, backbone_dir: Path, cache: Path, fit_args: list[str], *, train: int,
                    test: int) -> Path:
    """Two-class train/ and test/ folders under ``root`` and positive prompts trained on them (root/pos.safetensors),
    for a test module to build once and copy per test (:func:`copy_tree`)."""
    make_image_folder(root / "train", classes=("red_stripes", "green_bars"), per_class=train, seed=0)
    make_image_folder(root / "test", classes=("red_stripes", "green_bars"), per_class=test, seed=1)
    pos = invoke(["fit-pos", "--data", str(root / "train"), "--out", str(root / "pos.safetensors"), "--backbone",
                  f"local-dir:{backbone_dir}", "--cache-dir", str(cache), *fit_args])
    assert pos.exit_code == 0, pos.stderr
    return root


def copy_tree(source: Path, target: Path) -> Path:
    """``source``'s files into ``target`` (for a test's own copy of artifacts trained once per module)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def invoke(args, **kwargs):  # type: ignore[no-untyped-def]
    """Run the CLI in-process (the one way the tests call it; ``kwargs`` go to ``CliRunner.invoke``: ``env``,
    ``input``); whatever the outcome, never a traceback on stderr unless NEGPROMPT_DEBUG=1 asks for one."""
    from typer.testing import CliRunner

    from negprompt_cli.composers.cli import app

    result = CliRunner().invoke(app, args, **kwargs)
    if (kwargs.get("env") or {}).get("NEGPROMPT_DEBUG") != "1":
        assert "Traceback" not in result.stderr
    return result


@pytest.fixture(autouse=True)
def ctrl_c_stops_the_suite(monkeypatch):
    """A Ctrl-C while a test runs a command in-process must stop pytest, not be swallowed as the command's exit
    130: re-raise it once the command has saved its checkpoint and returned."""
    from typer.testing import CliRunner

    from negprompt_cli.composers import cli

    original = CliRunner.invoke

    def invoke_then_pass_ctrl_c_on(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = original(self, *args, **kwargs)
        if cli.interrupted_by_user():
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(CliRunner, "invoke", invoke_then_pass_ctrl_c_on)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, as torchrun runs each process (OMP_NUM_THREADS=1): a one-process run
    compared byte for byte with torchrun's must sum its floats in the same order (two threads split the sums
    differently and move the last bits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache and a fresh plugin host."""
    from negprompt_cli import registry

    monkeypatch.setenv("NEGPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NEGPROMPT_DEVICE", TEST_DEVICE)
    monkeypatch.delenv("NEGPROMPT_LOAD_PLUGINS", raising=False)
    registry.reset_host()
    yield
    registry.reset_host()


@pytest.fixture
def mount(tmp_path):
    """mount(name, options) -> a tmpfs folder; unmounted afterwards."""
    mounted = []

    def make(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fresh loopback Hub (tests/hub_server.py), the client pointed at it, online (only towards 127.0.0.1)."""
    import huggingface_hub.constants as constants
    from hub_server import HubServer

    server = HubServer().start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    yield server
    server.stop()
