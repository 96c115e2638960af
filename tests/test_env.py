"""`negprompt env`: the facts a bug report needs, checked against their sources."""

from __future__ import annotations

import json
from importlib import metadata

import torch
from conftest import TEST_DEVICE, invoke


def test_env_json_matches_its_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("NEGPROMPT_CACHE", str(tmp_path / "features"))
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_print_me")
    result = invoke(["env", "--json"])
    assert result.exit_code == 0, result.stderr
    assert "hf_do_not_print_me" not in result.stdout
    facts = json.loads(result.stdout)
    assert facts["torch"]["version"] == torch.__version__
    assert facts["torch"]["cuda_build"] == torch.version.cuda
    assert facts["torch"]["cuda_available"] == torch.cuda.is_available()
    assert facts["packages"]["open_clip_torch"] == metadata.version("open_clip_torch")
    assert facts["packages"]["scikit-learn"] == metadata.version("scikit-learn")
    assert facts["feature_cache"] == {"path": str(tmp_path / "features"), "exists": False}
    assert facts["environment"]["HF_TOKEN"] == "(set)"
    assert facts["environment"]["NEGPROMPT_CACHE"] == str(tmp_path / "features")
    plugins = {p["name"]: p for p in facts["plugins"]}
    assert {"coop", "negprompt_learner", "openclip", "scorers"} <= set(plugins)
    assert all(p["error"] is None for p in plugins.values())
    devices = facts["torch"]["devices"]
    assert [d["name"] for d in devices] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if TEST_DEVICE.startswith("cuda"):
        assert devices and all(d["memory_gib"] > 0 for d in devices)


def test_env_text_is_its_result_on_stdout(monkeypatch):
    # `negprompt env > env.txt` for a bug report: the human-readable facts are the command's data
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_print_me")
    result = invoke(["env"])
    assert result.exit_code == 0 and result.stderr == ""
    assert f"torch {torch.__version__}" in result.stdout
    assert "HF_TOKEN=(set)" in result.stdout and "hf_do_not_print_me" not in result.stdout
