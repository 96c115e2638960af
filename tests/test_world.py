"""The procedural world: determinism, captions, held-out pairs, and the ImageFolder export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke

from negprompt_cli import world


def test_render_is_seeded_and_categories_differ():
    items = [world.Item(s, "red", "large") for s in world.CATEGORIES]
    a = world.render(items, np.random.default_rng(0))
    b = world.render(items, np.random.default_rng(0))
    n = len(world.CATEGORIES)
    assert a.shape == (n, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    # with the same background noise and pose, every pair of categories covers different pixels
    masks = [(img[..., 0] > 150) & (img[..., 1] < 100) for img in a]
    for i in range(n):
        for j in range(i + 1, n):
            assert (masks[i] != masks[j]).sum() > 8, (world.CATEGORIES[i], world.CATEGORIES[j])


def test_world_v2_inventory():
    assert len(world.CATEGORIES) >= 40 and len(set(world.CATEGORIES)) == len(world.CATEGORIES)
    assert set(world.UNNAMED) <= set(world.CATEGORIES) and not set(world.UNNAMED) & set(world.NAMED)
    assert len(world.TEXTURES) == 4 and len(world.BACKGROUNDS) == 4


def test_far_ood_has_no_shape_colour_structure():
    far = world.render_far_ood(9, np.random.default_rng(1))
    assert far.shape == (9, 32, 32, 3) and far.std() > 20


def test_pretraining_never_sees_unnamed_categories():
    rng = np.random.default_rng(0)
    assert not {it.shape for it in world.sample_items(2000, rng)} & set(world.UNNAMED)


def test_captions_state_only_true_attributes():
    rng = np.random.default_rng(2)
    for item in world.sample_items(500, rng):
        cap = world.caption(item, rng)
        assert cap.category in (None, item.shape) and cap.colour in (None, item.colour)
        assert cap.size in (None, item.size) and cap.texture in (None, item.texture)
        assert cap.background in (None, item.background)
        for value in (cap.category, cap.colour, cap.size, cap.texture):
            assert value is None or value in cap.text
        assert not any(u in cap.text for u in world.UNNAMED)


def test_world_lexicon_is_shipped_and_covers_only_named_categories():
    from negprompt_cli.scoring.lexicon import load_lexicon

    lexicon = load_lexicon(world.lexicon_dir())
    expected = world.world_lexicon()
    assert list(lexicon.nouns) == expected["noun.world.txt"]
    assert list(lexicon.adjectives) == expected["adj.world.txt"]
    assert len(lexicon) >= 300
    words = set(lexicon.nouns) | set(lexicon.adjectives)
    assert set(world.NAMED) <= words and not any(u in w for u in world.UNNAMED for w in words)
    # every word of the lexicon occurs in pre-training captions
    rng = np.random.default_rng(5)
    captions = [world.caption(it, rng, 0.0).text for it in world.sample_items(5000, rng)]
    vocabulary = {w for text in captions for w in text.rstrip(".").split()}
    assert {w for entry in words for w in entry.split()} <= vocabulary


def test_export_world(tmp_path):
    spec = world.WorldSpec(id_shapes=("circle", "star"), ood_shapes=("ring",), train_shapes=("circle",), shots=3,
                           test_per_class=2, far=4, seed=5, calib_per_class=3, unnamed_shapes=("fish", "letter m"))
    paths = world.export_world(tmp_path, spec)
    assert sorted(p.name for p in paths["train"].iterdir()) == ["circle"]
    assert len(list((paths["test"] / "star").glob("*.png"))) == 2
    assert sorted(p.name for p in paths["calib"].iterdir()) == ["circle", "star"]
    calib = {p.read_bytes() for p in paths["calib"].rglob("*.png")}
    assert len(calib) == 6 and not calib & {p.read_bytes() for p in paths["test"].rglob("*.png")}
    assert len(list((paths["ood_far"] / "images").glob("*.png"))) == 4
    assert paths["id_names"].read_text() == "circle\nstar\n"
    assert sorted(p.name for p in paths["ood_unnamed"].iterdir()) == ["fish", "letter_m"]


def test_world_export_cli(tmp_path):
    result = invoke(["world", "export", str(tmp_path / "w"), "--id", "circle,heart", "--shots", "2",
                                 "--test-per-class", "1", "--far", "3", "--train-classes", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    assert set(json.loads(result.stdout)) >= {"train", "test", "ood_near", "ood_far", "id_names"}
    assert len(list((tmp_path / "w" / "ood_near").iterdir())) == 6
    assert len(list((tmp_path / "w" / "ood_unnamed").iterdir())) == 8
    named = invoke(["world", "export", str(tmp_path / "v"), "--id", "letter e, house", "--ood", "fish",
                                "--no-unnamed", "--shots", "1", "--test-per-class", "1", "--far", "0", "--json"])
    assert named.exit_code == 0, named.stderr
    assert sorted(p.name for p in (tmp_path / "v" / "test").iterdir()) == ["house", "letter_e"]
    assert not (tmp_path / "v" / "ood_unnamed").exists()
    assert (tmp_path / "v" / "id_names.txt").read_text() == "house\nletter e\n"
    bad = invoke(["world", "export", str(tmp_path / "x"), "--id", "circle,blob"])
    assert bad.exit_code == 2 and "unknown shape 'blob'" in bad.stderr
    bad = invoke(["world", "export", str(tmp_path / "x"), "--id", "circle", "--ood", "circle"])
    assert bad.exit_code == 2 and "both ID and OOD" in bad.stderr
    bad = invoke(["world", "export", str(tmp_path / "nope" / "x")])
    assert bad.exit_code == 3


@pytest.mark.parametrize("shape", world.CATEGORIES)
def test_every_category_renders_visibly(shape):
    img = world.render([world.Item(shape, "white", "small")], np.random.default_rng(3))[0]
    assert (img.min(axis=-1) > 150).sum() >= 20


def test_world_export_is_all_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "w"
    args = ["world", "export", str(target), "--id", "circle,heart", "--shots", "1", "--test-per-class", "1",
            "--far", "2", "--no-unnamed"]
    # a failure while rendering the far-OOD set (after train/, test/, ood_near/ are written) leaves no trace
    real = world.export_images
    monkeypatch.setattr(world, "export_images", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    interrupted = invoke(args)
    assert interrupted.exit_code == 130
    assert not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(world, "export_images", real)
    assert invoke(args).exit_code == 0
    (target / "notes.txt").write_text("mine")
    again = invoke([*args, "--overwrite", "--id", "star,heart"])
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in (target / "test").iterdir()) == ["heart", "star"]
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no staging folder left beside it
    (tmp_path / "file").write_text("x")
    bad = invoke(["world", "export", str(tmp_path / "file")])
    assert bad.exit_code == 2 and "is a file" in bad.stderr and "Traceback" not in bad.stderr


def test_world_export_without_calibration_images_names_no_calib_folder(tmp_path):
    result = invoke(["world", "export", str(tmp_path / "w"), "--shots", "1", "--test-per-class",
                                      "1", "--far", "1", "--calib-per-class", "0", "--no-unnamed"])
    assert result.exit_code == 0, result.stderr
    assert "calib/" not in result.stderr and not (tmp_path / "w" / "calib").exists()
    assert "train/ (6 classes x 1)" in result.stderr
