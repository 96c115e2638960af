"""Nothing lost, nothing unexpected (issue #25): outputs never replace a command's inputs or a user's files,
Hub references and artifact-named backbones are checked before any path is built or anything is fetched."""

from __future__ import annotations

import json

import pytest
from conftest import invoke, make_image_folder

POS_FAST = ["--epochs", "2", "--batch-size", "16", "--lr", "0.01", "--optimizer", "adamw", "--warmup-epochs", "0",
            "--n-ctx", "4"]


def error_line(result) -> str:  # type: ignore[no-untyped-def]
    return next(line for line in result.stderr.splitlines() if line.startswith("Error:"))


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


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/3", "0123456789abcdef0123456789abcdef01234567",
                                      "feature/x-y_z"])
def test_ordinary_revisions_pass_the_check(revision):
    from negprompt_cli.stages.hub import parse_repo_ref

    assert parse_repo_ref(f"hf://lab/prompts@{revision}") == ("lab/prompts", revision)


def rename_backbone(src, dst, name: str):
    """The artifact as if trained on backbone ``name`` (the metadata is not covered by the tensor checksum)."""
    from negprompt_cli.artifact import load_prompts, save_prompts

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
