"""The procedural world: determinism, captions, held-out pairs, and the ImageFolder export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from negprompt_cli import world
from negprompt_cli.cli import app


def test_render_is_seeded_and_shapes_differ():
    items = [world.Item(s, "red", "large") for s in world.SHAPES]
    a = world.render(items, np.random.default_rng(0))
    b = world.render(items, np.random.default_rng(0))
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    # with the same background noise and pose, every pair of shapes covers different pixels
    masks = [(img[..., 0] > 150) & (img[..., 1] < 100) for img in a]
    for i in range(12):
        for j in range(i + 1, 12):
            assert (masks[i] != masks[j]).sum() > 8, (world.SHAPES[i], world.SHAPES[j])


def test_far_ood_has_no_shape_colour_structure():
    far = world.render_far_ood(9, np.random.default_rng(1))
    assert far.shape == (9, 32, 32, 3) and far.std() > 20


def test_held_out_pairs():
    assert len(world.HELD_OUT_PAIRS) == 24
    per_shape = {s: sum(1 for _, t in world.HELD_OUT_PAIRS if t == s) for s in world.SHAPES}
    assert set(per_shape.values()) == {2}
    assert len(world.pretraining_pairs()) == 96
    assert not set(world.pretraining_pairs()) & world.HELD_OUT_PAIRS
    rng = np.random.default_rng(0)
    assert all(it.pair not in world.HELD_OUT_PAIRS for it in world.sample_items(500, rng))


def test_captions_state_only_true_attributes():
    rng = np.random.default_rng(2)
    for item in world.sample_items(300, rng):
        text = world.caption(item, rng)
        shape, colour, size = world.caption_attributes(text)
        assert shape == item.shape and colour in (None, item.colour) and size in (None, item.size)


def test_export_world(tmp_path):
    spec = world.WorldSpec(id_shapes=("circle", "star"), ood_shapes=("ring",), train_shapes=("circle",), shots=3,
                           test_per_class=2, far=4, seed=5, calib_per_class=3)
    paths = world.export_world(tmp_path, spec)
    assert sorted(p.name for p in paths["train"].iterdir()) == ["circle"]
    assert len(list((paths["test"] / "star").glob("*.png"))) == 2
    assert sorted(p.name for p in paths["calib"].iterdir()) == ["circle", "star"]
    calib = {p.read_bytes() for p in paths["calib"].rglob("*.png")}
    assert len(calib) == 6 and not calib & {p.read_bytes() for p in paths["test"].rglob("*.png")}
    assert len(list((paths["ood_far"] / "images").glob("*.png"))) == 4
    assert paths["id_names"].read_text() == "circle\nstar\n"


def test_world_export_cli(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["world", "export", str(tmp_path / "w"), "--id", "circle,heart", "--shots", "2",
                                 "--test-per-class", "1", "--far", "3", "--train-classes", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    assert set(json.loads(result.stdout)) >= {"train", "test", "ood_near", "ood_far", "id_names"}
    assert len(list((tmp_path / "w" / "ood_near").iterdir())) == 10
    bad = runner.invoke(app, ["world", "export", str(tmp_path / "x"), "--id", "circle,blob"])
    assert bad.exit_code == 2 and "unknown shape 'blob'" in bad.stderr
    bad = runner.invoke(app, ["world", "export", str(tmp_path / "x"), "--id", "circle", "--ood", "circle"])
    assert bad.exit_code == 2 and "both ID and OOD" in bad.stderr
    bad = runner.invoke(app, ["world", "export", str(tmp_path / "nope" / "x")])
    assert bad.exit_code == 3


@pytest.mark.parametrize("shape", world.SHAPES)
def test_every_shape_renders_visibly(shape):
    img = world.render([world.Item(shape, "white", "small")], np.random.default_rng(3))[0]
    assert (img.min(axis=-1) > 150).sum() >= 20
