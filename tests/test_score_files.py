"""Score files come back from spreadsheets (#30 item 5): "CSV UTF-8" adds a byte-order mark, Windows line ends,
TRUE / FALSE and blank trailing rows. `report` reads such a file as the one negprompt wrote: same numbers."""

from __future__ import annotations

import json

import pytest
from conftest import invoke, make_image_folder

from negprompt_cli.outputs.score_file import read_score_file


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    names = root / "names.txt"
    names.write_text("red stripes\ngreen bars\nblue dots\n")
    ids = make_image_folder(root / "id", per_class=4)
    oods = make_image_folder(root / "ood", classes=("yellow_rings",), per_class=6, seed=1)
    for name, folder in (("id", ids), ("ood", oods)):
        result = invoke(["score", str(folder), "--zero-shot", "--names", str(names), "--backbone", "toy",
                         "--scorer", "mcm", "--threshold", "0.428", "--labeled", "--out", str(root / f"{name}.csv"),
                         "--quiet"])
        assert result.exit_code == 0, result.stderr
    return root


def as_a_spreadsheet_saves_it(text: str) -> bytes:
    """Excel's "CSV UTF-8 (Comma delimited)": BOM, CRLF, booleans in capitals, and a blank row at the end."""
    lines = text.rstrip("\n").split("\n")
    header = lines[0].split(",")
    ood = header.index("ood")
    resaved = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        cells[ood] = cells[ood].upper()
        resaved.append(",".join(cells))
    resaved.append("," * (len(header) - 1))
    return b"\xef\xbb\xbf" + "\r\n".join(resaved).encode() + b"\r\n"


def report_json(root, id_file, ood_file, out):
    result = invoke(["report", "--id", str(id_file), "--ood", f"ood={ood_file}", "--out", str(out), "--no-images"])
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "report.json").read_text())


def test_report_reads_a_score_file_a_spreadsheet_saved_again(scored, tmp_path):
    for name in ("id", "ood"):
        text = (scored / f"{name}.csv").read_text()
        assert "," in text and '"' not in text  # plain names: the re-save below is a faithful one
        (tmp_path / f"{name}.csv").write_bytes(as_a_spreadsheet_saves_it(text))
    original = read_score_file(scored / "id.csv")
    resaved = read_score_file(tmp_path / "id.csv")
    assert resaved == original and any(row["ood"] for row in original + read_score_file(scored / "ood.csv"))
    want = report_json(scored, scored / "id.csv", scored / "ood.csv", tmp_path / "want")
    got = report_json(tmp_path, tmp_path / "id.csv", tmp_path / "ood.csv", tmp_path / "got")
    def numbers(report):  # everything but where the files were
        return json.loads(json.dumps(report).replace(str(tmp_path), "ROOT").replace(str(scored), "ROOT"))

    for key in ("id", "ood", "average", "threshold", "decision", "per_class"):
        assert numbers(got[key]) == numbers(want[key]), key


def test_jsonl_with_crlf_and_a_bom_reads_too(scored, tmp_path):
    result = invoke(["score", str(scored / "id"), "--zero-shot", "--names", str(scored / "names.txt"), "--backbone",
                     "toy", "--scorer", "mcm", "--format", "jsonl", "--out", str(tmp_path / "s.jsonl"), "--quiet"])
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "s.jsonl").read_text()
    (tmp_path / "crlf.jsonl").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert read_score_file(tmp_path / "crlf.jsonl") == read_score_file(tmp_path / "s.jsonl")


def test_label_is_a_class_name_as_prediction_is_and_the_folder_has_its_own_column(scored, tmp_path):
    """#36 item 2: `label` held the folder (`red_stripes`) while `prediction` held the name (`red stripes`), so
    `df.prediction == df.label` disagreed with the report's ID accuracy."""
    rows = read_score_file(scored / "id.csv")
    assert {r["label_folder"] for r in rows} == {"red_stripes", "green_bars", "blue_dots"}
    assert {r["label"] for r in rows} == {"red stripes", "green bars", "blue dots"}
    assert all(r["label"] == r["label_folder"].replace("_", " ") for r in rows)
    as_a_dataframe_would = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    report = report_json(scored, scored / "id.csv", scored / "ood.csv", tmp_path / "r")
    assert report["id"]["accuracy"] == pytest.approx(as_a_dataframe_would)
