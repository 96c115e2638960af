"""Past one process (issue #13): torchrun scoring and cache building give the bytes one process gives, bad
launches fail with one line, and a feature cache shared by concurrent writers (one of them killed) stays whole."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import NEG_FAST, VIT_CFG, invoke, make_image_folder, write_local_dir

from negprompt_cli.distributed import Ranks, batch_shard
from negprompt_cli.features.feature_cache import FeatureCache, cache_keys, compact, verify

# every one-process run here is a reference for torchrun's bytes: one thread, as torchrun's processes have
pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = "red stripes\ngreen bars\nblue dots\n"


def run_env() -> dict[str, str]:
    # torchrun's ranks run on CPU here (two ranks cannot share one GPU under nccl); one thread each, as torchrun sets
    return {**os.environ, "OMP_NUM_THREADS": "1", "NEGPROMPT_DEVICE": "cpu"}


def torchrun(processes: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           "-m", "negprompt_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=300)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error")]


@pytest.fixture
def job(tmp_path, tiny_vit_dir):
    """35 images (not a multiple of the batch size of 4, so the ranks' shares differ) and class names."""
    make_image_folder(tmp_path / "images", per_class=10, seed=3)
    make_image_folder(tmp_path / "calib", per_class=4, seed=4)
    for extra in range(5):
        make_image_folder(tmp_path / "images" / f"more{extra}", classes=("blue_dots",), per_class=1, seed=extra)
    (tmp_path / "names.txt").write_text(NAMES)
    # mcm: these tests are about splitting the work, not the scorer (the zero-shot default, csp, would mine the
    # 70k-word WordNet lexicon with every fresh cache)
    common = ["--zero-shot", "--names", str(tmp_path / "names.txt"), "--backbone", f"local-dir:{tiny_vit_dir}",
              "--batch-size", "4", "--scorer", "mcm", "--quiet"]
    return tmp_path, common


def test_batch_shards_cover_every_item_once_in_whole_batches():
    for count in (1, 7, 8, 35, 64, 1000):
        for world in (1, 2, 3, 8):
            shares = [batch_shard(count, 4, Ranks(r, world, r)) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(count))
            assert all(s.start % 4 == 0 for s in shares if len(s))
            sizes = [len(s) for s in shares]
            assert max(sizes) - min(sizes) <= 4  # balanced to within one batch


@pytest.mark.slow
def test_torchrun_score_and_cache_build_give_the_one_process_bytes(job):
    root, common = job
    single = invoke(["score", str(root / "images"), *common, "--calibrate", str(root / "calib"), "--keep", "0.8",
                     "--cache-dir", str(root / "c1"), "--out", str(root / "one.csv")])
    assert single.exit_code == 0, single.stderr
    two = torchrun(2, "score", str(root / "images"), *common, "--calibrate", str(root / "calib"), "--keep", "0.8",
                   "--cache-dir", str(root / "c2"), "--out", str(root / "two.csv"))
    assert two.returncode == 0, two.stderr
    assert (root / "two.csv").read_bytes() == (root / "one.csv").read_bytes()
    rows = list(csv.DictReader((root / "one.csv").open()))
    assert len(rows) == 35 and {r["ood"] for r in rows} <= {"True", "False"}  # calibrated: every row decided
    assert two.stderr.count("Scored 35 image(s)") == 1  # rank 0 reports, once
    # both ranks wrote their own shards into the shared cache
    assert len(list((root / "c2").rglob("*.safetensors"))) >= 2

    # cache build under torchrun fills what a later one-process score reads, with the same rows; its ranks decode
    # with workers started from a forkserver (a forked one would inherit the process group's threads and sockets)
    backbone = common[common.index("--backbone"):common.index("--backbone") + 2]
    built = torchrun(2, "cache", "build", str(root / "images"), *backbone, "--batch-size", "4", "--workers", "1",
                     "--cache-dir", str(root / "c3"), "--json", "--quiet")
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["encoded"] == 35 and summary["processes"] == 2
    again = invoke(["score", str(root / "images"), *common, "--cache-dir", str(root / "c3"),
                    "--out", str(root / "three.csv"), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["encoded"] == 0
    fresh = invoke(["score", str(root / "images"), *common, "--cache-dir", str(root / "c4"),
                    "--out", str(root / "four.csv")])
    assert fresh.exit_code == 0
    assert (root / "three.csv").read_bytes() == (root / "four.csv").read_bytes()


@pytest.mark.slow
def test_more_processes_than_images_is_one_error(job):
    root, common = job
    make_image_folder(root / "one", classes=("red_stripes",), per_class=1)
    result = torchrun(2, "score", str(root / "one"), *common, "--out", str(root / "x.csv"))
    assert result.returncode != 0
    assert errors(result.stderr) == ["Error: 2 processes for 1 image(s): every process needs at least one"]
    assert not (root / "x.csv").exists()


@pytest.mark.slow
def test_a_rank_that_fails_mid_run_stops_the_job_without_output_and_keeps_finished_shards(job):
    root, common = job
    images = sorted((root / "images").rglob("*.png"))
    images[-1].write_bytes(b"not an image")  # in rank 1's share (the last batches)
    cache = root / "crash-cache"
    result = torchrun(2, "score", str(root / "images"), *common, "--strict", "--cache-dir", str(cache),
                      "--out", str(root / "x.csv"))
    assert result.returncode != 0
    assert not (root / "x.csv").exists()
    assert any(line.startswith("Error (rank 1): 1 unreadable image(s)") for line in errors(result.stderr))
    # rank 0 finished its share: its rows are in the cache and a later run reuses them
    again = invoke(["score", str(root / "images"), *common, "--cache-dir", str(cache), "--out",
                    str(root / "y.csv"), "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["cached"] >= 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ranks_with_different_backbones_refuse_to_run(job, tmp_path):
    root, common = job
    other = write_local_dir(tmp_path / "other-vit", VIT_CFG, seed=1)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        args = list(common)
        if rank == 1:
            args[args.index("--backbone") + 1] = f"local-dir:{other}"
        env = {**run_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "negprompt_cli", "score", str(root / "images"), *args,
                                       "--out", str(root / f"rank{rank}.csv")], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], [err for _, err in outputs]
    assert errors(outputs[0][1])[0].startswith("Error: the ranks disagree on the backbone: rank 0 has")
    assert errors(outputs[1][1]) == []  # said once, by rank 0
    assert not list(root.glob("rank*.csv"))


def test_distributed_outside_torchrun_is_a_usage_error(job):
    root, common = job
    result = invoke(["score", str(root / "images"), *common, "--distributed"])
    assert result.exit_code == 2 and "--distributed needs a torchrun launch" in result.stderr


def test_cache_build_on_a_read_only_file_system_is_one_error(job, mount):
    root, common = job
    read_only = mount("ro", "ro,size=1m")
    backbone = common[common.index("--backbone"):common.index("--backbone") + 2]
    result = invoke(["cache", "build", str(root / "images"), *backbone, "--cache-dir", str(read_only / "c")])
    assert result.exit_code == 2
    assert errors(result.stderr) == [f"Error: the feature cache {read_only / 'c'} cannot be created (Read-only "
                                     "file system)"]


# -- many writers, one cache ------------------------------------------------------------------------------------
def _all_rows(cache_root: Path) -> dict[str, torch.Tensor]:
    rows: dict[str, torch.Tensor] = {}
    for folder in cache_keys(cache_root):
        cache = FeatureCache(cache_root, folder.name)
        rows.update(cache.lookup(list(cache._load_index())))
    return rows


@pytest.mark.slow
def test_concurrent_writers_and_a_kill_9_leave_a_whole_cache(job):
    root, common = job
    backbone = common[common.index("--backbone"):common.index("--backbone") + 2]
    shared = root / "shared-cache"
    make_image_folder(root / "b", classes=("green_bars", "blue_dots"), per_class=12, seed=9)
    env = run_env()

    def build(folder: Path) -> subprocess.Popen:
        # batch size 1: every row is what encoding that image alone gives, whichever process wrote it
        return subprocess.Popen([sys.executable, "-m", "negprompt_cli", "cache", "build", str(folder), *backbone,
                                 "--cache-dir", str(shared), "--batch-size", "1", "--workers", "0", "--quiet"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    writers = [build(root / "images"), build(root / "images"), build(root / "b"), build(root)]
    victim = writers[3]
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None and len(list(shared.rglob("*.safetensors"))) < 6:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    for writer in writers[:3]:
        _, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL

    # what a writer killed mid-write leaves on a file system without atomic rename: a torn shard, a temp file
    key_dir = cache_keys(shared)[0]
    whole = next(key_dir.glob("*.safetensors")).read_bytes()
    torn = "7a" * 16 + ".safetensors"  # named as every shard is: uuid hex
    (key_dir / torn).write_bytes(whole[: len(whole) // 2])
    (key_dir / f".{'0' * 32}-999999-{socket.gethostname()}.safetensors.tmp").write_bytes(whole[:100])

    # the clean run: finish the killed job, then score everything from the cache alone
    rerun = build(root)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    clean_cmd = ["score", str(root), *common, "--out"]
    # scored in batches of one, as the fresh run below: a score depends on its batch only through float rounding
    after = invoke([*clean_cmd, str(root / "after.csv"), "--cache-dir", str(shared), "--batch-size", "1", "--json"])
    assert after.exit_code == 0, after.stderr
    assert json.loads(after.stdout)["encoded"] == 0
    alone = invoke([*clean_cmd, str(root / "alone.csv"), "--cache-dir", str(root / "alone-cache"),
                    "--batch-size", "1"])
    assert alone.exit_code == 0, alone.stderr
    assert (root / "after.csv").read_bytes() == (root / "alone.csv").read_bytes()

    rows_before = _all_rows(shared)
    report = verify(shared)[0]
    assert report.damaged == [torn]
    planted = f".{'0' * 32}-999999-{socket.gethostname()}.safetensors.tmp"
    # the planted one, and the one the killed writer may have left if the kill came mid-write
    assert planted in report.stale_temp_files
    assert all(f"-{victim.pid}-" in name for name in report.stale_temp_files if name != planted)
    assert invoke(["cache", "verify", "--cache-dir", str(shared)]).exit_code == 1
    gc = invoke(["cache", "gc", "--cache-dir", str(shared), "--json"])
    assert gc.exit_code == 0, gc.stderr
    assert json.loads(gc.stdout)["shards"] == 1
    checked = invoke(["cache", "verify", "--cache-dir", str(shared)])
    assert checked.exit_code == 0, checked.stderr
    rows_after = _all_rows(shared)
    assert rows_after.keys() == rows_before.keys() and len(rows_after) == 35 + 24 + 4 * 3  # images, b/, calib/
    assert all(torch.equal(rows_after[k], rows_before[k]) for k in rows_after)
    fresh = {k: v for k, v in _all_rows(root / "alone-cache").items()}
    assert all(torch.equal(rows_after[k], fresh[k]) for k in fresh)


def test_a_reader_that_indexed_shards_before_compaction_still_finds_every_row(tmp_path):
    ids = [f"row{i}" for i in range(10)]
    rows = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    writer = FeatureCache(tmp_path, "key", info={"backbone": "x"})
    for start in range(0, 10, 3):
        writer.add(ids[start:start + 3], rows[start:start + 3])
    writer.add(ids[:2], rows[:2])  # a duplicate, as two processes caching the same images write
    reader = FeatureCache(tmp_path, "key")
    reader._load_index()  # indexed before compaction
    live = tmp_path / "key" / f".{'1' * 32}-{os.getpid()}-{socket.gethostname()}.safetensors.tmp"
    live.write_bytes(b"still being written")
    (report,) = compact(tmp_path)
    assert report.shards == 1 and report.unique_rows == 10 and report.rows == 10
    assert live.exists()  # a running writer's temporary file is left alone
    found = reader.lookup(ids)
    assert not reader.damaged
    assert torch.equal(torch.stack([found[i] for i in ids]), rows)


@pytest.mark.slow
def test_class_parallel_gradient_equals_the_one_process_gradient(tiny_vit_dir, tmp_path):
    worker = Path(__file__).with_name("class_parallel_worker.py")
    out = tmp_path / "grads.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(worker), str(tiny_vit_dir), str(out)], capture_output=True, text=True, env=run_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2
    for per_rank in report["ranks"]:
        assert len(per_rank) == 8
        for case, diff in per_rank.items():
            assert diff["grad_max"] > 1e-4, case  # a real gradient
            assert diff["grad"] <= 1e-6 and diff["loss"] <= 1e-9 and diff["text_neg"] <= 1e-9, (case, diff)


@pytest.mark.slow
def test_torchrun_fit_neg_trains_the_one_process_prompts(tmp_path, tiny_vit_dir):
    from negprompt_cli.outputs.artifact import load_prompts

    make_image_folder(tmp_path / "train", per_class=8, seed=0)
    backbone = ["--backbone", f"local-dir:{tiny_vit_dir}"]
    pos = invoke(["fit-pos", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "pos.safetensors"),
                  *backbone, "--epochs", "2", "--n-ctx", "4", "--batch-size", "16"])
    assert pos.exit_code == 0, pos.stderr
    common = ["fit-neg", "--data", str(tmp_path / "train"), "--pos", str(tmp_path / "pos.safetensors"),
              *NEG_FAST, "--quiet"]
    one = invoke([*common, "--out", str(tmp_path / "one.safetensors"), "--text-chunk", "0"])
    assert one.exit_code == 0, one.stderr
    two = torchrun(2, *common, "--out", str(tmp_path / "two.safetensors"), "--text-chunk", "1", "--json")
    assert two.returncode == 0, two.stderr
    assert json.loads(two.stdout)["processes"] == 2
    assert not (tmp_path / "two.safetensors.ckpt").exists()
    ours, reference = load_prompts(tmp_path / "two.safetensors"), load_prompts(tmp_path / "one.safetensors")
    assert ours.tensors.keys() == reference.tensors.keys()
    for name, tensor in reference.tensors.items():
        torch.testing.assert_close(ours.tensors[name], tensor, atol=1e-5, rtol=0)
    assert ours.extra["threshold"]["value"] == pytest.approx(reference.extra["threshold"]["value"], abs=1e-5)

    one_command = torchrun(2, *[a for a in common if a not in ("--pos", str(tmp_path / "pos.safetensors"))],
                           *backbone, "--out", str(tmp_path / "three.safetensors"))
    assert one_command.returncode != 0
    assert errors(one_command.stderr) == ["Error: fit-neg under torchrun needs --pos (the positive stage runs in "
                                          "one process)"]


def test_cache_build_fills_what_fit_pos_reads_including_augmented_views(tmp_path, tiny_vit_dir):
    make_image_folder(tmp_path / "train", per_class=6, seed=0)
    backbone = ["--backbone", f"local-dir:{tiny_vit_dir}"]
    built = invoke(["cache", "build", str(tmp_path / "train"), *backbone, "--aug-views", "2", "--seed", "3",
                    "--json", "--quiet"])
    assert built.exit_code == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["views"] == ["eval", "aug0-s3-p4", "aug1-s3-p4"] and summary["encoded"] == 18 * 3
    fit = invoke(["fit-pos", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "pos.safetensors"),
                  *backbone, "--epochs", "1", "--n-ctx", "4", "--aug-views", "2", "--seed", "3", "--json"])
    assert fit.exit_code == 0, fit.stderr
    assert json.loads(fit.stdout)["images_encoded"] == 0


def test_compaction_writes_shards_of_at_most_max_rows_with_every_row_unchanged(tmp_path):
    ids = [f"r{i}" for i in range(10)]
    rows = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    cache = FeatureCache(tmp_path, "key", info={"backbone": "x"})
    for i in range(10):
        cache.add(ids[i:i + 1], rows[i:i + 1])
    (report,) = compact(tmp_path, max_rows=4)
    assert report.shards == 3 and report.unique_rows == 10 and report.removed == 10
    found = FeatureCache(tmp_path, "key").lookup(ids)
    assert torch.equal(torch.stack([found[i] for i in ids]), rows)
    (again,) = compact(tmp_path, max_rows=4)  # already compact: nothing to merge
    assert again.shards == 3 and again.removed == 0


# -- streaming parts, adaptive and stdout under torchrun (issue #23) -----------------------------------------------

def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


@pytest.mark.slow
def test_torchrun_parts_are_joined_in_order_and_an_older_runs_parts_are_never_merged(job):
    root, common = job
    out = root / "out"
    out.mkdir()
    stale = out / ".two.csv.0123456789ab.part00001"  # what a run killed with kill -9 leaves next to --out
    stale.write_text("not,scores\n")
    single = invoke(["score", str(root / "images"), *common, "--cache-dir", str(root / "c1"), "--labeled",
                     "--out", str(out / "one.csv")])
    assert single.exit_code == 0, single.stderr
    two = torchrun(2, "score", str(root / "images"), *common, "--cache-dir", str(root / "c2"), "--labeled",
                   "--out", str(out / "two.csv"), "--json")
    assert two.returncode == 0, two.stderr
    assert (out / "two.csv").read_bytes() == (out / "one.csv").read_bytes()
    assert _parts(out) == [stale.name]  # this run's parts are gone; the stale one was not used, and is named
    assert "1 part file(s) of an earlier interrupted run" in two.stderr and stale.name in two.stderr
    shares = json.loads(two.stdout)["processes"]["parts"]
    assert [p["images"] for p in shares] == [16, 19] and sum(p["bytes"] for p in shares) == len(
        (out / "two.csv").read_bytes())  # rank 0's part carries the header


@pytest.mark.slow
def test_torchrun_adaptive_scores_and_stdout_give_the_one_process_bytes(job):
    root, common = job
    (root / "words.txt").write_text("".join(f"{w}\n" for w in (
        "cloud", "river", "violin", "ladder", "pepper", "anchor", "lantern", "pillow", "candle", "wagon",
        "kettle", "saddle", "compass", "tulip", "marble", "feather")))
    at = common.index("--scorer")
    adaptive = [*common[:at], *common[at + 2:], "--scorer", "neglabel", "--lexicon", str(root / "words.txt"),
                "--adaptive", "--format", "jsonl"]  # neglabel with a small lexicon: a scorer --adaptive takes
    single = invoke(["score", str(root / "images"), *adaptive, "--cache-dir", str(root / "a1")])
    assert single.exit_code == 0, single.stderr
    two = torchrun(2, "score", str(root / "images"), *adaptive, "--cache-dir", str(root / "a2"))
    assert two.returncode == 0, two.stderr
    assert two.stdout == single.stdout and len(two.stdout.splitlines()) == 35
    assert {json.loads(line)["scorer"] for line in two.stdout.splitlines()} == {"neglabel"}


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["gl-mcm", "negrefine"])
def test_torchrun_with_patch_features_or_composed_texts_gives_the_one_process_bytes(job, scorer):
    """GL-MCM's rows carry patch features through the ranks' cache shares and the gather; NegRefine encodes its
    pair texts in every rank: both give the bytes one process writes (issue #34)."""
    root, common = job
    (root / "words.txt").write_text("".join(f"{w}\n" for w in (
        "cloud", "river", "violin", "ladder", "pepper", "anchor", "lantern", "pillow", "candle", "wagon")))
    at = common.index("--scorer")
    args = [*common[:at], *common[at + 2:], "--scorer", scorer, "--format", "jsonl"]
    if scorer == "negrefine":
        args += ["--lexicon", str(root / "words.txt"), "--groups", "2"]
    single = invoke(["score", str(root / "images"), *args, "--cache-dir", str(root / "s1"), "--out",
                     str(root / "one.jsonl")])
    assert single.exit_code == 0, single.stderr
    two = torchrun(2, "score", str(root / "images"), *args, "--cache-dir", str(root / "s2"), "--out",
                   str(root / "two.jsonl"))
    assert two.returncode == 0, two.stderr
    assert (root / "two.jsonl").read_bytes() == (root / "one.jsonl").read_bytes()
    rows = [json.loads(line) for line in (root / "one.jsonl").read_text().splitlines()]
    assert len(rows) == 35 and {r["scorer"] for r in rows} == {scorer}


# -- several nodes, on one machine (issue #23) ----------------------------------------------------------------------

def two_nodes(*args: str, port: int, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """The same command on two torchrun "nodes" (one process each) that meet through a c10d rendezvous, as on two
    machines (here both on 127.0.0.1)."""
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                               str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}", *args], env=run_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_two_nodes_score_and_cache_build_give_the_one_process_bytes_and_gradient(job, tiny_vit_dir):
    root, common = job
    single = invoke(["score", str(root / "images"), *common, "--calibrate", str(root / "calib"), "--keep", "0.8",
                     "--cache-dir", str(root / "n1"), "--out", str(root / "one.csv")])
    assert single.exit_code == 0, single.stderr
    nodes = two_nodes("-m", "negprompt_cli", "score", str(root / "images"), *common, "--keep", "0.8", "--calibrate",
                      str(root / "calib"), "--cache-dir", str(root / "n2"), "--out", str(root / "two.csv"),
                      port=_free_port())
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-2000:] + nodes[1].stderr[-2000:]
    assert (root / "two.csv").read_bytes() == (root / "one.csv").read_bytes()

    backbone = common[common.index("--backbone"):common.index("--backbone") + 2]
    built = two_nodes("-m", "negprompt_cli", "cache", "build", str(root / "images"), *backbone, "--batch-size", "4",
                      "--cache-dir", str(root / "n3"), "--quiet", "--json", port=_free_port())
    assert [n.returncode for n in built] == [0, 0], built[0].stderr[-2000:] + built[1].stderr[-2000:]
    summary = next(json.loads(n.stdout) for n in built if n.stdout.strip())  # the node that holds rank 0
    assert summary["encoded"] == 35 and summary["processes"] == 2
    again = invoke(["score", str(root / "images"), *common, "--calibrate", str(root / "calib"), "--keep", "0.8",
                    "--cache-dir", str(root / "n3"), "--out", str(root / "three.csv"), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["encoded"] == 0  # every scored image from the cache
    assert (root / "three.csv").read_bytes() == (root / "one.csv").read_bytes()

    # class-parallel fit-neg: the gradient on two nodes is the one-process gradient
    worker = Path(__file__).with_name("class_parallel_worker.py")
    grads = root / "grads.json"
    trained = two_nodes(str(worker), str(tiny_vit_dir), str(grads), port=_free_port())
    assert [n.returncode for n in trained] == [0, 0], trained[0].stderr[-2000:] + trained[1].stderr[-2000:]
    report = json.loads(grads.read_text())
    assert report["world_size"] == 2
    for per_rank in report["ranks"]:
        for case, diff in per_rank.items():
            assert diff["grad"] <= 1e-6 and diff["loss"] <= 1e-9, (case, diff)


def _worker(agent: int) -> tuple[int, int] | None:
    """(pid, RANK) of the worker a torchrun agent started (None before it has one)."""
    try:
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
        for child in children:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
            if ranks:
                return int(child), int(ranks[0])
    except OSError:
        return None
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc (Linux)")
def test_a_node_that_dies_makes_the_other_exit_with_one_line(job):
    root, common = job
    make_image_folder(root / "many", per_class=100, seed=11)  # 300 images in batches of one: seconds per rank
    port = _free_port()
    env = {**run_env(), "NEGPROMPT_DIST_TIMEOUT": "60"}

    def node(rank: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                                 str(rank), "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                                 f"127.0.0.1:{port}", "--rdzv-id", f"die-{port}", "-m", "negprompt_cli", "score",
                                 str(root / "many"), *common, "--batch-size", "1", "--workers", "0",
                                 "--cache-dir", str(root / "d"), "--out", str(root / "x.csv")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # node 0 first, so that it hosts the rendezvous (its death would stop torchrun itself, with torchrun's report)
    head = node(0)
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    agents = [head, node(1)]
    victim, worker = agents[1], None
    while time.time() < deadline and worker is None:  # node 1's worker, once it scores (its part file exists)
        found = _worker(victim.pid)
        if found is not None and any(f".part{found[1]:05d}" in p.name for p in root.iterdir()):
            worker = found[0]
        time.sleep(0.01)
    assert worker is not None, "node 1 never started scoring"
    for pid in (worker, victim.pid):  # the whole node: its worker and its torchrun agent
        os.kill(pid, signal.SIGKILL)
    survivor = next(a for a in agents if a is not victim)
    started = time.time()
    _, stderr = survivor.communicate(timeout=120)
    victim.communicate()
    assert survivor.returncode != 0 and time.time() - started < 90  # NEGPROMPT_DIST_TIMEOUT=60 bounds the wait
    lost = [line for line in errors(stderr) if "lost another rank while" in line]
    assert len(lost) == 1, stderr[-2000:]
    assert not (root / "x.csv").exists()
    survivor_rank = 1 - int(next(p.name for p in root.iterdir() if ".part" in p.name)[-1])
    assert not any(f".part{survivor_rank:05d}" in p.name for p in root.iterdir())  # it removed its own part
