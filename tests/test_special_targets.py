"""Never replace what is not ours (issue #30, item 1): an --out that exists and is not a regular file (a named
pipe, a device node, a socket) is never renamed over. Score rows, a stream, are written into a pipe or a
character device directly (as to stdout); every other writer refuses such a path with exit 2 before any work.
A symlinked --out is followed (the link stays, the file it names is written), as a shell's ``>`` does.

Device nodes are private ones made with mknod in the test's own folder, never the system's /dev entries."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from conftest import copy_tree, error_line, invoke, pos_fast, train_positives

from negprompt_cli.errors import UsageError
from negprompt_cli.outputs.atomic import publish, write_text_atomic

POS_FAST = pos_fast(2)
NULL, FULL = (1, 3), (1, 7)  # Linux's major/minor numbers of /dev/null and /dev/full


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_vit_dir):
    return train_positives(tmp_path_factory.mktemp("special"), tiny_vit_dir, tmp_path_factory.mktemp("fc"),
                           POS_FAST, train=4, test=3)


@pytest.fixture
def root(trained, tmp_path):
    return copy_tree(trained, tmp_path / "w")


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def device(path: Path, numbers: tuple[int, int]) -> Path:
    """A private character device node (root, or CAP_MKNOD, on a file system that allows devices)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(*numbers))
        with open(path, "wb"):
            pass
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make and open a private device node here: {exc}")
    return path


def still(path: Path, test) -> bool:  # type: ignore[no-untyped-def]
    return test(os.lstat(path).st_mode)


def read_fifo_in_background(path: Path) -> tuple[threading.Thread, dict[str, bytes]]:
    """A reader of the pipe (as `cat pipe` would be): it fills the dict once the writer closes the pipe."""
    got: dict[str, bytes] = {}

    def read() -> None:
        with open(path, "rb") as handle:
            got["data"] = handle.read()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


# -- score: a stream, written into a pipe or a device --------------------------------------------------------
def score_args(root: Path, out: Path) -> list[str]:
    return ["score", str(root / "test"), "--prompts", str(root / "pos.safetensors"), "--out", str(out)]


def test_score_writes_into_a_named_pipe_the_bytes_a_file_gets_and_the_pipe_stays(root):
    regular = invoke(score_args(root, root / "s.csv"))
    assert regular.exit_code == 0, regular.stderr
    pipe = fifo(root / "pipe")
    reader, got = read_fifo_in_background(pipe)
    piped = invoke(score_args(root, pipe))
    reader.join(timeout=60)
    assert piped.exit_code == 0, piped.stderr
    assert got["data"] == (root / "s.csv").read_bytes()
    assert still(pipe, stat.S_ISFIFO)
    assert not [p for p in root.iterdir() if p.name.startswith(".pipe.")]  # no temporary file beside it


def test_score_into_a_private_null_device_keeps_it_and_a_full_one_is_one_error(root):
    null = device(root / "null", NULL)
    ok = invoke(score_args(root, null))
    assert ok.exit_code == 0, ok.stderr
    assert still(null, stat.S_ISCHR) and os.stat(null).st_rdev == os.makedev(*NULL)
    full = device(root / "full", FULL)  # what replaced the system's /dev/full before
    failed = invoke(score_args(root, full))
    assert failed.exit_code == 1
    assert error_line(failed) == f"Error: could not write the scores to {full}: No space left on device"
    assert still(full, stat.S_ISCHR) and os.stat(full).st_rdev == os.makedev(*FULL)


# -- every other writer: refused before any work --------------------------------------------------------------
def test_prompt_writers_refuse_a_pipe_or_a_device_before_any_work(root, tiny_vit_dir):
    pipe, null = fifo(root / "p.safetensors"), device(root / "n.safetensors", NULL)
    names = root / "names.txt"
    names.write_text("red stripes\ngreen bars\n")
    for out, kind in ((pipe, "a named pipe"), (null, "a character device")):
        for args in (["fit-pos", "--data", str(root / "train"), "--backbone", f"local-dir:{tiny_vit_dir}",
                      "--epochs", "500"],
                     ["fit-neg", "--data", str(root / "train"), "--pos", str(root / "pos.safetensors")],
                     ["transfer", "--prompts", str(root / "pos.safetensors"), "--names", str(names)]):
            result = invoke([*args, "--out", str(out)])
            assert result.exit_code == 2, (args, result.stderr)
            assert error_line(result) == (f"Error: --out {out} is {kind}, not a regular file: negprompt writes a "
                                          "finished file and renames it into place, which would replace it")
    assert still(pipe, stat.S_ISFIFO) and still(null, stat.S_ISCHR)


def test_a_socket_is_refused_even_by_score(root):
    path = root / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        result = invoke(score_args(root, path))
        assert result.exit_code == 2 and "is a socket, not a regular file" in error_line(result)
        assert still(path, stat.S_ISSOCK)
    finally:
        server.close()


def test_report_refuses_a_pipe_as_its_folder_or_as_one_of_its_files(root):
    scored = invoke(score_args(root, root / "s.csv"))
    assert scored.exit_code == 0, scored.stderr
    report = ["report", "--id", str(root / "s.csv"), "--ood", f"o={root / 's.csv'}", "--no-images"]
    pipe = fifo(root / "r")
    result = invoke([*report, "--out", str(pipe)])
    assert result.exit_code == 2 and error_line(result) == f"Error: --out {pipe} is a named pipe, not a folder"
    folder = root / "rep"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    fifo(folder / "report.html")
    result = invoke([*report, "--out", str(folder), "--overwrite"])
    assert result.exit_code == 2 and f"--out {folder / 'report.html'} is a named pipe" in error_line(result)
    assert still(folder / "report.html", stat.S_ISFIFO) and not (folder / "report.json").exists()


def test_folder_writers_refuse_a_pipe(root, tmp_path):
    pipe = fifo(tmp_path / "x")
    world = invoke(["world", "export", str(pipe), "--id", "circle,star", "--far", "0"])
    assert world.exit_code == 2 and error_line(world) == f"Error: world export: {pipe} is a named pipe, not a folder"
    demo = invoke(["demo", "--workdir", str(pipe)])
    assert demo.exit_code == 2 and "--workdir" in error_line(demo) and "named pipe" in error_line(demo)
    pull = invoke(["pull", "lab/prompts", "--out", str(pipe)])
    assert pull.exit_code == 2 and error_line(pull) == f"Error: --out {pipe} is a named pipe, not a folder"
    assert still(pipe, stat.S_ISFIFO)


def test_world_export_overwrite_never_removes_a_pipe_where_an_export_file_was(tmp_path):
    out = tmp_path / "w"
    small = ["--id", "circle,star", "--test-per-class", "1", "--far", "0", "--shots", "1", "--calib-per-class", "1"]
    assert invoke(["world", "export", str(out), *small]).exit_code == 0
    (out / "train_names.txt").unlink()
    fifo(out / "train_names.txt")
    again = invoke(["world", "export", str(out), *small, "--overwrite"])
    assert again.exit_code == 2 and "train_names.txt is a named pipe" in error_line(again)
    assert still(out / "train_names.txt", stat.S_ISFIFO)


def test_every_atomic_writer_has_the_same_last_check(tmp_path):
    """The one rename every writer ends with (prompts, checkpoints, report files, the feature cache, mined-label
    features) refuses a target that became a pipe after the first checks; the temporary file is the caller's to
    remove."""
    pipe = fifo(tmp_path / "late")
    with pytest.raises(UsageError, match="is a named pipe, not a regular file"):
        write_text_atomic(pipe, "x")
    assert still(pipe, stat.S_ISFIFO) and os.listdir(tmp_path) == ["late"]
    tmp = tmp_path / "t"
    tmp.write_text("y")
    with pytest.raises(UsageError):
        publish(tmp, pipe)
    assert still(pipe, stat.S_ISFIFO)


# -- a symlinked --out ----------------------------------------------------------------------------------------
def test_a_symlinked_out_is_followed_and_the_link_kept(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = root / "link.csv"
    link.symlink_to(elsewhere / "real.csv")  # dangling until the first write
    result = invoke(score_args(root, link))
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and (elsewhere / "real.csv").stat().st_size > 0
    prompts = root / "pos-link.safetensors"
    prompts.symlink_to(elsewhere / "pos.safetensors")
    names = root / "names.txt"
    names.write_text("red stripes\ngreen bars\n")
    moved = invoke(["transfer", "--prompts", str(root / "pos.safetensors"), "--names", str(names), "--out",
                    str(prompts)])
    assert moved.exit_code == 0, moved.stderr
    assert prompts.is_symlink() and (elsewhere / "pos.safetensors").is_file()
    to_pipe = root / "to-pipe.csv"
    to_pipe.symlink_to(fifo(tmp_path / "pipe"))
    refused = invoke(["transfer", "--prompts", str(root / "pos.safetensors"), "--names", str(names), "--out",
                      str(to_pipe)])
    assert refused.exit_code == 2 and "is a named pipe" in error_line(refused)
