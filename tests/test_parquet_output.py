"""score --format parquet (#32 item 2): the score file as Parquet, streamed in fixed row groups and renamed into
place; its rows are the JSONL rows, typed; report reads it; two torchrun processes write the one-process bytes."""

from __future__ import annotations

import json

import pytest
from conftest import error_line, invoke, make_image_folder

SCORE = ["--zero-shot", "--backbone", "toy", "--scorer", "mcm", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    make_image_folder(root / "id", classes=("red_stripes", "green_bars"), per_class=6, seed=4)
    make_image_folder(root / "ood", classes=("blue_dots",), per_class=7, seed=5)
    (root / "names.txt").write_text("red stripes\ngreen bars\n")
    return root


def test_parquet_rows_are_the_jsonl_rows_typed_in_fixed_row_groups(images, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from negprompt_cli.outputs import score_parquet

    monkeypatch.setattr(score_parquet, "ROW_GROUP", 5)  # 12 rows: groups of 5, 5, 2
    base = ["score", str(images / "id"), "--names", str(images / "names.txt"), *SCORE, "--explain", "--explain-top",
            "2", "--calibrate", str(images / "id"), "--keep", "0.8", "--cache-dir", str(tmp_path / "c")]
    assert invoke([*base, "--format", "jsonl", "--out", str(tmp_path / "s.jsonl")]).exit_code == 0
    written = invoke([*base, "--format", "parquet", "--out", str(tmp_path / "s.parquet")])
    assert written.exit_code == 0, written.stderr
    table = pq.ParquetFile(tmp_path / "s.parquet")
    assert [table.metadata.row_group(g).num_rows for g in range(table.num_row_groups)] == [5, 5, 2]
    expected = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert table.read().to_pylist() == expected
    assert str(table.schema_arrow.field("score").type) == "double" and str(
        table.schema_arrow.field("threshold_rank").type) == "int64"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temporary file was renamed


def test_report_reads_parquet_score_files_as_it_reads_jsonl(images, tmp_path):
    for fmt in ("jsonl", "parquet"):
        for name in ("id", "ood"):
            result = invoke(["score", str(images / name), "--names", str(images / "names.txt"), *SCORE,
                             "--cache-dir", str(tmp_path / "c"), "--format", fmt, "--out",
                             str(tmp_path / f"{name}.{fmt}")])
            assert result.exit_code == 0, result.stderr
    reports = {}
    for fmt in ("jsonl", "parquet"):
        result = invoke(["report", "--id", str(tmp_path / f"id.{fmt}"), "--ood", f"far={tmp_path / f'ood.{fmt}'}",
                         "--json", "--no-images"])
        assert result.exit_code == 0, result.stderr
        reports[fmt] = json.loads(result.stdout)
    assert reports["parquet"]["ood"]["far"]["auroc"] == reports["jsonl"]["ood"]["far"]["auroc"]
    assert reports["parquet"]["average"] == reports["jsonl"]["average"]


def test_parquet_needs_a_file(images, tmp_path):
    refused = invoke(["score", str(images / "id"), "--names", str(images / "names.txt"), *SCORE, "--format",
                      "parquet"])
    assert refused.exit_code == 2 and error_line(refused).startswith("Error: --format parquet writes a file")


@pytest.mark.slow
def test_two_torchrun_processes_write_the_one_process_parquet_bytes(images, tmp_path):
    from test_scale import torchrun

    args = [str(images / "id"), str(images / "ood"), "--names", str(images / "names.txt"), *SCORE, "--format",
            "parquet"]
    one = invoke(["score", *args, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one.parquet")])
    assert one.exit_code == 0, one.stderr
    two = torchrun(2, "score", *args, "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "two.parquet"))
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
