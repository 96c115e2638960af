"""The feature cache touches only what it wrote: gc and verify never read or remove a user's files, and a folder
that is not a negprompt cache is refused (exit 2) with nothing removed."""

from __future__ import annotations

import json

import torch
from conftest import invoke
from safetensors.torch import save_file

from negprompt_cli.features.feature_cache import TAG_FILE, FeatureCache, cache_keys, compact


def user_file(path, value: float = 1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weights": torch.full((3, 4), value)}, str(path))
    return path.read_bytes()


def rows(n: int, width: int = 8) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, width), dim=-1)


def test_gc_refuses_a_folder_of_user_safetensors_and_removes_nothing(tmp_path):
    folder = tmp_path / "my-models"
    before = {name: user_file(folder / name, i) for i, name in enumerate(["a.safetensors", "b.safetensors"])}
    user_file(folder / "sub" / "c.safetensors")  # a sub-folder with safetensors, as a key folder has
    for verb in ("gc", "verify"):
        result = invoke(["cache", verb, "--cache-dir", str(folder)])
        assert result.exit_code == 2, (verb, result.stderr)
        assert f"{folder} is not a negprompt feature cache" in result.stderr
        assert "nothing was read or removed" in result.stderr
    assert {p.name: p.read_bytes() for p in folder.glob("*.safetensors")} == before
    assert (folder / "sub" / "c.safetensors").exists()
    assert not (folder / TAG_FILE).exists()


def test_gc_in_a_real_cache_leaves_user_files_alone_and_names_them(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    cache = FeatureCache(root, "key", info={"backbone": "x", "pretrained": None, "preprocess": "p"})
    ids = [f"r{i}" for i in range(6)]
    block = rows(6)
    for start in range(0, 6, 2):
        cache.add(ids[start:start + 2], block[start:start + 2])
    assert (root / TAG_FILE).read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    mine_in_key = user_file(root / "key" / "notes.safetensors")
    mine_in_root = user_file(root / "checkpoint.safetensors")
    (root / "stuff").mkdir()
    (root / "stuff" / "x.txt").write_text("x")
    result = invoke(["cache", "gc", "--cache-dir", str(root), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 6 and summary["shards"] == 1 and summary["removed"] == 3
    assert sorted(summary["foreign"]) == sorted([str(root / "checkpoint.safetensors"), str(root / "stuff"),
                                                 str(root / "key" / "notes.safetensors")])
    assert "Warning: left alone 3 file(s) or folder(s) in the cache that negprompt did not write" in result.stderr
    assert (root / "key" / "notes.safetensors").read_bytes() == mine_in_key
    assert (root / "checkpoint.safetensors").read_bytes() == mine_in_root
    assert (root / "stuff" / "x.txt").read_text() == "x"
    found = FeatureCache(root, "key").lookup(ids)
    assert torch.equal(torch.stack([found[i] for i in ids]), block)
    checked = invoke(["cache", "verify", "--cache-dir", str(root), "--json"])
    assert checked.exit_code == 0 and json.loads(checked.stdout)["damaged"] == 0


def test_a_reader_never_deletes_a_user_file_in_a_key_folder(tmp_path):
    root = tmp_path / "cache"
    cache = FeatureCache(root, "key", info={"backbone": "x"})
    cache.add(["a"], rows(1))
    stranger = user_file(root / "key" / "0123.safetensors")  # no checksum, no ids: "damaged" if it were ours
    reader = FeatureCache(root, "key")
    assert set(reader.lookup(["a", "b"])) == {"a"}
    assert not reader.damaged
    assert (root / "key" / "0123.safetensors").read_bytes() == stranger


def test_the_text_feature_cache_is_ours_and_kept_by_gc(tmp_path):
    root = tmp_path / "cache"
    FeatureCache(root, "key", info={"backbone": "x"}).add(["a"], rows(1))
    text = root / "text-features" / ("ab" * 12 + ".safetensors")
    text.parent.mkdir()
    save_file({"features": rows(5)}, str(text))
    kept = text.read_bytes()
    (report,) = compact(root)
    assert report.foreign == [] and text.read_bytes() == kept
    result = invoke(["cache", "gc", "--cache-dir", str(root)])
    assert result.exit_code == 0 and "Warning" not in result.stderr


def test_a_cache_written_before_the_tag_is_still_recognised_and_tagged_by_gc(tmp_path):
    root = tmp_path / "cache"
    cache = FeatureCache(root, "key", info={"backbone": "x", "pretrained": None, "preprocess": "p"})
    cache.add(["a"], rows(1))
    cache.add(["b"], rows(1))
    (root / TAG_FILE).unlink()
    info = json.loads((root / "key" / "info.json").read_text())
    del info["format"]  # as an older negprompt wrote it
    (root / "key" / "info.json").write_text(json.dumps(info))
    assert cache_keys(root) == [root / "key"]
    (report,) = compact(root)
    assert report.unique_rows == 2 and report.shards == 1
    assert (root / TAG_FILE).exists()


def test_an_image_rewritten_between_hashing_and_decoding_is_cached_under_the_bytes_decoded(
        tiny_vit_dir, tmp_path, monkeypatch):
    """Poisoning: the key must be the hash of exactly the bytes whose features are stored."""
    import numpy as np
    from conftest import TEST_DEVICE, draw

    from negprompt_cli.environment import default_cache_dir
    from negprompt_cli.features import image_features
    from negprompt_cli.features.backbone import BackboneRequest, load_backbone
    from negprompt_cli.features.image_features import encode_images, file_digest

    backbone = load_backbone(BackboneRequest(name=f"local-dir:{tiny_vit_dir}", device=TEST_DEVICE))
    rng = np.random.default_rng(0)
    image = tmp_path / "img.png"
    draw("red_stripes", rng).save(image)
    old_bytes = image.read_bytes()
    draw("blue_dots", rng).save(tmp_path / "new.png")
    new_bytes = (tmp_path / "new.png").read_bytes()
    original = image_features.file_digests

    def hash_then_rewrite(paths):  # the file changes after its hash was taken, before it is decoded
        digests = original(paths)
        image.write_bytes(new_bytes)
        return digests

    monkeypatch.setattr(image_features, "file_digests", hash_then_rewrite)
    raced, _, stats = encode_images(backbone, [image])
    assert stats.encoded == 1
    monkeypatch.setattr(image_features, "file_digests", original)

    fresh_new, _, _ = encode_images(backbone, [tmp_path / "new.png"], use_cache=False)
    assert torch.allclose(raced, fresh_new, atol=1e-6)  # this run scored the version it decoded
    old_copy = tmp_path / "old.png"
    old_copy.write_bytes(old_bytes)
    fresh_old, _, _ = encode_images(backbone, [old_copy], use_cache=False)
    old_again, _, again = encode_images(backbone, [old_copy])  # the old bytes: not served the new features
    assert again.encoded == 1 and again.cached == 0
    assert torch.allclose(old_again, fresh_old, atol=1e-6)
    new_again, _, hit = encode_images(backbone, [tmp_path / "new.png"])  # the new bytes: a hit, right rows
    assert hit.cached == 1 and torch.allclose(new_again, fresh_new, atol=1e-6)
    ids = {i for shard in (default_cache_dir()).rglob("*.safetensors")
           for i in json.loads(__import__("safetensors").safe_open(str(shard), "pt").metadata()["ids"])}
    assert f"{file_digest(tmp_path / 'new.png')}:eval" in ids
