"""Faults a user hits (issue #14): interrupted and terminated runs resume, outputs fail before the work instead of
after it, damaged files are caught, nothing is lost or decided silently. Real read-only and full file systems
are tiny tmpfs mounts (skipped where this process may not mount)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import NEG_FAST, copy_tree, error_line, invoke, make_image_folder, pos_fast, train_positives
from safetensors import safe_open
from safetensors.torch import save_file

from negprompt_cli.errors import NegPromptWarning
from negprompt_cli.outputs.artifact import load_prompts

POS_FAST = pos_fast(6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_vit_dir):
    """The folders and their positive prompts, trained once for this module (its own feature cache)."""
    return train_positives(tmp_path_factory.mktemp("faults"), tiny_vit_dir, tmp_path_factory.mktemp("fc"), POS_FAST,
                           train=8, test=4)


@pytest.fixture
def setup(trained, tmp_path, tiny_vit_dir):
    """Each test's own copy of the trained folders (the test's feature cache starts empty)."""
    return copy_tree(trained, tmp_path), ["--backbone", f"local-dir:{tiny_vit_dir}"]


# -- failing before the work ---------------------------------------------------------------------------------
def test_read_only_outputs_fail_before_any_work_and_a_read_only_cache_is_skipped(setup, mount):
    root, backbone = setup
    readonly = mount("ro", "ro,size=1m")
    started = time.time()
    fit = invoke(["fit-pos", "--data", str(root / "train"), "--out", str(readonly / "p.safetensors"), *backbone,
                  "--epochs", "500"])
    assert fit.exit_code == 2 and error_line(fit).startswith(f"Error: cannot write to {readonly}")
    assert time.time() - started < 30  # it did not train 500 epochs first
    cache = root / "fresh-cache"
    scored = invoke(["score", str(root / "test"), "--prompts", str(root / "pos.safetensors"), "--out",
                     str(readonly / "s.csv"), "--cache-dir", str(cache)])
    assert scored.exit_code == 2 and not cache.exists()  # nothing was encoded
    report = invoke(["report", "--id", str(root / "x.csv"), "--ood", f"o={root / 'y.csv'}", "--out",
                     str(readonly / "report")])
    assert report.exit_code == 2 and "cannot write" in error_line(report)
    # a read-only feature cache: scores are still written, with one warning
    ok = invoke(["score", str(root / "test"), "--prompts", str(root / "pos.safetensors"), "--cache-dir",
                 str(readonly / "cache"), "--out", str(root / "s.csv")])
    assert ok.exit_code == 0, ok.stderr
    assert ok.stderr.count("cannot be written") == 1 and "continuing without caching" in ok.stderr
    assert len((root / "s.csv").read_text().splitlines()) == 9


def test_a_full_disk_leaves_nothing_half_written(setup, mount):
    root, _ = setup
    ids = invoke(["score", str(root / "test"), "--prompts", str(root / "pos.safetensors"), "--labeled", "--out",
                  str(root / "id.csv")])
    assert ids.exit_code == 0, ids.stderr
    full = mount("full", "size=40k")
    (full / "filler").write_bytes(b"\0" * 36 * 1024)  # room for the write probe, not for a report
    result = invoke(["report", "--id", str(root / "id.csv"), "--ood", f"same={root / 'id.csv'}", "--out",
                     str(full / "report")])
    assert result.exit_code == 1 and "No space left on device" in error_line(result)
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no report folder with only roc.png
    # a full feature cache: scoring goes on without caching
    ok = invoke(["score", str(root / "test"), "--prompts", str(root / "pos.safetensors"), "--cache-dir",
                 str(full / "cache"), "--out", str(root / "again.csv")])
    assert ok.exit_code == 0, ok.stderr
    assert "continuing without caching" in ok.stderr


def test_outputs_honour_the_umask(setup):
    root, _ = setup
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    out = invoke(["score", str(root / "test"), "--prompts", str(root / "pos.safetensors"), "--labeled", "--out",
                  str(root / "id.csv")])
    assert out.exit_code == 0
    report = invoke(["report", "--id", str(root / "id.csv"), "--ood", f"same={root / 'id.csv'}", "--out",
                     str(root / "report")])
    assert report.exit_code == 0, report.stderr
    for path in (root / "pos.safetensors", root / "id.csv", root / "report" / "report.html"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert stat.S_IMODE((root / "report").stat().st_mode) == 0o777 & ~umask


# -- signals, pipes, kill -9 ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_score_into_a_closed_pipe_exits_quietly(setup):
    root, _ = setup
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "negprompt_cli", "score", str(root / "test"), "--prompts",
                             str(root / "pos.safetensors"), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `| true`: the reader is gone before anything is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Error" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr


def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_same(setup, monkeypatch):
    root, _ = setup
    base = ["fit-neg", "--data", str(root / "train"), "--pos", str(root / "pos.safetensors"), *NEG_FAST]
    assert invoke([*base, "--out", str(root / "full.safetensors")]).exit_code == 0
    import negprompt_cli.training.loop as training

    original, sent = training.cosine_with_warmup, []

    def terminate_in_epoch_three(epoch, **kwargs):
        if epoch == 2 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` and schedulers send
        return original(epoch, **kwargs)

    monkeypatch.setattr(training, "cosine_with_warmup", terminate_in_epoch_three)
    out = root / "term.safetensors"
    first = invoke([*base, "--out", str(out)])
    assert first.exit_code == 143 and "Terminated." in first.stderr and not out.exists()
    assert (root / "term.safetensors.ckpt").exists() and "after epoch 2" in first.stderr
    assert signal.getsignal(signal.SIGTERM) is not None  # the CLI restored the previous handler
    second = invoke([*base, "--out", str(out), "--resume"])
    assert second.exit_code == 0, second.stderr
    assert torch.equal(load_prompts(out).tensors["ctx_neg"], load_prompts(root / "full.safetensors").tensors["ctx_neg"])


def terminate_during(monkeypatch, module, name: str) -> list[bool]:
    """Replace ``module.name`` by a wrapper that sends this process SIGTERM (what `timeout` and schedulers send)
    and then does the work: the signal lands in the middle of the command."""
    original, sent = getattr(module, name), []

    def wrapper(*args, **kwargs):
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return sent


def test_sigterm_during_transfer_leaves_no_file(setup, monkeypatch):
    import negprompt_cli.stages.transfer as transfer

    root, _ = setup
    names = root / "new_names.txt"
    names.write_text("red stripes\ngreen bars\nblue dots\npurple waves\n")
    before = sorted(p.name for p in root.iterdir())
    sent = terminate_during(monkeypatch, transfer, "text_features_for")
    result = invoke(["transfer", "--prompts", str(root / "pos.safetensors"), "--names", str(names), "--out",
                     str(root / "moved.safetensors"), "--calibrate", str(root / "test")])
    assert sent and result.exit_code == 143 and result.stderr.rstrip().endswith("Terminated.")
    assert sorted(p.name for p in root.iterdir()) == before  # no output, no temporary file


def test_sigterm_during_report_leaves_no_report(setup, monkeypatch):
    import negprompt_cli.stages.report as report

    root, _ = setup
    for name, folder in (("id.csv", "test"), ("ood.csv", "train")):
        assert invoke(["score", str(root / folder), "--prompts", str(root / "pos.safetensors"), "--out",
                       str(root / name), "--quiet"]).exit_code == 0
    before = sorted(p.name for p in root.iterdir())
    sent = terminate_during(monkeypatch, report, "make_figures")  # while the files are being written
    result = invoke(["report", "--id", str(root / "id.csv"), "--ood", f"o={root / 'ood.csv'}", "--out",
                     str(root / "report")])
    assert sent and result.exit_code == 143 and result.stderr.rstrip().endswith("Terminated.")
    assert sorted(p.name for p in root.iterdir()) == before  # no report folder, no staging folder


def test_an_interrupted_fit_pos_resumes_to_the_same_bytes(setup, monkeypatch):
    """fit-pos + Ctrl-C + --resume writes the very file an uninterrupted run writes (SOURCE_DATE_EPOCH fixes the
    one field that would differ, the creation time)."""
    root, backbone = setup
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1765000000")
    base = ["fit-pos", "--data", str(root / "train"), *backbone, *POS_FAST]
    assert invoke([*base, "--out", str(root / "whole.safetensors")]).exit_code == 0
    import negprompt_cli.training.loop as training

    original, sent = training.cosine_with_warmup, []

    def terminate_in_epoch_three(epoch, **kwargs):
        if epoch == 2 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(epoch, **kwargs)

    monkeypatch.setattr(training, "cosine_with_warmup", terminate_in_epoch_three)
    out = root / "resumed.safetensors"
    first = invoke([*base, "--out", str(out)])
    assert first.exit_code == 143 and not out.exists() and (root / "resumed.safetensors.ckpt").exists()
    second = invoke([*base, "--out", str(out), "--resume"])
    assert second.exit_code == 0, second.stderr
    assert out.read_bytes() == (root / "whole.safetensors").read_bytes()


def test_resume_without_a_checkpoint_starts_fresh_with_a_notice(setup):
    root, _ = setup
    out = root / "fresh.safetensors"
    result = invoke(["fit-neg", "--data", str(root / "train"), "--pos", str(root / "pos.safetensors"), *NEG_FAST,
                     "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.stderr
    assert "no checkpoint at" in result.stderr and "starting from the beginning" in result.stderr and out.exists()


@pytest.mark.parametrize("stage", ["positive", "negative"])
def test_one_command_fit_neg_resumes_in_the_stage_it_was_interrupted(setup, monkeypatch, stage):
    root, backbone = setup
    base = ["fit-neg", "--data", str(root / "train"), *backbone, *NEG_FAST, "--pos-epochs", "6", "--n-ctx", "4"]
    full = invoke([*base, "--out", str(root / "full.safetensors")])
    assert full.exit_code == 0, full.stderr
    import negprompt_cli.training.loop as training

    original, calls = training.cosine_with_warmup, []
    stop_in = "positive" if stage == "positive" else "negative"

    def interrupt(epoch, **kwargs):
        in_positive = kwargs["epochs"] == 6 and kwargs["lr"] == 0.002
        if epoch == 2 and not calls and in_positive == (stop_in == "positive"):
            calls.append(True)
            raise KeyboardInterrupt
        return original(epoch, **kwargs)

    monkeypatch.setattr(training, "cosine_with_warmup", interrupt)
    out = root / "one.safetensors"
    first = invoke([*base, "--out", str(out)])
    assert first.exit_code == 130 and calls
    second = invoke([*base, "--out", str(out), "--resume"])
    assert second.exit_code == 0, second.stderr
    if stage == "negative":
        assert "reusing the positive prompts" in second.stderr
    for suffix in ("safetensors", "pos.safetensors"):
        ours = load_prompts(root / f"one.{suffix}")
        reference = load_prompts(root / f"full.{suffix}")
        for name, tensor in reference.tensors.items():
            torch.testing.assert_close(ours.tensors[name], tensor, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_kill_9_while_caching_then_rerun_is_clean(setup):
    root, _ = setup
    images = make_image_folder(root / "many", classes=("red_stripes", "green_bars", "blue_dots"), per_class=60)
    cache = root / "killcache"
    cmd = [sys.executable, "-m", "negprompt_cli", "score", str(images), "--prompts", str(root / "pos.safetensors"),
           "--cache-dir", str(cache), "--batch-size", "4", "--workers", "0", "--quiet", "--out"]
    proc = subprocess.Popen([*cmd, str(root / "killed.csv")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.rglob("*.safetensors")) and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (root / "killed.csv").exists()  # never half a score file
    again = subprocess.run([*cmd, str(root / "again.csv")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    clean = subprocess.run([*cmd[:-1], "--cache-dir", str(root / "clean"), "--out", str(root / "clean.csv")],
                           capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert (root / "again.csv").read_text() == (root / "clean.csv").read_text()


# -- integrity ------------------------------------------------------------------------------------------------
def test_damaged_artifact_bytes_are_refused_and_nan_is_never_a_decision(setup):
    root, _ = setup
    data = bytearray((root / "pos.safetensors").read_bytes())
    data[-8:] = b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f"  # tensor bytes, the header intact
    (root / "damaged.safetensors").write_bytes(bytes(data))
    result = invoke(["score", str(root / "test"), "--prompts", str(root / "damaged.safetensors")])
    assert result.exit_code == 5 and "damaged.safetensors is damaged" in error_line(result)
    # NaN features (written by a buggy tool, say): refused on load, before any image work (never ood=False)
    with safe_open(str(root / "pos.safetensors"), framework="pt") as handle:
        meta = json.loads(handle.metadata()["negprompt"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors["text_pos"][:] = float("nan")
    meta.pop("tensors_sha256")
    save_file(tensors, str(root / "nan.safetensors"), metadata={"format": "pt", "negprompt": json.dumps(meta)})
    result = invoke(["score", str(root / "test"), "--prompts", str(root / "nan.safetensors")])
    error = error_line(result)
    assert result.exit_code == 5 and "tensor text_pos holds" in error and "non-finite" in error
    assert result.stdout == ""


def test_a_damaged_cache_shard_is_re_encoded(setup):
    root, _ = setup
    cache = root / "score-cache"  # only the scored images' shards (the setup's training shards live elsewhere)
    cmd = ["score", str(root / "test"), "--prompts", str(root / "pos.safetensors"), "--cache-dir", str(cache),
           "--out"]
    assert invoke([*cmd, str(root / "a.csv")]).exit_code == 0
    shards = list(cache.rglob("*.safetensors"))
    assert len(shards) == 1
    data = bytearray(shards[0].read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # a NaN in the last feature, header intact
    shards[0].write_bytes(bytes(data))
    again = invoke([*cmd, str(root / "b.csv"), "--json"])
    assert again.exit_code == 0, again.stderr
    assert "damaged feature-cache shard" in again.stderr and json.loads(again.stdout)["encoded"] == 8
    assert "rows" not in json.loads(again.stdout)  # --json is the summary; the rows are in --out
    assert (root / "a.csv").read_text() == (root / "b.csv").read_text()


# -- discovery and smaller items -------------------------------------------------------------------------------
def test_unreadable_input_is_an_error_like_empty_input(setup):
    root, _ = setup
    bad = root / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    (bad / "b.jpg").write_bytes(b"\xff\xd8\xff nope")
    result = invoke(["score", str(bad), "--prompts", str(root / "pos.safetensors"), "--out", str(root / "o.csv")])
    assert result.exit_code == 2 and "none of the 2 image(s)" in error_line(result)
    assert "skipped 2 unreadable image(s)" in result.stderr and not (root / "o.csv").exists()


def test_images_over_the_decompression_bomb_limit_are_named_as_such(tiny_backbone, tmp_path, monkeypatch):
    from PIL import Image

    from negprompt_cli.features.image_features import encode_images

    folder = make_image_folder(tmp_path / "imgs", classes=("a",), per_class=2)
    Image.new("RGB", (300, 300)).save(folder / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # refuses above 40,000 pixels: 300 x 300 is a "bomb"
    paths = sorted((folder / "a").iterdir())
    with pytest.warns(NegPromptWarning, match=r"1 image\(s\) too large \(over the decompression-bomb limit of "
                                              r"40000 pixels; NEGPROMPT_MAX_IMAGE_PIXELS raises it"):
        _, keep, stats = encode_images(tiny_backbone, paths, use_cache=False, num_workers=0, quiet=True)
    assert [p.name for p in stats.skipped] == ["huge.png"] and len(keep) == 2


def test_world_export_refuses_to_mix_with_an_earlier_export(tmp_path):
    out = tmp_path / "w"
    first = invoke(["world", "export", str(out), "--id", "circle,star", "--test-per-class", "1", "--far", "0",
                    "--shots", "1", "--calib-per-class", "1"])
    assert first.exit_code == 0, first.stderr
    (out / "mine.txt").write_text("keep me")
    again = invoke(["world", "export", str(out), "--id", "ring,heart", "--test-per-class", "1", "--far", "0",
                    "--shots", "1", "--calib-per-class", "1"])
    assert again.exit_code == 2 and "is not empty" in error_line(again) and "--overwrite" in again.stderr
    replaced = invoke(["world", "export", str(out), "--id", "ring,heart", "--test-per-class", "1", "--far", "0",
                       "--shots", "1", "--calib-per-class", "1", "--overwrite"])
    assert replaced.exit_code == 0, replaced.stderr
    assert sorted(p.name for p in (out / "test").iterdir()) == ["heart", "ring"]
    assert not {"ring", "heart"} & {p.name for p in (out / "ood_near").iterdir()}
    assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("verb", ["verify", "gc"])
def test_cache_commands_on_a_missing_folder_say_so(tmp_path, verb):
    # a mistyped --cache-dir must not read as "0 rows, all verified"
    missing = tmp_path / "no-such-cache"
    result = invoke(["cache", verb, "--cache-dir", str(missing)])
    assert result.exit_code == 3
    assert f"feature cache folder not found: {missing}" in result.stderr
    assert "Traceback" not in result.stderr and not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    ok = invoke(["cache", verb, "--cache-dir", str(empty), "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == 0
