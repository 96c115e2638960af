"""Images where users keep them (#32 item 1, item 4): WebDataset shards, Parquet files, datasets.save_to_disk
folders and hf://datasets/ names score exactly as the same images as files do (rows byte-identical apart from
the id column), share their feature-cache rows, and every fault in a container is said per container and
sample without losing the other samples."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import error_line, invoke, make_image_folder

from negprompt_cli.inputs.containers import SampleList, list_samples

SCORE = ["--zero-shot", "--backbone", "toy", "--scorer", "mcm", "--format", "jsonl", "--batch-size", "8"]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """18 images as files (PNG and JPEG), and the same images, in the same order, in every container (written with
    the datasets library, a dev dependency: without it, as on a bare GPU image, these tests are skipped)."""
    datasets = pytest.importorskip("datasets")
    import webdataset as wds
    from PIL import Image

    root = tmp_path_factory.mktemp("crawl")
    make_image_folder(root / "files", classes=("red_stripes", "green_bars"), per_class=5, seed=1)
    make_image_folder(root / "files", classes=("blue_dots",), per_class=8, seed=2, ext=".jpg")
    files = sorted(p for p in (root / "files").rglob("*") if p.is_file())
    keys = [f"{p.parent.name}-{p.stem}" for p in files]
    names = ["red stripes", "green bars", "blue dots"]
    (root / "names.txt").write_text("".join(f"{n}\n" for n in names))
    classes = [names.index(p.parent.name.replace("_", " ")) for p in files]  # each image's class, by position
    for number, part in enumerate((files[:10], files[10:])):  # two shards, as img2dataset writes them
        with wds.TarWriter(str(root / f"shard-{number:06d}.tar")) as sink:
            for p in part:
                sink.write({"__key__": f"{p.parent.name}-{p.stem}", p.suffix[1:]: p.read_bytes(),
                            "json": json.dumps({"url": str(p)}).encode(),
                            "cls": str(names.index(p.parent.name.replace("_", " "))).encode()})
    (root / "shards.txt").write_text("# the crawl\nshard-000000.tar\n\nshard-000001.tar\n")
    images = [{"bytes": p.read_bytes(), "path": k} for p, k in zip(files, keys, strict=True)]
    captions = [p.parent.name for p in files]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})
    table = datasets.Dataset.from_dict({"image": images, "caption": captions, "label": classes}, features=features)
    table.to_parquet(str(root / "table.parquet"), batch_size=7)  # three row groups
    table.save_to_disk(str(root / "saved"), max_shard_size="1KB")  # several Arrow files
    with Image.open(files[0]) as image:
        assert image.size  # the fixture's images are real images
    return root, files, keys


def _rows(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{\"path\"")]


def _score(inputs: list[str], crawl_root: Path, cache: Path, *extra: str) -> tuple[list[dict], dict]:
    out = cache.parent / f"{cache.name}.jsonl"
    result = invoke(["score", *inputs, "--names", str(crawl_root / "names.txt"), *SCORE, "--cache-dir", str(cache),
                     "--out", str(out), "--json", *extra])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return rows, json.loads(result.stdout)


def _without_id(rows: list[dict]) -> list[str]:
    return [json.dumps({k: v for k, v in r.items() if k != "path"}) for r in rows]


@pytest.mark.parametrize("given", [["shard-{000000..000001}.tar"], ["shard-{000000,000001}.tar"], ["shards.txt"],
                                   ["table.parquet"], ["saved"],
                                   ["shard-000000.tar", "shard-000001.tar"]])
def test_containers_score_as_the_same_images_as_files(crawl, tmp_path, given):
    root, files, keys = crawl
    as_files, _ = _score([str(root / "files")], root, tmp_path / "c1")
    rows, summary = _score([str(root / g) for g in given], root, tmp_path / "c2")
    assert _without_id(rows) == _without_id(as_files)  # every byte but the id, from a cold cache each
    assert [r["path"] for r in rows] == keys and summary["encoded"] == len(files)
    again, summary = _score([str(root / g) for g in given], root, tmp_path / "c1")  # the files' cache rows
    assert summary["cached"] == len(files) and summary["encoded"] == 0 and _without_id(again) == _without_id(rows)


def test_files_and_containers_mix_in_the_order_given(crawl, tmp_path):
    root, files, keys = crawl
    listed = list_samples([root / "shard-000001.tar", root / "files" / "red_stripes", root / "table.parquet"])
    assert isinstance(listed, SampleList) and listed.containers == 2
    red = sorted((root / "files" / "red_stripes").iterdir())
    assert [str(x) for x in listed] == keys[10:] + [str(p) for p in red] + keys
    assert listed[len(keys[10:])] == red[0] and listed[-1].read_bytes() == files[-1].read_bytes()
    assert [str(x) for x in listed[5:12]] == [str(x) for x in list(listed)[5:12]]  # a slice is a view
    assert listed[5:12].fingerprint() != listed[5:13].fingerprint()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_faults_in_containers_are_said_per_container_and_sample_and_lose_nothing_else(crawl, tmp_path):
    root, files, _ = crawl
    png = files[0].read_bytes()
    _tar(tmp_path / "bad.tar", [("a.png", png), ("b.jpg", b"not an image"), ("c.txt", b"caption only"),
                                     ("d.png", png)])
    whole = _tar(tmp_path / "cut.tar", [(f"{k}.png", png) for k in "efgh"])
    padded = -(-len(png) // 512) * 512  # a member: a 512-byte header, then its data padded to 512 bytes
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:2 * 512 + padded + len(png) // 2])  # inside the second
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["x", "y"]}), tmp_path / "captions.parquet")
    (tmp_path / "packed.tar.gz").write_bytes(b"\x1f\x8b")
    given = [str(tmp_path / name) for name in ("bad.tar", "cut.tar", "captions.parquet", "packed.tar.gz")]
    result = invoke(["score", *given, "--names", str(root / "names.txt"), *SCORE, "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"path"')]
    assert [r["path"] for r in rows] == ["a", "d", "e"]  # everything readable is scored
    warned = " ".join(result.stderr.split())
    assert f"{tmp_path / 'bad.tar'}: 1 sample(s) have no image ('c'" in warned
    assert f"{tmp_path / 'cut.tar'} ends early, inside sample 'f': the samples before it are read" in warned
    assert f"{tmp_path / 'captions.parquet'} has no image column" in warned and "its columns: caption" in warned
    assert f"1 unreadable image(s): {tmp_path / 'bad.tar'}: b" in warned
    assert f"{tmp_path / 'packed.tar.gz'} is a compressed tar" in warned  # shard and key of the corrupt member
    strict = invoke(["score", str(tmp_path / "bad.tar"), "--names", str(root / "names.txt"), *SCORE, "--strict",
                     "--cache-dir", str(tmp_path / "c")])
    assert strict.exit_code == 2 and "have no image" in error_line(strict)


def test_bad_container_requests_are_one_line(crawl, tmp_path):
    root, _, _ = crawl
    base = ["--names", str(root / "names.txt"), *SCORE, "--cache-dir", str(tmp_path / "c")]
    missing = invoke(["score", str(tmp_path / "none.tar"), *base])
    assert missing.exit_code == 3 and error_line(missing).endswith(f"{tmp_path / 'none.tar'}")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    empty = invoke(["score", str(tmp_path / "empty.txt"), *base])
    assert empty.exit_code == 2 and error_line(empty).endswith("names no shard")


def test_hub_datasets_are_read_from_the_local_cache_only(crawl, tmp_path, monkeypatch):
    """hf://datasets/ORG/NAME: the snapshot's Parquet files in the local Hugging Face cache, as huggingface_hub
    lays it out; a dataset that is not cached is one line, and the network is never asked."""
    root, files, keys = crawl
    cache = tmp_path / "hub"
    snapshot = cache / "datasets--me--crawl" / "snapshots" / ("a" * 40) / "data"
    snapshot.mkdir(parents=True)
    (snapshot / "train-00000-of-00001.parquet").write_bytes((root / "table.parquet").read_bytes())
    (cache / "datasets--me--crawl" / "refs").mkdir()
    (cache / "datasets--me--crawl" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    rows, _ = _score(["hf://datasets/me/crawl"], root, tmp_path / "c")
    assert [r["path"] for r in rows] == keys
    absent = invoke(["score", "hf://datasets/me/other", "--names", str(root / "names.txt"), *SCORE])
    assert absent.exit_code == 3 or absent.exit_code == 2, absent.stderr
    assert "dataset me/other is not in the local Hugging Face cache" in error_line(absent)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # the one-process reference sums as a torchrun process does
def test_two_torchrun_processes_on_shards_give_the_one_process_bytes(crawl, tmp_path):
    """The ranks split the samples of the shards in whole batches, as they split files: the joined file is the
    bytes of one process."""
    from test_scale import torchrun

    root, _, _ = crawl
    shards = str(root / "shard-{000000..000001}.tar")
    args = [shards, "--names", str(root / "names.txt"), *SCORE, "--quiet", "--batch-size", "4"]
    one = invoke(["score", *args, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one.jsonl")])
    assert one.exit_code == 0, one.stderr
    two = torchrun(2, "score", *args, "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "two.jsonl"))
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # the one-process reference sums as a torchrun process does
def test_two_torchrun_nodes_on_shards_and_a_table_give_the_one_process_bytes(crawl, tmp_path):
    """Two "nodes" (one process each, meeting through a c10d rendezvous, as on two machines) list the containers
    between them and score their shares: with --labeled, the joined file is the bytes of one process."""
    from test_scale import _free_port, two_nodes

    root, _, _ = crawl
    args = [str(root / "shard-{000000..000001}.tar"), str(root / "table.parquet"), "--names",
            str(root / "names.txt"), *SCORE, "--quiet", "--batch-size", "4", "--labeled"]
    one = invoke(["score", *args, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one.jsonl")])
    assert one.exit_code == 0, one.stderr
    nodes = two_nodes("-m", "negprompt_cli", "score", *args, "--cache-dir", str(tmp_path / "c2"), "--out",
                      str(tmp_path / "two.jsonl"), port=_free_port())
    assert all(n.returncode == 0 for n in nodes), [n.stderr for n in nodes]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len(rows) == 36 and all(r["label_index"] >= 0 for r in rows)


def test_a_table_row_that_points_to_a_file_reads_the_file(crawl, tmp_path, monkeypatch):
    """datasets' to_parquet of a dataset built from files stores paths, not bytes: read relative to the table."""
    import shutil

    import datasets

    root, files, _ = crawl
    shutil.copy(files[0], tmp_path / "first.png")
    linked = datasets.Dataset.from_dict({"image": ["first.png"]}).cast_column("image", datasets.Image())
    monkeypatch.chdir(tmp_path)
    linked.to_parquet("linked.parquet")
    monkeypatch.chdir(root)  # elsewhere: the path is read relative to the table
    listed = list_samples([tmp_path / "linked.parquet"])
    assert [str(x) for x in listed] == ["first.png"] and listed[0].read_bytes() == files[0].read_bytes()


def test_a_listed_shard_is_held_as_its_count_and_a_rewritten_one_is_refused(crawl, tmp_path):
    """Memory flat in a crawl's samples: a listed shard keeps its count and stamp, its index read again (a few
    shards at a time) when scored; a shard rewritten after listing is not read as if it were the listed one."""
    import shutil

    root, files, keys = crawl
    shard = tmp_path / "s.tar"
    shutil.copy(root / "shard-000000.tar", shard)
    listed = list_samples([shard])
    held = listed._segments[0][0]
    assert set(vars(held)) == {"path", "count", "stamp"} and held.count == 10
    assert [str(x) for x in listed] == keys[:10] and listed[3].read_bytes() == files[3].read_bytes()
    shutil.copy(root / "shard-000001.tar", shard)  # rewritten: another size and time
    with pytest.raises(OSError, match="changed since it was listed"):
        listed[0].read_bytes()


def test_ranks_compare_a_shard_list_without_reading_the_headers_again(crawl):
    from negprompt_cli.inputs import containers

    root, _, _ = crawl
    listed = list_samples([root / "shard-{000000..000001}.tar"])
    containers._shard_index.cache_clear()
    first = listed.fingerprint()
    assert containers._shard_index.cache_info().misses == 0  # the stamps and counts, not the keys
    assert first == list_samples([root / "shard-{000000..000001}.tar"]).fingerprint()
    assert first != list_samples([root / "shard-000000.tar"]).fingerprint()


def test_a_listed_table_is_held_as_its_count_and_a_rewritten_one_is_refused(crawl, tmp_path):
    """Tables too: listing reads the footer's row counts, not a row; each row group's ids are read when asked for
    (a few groups at a time), and a table rewritten after listing is not read as if it were the listed one."""
    import shutil

    from negprompt_cli.inputs import containers

    root, files, keys = crawl
    table = tmp_path / "t.parquet"
    shutil.copy(root / "table.parquet", table)
    containers._group_index.cache_clear()
    listed = list_samples([table])
    held = listed._segments[0][0]
    assert held.count == 18 and list(held.group_starts) == [0, 7, 14] and "ids" not in vars(held)
    assert containers._group_index.cache_info().misses == 0  # nothing but the footer was read to list it
    assert str(listed[16]) == keys[16] and containers._group_index.cache_info().misses == 1  # the last group only
    assert [str(x) for x in listed] == keys and listed[9].read_bytes() == files[9].read_bytes()
    saved = list_samples([root / "saved"])
    assert [str(x) for x in saved] == keys
    first = listed.fingerprint()
    shutil.copy(root / "table.parquet", tmp_path / "other.parquet")
    (tmp_path / "other.parquet").replace(table)  # rewritten: another time
    containers._group_index.cache_clear()
    with pytest.raises(OSError, match="changed since it was listed"):
        str(listed[0])
    assert list_samples([table]).fingerprint() != first


@pytest.mark.parametrize("given", [["shard-{000000..000001}.tar"], ["table.parquet"], ["saved"]])
def test_labeled_samples_in_containers_score_as_the_same_images_in_class_folders(crawl, tmp_path, given):
    """--labeled reads a container sample's class from the label it carries: WebDataset's cls field (a position in
    the class list), a table's ClassLabel column (its name, matched to the classes): the rows equal those of the
    same images in class folders but for the id and the folder the label was read from."""
    root, files, keys = crawl
    as_files, _ = _score([str(root / "files")], root, tmp_path / "c1", "--labeled")
    rows, _ = _score([str(root / g) for g in given], root, tmp_path / "c2", "--labeled")

    def without_folder(found: list[dict]) -> list[str]:
        return [json.dumps({k: v for k, v in r.items() if k not in ("path", "label_folder")}) for r in found]

    assert without_folder(rows) == without_folder(as_files)
    assert [r["label"] for r in rows] == [p.parent.name.replace("_", " ") for p in files]
    assert {r["label_folder"] for r in rows} == {None} and {r["label_folder"] for r in as_files} == {
        "red_stripes", "green_bars", "blue_dots"}


def test_container_labels_that_name_no_class_are_said_and_tables_name_their_classes_their_own_way(crawl, tmp_path):
    """A text label is a class name; a table's integer labels follow its own class names where they are ours, and
    are positions in the class list where they are not (one warning says so); a label out of range, unknown or
    missing is -1, said in one warning with what the samples carried."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, files, _ = crawl
    png = [p.read_bytes() for p in files[:5]]
    image = [{"bytes": b, "path": f"s{i}.png"} for i, b in enumerate(png)]
    pq.write_table(pa.table({"image": image, "label": ["blue dots", "green_bars", "red stripes", "purple", None]}),
                   tmp_path / "text.parquet")
    reordered = pa.table({"image": image, "label": [0, 1, 2, 3, 0]})  # its names in another order than ours
    metadata = {b"huggingface": json.dumps({"info": {"features": {"label": {
        "_type": "ClassLabel", "names": ["blue dots", "red stripes", "green bars", "gold stars"]}}}}).encode()}
    pq.write_table(reordered.replace_schema_metadata(metadata), tmp_path / "reordered.parquet")
    foreign = {b"huggingface": json.dumps({"info": {"features": {"label": {
        "_type": "ClassLabel", "names": ["stripes, red", "bars, green", "dots, blue"]}}}}).encode()}
    pq.write_table(pa.table({"image": image, "label": [2, 1, 0, 7, -1]}).replace_schema_metadata(foreign),
                   tmp_path / "foreign.parquet")
    found = {}
    for name in ("text", "reordered", "foreign"):
        result = invoke(["score", str(tmp_path / f"{name}.parquet"), "--names", str(root / "names.txt"), *SCORE,
                         "--cache-dir", str(tmp_path / "c"), "--labeled"])
        found[name] = ([r["label_index"] for r in _rows(result)], " ".join(result.stderr.split()))
    assert found["text"][0] == [2, 1, 0, -1, -1]
    assert "2 sample(s) in shards or tables carry a label that names no class, or none ('purple', (none))" in (
        found["text"][1])
    assert found["reordered"][0] == [2, 0, 1, -1, 2]
    assert "carry a label that names no class, or none ('gold stars')" in found["reordered"][1]  # its name for 3
    assert found["foreign"][0] == [2, 1, 0, -1, -1]
    assert (f"the class names 1 table(s) give their labels (e.g. {tmp_path / 'foreign.parquet'}: 3 names, "
            "'stripes, red' first) are none of these 3 classes, so their integer labels are read as positions in "
            "this class list ('red stripes' is 0)") in found["foreign"][1]
    assert "(7, -1)" in found["foreign"][1]


def _two_processes(run):
    """``run(rank, gather)`` in two threads standing for a job's two processes, ``gather`` giving every thread's
    value to each (as torch.distributed's all_gather_object does): their results, by rank."""
    import threading

    barrier, box, results = threading.Barrier(2), [None, None], [None, None]

    def gather_for(rank):
        def gather(value):
            box[rank] = value
            barrier.wait()
            seen = list(box)
            barrier.wait()  # nobody writes the next value before both have read this one
            return seen
        return gather

    def target(rank):
        try:
            results[rank] = run(rank, gather_for(rank))
        except Exception as exc:  # noqa: BLE001 (the test reads it)
            results[rank] = exc

    threads = [threading.Thread(target=target, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "the two processes did not meet in the same collectives"
    return results


def test_the_processes_of_a_job_each_list_their_own_share_of_the_shards(crawl, tmp_path, monkeypatch):
    """Listing reads every shard's headers (about half a second per 10,000 samples): in a job each process indexes
    every other file and receives the rest, and every process ends with the list one process makes."""
    import threading

    from negprompt_cli.inputs import containers

    root, _, keys = crawl
    inputs = [root / "shard-{000000..000001}.tar", root / "files" / "red_stripes", root / "table.parquet"]
    alone = list_samples(inputs)
    indexed_by: dict[str, list[str]] = {}
    original = containers.index_container

    def counted(path, problems):
        indexed_by.setdefault(threading.current_thread().name, []).append(path.name)
        return original(path, problems)

    monkeypatch.setattr(containers, "index_container", counted)
    listed = _two_processes(lambda rank, gather: list_samples(
        inputs, index=containers.index_shared(rank, 2, gather)))
    for each in listed:
        assert [str(x) for x in each] == [str(x) for x in alone] and each.fingerprint() == alone.fingerprint()
    assert sorted(len(v) for v in indexed_by.values()) == [1, 2]  # three container files, split 2 + 1
    assert sorted(n for v in indexed_by.values() for n in v) == ["shard-000000.tar", "shard-000001.tar",
                                                                 "table.parquet"]


def test_a_process_that_sees_a_shard_otherwise_stops_the_job_with_one_error(crawl, monkeypatch):
    import threading

    from negprompt_cli.errors import UsageError
    from negprompt_cli.inputs import containers

    root, _, _ = crawl
    original = containers._stamp

    def seen_by(path):  # process 1 (the thread named so) sees the first shard with another size and time
        elsewhere = threading.current_thread().name == "process 1" and path.name == "shard-000000.tar"
        return (0, 0) if elsewhere else original(path)

    monkeypatch.setattr(containers, "_stamp", seen_by)

    def run(rank, gather):
        threading.current_thread().name = f"process {rank}"
        return list_samples([root / "shard-{000000..000001}.tar"], index=containers.index_shared(rank, 2, gather))

    errors = _two_processes(run)
    assert all(isinstance(e, UsageError) for e in errors), errors
    assert {str(e) for e in errors} == {f"process 1 sees {root / 'shard-000000.tar'} otherwise than the process that "
                                        "listed it (size or time): every process must read the same containers"}
