"""The plugin examples of docs/plugins.md are real packages (docs/examples/), installed here with pip as a user
would install them, and run through the CLI: a scorer, a backbone and a prompt learner with its own option."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import error_line, invoke, make_image_folder
from safetensors.torch import load_file

from negprompt_cli import registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
PACKAGES = {"negprompt-margin": "negprompt_margin", "negprompt-smooth": "negprompt_smooth",
            "negprompt-tiny": "negprompt_tiny"}


def test_the_docs_show_each_example_file_as_it_is():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    shown = dict((name, code) for name, code in re.findall(r"```(?:python|toml)\n# (\S+)\n(.*?)```", doc, re.S))
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(PACKAGES)
    for folder, module in PACKAGES.items():
        assert shown[f"{module}.py"] == (EXAMPLES / folder / f"{module}.py").read_text(), module
    assert shown["pyproject.toml"] == (EXAMPLES / "negprompt-margin" / "pyproject.toml").read_text()
    for folder in PACKAGES:  # the other two differ from the one shown only in their names
        toml = (EXAMPLES / folder / "pyproject.toml").read_text()
        assert toml == shown["pyproject.toml"].replace("margin", folder.removeprefix("negprompt-")), folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The three examples, pip-installed (from copies: a build writes into its source folder) into one folder."""
    root = tmp_path_factory.mktemp("examples")
    site = root / "site"
    for folder in PACKAGES:
        source = shutil.copytree(EXAMPLES / folder, root / folder)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                               "--no-build-isolation", "--target", str(site), str(source)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return site


@pytest.fixture
def examples(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    registry.reset_host()
    yield installed
    for module in PACKAGES.values():
        sys.modules.pop(module, None)
    registry.reset_host()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("example-images")
    make_image_folder(root / "data", classes=("red_stripes", "green_bars"), per_class=4)
    (root / "names.txt").write_text("red stripes\ngreen bars\n")
    return root


def test_the_examples_install_as_entry_points_and_are_listed(examples):
    listed = invoke(["plugins", "--json"])
    assert listed.exit_code == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert {"margin", "smooth", "tiny"} <= set(plugins)
    assert plugins["margin"]["registers"] == {"scorer": ["margin"]}
    assert plugins["tiny"]["registers"] == {"backbone": ["tiny-random"]}
    assert plugins["margin"]["dist"] == "negprompt-margin" and plugins["margin"]["version"] == "0.1.0"
    [learner] = plugins["smooth"]["entries"]["prompt learner"]
    assert learner["name"] == "coop-smooth" and learner["description"] == "CoOp with label smoothing"
    assert learner["options"] == [{"name": "smoothing", "type": "float", "default": 0.1}]


def test_the_scorer_example_scores_the_margin(examples):
    scorer = registry.get_host().scorer("margin")
    pos = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.19, 0.0]])
    torch.testing.assert_close(scorer(pos, None), torch.tensor([0.2, 0.01]))


def test_the_backbone_example_scores_zero_shot_from_its_own_lexicon_and_trains(examples, images, tmp_path):
    scored = invoke(["score", str(images / "data"), "--zero-shot", "--names", str(images / "names.txt"),
                     "--backbone", "tiny-random", "--format", "jsonl"])  # the default scorer: csp
    assert scored.exit_code == 0, scored.stderr
    rows = [json.loads(line) for line in scored.stdout.splitlines()]
    assert len(rows) == 8 and all(r["scorer"] == "csp" for r in rows)
    assert "encoding 318 lexicon candidates" in scored.stderr  # the world's 318 words, not WordNet's 70,000
    trained = invoke(["fit-pos", "--data", str(images / "data"), "--backbone", "tiny-random", "--out",
                      str(tmp_path / "pos.safetensors"), "--epochs", "1", "--n-ctx", "2", "--json"])
    assert trained.exit_code == 0, trained.stderr
    assert json.loads(trained.stdout)["backbone"]["backbone"] == "tiny-random"


def fit(learner: str, out: Path, images: Path, *options: str):
    result = invoke(["fit-pos", "--data", str(images / "data"), "--backbone", "toy", "--learner", learner,
                     *options, "--out", str(out), "--epochs", "2", "--n-ctx", "2", "--seed", "3", "--quiet"])
    return result


def test_the_learner_example_trains_with_its_option_and_without_it_is_coop(examples, images, tmp_path):
    assert fit("coop", tmp_path / "coop.safetensors", images).exit_code == 0
    none = fit("coop-smooth", tmp_path / "none.safetensors", images, "--learner-option", "smoothing=0")
    smooth = fit("coop-smooth", tmp_path / "smooth.safetensors", images, "--learner-option", "smoothing=0.5")
    assert none.exit_code == smooth.exit_code == 0, none.stderr + smooth.stderr
    coop, plain, smoothed = (load_file(tmp_path / f"{n}.safetensors") for n in ("coop", "none", "smooth"))
    torch.testing.assert_close(plain["ctx_pos"], coop["ctx_pos"], rtol=0, atol=0)
    assert not torch.allclose(smoothed["ctx_pos"], coop["ctx_pos"])
    from negprompt_cli.outputs.artifact import load_prompts

    assert load_prompts(tmp_path / "smooth.safetensors").training["learner_options"] == {"smoothing": 0.5}
    bad = fit("coop-smooth", tmp_path / "bad.safetensors", images, "--learner-option", "smoothing=1.5")
    assert bad.exit_code == 2
    assert error_line(bad) == "Error: learner 'coop-smooth': smoothing must be in [0, 1) (got 1.5)"
    assert not (tmp_path / "bad.safetensors").exists()
