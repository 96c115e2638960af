"""push / pull / hf:// references against a real HTTP server on 127.0.0.1 (the unmodified
huggingface_hub client talks to it; nothing leaves the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_tree, invoke, make_image_folder
from safetensors.torch import save_file

from negprompt_cli.outputs.artifact import PromptArtifact, load_prompts, save_prompts


@pytest.fixture(scope="module")
def trained_artifact(tmp_path_factory, tiny_vit_dir) -> Path:
    """A real fit-neg artifact from the tiny backbone (two classes), trained once for this module."""
    root = tmp_path_factory.mktemp("hub-artifact")
    train = make_image_folder(root / "train", classes=("red_stripes", "green_bars"), per_class=4)
    result = invoke(["fit-neg", "--data", str(train), "--out", str(root / "neg.safetensors"), "--backbone",
                     f"local-dir:{tiny_vit_dir}", "--pos-epochs", "2", "--epochs", "2", "--n-ctx", "4",
                     "--cache-dir", str(tmp_path_factory.mktemp("hub-cache"))])
    assert result.exit_code == 0, result.stderr
    return root


@pytest.fixture
def artifact_file(trained_artifact, tmp_path) -> Path:
    """Each test's own copy of the trained artifact and its training folder."""
    return copy_tree(trained_artifact, tmp_path) / "neg.safetensors"


def cli(args, **kwargs):
    result = invoke(args, **kwargs)
    assert "Traceback" not in result.stderr
    return result


def test_push_pull_pin_offline_transfer_score(hub, artifact_file, tmp_path, tiny_vit_dir):
    pushed = cli(["push", str(artifact_file), "lab/negprompt-test", "--message", "first"])
    assert pushed.exit_code == 0, pushed.stderr
    commit = pushed.stdout.strip()
    assert len(commit) == 40
    repo = hub.store.repos["lab/negprompt-test"]
    files = repo["commits"][commit]
    assert {"prompts.safetensors", "negprompt_config.json", "classnames.json", "README.md"} <= set(files)
    assert files["prompts.safetensors"] == artifact_file.read_bytes()
    assert json.loads(files["classnames.json"]) == ["green bars", "red stripes"]
    assert json.loads(files["negprompt_config.json"])["schema_version"] == 1

    from huggingface_hub import ModelCard

    card_path = tmp_path / "README.md"
    card_path.write_bytes(files["README.md"])
    card = ModelCard.load(card_path).data.to_dict()
    assert card["library_name"] == "negprompt" and "negprompt" in card["tags"]
    assert "negprompt transfer --prompts hf://lab/negprompt-test" in card_path.read_text()

    # pull by branch, then pinned to the commit, then offline from the cache
    by_branch = cli(["pull", "lab/negprompt-test", "--json"])
    assert by_branch.exit_code == 0, by_branch.stderr
    info = json.loads(by_branch.stdout)
    assert info["commit"] == commit and info["kind"] == "negative"
    assert Path(info["path"]).read_bytes() == artifact_file.read_bytes()
    pinned = cli(["pull", f"lab/negprompt-test@{commit}", "--json"])
    assert json.loads(pinned.stdout)["commit"] == commit
    before = len(hub.store.requests)
    offline = cli(["pull", "lab/negprompt-test", "--offline", "--json"])
    assert offline.exit_code == 0 and json.loads(offline.stdout)["commit"] == commit
    assert len(hub.store.requests) == before  # the cache answered; no request reached the server

    # a second push to a branch with a tag; each revision resolves to its own commit
    second = cli(["push", str(artifact_file), "lab/negprompt-test", "--branch", "dev", "--tag", "v1"])
    assert second.exit_code == 0, second.stderr
    dev_commit = second.stdout.strip()
    assert dev_commit != commit
    for rev in ("dev", "v1"):
        assert json.loads(cli(["pull", f"lab/negprompt-test@{rev}", "--json"]).stdout)["commit"] == dev_commit

    # --out copies the files and records where they came from
    out = tmp_path / "pulled"
    assert cli(["pull", "lab/negprompt-test@v1", "--out", str(out)]).exit_code == 0
    assert json.loads((out / "negprompt_source.json").read_text())["commit"] == dev_commit
    assert (out / "prompts.safetensors").read_bytes() == artifact_file.read_bytes()

    # hf:// references: transfer and score straight from the Hub
    names = tmp_path / "names.txt"
    names.write_text("red stripes\ngreen bars\nblue dots\n")
    transferred = cli(["transfer", "--prompts", "hf://lab/negprompt-test", "--names", str(names), "--out",
                       str(tmp_path / "mine.safetensors")])
    assert transferred.exit_code == 0, transferred.stderr
    assert load_prompts(tmp_path / "mine.safetensors").class_names == ["red stripes", "green bars", "blue dots"]
    images = make_image_folder(tmp_path / "images", classes=("x",), per_class=3)
    scored = cli(["score", str(images), "--prompts", f"hf://lab/negprompt-test@{commit}", "--format", "jsonl"])
    assert scored.exit_code == 0, scored.stderr
    assert len(scored.stdout.splitlines()) == 3


@pytest.mark.slow
def test_installed_command_against_the_server(hub, artifact_file, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "sub-hf"), "HF_TOKEN": "hf_dummy",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    exe = [str(Path(sys.executable).with_name("negprompt"))]
    if not Path(exe[0]).exists():
        exe = [sys.executable, "-m", "negprompt_cli"]
    push = subprocess.run([*exe, "push", str(artifact_file), "team/shared"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert push.returncode == 0, push.stderr
    pull = subprocess.run([*exe, "pull", "team/shared", "--json"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert pull.returncode == 0, pull.stderr
    assert json.loads(pull.stdout)["commit"] == push.stdout.strip()
    missing = subprocess.run([*exe, "pull", "team/absent"], capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 4 and missing.stderr.startswith("Error: Hub repository team/absent not found")


def test_bad_inputs(hub, artifact_file, tmp_path):
    def error(args, code, text):
        result = cli(args)
        assert result.exit_code == code, result.stderr
        first = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
        assert text in first, result.stderr

    error(["pull", "not a/valid//id"], 2, "malformed Hub repo id")
    error(["pull", "lab/absent"], 4, "not found")
    assert cli(["push", str(artifact_file), "lab/p"]).exit_code == 0
    error(["pull", "lab/p@nope"], 4, "revision 'nope' not found")
    # repos that are not negprompt artifacts
    hub.store.create("lab/pickle-only", {"pytorch_model.bin": b"\x80\x04pickle", "config.json": b"{}"})
    error(["pull", "lab/pickle-only"], 5, "no prompts.safetensors")
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(3)}, str(weights))
    hub.store.create("lab/random-model", {"prompts.safetensors": weights.read_bytes(),
                                          "negprompt_config.json": b'{"schema_version": 1}'})
    error(["pull", "lab/random-model"], 5, "not a negprompt artifact")
    hub.store.create("lab/future", {"prompts.safetensors": artifact_file.read_bytes(),
                                    "negprompt_config.json": b'{"schema_version": 7}'})
    error(["pull", "lab/future"], 5, "schema 7")
    # the wrong backbone is refused, naming both
    error(["pull", "lab/p", "--backbone", "RN50", "--pretrained", "openai"], 5, "but the backbone is RN50")
    # push of something that is not an artifact
    junk = tmp_path / "junk.safetensors"
    junk.write_text("nope")
    error(["push", str(junk), "lab/junk"], 5, "not a negprompt prompts file")
    assert "lab/junk" not in hub.store.repos
    # nothing half-written in --out
    out = tmp_path / "out"
    error(["pull", "lab/pickle-only", "--out", str(out)], 5, "no prompts.safetensors")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_server_down_with_and_without_cache(hub, artifact_file, tmp_path, monkeypatch):
    assert cli(["push", str(artifact_file), "lab/p"]).exit_code == 0
    assert cli(["pull", "lab/p"]).exit_code == 0  # fills the cache
    hub.stop()
    cached = cli(["pull", "lab/p", "--json"])
    assert cached.exit_code == 0, cached.stderr  # falls back to the cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    down = cli(["pull", "lab/p"])
    assert down.exit_code == 4 and "Error:" in down.stderr
    offline = cli(["pull", "lab/p", "--offline"])
    assert offline.exit_code == 4 and "not in the local cache" in offline.stderr
    hub.start = lambda: None  # the fixture's stop() runs again harmlessly


def test_push_refuses_offline(artifact_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli(["push", str(artifact_file), "lab/p"])
    assert result.exit_code == 4 and "offline" in result.stderr


def test_push_with_a_report_puts_the_table_in_the_card(hub, artifact_file, tmp_path):
    report = {"scorer": "negprompt", "fpr_convention": "id-positive", "fpr_definition": "ID positive",
              "ood": {"textures": {"auroc": 0.9, "fpr": 0.3, "aupr_in": 0.8, "aupr_out": 0.85, "n_ood": 10}},
              "average": {"auroc": 0.9, "fpr": 0.3, "aupr_in": 0.8, "aupr_out": 0.85}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    result = cli(["push", str(artifact_file), "lab/with-report", "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.stderr
    card = hub.store.repos["lab/with-report"]["commits"][result.stdout.strip()]["README.md"].decode()
    assert "## OOD results" in card and "| textures | 90.00 | 30.00 |" in card
    bad = cli(["push", str(artifact_file), "lab/x", "--report", str(tmp_path / "nope.json")])
    assert bad.exit_code == 3


def test_model_card_metadata_for_a_real_backbone():
    from negprompt_cli.stages.hub import model_card

    artifact = PromptArtifact("negative", {"ctx_pos": torch.zeros(2, 4)},
                              {"backbone": "ViT-B/16", "pretrained": "laion2b_s34b_b88k", "quick_gelu": False},
                              {"n_ctx": 2, "n_neg": 2}, ["cat"], training={"stage": "fit-neg", "optim": {"epochs": 10}},
                              extra={"threshold": {"value": 0.5, "id_kept": 0.95, "source": "validation"}})
    text = model_card(artifact, "lab/vitb16")
    assert "base_model: laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in text
    assert "library_name: negprompt" in text and "open_clip:ViT-B/16" in text
    _ = save_prompts


# -- a misbehaving Hub (#30 item 4) ------------------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "said"), [
    ({"status": 500}, "the Hub answered HTTP 500 (a server error) to download lab/p (and it is not in the local "
                      "cache)"),
    ({"status": 503}, "the Hub answered HTTP 503 (a server error) to download lab/p"),
    ({"status": 404}, "lab/p not found on the Hub (HTTP 404)"),
    ({"redirect": "http://127.0.0.1:9/elsewhere"},
     "the Hub redirected download lab/p to http://127.0.0.1:9/elsewhere, which cannot be reached"),
])
def test_hub_failures_are_said_truly_in_one_line(hub, fault, said):
    """An HTTP 500 or a redirect used to end in "not in the local cache and the Hub cannot be reached"."""
    hub.store.fault = fault
    result = cli(["pull", "lab/p"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # no progress bars either
    assert result.exit_code == 4, result.stderr
    assert len(lines) == 2 and lines[0].startswith(f"Error: {said}"), lines  # no retry noise, one true line
    assert lines[1].startswith("Hint: ")
    hub.store.fault = {}


def test_push_failures_are_said_truly(hub, artifact_file):
    hub.store.fault = {"status": 502}
    result = cli(["push", str(artifact_file), "lab/p"])
    assert result.exit_code == 4
    assert result.stderr.splitlines()[0] == "Error: the Hub answered HTTP 502 (a server error) to push to lab/p"
    hub.store.fault = {}


def test_timeouts_and_refused_connections_are_named(monkeypatch):
    """The classifier on the exception chains huggingface_hub raises (its httpx classes are matched by name)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    from negprompt_cli.stages.hub import _translate

    class ReadTimeout(Exception):
        pass

    wrapped = LocalEntryNotFoundError("not in the cache")
    wrapped.__cause__ = ReadTimeout("timed out")
    error = _translate(wrapped, "download", "lab/p", "v1")
    assert error.message == "the Hub did not answer in time to download lab/p@v1 (and it is not in the local cache)"
    assert "HF_HUB_DOWNLOAD_TIMEOUT" in error.hint and error.exit_code == 4
    refused = LocalEntryNotFoundError("not in the cache")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    error = _translate(refused, "download", "lab/p", None)
    assert error.message.startswith("could not reach the Hub at ") and "Connection refused" in error.message


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), [("SIGTERM", 143, "Terminated."), ("SIGINT", 130, "Interrupted.")])
def test_a_stalled_download_ends_within_two_seconds_of_a_signal(hub, artifact_file, tmp_path, sig, code, word):
    """huggingface_hub downloads in worker threads the interpreter waits for: a stalled server used to hold a
    SIGTERM for as long as it kept the socket open (more than 10 s)."""
    import signal
    import time

    assert cli(["push", str(artifact_file), "lab/p"]).exit_code == 0
    hub.store.fault = {"delay": 30, "only": "GET .*/resolve/"}  # the file downloads hang
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-sub"), "HF_TOKEN": "hf_dummy"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    process = subprocess.Popen([sys.executable, "-m", "negprompt_cli", "pull", "lab/p"], env=env,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any("/resolve/" in r for r in hub.store.requests) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(getattr(signal, sig))
    try:
        process.wait(timeout=10)
    finally:
        process.kill()
        hub.store.fault = {}
    assert process.returncode == code
    assert time.monotonic() - sent < 2.0
    assert process.stderr.read().rstrip().endswith(word)


def test_sigterm_during_push_ends_it_with_143(hub, artifact_file, monkeypatch):
    """#30: SIGTERM during `push` (the upload) is exit 143 with one line, and the repository gets no commit."""
    import signal

    from huggingface_hub import HfApi

    original = HfApi.upload_folder

    def terminate_then_upload(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "upload_folder", terminate_then_upload)
    result = cli(["push", str(artifact_file), "lab/p"])
    assert result.exit_code == 143 and result.stderr.rstrip().endswith("Terminated.")
    assert result.stdout == ""  # no commit id: nothing was pushed
    commits = hub.store.repos.get("lab/p", {}).get("commits", {})
    assert all(set(files) == {".gitattributes"} for files in commits.values())


def test_retry_noise_stays_off_stderr(hub, artifact_file, monkeypatch, capfd, caplog):
    """A 503 on every file's HEAD made huggingface_hub log "HTTP Error 503 thrown ..." and "Retrying in 8s" for
    each retry (dozens of lines) before our one line; its waits are skipped here, its messages must not show."""
    import huggingface_hub.utils._http as http

    assert cli(["push", str(artifact_file), "lab/p"]).exit_code == 0
    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    hub.store.fault = {"status": 503, "only": "HEAD"}
    result = cli(["pull", "lab/p"])
    hub.store.fault = {}
    assert result.exit_code == 4
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "Error: the Hub answered HTTP 503 (a server error) to download lab/p (and it is not in the local cache)",
        "Hint: the Hub or HF_ENDPOINT's server is failing: try again later; use --offline to work from the cache"]
    captured = capfd.readouterr()
    assert "Retrying" not in captured.err + captured.out and "thrown while requesting" not in captured.err
    # in a real process these records reach stderr through logging's last-resort handler; none is made
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub") and r.levelname == "WARNING"]
    assert sum("HEAD" in r for r in hub.store.requests) > 4  # it did retry: quietly
