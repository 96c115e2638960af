"""score --resume (#32 item 3): rows are committed window by window beside --out; a run stopped at any point and
rerun with --resume and the same settings goes on where it stopped and writes the bytes of an uninterrupted run;
other settings start over; the part and its progress go once the output is whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line, invoke, make_image_folder

SCORE = ["--zero-shot", "--backbone", "toy", "--scorer", "mcm", "--batch-size", "2", "--quiet", "--format", "jsonl"]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_image_folder(root / "images", classes=("red_stripes", "green_bars", "blue_dots"), per_class=100, seed=7)
    (root / "names.txt").write_text("red stripes\ngreen bars\n")
    return root


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if ".part" in p.name)


def test_a_run_stopped_between_checkpoints_resumes_to_the_same_bytes(crawl, tmp_path, monkeypatch):
    from negprompt_cli.stages import score as stage

    args = [str(crawl / "images"), "--names", str(crawl / "names.txt"), *SCORE, "--calibrate",
            str(crawl / "images"), "--cache-dir", str(tmp_path / "c")]
    whole = invoke(["score", *args, "--out", str(tmp_path / "whole.jsonl")])
    assert whole.exit_code == 0, whole.stderr
    out = tmp_path / "resumed.jsonl"
    calls = {"n": 0}
    original = stage._RowWriter.write

    def stop_midway(self, *a, **k):  # stop inside the third window (128 images each), rows already written
        calls["n"] += 1
        if calls["n"] == 150:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(stage._RowWriter, "write", stop_midway)
    stopped = invoke(["score", *args, "--out", str(out), "--resume"])
    assert stopped.exit_code != 0 and not out.exists()
    progress = json.loads(next(p for p in _parts(tmp_path) if p.name.endswith(".progress")).read_text())
    assert progress["position"] == 256 and progress["tally"]["images"] == 256  # two windows committed
    part = next(p for p in _parts(tmp_path) if p.name.endswith(".part00000"))
    assert part.stat().st_size > progress["bytes"]  # rows after the checkpoint, to be cut back
    monkeypatch.setattr(stage._RowWriter, "write", original)
    resumed = invoke(["score", *args, "--out", str(out), "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    summary = json.loads(resumed.stdout)
    assert summary["images"] == 300 and summary["encoded"] == 0  # the rest came from the feature cache
    assert summary["flagged_ood"] == json.loads(invoke(["score", *args, "--out", str(tmp_path / "w2.jsonl"),
                                                        "--json"]).stdout)["flagged_ood"]
    assert _parts(tmp_path) == []  # joined: the part and its progress are gone


def test_other_settings_start_over_and_bad_requests_are_one_line(crawl, tmp_path, monkeypatch):
    from negprompt_cli.stages import score as stage

    args = [str(crawl / "images"), "--names", str(crawl / "names.txt"), "--cache-dir", str(tmp_path / "c")]
    original = stage._RowWriter.write
    calls = {"n": 0}

    def stop(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 100:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(stage._RowWriter, "write", stop)
    assert invoke(["score", *args, *SCORE, "--out", str(tmp_path / "s.jsonl"), "--resume"]).exit_code != 0
    monkeypatch.setattr(stage._RowWriter, "write", original)
    other = [a if a != "mcm" else "energy" for a in SCORE]  # another scorer: other rows, so it starts over
    again = invoke(["score", *args, *other, "--out", str(tmp_path / "s.jsonl"), "--resume"])
    assert again.exit_code == 0, again.stderr
    fresh = invoke(["score", *args, *other, "--out", str(tmp_path / "fresh.jsonl")])
    assert (tmp_path / "s.jsonl").read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()
    assert fresh.exit_code == 0 and "part file(s) of an earlier interrupted run" in again.stderr  # mcm's, said
    no_out = invoke(["score", *args, *SCORE, "--resume"])
    assert no_out.exit_code == 2 and error_line(no_out).startswith("Error: --resume commits rows to a file")
    adaptive = invoke(["score", *args, *SCORE, "--resume", "--out", str(tmp_path / "x.jsonl"), "--scorer",
                       "neglabel", "--adaptive"])
    assert adaptive.exit_code == 2 and "--resume cannot be combined with --adaptive" in error_line(adaptive)


def test_saved_embeddings_resume_with_the_rows(crawl, tmp_path, monkeypatch):
    """--resume --save-features: a part of embeddings is written at each commit, so a stopped run's folder holds
    the committed rows' embeddings, and the rerun's folder equals an uninterrupted run's."""
    import numpy as np
    import pyarrow.parquet as pq

    from negprompt_cli.features import saved_features
    from negprompt_cli.stages import score as stage

    monkeypatch.setattr(saved_features, "PART_ROWS", 100)  # a commit at each window of 128 rows
    args = [str(crawl / "images"), "--names", str(crawl / "names.txt"), *SCORE, "--cache-dir", str(tmp_path / "c")]
    whole = invoke(["score", *args, "--out", str(tmp_path / "whole.jsonl"), "--save-features",
                    str(tmp_path / "whole-emb")])
    assert whole.exit_code == 0, whole.stderr
    original = stage._RowWriter.write
    calls = {"n": 0}

    def stop(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 100:  # inside the second window
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(stage._RowWriter, "write", stop)
    command = ["score", *args, "--out", str(tmp_path / "r.jsonl"), "--save-features", str(tmp_path / "emb"),
               "--resume"]
    assert invoke(command).exit_code != 0 and not (tmp_path / "emb").exists()
    monkeypatch.setattr(stage._RowWriter, "write", original)
    again = invoke(command)
    assert again.exit_code == 0, again.stderr
    assert (tmp_path / "r.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()

    def saved(folder):
        emb = np.concatenate([np.load(p) for p in sorted((folder / "img_emb").glob("*.npy"))])
        ids = [i for p in sorted((folder / "metadata").glob("*.parquet"))
               for i in pq.read_table(p).column("image_path").to_pylist()]
        return ids, emb

    (ids, emb), (whole_ids, whole_emb) = saved(tmp_path / "emb"), saved(tmp_path / "whole-emb")
    assert ids == whole_ids and np.array_equal(emb, whole_emb) and len(ids) == 300


@pytest.mark.slow
def test_kill_9_at_any_point_then_resume_gives_the_bytes_of_an_uninterrupted_run(crawl, tmp_path):
    """A real SIGKILL, as soon as the first window is committed, then a rerun; also two torchrun processes
    with --resume write the one-process bytes."""
    from test_scale import torchrun

    make_image_folder(tmp_path / "more", classes=("red_stripes", "blue_dots"), per_class=600, seed=8)
    args = [str(tmp_path / "more"), "--names", str(crawl / "names.txt"), *SCORE]
    whole = invoke(["score", *args, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "whole.jsonl")])
    assert whole.exit_code == 0, whole.stderr
    cmd = [sys.executable, "-m", "negprompt_cli", "score", *args, "--cache-dir", str(tmp_path / "c2"),
           "--out", str(tmp_path / "killed.jsonl"), "--resume"]
    env = {**os.environ, "NEGPROMPT_DEVICE": "cpu"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".progress") for p in _parts(tmp_path)):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.jsonl").exists()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "killed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    two = torchrun(2, "score", *args, "--cache-dir", str(tmp_path / "c3"), "--out", str(tmp_path / "two.jsonl"),
                   "--resume")
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
