"""ImageFolder discovery, class-name files and seeded few-shot sampling."""

from __future__ import annotations

import pytest
from conftest import make_image_folder

from negprompt_cli.errors import NegPromptWarning, NotFoundError, UsageError
from negprompt_cli.inputs.image_folders import few_shot_split, find_images, load_image_folder
from negprompt_cli.inputs.image_list import list_images


def test_default_names_and_sorted_order(image_folder):
    folder = load_image_folder(image_folder)
    assert folder.class_dirs == ["blue_dots", "green_bars", "red_stripes"]
    assert folder.class_names == ["blue dots", "green bars", "red stripes"]
    assert all(len(files) == 8 for files in folder.files)


def test_non_image_files_are_ignored(image_folder):
    (image_folder / "blue_dots" / "notes.txt").write_text("not an image")
    (image_folder / "blue_dots" / ".DS_Store.png").write_bytes(b"")
    assert len(load_image_folder(image_folder).files[0]) == 8


def test_class_names_file_plain_and_tab(image_folder, tmp_path):
    plain = tmp_path / "names.txt"
    plain.write_text("dots\nbars\nstripes\n")
    assert load_image_folder(image_folder, plain).class_names == ["dots", "bars", "stripes"]
    tab = tmp_path / "map.tsv"
    tab.write_text("red_stripes\tstriped thing\nblue_dots\tdotted thing\ngreen_bars\tbarred thing\n")
    assert load_image_folder(image_folder, tab).class_names == ["dotted thing", "barred thing", "striped thing"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a\nb\n", "has 2 class names but the data has 3"),
        ("a\n\nb\n", "blank line"),
        ("", "is empty"),
        ("red_stripes\tx\nblue_dots\ty\n", "names no class for folder 'green_bars'"),
    ],
)
def test_bad_class_names_files(image_folder, tmp_path, content, message):
    names = tmp_path / "names.txt"
    names.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_image_folder(image_folder, names)


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(NotFoundError):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        load_image_folder(tmp_path / "empty")
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=2)
    (root / "c").mkdir()
    (root / "c" / "readme.md").write_text("x")
    with pytest.raises(UsageError, match="has no images"):
        load_image_folder(root)


def test_few_shot_is_seeded_and_stable(tmp_path):
    folder = load_image_folder(make_image_folder(tmp_path / "d", per_class=10))
    a = few_shot_split(folder, 4, seed=7)
    b = few_shot_split(folder, 4, seed=7)
    c = few_shot_split(folder, 4, seed=8)
    assert a.train == b.train and a.train != c.train
    assert len(a.train) == 12
    assert [a.labels[i] for i in a.train].count(0) == 4
    # adding a validation hold-out does not change the training subset, and never overlaps it
    v = few_shot_split(folder, 4, seed=7, val_fraction=0.3)
    assert v.train == a.train
    assert len(v.val) == 9 and not set(v.val) & set(v.train)


def test_shots_larger_than_class_uses_all_and_warns(tmp_path):
    from negprompt_cli.errors import NegPromptWarning

    folder = load_image_folder(make_image_folder(tmp_path / "d", per_class=3))
    with pytest.warns(NegPromptWarning, match="more than 3 class"):
        split = few_shot_split(folder, 16, seed=1)
    assert len(split.train) == 9


def test_find_images_recursive(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a",), per_class=2)
    nested = root / "a" / "deeper"
    nested.mkdir()
    (root / "a" / "000.png").rename(nested / "x.png")
    (root / "skip.txt").write_text("")
    (root / ".hidden.png").write_bytes(b"")
    with pytest.warns(NegPromptWarning, match=r"ignored 1 file\(s\) .* \(e.g. skip.txt\)"):
        assert [p.name for p in find_images(root)] == ["001.png", "x.png"]


def test_symlinked_folders_are_followed_once(tmp_path):
    """A class folder that is a symlink is found by score and fit-pos alike; a symlink loop ends."""
    images = make_image_folder(tmp_path / "elsewhere", classes=("linked",), per_class=3)
    root = make_image_folder(tmp_path / "data", classes=("plain",), per_class=2)
    (root / "linked").symlink_to(images / "linked", target_is_directory=True)
    (root / "plain" / "loop").symlink_to(root / "plain", target_is_directory=True)
    with pytest.warns(NegPromptWarning, match=r"did not follow 1 symlinked folder\(s\) that lead back up"):
        found = find_images(root)
    assert sorted(p.parent.name for p in found) == ["linked"] * 3 + ["plain"] * 2
    with pytest.warns(NegPromptWarning, match="lead back up"):
        folder = load_image_folder(root)
    assert folder.class_dirs == ["linked", "plain"] and [len(f) for f in folder.files] == [3, 2]


def test_a_link_to_a_parent_folder_is_never_followed_out_of_the_input(tmp_path):
    """#30 item 6: a symlink to a parent folder used to take the walk out of the image folder, into everything
    beside it (here: a private folder next to the images)."""
    secret = make_image_folder(tmp_path / "private", classes=("mine",), per_class=2)
    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=2)
    (root / "cat" / "up").symlink_to(tmp_path, target_is_directory=True)  # two levels up: holds private/
    (root / "dog" / "self").symlink_to(root, target_is_directory=True)  # back to the input itself
    with pytest.warns(NegPromptWarning, match=r"did not follow 2 symlinked folder\(s\) that lead back up") as w:
        found = find_images(root)
    assert sorted(p.parent.name for p in found) == ["cat", "cat", "dog", "dog"]
    assert not [p for p in found if secret in p.parents]
    assert f"{root / 'cat' / 'up'} (-> {tmp_path})" in str(w[0].message)
    (root / "parent").symlink_to(tmp_path, target_is_directory=True)  # a "class folder" holding the data root
    with pytest.warns(NegPromptWarning, match="holds the data root"):
        folder = load_image_folder(root)
    assert folder.class_dirs == ["cat", "dog"]
    images = list_images([root])
    assert len(images) == 4


def test_broken_links_are_said_and_refused_with_strict(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("cat",), per_class=2)
    (root / "cat" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (root / "cat" / "gone_folder").symlink_to(tmp_path / "no-such-folder", target_is_directory=True)
    with pytest.warns(NegPromptWarning, match=r"skipped 2 broken symlink\(s\), whose targets do not exist: "):
        assert len(find_images(root)) == 2
    with pytest.raises(UsageError, match=r"2 broken symlink\(s\)"):
        find_images(root, strict=True)
    with pytest.raises(UsageError, match="broken symlink"):
        list_images([root], strict=True)
    with pytest.raises(UsageError, match="broken symlink"):
        load_image_folder(root, strict=True)
