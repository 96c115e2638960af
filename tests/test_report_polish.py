"""The report and the threshold sentences as a new user reads them (#36 items 6 and 7): warnings where an input
is probably wrong, the operating point on the ROC, captions that wrap at path separators, report.md without
stray escapes, and where a stored threshold was calibrated, said plainly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import invoke, make_image_folder

from negprompt_cli.report.page import code_span, path_breaks
from negprompt_cli.stages.report import ReportOptions, build_report, operating_points


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Score files as negprompt writes them: ID images (labelled, and again without labels) that score higher
    than the OOD ones, with a threshold between them; and real images for the commands that encode."""
    from negprompt_cli.outputs.score_file import render_rows

    root = tmp_path_factory.mktemp("polish")
    (root / "names.txt").write_text("red stripes\ngreen bars\nblue dots\n")
    make_image_folder(root / "id", per_class=4)
    rng = np.random.default_rng(0)
    names = ["red stripes", "green bars", "blue dots"]

    def rows(n, mean, labeled, where):
        out = []
        for k in range(n):
            score, index = float(mean + rng.normal(0, 1)), k % 3
            out.append({"path": f"/data/{where}/set_{k % 3}/img ({k}).png", "score": score, "prediction": names[index],
                        "prediction_index": index, "ood": score < 0.5, "max_pos_cos": 0.3, "max_neg_cos": None,
                        "label": names[index] if labeled else None, "label_index": index if labeled else None,
                        "label_folder": f"set_{index}" if labeled else None, "scorer": "mcm", "prompts_id": "p",
                        "threshold": 0.5, "threshold_source": "--threshold"})
        return out

    for name, n, mean, labeled in (("id", 40, 2.0, True), ("id_plain", 40, 2.0, False), ("ood", 30, -1.0, False)):
        (root / f"{name}.csv").write_text(render_rows(rows(n, mean, labeled, name.split("_")[0]), "csv"))
    return root


def report_of(root, id_name, ood_name="ood", out=None):
    args = ["report", "--id", str(root / f"{id_name}.csv"), "--ood", f"o={root / f'{ood_name}.csv'}"]
    return invoke([*args, *(["--out", str(out)] if out else [])])


def test_an_id_file_without_labels_and_swapped_files_are_warned(scored):
    fine = report_of(scored, "id")
    assert fine.exit_code == 0 and "Warning" not in fine.stderr
    plain = report_of(scored, "id_plain")
    assert "has no labels, so the report has no ID accuracy" in plain.stderr and "--labeled" in plain.stderr
    swapped = invoke(["report", "--id", str(scored / "ood.csv"), "--ood", f"o={scored / 'id.csv'}"])
    assert swapped.exit_code == 0 and "looks like an OOD file" in swapped.stderr
    assert "are --id and --ood the right way round?" in swapped.stderr


def test_the_roc_marks_where_the_threshold_operates(scored, tmp_path):
    report = build_report(ReportOptions(scored / "id.csv", [("o", scored / "ood.csv")], None))
    (fpr, tpr), = operating_points(report).values()
    assert tpr == pytest.approx(report["decision"]["id_kept"])
    assert fpr == pytest.approx(report["decision"]["ood"]["o"]["ood_accepted"])
    assert operating_points({**report, "threshold": None, "decision": None}) == {}
    with_point = report_of(scored, "id", out=tmp_path / "a")
    assert with_point.exit_code == 0
    invoke(["report", "--id", str(scored / "id.csv"), "--ood", f"o={scored / 'ood.csv'}", "--out",
            str(tmp_path / "b"), "--threshold", "-1e9"])  # a threshold that keeps everything
    assert (tmp_path / "a" / "roc.png").read_bytes() != (tmp_path / "b" / "roc.png").read_bytes()


def test_captions_wrap_at_separators_and_report_md_has_no_stray_escapes(scored, tmp_path):
    assert path_breaks("/data/my_set/img (1).png") == "/<wbr>data/<wbr>my_set/<wbr>img (1).png"
    assert code_span("a `b` c") == "``a `b` c``" and code_span("x_(y)") == "`x_(y)`"
    result = report_of(scored, "id", out=tmp_path / "r")
    assert result.exit_code == 0
    html = (tmp_path / "r" / "report.html").read_text()
    assert "overflow-wrap:anywhere" not in html and "/<wbr>" in html
    md = (tmp_path / "r" / "report.md").read_text()
    assert "\\(" not in md and "\\)" not in md  # "(ID = positive class)" as written
    assert "(ID = positive class)" in md and "with `negprompt report --id " in md


def test_where_a_stored_threshold_was_calibrated_is_said_plainly(scored, tmp_path):
    """inspect used to print "keeps 95% of 60 calibration images world/calib image(s)"."""
    from negprompt_cli.scoring.thresholds import calibrated_on

    assert calibrated_on({"source": "calibration images world/calib", "n_images": 60}) == \
        "60 calibration images in world/calib"
    assert calibrated_on({"source": "validation", "n_images": 12}) == "12 held-out validation images"
    training = calibrated_on({"source": "training", "n_images": 64})
    assert training.startswith("the 64 training images the prompts were fitted on, an optimistic measure")
    assert "--val-fraction" in training


def test_a_calibration_folder_with_classes_outside_the_list_warns(scored, tmp_path):
    calib = make_image_folder(tmp_path / "calib", classes=("red_stripes", "purple_waves"), per_class=2)
    result = invoke(["score", str(scored / "id"), "--zero-shot", "--names", str(scored / "names.txt"), "--backbone",
                     "toy", "--scorer", "mcm", "--calibrate", str(calib), "--keep", "0.75", "--out",
                     str(tmp_path / "s.csv"), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert f"calibration folder {calib} holds 1 folder(s) that name no class of the 3 class names: " \
           "'purple_waves'" in " ".join(result.stderr.split())
    assert "red_stripes" not in result.stderr.split("no class of the")[1]  # a class folder of the list: fine


def test_a_report_imports_no_torch(scored, tmp_path):
    """A report reads score files and draws: the thumbnails' decoding rule used to pull in torch and torchvision
    (4.7 of the 6.5 s a report took, benchmarks/startup.py)."""
    import subprocess
    import sys

    code = ("import sys\nfrom pathlib import Path\n"
            "from negprompt_cli.stages.report import ReportOptions, build_report\n"
            "build_report(ReportOptions(Path(sys.argv[1]), [('o', Path(sys.argv[2]))], Path(sys.argv[3])))\n"
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code, str(scored / "id.csv"), str(scored / "ood.csv"),
                           str(tmp_path / "r")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
    assert (tmp_path / "r" / "report.html").exists()
