"""score --save-features / --features (#32 item 2): embeddings written in clip-retrieval's layout with their
provenance, read back instead of images with the same scores byte for byte, checked against the backbone, and
clip-retrieval's own output read with a warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import error_line, invoke, make_image_folder

SCORE = ["--zero-shot", "--backbone", "toy", "--scorer", "mcm", "--batch-size", "4", "--quiet", "--format", "jsonl"]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    make_image_folder(root / "images", classes=("red_stripes", "green_bars", "blue_dots"), per_class=5, seed=6)
    (root / "names.txt").write_text("red stripes\ngreen bars\n")
    return root


def test_saved_features_score_as_the_images_and_are_clip_retrieval_shaped(crawl, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from negprompt_cli.features import saved_features

    monkeypatch.setattr(saved_features, "PART_ROWS", 6)  # 15 images: parts of 6, 6, 3
    names = ["--names", str(crawl / "names.txt")]
    saved = invoke(["score", str(crawl / "images"), *names, *SCORE, "--cache-dir", str(tmp_path / "c"),
                    "--save-features", str(tmp_path / "emb"), "--out", str(tmp_path / "images.jsonl")])
    assert saved.exit_code == 0, saved.stderr
    parts = sorted((tmp_path / "emb" / "img_emb").glob("*.npy"))
    assert [p.name for p in parts] == ["img_emb_000000000000.npy", "img_emb_000000000006.npy",
                                       "img_emb_000000000012.npy"]
    embeddings = np.concatenate([np.load(p) for p in parts])
    ids = [i for p in sorted((tmp_path / "emb" / "metadata").glob("*.parquet"))
           for i in pq.read_table(p).column("image_path").to_pylist()]
    rows = [json.loads(line) for line in (tmp_path / "images.jsonl").read_text().splitlines()]
    assert ids == [r["path"] for r in rows] and embeddings.shape == (15, 128) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    provenance = json.loads((tmp_path / "emb" / "negprompt.json").read_text())
    assert provenance["backbone"]["backbone"] == "toy" and provenance["count"] == 15
    assert provenance["normalised"] == "l2" and provenance["embed_dim"] == 128
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # scored from the embeddings, with no image and an empty cache: the same bytes
    again = invoke(["score", *names, *SCORE, "--features", str(tmp_path / "emb"), "--cache-dir",
                    str(tmp_path / "c2"), "--out", str(tmp_path / "features.jsonl"), "--json"])
    assert again.exit_code == 0, again.stderr
    assert (tmp_path / "features.jsonl").read_bytes() == (tmp_path / "images.jsonl").read_bytes()
    summary = json.loads(again.stdout)
    assert summary["encoded"] == 0 and summary["cached"] == 15 and summary["features_from"] == str(tmp_path / "emb")


def test_clip_retrieval_output_is_read_and_said_to_be_unchecked(crawl, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "cr"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4, 128)).astype(np.float16)  # clip-retrieval's default dtype, its own normalisation
    np.save(folder / "img_emb" / "img_emb_0.npy", emb)
    pq.write_table(pa.table({"image_path": [f"s3://crawl/{i}.jpg" for i in range(4)], "caption": list("abcd")}),
                   folder / "metadata" / "metadata_0.parquet")
    result = invoke(["score", "--names", str(crawl / "names.txt"), *SCORE, "--features", str(folder)])
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [f"s3://crawl/{i}.jpg"
                                                                                 for i in range(4)]
    assert "does not say which model made it" in result.stderr and "taken to be toy's, unchecked" in result.stderr


def test_features_of_another_model_or_width_and_bad_requests_are_one_line(crawl, tmp_path):
    names = ["--names", str(crawl / "names.txt")]
    assert invoke(["score", str(crawl / "images"), *names, *SCORE, "--save-features", str(tmp_path / "emb"),
                   "--cache-dir", str(tmp_path / "c")]).exit_code == 0
    provenance = json.loads((tmp_path / "emb" / "negprompt.json").read_text())
    provenance["weights"] = "another"
    (tmp_path / "emb" / "negprompt.json").write_text(json.dumps(provenance))
    other = invoke(["score", *names, *SCORE, "--features", str(tmp_path / "emb")])
    assert other.exit_code == 5 and "was made with toy (None), not with toy (None) and these weights" in \
        error_line(other)
    exists = invoke(["score", str(crawl / "images"), *names, *SCORE, "--save-features", str(tmp_path / "emb")])
    assert exists.exit_code == 2 and error_line(exists).startswith("Error: --save-features")
    both = invoke(["score", str(crawl / "images"), *names, *SCORE, "--features", str(tmp_path / "emb")])
    assert both.exit_code == 2 and "not both" in error_line(both)
    missing = invoke(["score", *names, *SCORE, "--features", str(tmp_path / "none")])
    assert missing.exit_code == 3


@pytest.mark.slow
def test_two_torchrun_processes_save_the_features_one_process_saves(crawl, tmp_path):
    from test_scale import torchrun

    args = [str(crawl / "images"), "--names", str(crawl / "names.txt"), *SCORE]
    one = invoke(["score", *args, "--cache-dir", str(tmp_path / "c1"), "--save-features", str(tmp_path / "one"),
                  "--out", str(tmp_path / "one.jsonl")])
    assert one.exit_code == 0, one.stderr
    two = torchrun(2, "score", *args, "--cache-dir", str(tmp_path / "c2"), "--save-features", str(tmp_path / "two"),
                   "--out", str(tmp_path / "two.jsonl"))
    assert two.returncode == 0, two.stderr

    def rows(folder):
        import pyarrow.parquet as pq

        emb = np.concatenate([np.load(p) for p in sorted((folder / "img_emb").glob("*.npy"))])
        ids = [i for p in sorted((folder / "metadata").glob("*.parquet"))
               for i in pq.read_table(p).column("image_path").to_pylist()]
        return ids, emb

    (ids1, emb1), (ids2, emb2) = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert ids1 == ids2 and np.array_equal(emb1, emb2)
    assert json.loads((tmp_path / "two" / "negprompt.json").read_text())["count"] == 15
