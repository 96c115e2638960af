"""Nothing lost, nothing unexpected (issue #25): outputs never replace a command's inputs or a user's files,
Hub references and artifact-named backbones are checked before any path is built or anything is fetched."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import NEG_FAST, error_line, invoke, make_image_folder, pos_fast

POS_FAST = pos_fast(2)


@pytest.fixture
def trained(tmp_path, tiny_vit_dir):
    make_image_folder(tmp_path / "train", classes=("red_stripes", "green_bars"), per_class=4, seed=0)
    make_image_folder(tmp_path / "test", classes=("red_stripes", "green_bars"), per_class=3, seed=1)
    pos = invoke(["fit-pos", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "pos.safetensors"),
                  "--backbone", f"local-dir:{tiny_vit_dir}", *POS_FAST])
    assert pos.exit_code == 0, pos.stderr
    return tmp_path


# -- outputs never replace inputs -----------------------------------------------------------------------------
def test_score_out_that_is_an_input_is_refused_and_the_input_kept(trained):
    prompts = trained / "pos.safetensors"
    before = prompts.read_bytes()
    same = invoke(["score", str(trained / "test"), "--prompts", str(prompts), "--out", str(prompts)])
    assert same.exit_code == 2
    assert error_line(same) == f"Error: --out {prompts} is also an input (--prompts {prompts}): writing it would " \
                               "replace it"
    assert prompts.read_bytes() == before
    image = trained / "test" / "green_bars" / "000.png"
    pixels = image.read_bytes()
    onto_image = invoke(["score", str(trained / "test"), "--prompts", str(prompts), "--out", str(image)])
    assert onto_image.exit_code == 2 and "is also an input (image" in error_line(onto_image)
    assert image.read_bytes() == pixels
    names = trained / "names.txt"
    names.write_text("red stripes\ngreen bars\n")
    transfer = invoke(["transfer", "--prompts", str(prompts), "--names", str(names), "--out", str(names)])
    assert transfer.exit_code == 2 and "is also an input (--names" in error_line(transfer)
    assert names.read_text() == "red stripes\ngreen bars\n"
    again = invoke(["transfer", "--prompts", str(prompts), "--names", str(names), "--out", str(prompts)])
    assert again.exit_code == 2 and prompts.read_bytes() == before
    neg = invoke(["fit-neg", "--data", str(trained / "train"), "--pos", str(prompts), "--out", str(prompts)])
    assert neg.exit_code == 2 and "is also an input (--pos" in error_line(neg)
    assert prompts.read_bytes() == before


def test_report_into_a_folder_of_user_files_is_refused_and_overwrite_keeps_them(trained):
    prompts = trained / "pos.safetensors"
    out = trained / "results"
    out.mkdir()
    for name in ("id.csv", "ood.csv"):
        folder = "test" if name == "id.csv" else "train"
        scored = invoke(["score", str(trained / folder), "--prompts", str(prompts), "--out", str(out / name)])
        assert scored.exit_code == 0, scored.stderr
    (out / "notes.txt").write_text("my notes")
    mine = {p.name: p.read_bytes() for p in out.iterdir()}
    args = ["report", "--id", str(out / "id.csv"), "--ood", f"o={out / 'ood.csv'}", "--out", str(out)]
    refused = invoke(args)
    assert refused.exit_code == 2
    assert error_line(refused) == f"Error: --out {out} holds files a report does not write (id.csv, notes.txt, " \
                                  "ood.csv)"
    assert "--overwrite" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == mine
    written = invoke([*args, "--overwrite"])
    assert written.exit_code == 0, written.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in mine} == mine  # every user file kept
    assert {"report.html", "report.md", "report.json", "roc.png", "histogram.png"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_a_previous_report_folder_is_replaced_file_by_file(trained):
    prompts = trained / "pos.safetensors"
    for name, folder in (("id.csv", "test"), ("ood.csv", "train")):
        assert invoke(["score", str(trained / folder), "--prompts", str(prompts), "--out",
                       str(trained / name)]).exit_code == 0
    out = trained / "report"
    args = ["report", "--id", str(trained / "id.csv"), "--ood", f"o={trained / 'ood.csv'}", "--out", str(out)]
    assert invoke(args).exit_code == 0
    (out / "similarity.png").write_bytes(b"stale")  # a file an earlier report wrote that this one does not
    first = json.loads((out / "report.json").read_text())
    again = invoke(args)
    assert again.exit_code == 0, again.stderr
    assert not (out / "similarity.png").exists()  # fit-pos scores have no negatives: no Fig. 3 plot
    assert json.loads((out / "report.json").read_text())["ood"] == first["ood"]


# -- the Hub is untrusted ------------------------------------------------------------------------------------
@pytest.mark.parametrize("revision", ["../../../../tmp/evil", "main/../../x", "refs/../x", "a b", "x:y", ".hidden",
                                      "branch.lock", "tag.", "a//b", "/abs", "x\x1b[31m", "@{-1}"])
def test_a_revision_that_could_leave_the_hub_cache_is_refused_before_any_path_is_built(tmp_path, revision,
                                                                                         monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = invoke(["pull", f"lab/prompts@{revision}", "--offline"])
    assert result.exit_code == 2, result.stderr
    assert "malformed revision" in error_line(result)
    assert not (tmp_path / "hub").exists()
    scored = invoke(["score", str(tmp_path), "--prompts", f"hf://lab/prompts@{revision}", "--offline"])
    assert scored.exit_code == 2 and "malformed revision" in error_line(scored)


@pytest.mark.parametrize("reference", ["hf://lab/p@x\ny", "hf://lab/p@main"])
def test_the_python_api_never_takes_a_hub_reference_for_a_local_path(tmp_path, reference, monkeypatch):
    """#30 item 8: ``hf://lab/p@x\ny`` given to the Python API was looked up as the file "hf:/lab/p@x\ny"."""
    import negprompt
    from negprompt_cli.errors import UsageError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    for call in (lambda: negprompt.Detector.from_prompts(reference, offline=True),
                 lambda: negprompt.score(negprompt.ScoreOptions(images=[tmp_path], prompts=Path(reference))),
                 lambda: negprompt.load_prompts(reference)):
        with pytest.raises(UsageError, match="is a Hugging Face Hub reference, not a prompts file"):
            call()
    if "\n" in reference:  # resolving it checks the revision before any path is built
        with pytest.raises(UsageError, match="malformed revision"):
            negprompt.resolve_prompts(reference, negprompt.HubOptions(offline=True))
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/3", "0123456789abcdef0123456789abcdef01234567",
                                      "feature/x-y_z"])
def test_ordinary_revisions_pass_the_check(revision):
    from negprompt_cli.stages.hub import parse_repo_ref

    assert parse_repo_ref(f"hf://lab/prompts@{revision}") == ("lab/prompts", revision)


def rename_backbone(src, dst, name: str):
    """The artifact as if trained on backbone ``name`` (the metadata is not covered by the tensor checksum)."""
    from negprompt_cli.outputs.artifact import load_prompts, save_prompts

    artifact = load_prompts(src)
    artifact.backbone = {**artifact.backbone, "backbone": name}
    save_prompts(artifact, dst)
    return dst


def hub_model_files(model_dir, pickle: bool = True, safetensors: bool = True) -> dict[str, bytes]:
    files = {"open_clip_config.json": (model_dir / "open_clip_config.json").read_bytes()}
    if safetensors:
        files["open_clip_model.safetensors"] = (model_dir / "open_clip_model.safetensors").read_bytes()
    if pickle:
        files["open_clip_pytorch_model.bin"] = b"not really a pickle, but it must never be fetched"
    return files


def scores_of(csv_text: str) -> list[tuple[str, str]]:
    import csv
    import io

    return [(r["path"], r["score"]) for r in csv.DictReader(io.StringIO(csv_text))]


def test_prompts_from_the_hub_cannot_make_the_tool_fetch_a_backbone_the_user_never_named(hub, trained, tiny_vit_dir,
                                                                                          monkeypatch):
    evil = rename_backbone(trained / "pos.safetensors", trained / "evil.safetensors", "hf-hub:evil/clip")
    hub.store.create("evil/clip", hub_model_files(tiny_vit_dir))
    pushed = invoke(["push", str(evil), "lab/prompts"])
    assert pushed.exit_code == 0, pushed.stderr
    hub.store.requests.clear()
    test = str(trained / "test")

    refused = invoke(["score", test, "--prompts", "hf://lab/prompts"])
    assert refused.exit_code == 5, refused.stderr
    assert "names the backbone hf-hub:evil/clip, weights from a Hub repository you did not choose: nothing was " \
           "downloaded" in error_line(refused)
    assert "--trust-backbone" in refused.stderr
    assert not [r for r in hub.store.requests if "evil/clip" in r]  # not one request towards that repository
    (trained / "names.txt").write_text("a\nb\n")
    transfer = invoke(["transfer", "--prompts", "hf://lab/prompts", "--names", str(trained / "names.txt"), "--out",
                       str(trained / "t.safetensors")])
    assert transfer.exit_code == 5 and not (trained / "t.safetensors").exists()
    fit_neg = invoke(["fit-neg", "--data", str(trained / "train"), "--pos", "hf://lab/prompts", "--out",
                      str(trained / "n.safetensors")])
    assert fit_neg.exit_code == 5 and not [r for r in hub.store.requests if "evil/clip" in r]

    local = invoke(["score", test, "--prompts", str(trained / "pos.safetensors")])
    assert local.exit_code == 0, local.stderr
    for how in (["--trust-backbone"], ["--backbone", "hf-hub:evil/clip"]):
        trusted = invoke(["score", test, "--prompts", "hf://lab/prompts", *how])
        assert trusted.exit_code == 0, trusted.stderr
        assert "Note: backbone hf-hub:evil/clip: open_clip_config.json and safetensors weights only from the Hub " \
               "repository evil/clip at revision main" in trusted.stderr
        assert scores_of(trusted.stdout) == scores_of(local.stdout)  # the same weights, so the same scores
    fetched = [r for r in hub.store.requests if "evil/clip" in r and "/resolve/" in r]
    assert fetched and all(r.endswith(("open_clip_config.json", "open_clip_model.safetensors")) for r in fetched)
    assert not [r for r in hub.store.requests if r.endswith(".bin")]  # the pickle was never downloaded

    monkeypatch.setenv("NEGPROMPT_TRUSTED_BACKBONES", "hf-hub:other/x, hf-hub:evil/*")
    listed = invoke(["score", test, "--prompts", "hf://lab/prompts"])
    assert listed.exit_code == 0, listed.stderr


def test_a_hub_backbone_with_only_pickle_weights_is_refused_unless_the_user_opts_in(hub, trained, tiny_vit_dir,
                                                                                    monkeypatch):
    hub.store.create("lab/pickled", hub_model_files(tiny_vit_dir, safetensors=False))
    args = ["fit-pos", "--data", str(trained / "train"), "--out", str(trained / "p.safetensors"), "--backbone",
            "hf-hub:lab/pickled", *POS_FAST]
    refused = invoke(args)
    assert refused.exit_code == 2, refused.stderr
    assert "hf-hub:lab/pickled has no safetensors weights" in error_line(refused)
    assert "NEGPROMPT_ALLOW_PICKLE_WEIGHTS=1" in refused.stderr
    assert not [r for r in hub.store.requests if r.endswith(".bin")]
    monkeypatch.setenv("NEGPROMPT_ALLOW_PICKLE_WEIGHTS", "1")
    opted = invoke(args)
    assert opted.exit_code != 0  # fetched now (the user opted in); this stand-in .bin is not a real checkpoint
    assert [r for r in hub.store.requests if r.endswith(".bin")]


# -- hostile artifacts: refused on load, naming the field -----------------------------------------------------
def forge(src, dst, edit_meta=None, edit_tensors=None, raw_meta: str | None = None):
    """An artifact written by hand: ``src``'s tensors and metadata, edited."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from negprompt_cli.outputs.artifact import METADATA_KEY, tensors_digest

    with safe_open(str(src), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    if edit_tensors is not None:
        tensors = edit_tensors(tensors) or tensors
        meta["tensors_sha256"] = tensors_digest({k: v.to(torch.float32) for k, v in tensors.items()})
    if edit_meta is not None:
        meta = edit_meta(meta) or meta
    save_file(tensors, str(dst), metadata={"format": "pt", METADATA_KEY: raw_meta or json.dumps(meta)})
    return dst


def set_key(path: str, value):  # type: ignore[no-untyped-def]
    def edit(meta):  # type: ignore[no-untyped-def]
        *parents, last = path.split(".")
        node = meta
        for part in parents:
            node = node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize(("case", "expected"), [
    ({"raw_meta": "[1, 2, 3]"}, "negprompt metadata is a JSON list, not an object"),
    ({"raw_meta": '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"}, "negprompt metadata nested too deeply"),
    ({"edit_meta": set_key("backbone", {})}, "metadata field backbone.backbone is missing or not a name"),
    ({"edit_meta": set_key("extra", [])}, "metadata field extra is not an object"),
    ({"edit_meta": set_key("prompt.n_ctx", KeyError)}, "metadata field prompt.n_ctx is None, not a context length"),
    ({"edit_meta": set_key("prompt.n_ctx", 100_000)}, "metadata field prompt.n_ctx is 100000, not a context length"),
    ({"edit_meta": set_key("class_names", "red stripes")}, "metadata field class_names is not a non-empty list"),
    ({"edit_meta": set_key("kind", "sideways")}, "metadata field kind is 'sideways'"),
    ({"edit_meta": set_key("class_names", ["a", "b", "c", "d", "e", "f"])},
     "tensor text_pos does not hold one feature per class name (shape [2, 32], 6 class name(s)"),
    ({"edit_tensors": lambda t: {**t, "text_pos": t["text_pos"].repeat(3, 1)}},
     "tensor text_pos does not hold one feature per class name (shape [6, 32], 2 class name(s)"),
    ({"edit_tensors": lambda t: {**t, "text_pos": __import__("torch").zeros(10**9, 0)}},
     "tensor text_pos is empty or not floating point"),
    ({"edit_tensors": lambda t: {k: v for k, v in t.items() if k != "ctx_pos"}}, "tensor ctx_pos is missing"),
])
def test_malformed_artifacts_are_refused_on_load_naming_the_field(trained, case, expected):
    bad = forge(trained / "pos.safetensors", trained / "bad.safetensors", **case)
    result = invoke(["score", str(trained / "test"), "--prompts", str(bad)])
    assert result.exit_code == 5, result.stderr
    assert expected in error_line(result)
    inspected = invoke(["inspect", str(bad)])
    assert inspected.exit_code == 5 and expected in error_line(inspected)


def test_a_context_longer_than_the_text_tower_is_refused_before_any_work(trained):
    import torch

    def long_context(meta):  # type: ignore[no-untyped-def]
        meta["prompt"]["n_ctx"] = 76

    bad = forge(trained / "pos.safetensors", trained / "long.safetensors", edit_meta=long_context,
                edit_tensors=lambda t: {**t, "ctx_pos": torch.zeros(76, t["ctx_pos"].shape[-1])})
    (trained / "n.txt").write_text("a\nb\n")  # other names: the contexts must be encoded, not the stored features
    result = invoke(["score", str(trained / "test"), "--prompts", str(bad), "--names", str(trained / "n.txt")])
    assert result.exit_code == 5
    assert "76 context tokens do not fit the backbone's 77-token text tower" in error_line(result)
    wide = forge(trained / "pos.safetensors", trained / "wide.safetensors",
                 edit_tensors=lambda t: {**t, "ctx_pos": torch.zeros(t["ctx_pos"].shape[0], 7)})
    result = invoke(["score", str(trained / "test"), "--prompts", str(wide)])
    assert result.exit_code == 5 and "context vectors are 7 wide, the backbone's token embeddings 32" in \
        error_line(result)


def test_names_with_terminal_escapes_are_printed_escaped(trained):
    hostile = ["red\x1b[2Jstripes", "[bold]green[/bold]\u202e"]
    bad = forge(trained / "pos.safetensors", trained / "esc.safetensors", edit_meta=set_key("class_names", hostile))
    shown = invoke(["inspect", str(bad)])
    assert shown.exit_code == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    assert "red\\x1b[2Jstripes, [bold]green[/bold]\\u202e" in shown.stdout
    scored = invoke(["score", str(trained / "test"), "--prompts", str(bad), "--out", str(trained / "s.jsonl"),
                     "--format", "jsonl"])
    assert scored.exit_code == 0, scored.stderr
    rows = [json.loads(line) for line in (trained / "s.jsonl").read_text().splitlines()]
    assert {r["prediction"] for r in rows} <= set(hostile)  # the data keeps the names exactly
    report = invoke(["report", "--id", str(trained / "s.jsonl"), "--ood", f"\x1b[31m[red]x={trained / 's.jsonl'}"])
    assert report.exit_code == 0, report.stderr
    assert "\x1b" not in report.stderr and "\\x1b[31m[red]x" in report.stderr


def test_set_names_are_plain_text_in_plots(trained):
    scored = invoke(["score", str(trained / "test"), "--prompts", str(trained / "pos.safetensors"), "--out",
                     str(trained / "s.csv")])
    assert scored.exit_code == 0
    out = trained / "report"
    result = invoke(["report", "--id", str(trained / "s.csv"), "--ood", f"$\\foo$={trained / 's.csv'}",
                     "--ood", f"50% $x^2$_{{a}}={trained / 's.csv'}", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert (out / "roc.png").stat().st_size > 0 and "$\\foo$" in (out / "report.html").read_text()


# -- names, paths, locales ------------------------------------------------------------------------------------
def odd_named_images(folder):
    """Images whose names are not valid UTF-8, hold a carriage return, a newline, or are non-ASCII."""
    import os
    import shutil

    source = make_image_folder(folder.parent / "src", classes=("red_stripes",), per_class=4)
    files = sorted((source / "red_stripes").iterdir())
    folder.mkdir()
    names = [b"latin1-caf\xe9.png", b"cr\rname.png", b"line\nbreak.png", "café-ü.png".encode()]
    for src, name in zip(files, names, strict=True):
        shutil.copy(src, os.path.join(os.fsencode(folder), name))
    return names


@pytest.mark.slow
def test_file_names_that_are_not_utf8_round_trip_through_csv_and_jsonl_in_a_posix_locale(trained):
    import csv
    import os
    import subprocess
    import sys

    folder = trained / "odd"
    names = odd_named_images(folder)
    env = {**os.environ, "LC_ALL": "POSIX", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    for fmt in ("csv", "jsonl"):
        out = trained / f"odd.{fmt}"
        for target in (["--out", str(out)], []):
            done = subprocess.run([sys.executable, "-m", "negprompt_cli", "score", os.fsencode(folder), "--prompts",
                                   str(trained / "pos.safetensors"), "--format", fmt, *target],
                                  capture_output=True, env=env, timeout=300)
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            if not target:
                assert done.stdout == out.read_bytes()  # stdout carries the same bytes as --out
        if fmt == "csv":
            with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
                paths = [row["path"] for row in csv.DictReader(handle)]
        else:
            paths = [json.loads(line)["path"] for line in out.read_text(encoding="utf-8").splitlines()]
        assert sorted(os.path.basename(os.fsencode(p)) for p in paths) == sorted(names)
        assert all(os.path.exists(os.fsencode(p)) for p in paths)
    from negprompt_cli.outputs.score_file import read_score_file

    assert len(read_score_file(trained / "odd.csv")) == 4  # report reads them back, \r and all


def test_a_too_long_out_name_fails_before_the_work(trained):
    too_long = trained / ("x" * 256 + ".csv")
    result = invoke(["score", str(trained / "test"), "--prompts", str(trained / "pos.safetensors"), "--out",
                     str(too_long)])
    assert result.exit_code == 2
    assert error_line(result).startswith("Error: --out file name is 260 bytes long; this file system takes at most "
                                         "255")
    assert "Scored" not in result.stderr
    fits = trained / ("y" * 250 + ".csv")  # fits NAME_MAX; its temporary file (a longer name) must fit too
    ok = invoke(["score", str(trained / "test"), "--prompts", str(trained / "pos.safetensors"), "--out", str(fits)])
    assert ok.exit_code == 0, ok.stderr
    assert len(fits.read_text().splitlines()) == 7


def test_images_below_a_path_longer_than_path_max_are_named_not_silently_left_out(trained):
    import os
    import shutil

    root = trained / "deep"
    shutil.copytree(trained / "test", root)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 x 250 bytes: beyond PATH_MAX (4096)
            os.mkdir("d" * 250, dir_fd=fd)
            nxt = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        image = (trained / "test" / "red_stripes" / "000.png").read_bytes()
        handle = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(handle, image)
        os.close(handle)
    finally:
        os.close(fd)
    args = ["score", str(root), "--prompts", str(trained / "pos.safetensors"), "--out", str(trained / "d.csv")]
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    assert "Warning: skipped 1 folder(s) could not be read, so their images are left out" in \
        " ".join(result.stderr.split())
    assert "File name too long" in result.stderr
    strict = invoke([*args, "--strict"])
    assert strict.exit_code == 2 and "could not be read" in error_line(strict)


def test_unreadable_files_and_folders_follow_the_corrupt_image_rule(trained, monkeypatch):
    import os

    from negprompt_cli.features import image_features

    locked_file = trained / "test" / "green_bars" / "001.png"
    locked_folder = trained / "test" / "red_stripes"
    real_open, real_scandir = open, os.scandir

    def refuse_open(file, *a, **k):  # type: ignore[no-untyped-def]
        if str(file) == str(locked_file):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    def refuse_scandir(path="."):  # type: ignore[no-untyped-def]
        if str(path) == str(locked_folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(image_features, "open", refuse_open, raising=False)
    monkeypatch.setattr(os, "scandir", refuse_scandir)
    monkeypatch.setattr("pathlib.Path.read_bytes", lambda self: (refuse_open(self, "rb").read()))
    args = ["score", str(trained / "test"), "--prompts", str(trained / "pos.safetensors"), "--out",
            str(trained / "u.csv")]
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert f"skipped 1 folder(s) could not be read, so their images are left out: {locked_folder} (Permission " \
           "denied)" in said
    assert f"skipped 1 unreadable image(s): {locked_file}" in said
    assert len((trained / "u.csv").read_text().splitlines()) == 1 + 2  # green_bars 000 and 002
    strict = invoke([*args, "--strict"])
    assert strict.exit_code == 2


def test_resume_never_reuses_positives_trained_on_another_class_list(trained, tiny_vit_dir, monkeypatch):
    import negprompt_cli.training.loop as training
    from negprompt_cli.outputs.artifact import load_prompts
    from negprompt_cli.training.checkpoint import checkpoint_path

    base = ["fit-neg", "--data", str(trained / "train"), "--backbone", f"local-dir:{tiny_vit_dir}", *NEG_FAST,
            "--pos-epochs", "2", "--n-ctx", "4"]
    out = trained / "one.safetensors"
    original, calls = training.cosine_with_warmup, []

    def interrupt_the_negative_stage(epoch, **kwargs):  # type: ignore[no-untyped-def]
        if epoch == 1 and kwargs["epochs"] == 4 and not calls:
            calls.append(True)
            raise KeyboardInterrupt
        return original(epoch, **kwargs)

    monkeypatch.setattr(training, "cosine_with_warmup", interrupt_the_negative_stage)
    assert invoke([*base, "--out", str(out)]).exit_code == 130 and calls
    make_image_folder(trained / "train", classes=("blue_dots",), per_class=4, seed=5)  # a class added meanwhile
    checkpoint_path(out).unlink(missing_ok=True)  # as the refusal's hint says
    again = invoke([*base, "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.stderr
    assert "reusing the positive prompts" not in again.stderr
    positive = load_prompts(trained / "one.pos.safetensors")
    assert positive.class_names == ["blue dots", "green bars", "red stripes"]
    assert load_prompts(out).class_names == positive.class_names


def test_the_model_card_escapes_everything_that_comes_from_the_artifact():
    import torch

    from negprompt_cli.outputs.artifact import PromptArtifact
    from negprompt_cli.stages.hub import model_card

    evil = "<script>alert(1)</script>"
    artifact = PromptArtifact(
        "negative", {"ctx_pos": torch.zeros(2, 4)},
        {"backbone": f"hf-hub:{evil}", "pretrained": "<iframe src=javascript:alert(1)>", "quick_gelu": False},
        {"n_ctx": "<b>2</b>", "n_neg": "[click](javascript:alert(1))"}, ["cat"],
        training={"stage": "<img src=x onerror=alert(1)>", "optim": {"epochs": "| broken | table |", "seed": 1}},
        extra={"threshold": {"value": 0.5, "id_kept": 0.95, "source": "<svg onload=alert(1)>"}})
    card = model_card(artifact, "lab/card")
    assert not re.search(r"(?<!\\)\]\(javascript:", card)  # a "](" link needs an unescaped "]"
    for raw in ("<script", "<iframe", "<img", "<svg", "<b>", "| broken |"):
        assert raw not in card, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card  # shown, inert
    assert "open_clip:hf-hub" not in card and "base_model" not in card  # no tag or base model from such a name


@pytest.mark.parametrize("content", ["[1, 2]", '"imagenet1k"', "42", '{"schema": 1, "name": "x", "classes": 7}',
                                     "{" * 5000 + "}" * 5000, "not json"])
def test_a_malformed_protocol_file_is_one_line_and_exit_2(tmp_path, content):
    protocol = tmp_path / "mine.json"
    protocol.write_text(content)
    result = invoke(["benchmark", "check", str(protocol), "--root", str(tmp_path)])
    assert result.exit_code == 2, result.stderr
    assert error_line(result).startswith(f"Error: {protocol} is not a valid benchmark protocol") or \
        "protocol schema" in error_line(result)


def test_excel_safe_quotes_formula_cells_and_only_when_asked(trained, monkeypatch):
    import csv
    import shutil

    folder = trained / "formulas"
    (folder / "=cmd").mkdir(parents=True)
    shutil.copy(trained / "test" / "red_stripes" / "000.png", folder / "=cmd" / "@SUM(1).png")
    monkeypatch.chdir(folder)  # relative paths: the path cell starts with "="
    base = ["score", "=cmd", "--prompts", str(trained / "pos.safetensors")]
    plain = invoke(base)
    safe = invoke([*base, "--excel-safe"])
    assert plain.exit_code == 0 and safe.exit_code == 0, safe.stderr
    (row,) = csv.DictReader(plain.stdout.splitlines())
    (quoted,) = csv.DictReader(safe.stdout.splitlines())
    assert row["path"] == "=cmd/@SUM(1).png"  # the default keeps the exact path
    assert quoted["path"] == "'=cmd/@SUM(1).png"
    assert float(quoted["score"]) == float(row["score"]) and quoted["prediction"] == row["prediction"]
    jsonl = invoke([*base, "--excel-safe", "--format", "jsonl"])
    assert jsonl.exit_code == 2 and "--excel-safe is for CSV output" in error_line(jsonl)
    from negprompt_cli.outputs.score_file import excel_safe

    cells = excel_safe({"path": "=HYPERLINK(\"x\")", "prediction": "-cat", "label": "@x", "score": -1.5,
                        "scorer": "energy"})
    assert cells == {"path": "'=HYPERLINK(\"x\")", "prediction": "'-cat", "label": "'@x", "score": -1.5,
                     "scorer": "energy"}


def test_intersecting_the_views_of_100k_images_is_linear():
    from negprompt_cli.training.data import kept_in_every_view

    n = 100_000
    views = [list(range(n)), [i for i in range(n) if i % 7], [i for i in range(n) if i % 11]]
    kept = kept_in_every_view(views)  # quadratic, this would not finish (10^10 steps)
    assert len(kept) == len([i for i in range(n) if i % 7 and i % 11]) and kept[:3] == [1, 2, 3]
    assert kept_in_every_view([[3, 1, 2]]) == [3, 1, 2] and kept_in_every_view([]) == []


@pytest.mark.slow
def test_every_command_a_user_reads_names_with_works_in_a_posix_locale(trained):
    import os
    import subprocess
    import sys

    names = trained / "names.txt"
    names.write_text("Zürich skyline\nSão Paulo café\n", encoding="utf-8")
    env = {**os.environ, "LC_ALL": "POSIX", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    scored = trained / "s.csv"
    steps = [
        ["transfer", "--prompts", str(trained / "pos.safetensors"), "--names", str(names), "--out",
         str(trained / "t.safetensors")],
        ["inspect", str(trained / "t.safetensors")],
        ["score", str(trained / "test"), "--prompts", str(trained / "t.safetensors"), "--out", str(scored)],
        ["report", "--id", str(scored), "--ood", f"Bäume={scored}", "--out", str(trained / "rapport")],
    ]
    outputs = []
    for args in steps:
        done = subprocess.run([sys.executable, "-m", "negprompt_cli", *args], capture_output=True, env=env,
                              timeout=300)
        assert done.returncode == 0, (args[0], done.stderr.decode(errors="replace"))
        outputs.append(done)
    assert "Zürich skyline, São Paulo café" in outputs[1].stdout.decode("utf-8")
    assert "Bäume" in (trained / "rapport" / "report.html").read_text(encoding="utf-8")
