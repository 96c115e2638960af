"""Scoring that streams (issue #23): windows of features instead of all of them, rows written as they come,
the summary counting instead of holding rows; per-rank parts joined in order, never a half-written output."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from conftest import TEST_DEVICE, invoke, make_image_folder

from negprompt_cli.errors import NegPromptError, UsageError
from negprompt_cli.features import image_features
from negprompt_cli.features.backbone import BackboneRequest, load_backbone
from negprompt_cli.features.image_features import EncodeOptions, ImageStream, encode_images
from negprompt_cli.inputs.image_folders import find_images
from negprompt_cli.outputs.score_output import FileOutput, PartOutput, join_parts, part_path, stale_parts
from negprompt_cli.registry import get_host
from negprompt_cli.scoring.adaptive import AdaptiveOptions, AdaptiveScorer, adaptive_scores
from negprompt_cli.stages.score import ScoreOptions, score


@pytest.fixture
def images(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=7, seed=2)  # 21 images
    (root / "red_stripes" / "zz-broken.png").write_bytes(b"not an image")  # unreadable, mid-list
    (tmp_path / "names.txt").write_text("red stripes\ngreen bars\nblue dots\n")
    return root


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_a_stream_gives_the_features_of_one_pass_window_by_window(images, tiny_vit_dir, tmp_path):
    backbone = load_backbone(BackboneRequest(f"local-dir:{tiny_vit_dir}", device=TEST_DEVICE))
    paths = find_images(images)
    whole, keep, stats = encode_images(backbone, paths, batch_size=4, use_cache=False, quiet=True)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        stream = ImageStream(backbone, paths, batch_size=4, window_batches=1, use_cache=False, quiet=True)
        windows = list(stream)
    assert len(windows) == 6 and all(len(w.indices) <= 4 for w in windows)  # 22 images, windows of one batch
    assert [i for w in windows for i in w.indices] == keep and len(keep) == 21
    assert torch.equal(torch.cat([w.features for w in windows if w.indices]), whole)  # same batches: same bits
    assert stream.stats.encoded == stats.encoded == 21 and [p.name for p in stream.stats.skipped] == ["zz-broken.png"]

    # a warm cache: windows come from it, nothing is encoded again
    cache = tmp_path / "cache"
    encode_images(backbone, paths, batch_size=4, cache_dir=cache, quiet=True)
    warm = ImageStream(backbone, paths, batch_size=4, window_batches=2, cache_dir=cache, quiet=True)
    with pytest.warns(UserWarning):
        features = torch.cat([w.features for w in warm if w.indices])
    assert warm.stats.encoded == 0 and warm.stats.cached == 21 and torch.equal(features, whole)


def test_score_output_does_not_depend_on_the_window(images, tiny_vit_dir, tmp_path, monkeypatch):
    common = ["score", str(images), "--zero-shot", "--names", str(tmp_path / "names.txt"), "--backbone",
              f"local-dir:{tiny_vit_dir}", "--scorer", "mcm", "--batch-size", "4", "--labeled", "--explain",
              "--calibrate", str(images)]
    whole = invoke([*common, "--out", str(tmp_path / "whole.csv"), "--cache-dir", str(tmp_path / "c1")])
    assert whole.exit_code == 0, whole.stderr
    monkeypatch.setattr(image_features, "WINDOW_BATCHES", 1)
    small = invoke([*common, "--out", str(tmp_path / "small.csv"), "--cache-dir", str(tmp_path / "c2")])
    assert small.exit_code == 0, small.stderr
    assert (tmp_path / "small.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    # stdout gets the same bytes, written as the windows come
    streamed = invoke([*common, "--cache-dir", str(tmp_path / "c2")])
    assert streamed.stdout == (tmp_path / "whole.csv").read_text()


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_python_api_rows_are_optional_and_the_summary_counts(images, tiny_vit_dir, tmp_path):
    options = ScoreOptions(images=images, names=tmp_path / "names.txt", zero_shot=True, scorer="mcm",
                           backbone=BackboneRequest(f"local-dir:{tiny_vit_dir}", device=TEST_DEVICE),
                           threshold=0.5, encode=EncodeOptions(cache_dir=tmp_path / "c", batch_size=4, quiet=True))
    with pytest.warns(UserWarning, match="skipped 1"):
        kept = score(options)
    assert kept is not None and len(kept["rows"]) == kept["images"] == 21
    assert kept["flagged_ood"] == sum(r["ood"] for r in kept["rows"])
    assert kept["rendered"].count("\n") == 22  # header and rows, as text (no out, no stream)
    bounded = score(ScoreOptions(**{**options.__dict__, "return_rows": False, "out": tmp_path / "s.csv"}))
    assert bounded is not None and "rows" not in bounded and "rendered" not in bounded
    assert (tmp_path / "s.csv").read_text() == kept["rendered"] and bounded["flagged_ood"] == kept["flagged_ood"]
    pieces: list[str] = []
    streamed = score(ScoreOptions(**{**options.__dict__, "return_rows": False}), stream=pieces.append)
    assert streamed is not None and "".join(pieces) == kept["rendered"] and len(pieces) > 1


def test_adaptive_scores_fed_in_pieces_equal_one_pass():
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(203, 16), dim=-1)
    text_pos = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    mined = torch.nn.functional.normalize(torch.randn(40, 16), dim=-1)
    spec = get_host().scorer_spec("neglabel")
    kwargs = dict(scorer=spec.fn, temperature=0.01, logit_scale=100.0, options=AdaptiveOptions(batch=16),
                  scorer_options={"groups": 1})
    whole, record = adaptive_scores(feats, text_pos, None, mined, **kwargs)
    pieces = AdaptiveScorer(text_pos, None, mined, **kwargs)
    out, start = [], 0
    for size in (5, 11, 16, 40, 1, 130):  # pieces that never line up with the memory's batches
        out.append(pieces.feed(feats[start:start + size]))
        start += size
    out.append(pieces.finish())
    assert start == 203 and torch.equal(torch.cat(out), whole) and pieces.record() == record


def test_a_part_that_cannot_be_written_is_one_error_and_leaves_nothing(tmp_path):
    path = part_path(tmp_path, "scores.csv", "abc123", 1)
    part = PartOutput(path, rank=1)

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    part.handle.close()
    part.handle = Full()  # type: ignore[assignment]
    with pytest.raises(NegPromptError, match="rank 1 could not write its part of the scores .*No space") as raised:
        part.write("path,score\n")
    assert raised.value.rank_specific and not path.exists()
    with pytest.raises(UsageError, match="rank 1 cannot write its part"):
        PartOutput(tmp_path / "missing-folder" / "p", rank=1)


def test_parts_are_joined_only_when_rank_0_sees_them_whole(tmp_path):
    parts = []
    for rank, text in enumerate(["path,score\na,1\n", "b,2\n"]):
        path = part_path(tmp_path, "out.csv", "run1", rank)
        path.write_text(text)
        parts.append((path, len(text)))
    other = part_path(tmp_path, "out.csv", "run0", 1)
    other.write_text("stale\n")
    assert stale_parts(tmp_path, "out.csv", "run1") == [other]
    missing = [(parts[0][0], parts[0][1]), (tmp_path / "elsewhere.part", 4)]
    target = FileOutput(tmp_path / "out.csv")
    with pytest.raises(UsageError, match="rank 1's part .* not visible from rank 0's node"):
        join_parts(missing, target)
    target.discard()
    assert not (tmp_path / "out.csv").exists() and parts[0][0].exists()
    joined = FileOutput(tmp_path / "out.csv")
    join_parts(parts, joined)
    joined.finish()
    assert (tmp_path / "out.csv").read_text() == "path,score\na,1\nb,2\n"
    assert not parts[0][0].exists() and not parts[1][0].exists() and other.exists()


def test_cli_summary_of_a_streamed_run(images, tiny_vit_dir, tmp_path):
    result = invoke(["score", str(images), "--zero-shot", "--names", str(tmp_path / "names.txt"), "--backbone",
                     f"local-dir:{tiny_vit_dir}", "--scorer", "mcm", "--out", str(tmp_path / "s.jsonl"),
                     "--format", "jsonl", "--json", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 21 and summary["skipped"] == 1 and summary["encoded"] == 21
    assert "rows" not in summary and "processes" not in summary
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 21


def _os_walk_sorted(root):
    """What discovery returned before the compact list: os.walk, then sorted Paths."""
    import os
    from pathlib import Path

    from negprompt_cli.inputs.image_list import is_image_file

    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files if is_image_file(Path(folder) / f) and (Path(folder) / f).is_file()]
    return sorted(found)


def test_the_compact_image_list_keeps_the_sorted_order_and_reads_each_image_once(tmp_path):
    from negprompt_cli.inputs.image_list import list_images

    root = tmp_path / "crawl"
    names = ["a.png", "a b.png", "A.png", "a-b.png", "ä.png", "b.PNG", "z.jpg", ".hidden.png", "notes.txt"]
    for folder in ("", "a", "a b", "a.b", "aa", "sub/deeper", ".git"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).write_bytes(b"x")
    (root / "link-to-a").symlink_to(root / "a")  # a folder reached twice: walked once
    (root / "sub" / "again.png").symlink_to(root / "z.jpg")  # the same image under another name
    with pytest.warns(UserWarning) as caught:
        images = list_images([root, root / "a" / "z.jpg", root / "sub"])
    messages = " | ".join(str(w.message) for w in caught)
    assert "ignored 6 file(s)" in messages and "10 image(s) were given more than once" in messages
    expected, seen = [], set()  # the first place each real file appears, as before the compact list
    for path in _os_walk_sorted(root):
        if "link-to-a" not in path.parts and path.resolve() not in seen:
            seen.add(path.resolve())
            expected.append(path)
    assert list(images) == expected and len(images) == 42
    assert images.root(0) == root and images[5] == expected[5] and images[-1] == expected[-1]
    share = images[8:20]
    assert list(share) == expected[8:20] and share.root(0) == root and share.fingerprint() != images.fingerprint()
    assert images.nbytes < 100 * len(images)  # the path's bytes and 12 more per image, not a Path object each



def test_a_full_disk_while_scoring_leaves_no_file_even_when_closing_fails_too(tmp_path):
    target = FileOutput(tmp_path / "scores.csv")

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:  # flushing what is buffered fails the same way
            raise OSError(errno.ENOSPC, "No space left on device")

    target.handle.close()
    target.handle = Full()  # type: ignore[assignment]
    with pytest.raises(OSError):
        target.write("path,score\n")
    target.discard()
    assert list(tmp_path.iterdir()) == []
