"""The report shows the images behind the numbers (issue #22): galleries of misses, false alarms and clearly-OOD
images, the threshold drawn and named, which ID classes it hurts, near and far averaged apart, provenance;
checked on the HTML itself (parsed), against the score files and numpy, and in a headless browser where one is
installed."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, invoke, make_image_folder, pos_fast
from PIL import Image

POS_FAST = pos_fast(2)


class Page(HTMLParser):
    """What a browser would show: headings, images (decoded), placeholders, table cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[tuple[str, dict]] = []
        self.missing: list[str] = []
        self.cells: list[str] = []
        self._in: str | None = None
        self._buffer = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        attrs = dict(attrs)
        if tag in ("h2", "h3", "td") or (tag == "div" and attrs.get("class") == "missing"):
            self._in, self._buffer = tag if tag != "div" else "missing", ""
        if tag == "img":
            self.images.append((attrs["src"], attrs))

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        if self._in in ("h2", "h3") and tag == self._in:
            self.headings.append(self._buffer)
        elif self._in == "td" and tag == "td":
            self.cells.append(self._buffer)
        elif self._in == "missing" and tag == "div":
            self.missing.append(self._buffer)
        else:
            return
        self._in = None

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if self._in:
            self._buffer += data


def decode(src: str) -> Image.Image:
    assert src.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


@pytest.fixture
def scored(tmp_path, tiny_vit_dir):
    classes = ("red_stripes", "green_bars")
    make_image_folder(tmp_path / "train", classes=classes, per_class=4)
    make_image_folder(tmp_path / "test", classes=classes, per_class=5, seed=1)
    make_image_folder(tmp_path / "ood", classes=("blue_dots",), per_class=6, seed=2)
    backbone = ["--backbone", f"local-dir:{tiny_vit_dir}"]
    assert invoke(["fit-neg", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "neg.safetensors"),
                   *backbone, "--pos-epochs", "2", "--epochs", "2", "--n-ctx", "4"]).exit_code == 0
    for name, folder in (("id.csv", "test"), ("ood.csv", "ood")):
        result = invoke(["score", str(tmp_path / folder), "--prompts", str(tmp_path / "neg.safetensors"),
                         "--labeled", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.stderr
    return tmp_path


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_report_shows_the_threshold_the_classes_it_hurts_and_the_images_behind_the_numbers(scored):
    out = scored / "report"
    result = invoke(["report", "--id", str(scored / "id.csv"), "--near", f"dots={scored / 'ood.csv'}", "--ood",
                     f"copy={scored / 'ood.csv'}", "--out", str(out), "--images", "4", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    id_rows, ood_rows = rows(scored / "id.csv"), rows(scored / "ood.csv")
    threshold = float(id_rows[0]["threshold"])
    assert report["threshold"] == {"value": threshold, "source": "stored with the prompts"}
    id_scores = np.array([float(r["score"]) for r in id_rows])
    ood_scores = np.array([float(r["score"]) for r in ood_rows])
    assert report["decision"]["id_kept"] == pytest.approx(np.mean(id_scores >= threshold))
    assert report["decision"]["ood"]["dots"]["ood_accepted"] == pytest.approx(np.mean(ood_scores >= threshold))
    # per class: the share kept, computed by hand from the ID rows, hurt classes first
    by_class = {}
    for r in id_rows:
        by_class.setdefault(r["label"], []).append(float(r["score"]) >= threshold)
    assert [(c["class"], c["images"], c["kept"]) for c in report["per_class"]] == sorted(
        ((k, len(v), sum(v) / len(v)) for k, v in by_class.items()), key=lambda t: (t[2], t[0]))
    assert report["ood"]["dots"]["group"] == "near" and report["ood"]["copy"]["group"] == "far"
    assert report["average_near"]["auroc"] == report["ood"]["dots"]["auroc"]
    assert report["provenance"]["command"].startswith("negprompt report --id ")
    # galleries: misses are OOD rows at or above the threshold, highest first; false alarms ID rows below it
    misses = sorted((r for r in ood_rows if float(r["score"]) >= threshold), key=lambda r: -float(r["score"]))[:4]
    assert [e["path"] for e in report["examples"]["misses"]["dots"]] == [r["path"] for r in misses]
    alarms = sorted((r for r in id_rows if float(r["score"]) < threshold), key=lambda r: float(r["score"]))[:4]
    assert [e["path"] for e in report["examples"]["false_alarms"]] == [r["path"] for r in alarms]
    clearly = sorted(ood_rows, key=lambda r: float(r["score"]))[:4]
    assert [e["path"] for e in report["examples"]["clearly_ood"]["dots"]] == [r["path"] for r in clearly]

    page = Page((out / "report.html").read_text())
    assert {"Metrics", "Decision threshold", "Score distributions", "ROC curves (ID = positive)",
            "Which ID classes the threshold hurts", "Images"} <= set(page.headings)
    assert "dots: most clearly OOD" in page.headings
    assert {"near-OOD average", "far-OOD average", "average"} <= set(page.cells)
    thumbnails = [decode(src) for src, attrs in page.images if attrs.get("loading") == "lazy"]
    shown = len(alarms) + 2 * (len(misses) + len(clearly))
    assert len(thumbnails) == shown and all(max(t.size) <= 112 for t in thumbnails)
    plots = [decode(src) for src, attrs in page.images if attrs.get("class") == "plot"]
    assert len(plots) == 3 and all(p.format == "PNG" for p in plots)
    assert "`" not in (out / "report.html").read_text()  # no literal Markdown in the page
    md = (out / "report.md").read_text()
    assert "## Decision threshold" in md and "| near-OOD average |" in md


def test_moved_images_and_non_images_are_placeholders_and_no_images_means_none(scored):
    ood = rows(scored / "ood.csv")
    lowest = min(ood, key=lambda r: float(r["score"]))
    Path(lowest["path"]).unlink()  # moved since scoring
    second = sorted(ood, key=lambda r: float(r["score"]))[1]
    Path(second["path"]).write_text("this is not an image any more")
    out = scored / "report"
    result = invoke(["report", "--id", str(scored / "id.csv"), "--ood", f"dots={scored / 'ood.csv'}", "--out",
                     str(out)])
    assert result.exit_code == 0, result.stderr
    page = Page((out / "report.html").read_text())
    assert "not found: moved or deleted since scoring" in page.missing and "not an image" in page.missing
    bare = scored / "bare"
    result = invoke(["report", "--id", str(scored / "id.csv"), "--ood", f"dots={scored / 'ood.csv'}", "--out",
                     str(bare), "--no-images"])
    assert result.exit_code == 0
    text = (bare / "report.html").read_text()
    assert "loading=lazy" not in text and "No images (report --no-images)." in text
    assert str(scored / "ood" / "blue_dots") not in text  # not even the image paths


def test_a_report_without_a_threshold_says_so_and_given_one_draws_it(scored):
    stripped = scored / "plain.csv"
    with open(scored / "id.csv", newline="") as src, open(stripped, "w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=[f for f in reader.fieldnames if "threshold" not in f])
        writer.writeheader()
        for r in reader:
            writer.writerow({k: v for k, v in r.items() if "threshold" not in k})  # as an older score file
    result = invoke(["report", "--id", str(stripped), "--ood", f"dots={scored / 'ood.csv'}", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["threshold"] is None and report["per_class"] is None
    assert "No decision threshold" in result.stderr
    given = json.loads(invoke(["report", "--id", str(stripped), "--ood", f"dots={scored / 'ood.csv'}",
                               "--threshold", "0.5", "--json"]).stdout)
    assert given["threshold"] == {"value": 0.5, "source": "given to report (--threshold)"}


@pytest.mark.slow
def test_a_100k_row_report_stays_small(tmp_path):
    rng = np.random.default_rng(0)
    for name, shift in (("id", 1.0), ("ood", 0.0)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "score", "prediction", "prediction_index", "label", "label_index", "scorer",
                             "prompts_id", "threshold", "threshold_source"])
            for i, value in enumerate(rng.normal(shift, 1.0, 100_000)):
                writer.writerow([f"/gone/{name}/{i}.jpg", f"{value:.6f}", f"c{i % 50}", i % 50, f"c{i % 50}",
                                 i % 50, "energy", "abc", "0.5", "stored"])
    result = invoke(["report", "--id", str(tmp_path / "id.csv"), "--ood", f"far={tmp_path / 'ood.csv'}", "--out",
                     str(tmp_path / "r")])
    assert result.exit_code == 0, result.stderr
    size = sum(p.stat().st_size for p in (tmp_path / "r").iterdir())
    assert size < 1_500_000, size  # thumbnails of moved images are notes; no per-row HTML
    page = Page((tmp_path / "r" / "report.html").read_text())
    assert len(page.missing) == 3 * 12


def test_the_report_renders_in_a_headless_browser(scored):
    """Where Chromium is installed (.ci/run installs Debian's), the page renders with its images; the same code
    takes the screenshot in docs/ (scripts/report-screenshot.sh)."""
    from negprompt_cli.report.screenshot import find_browser, screenshot

    if find_browser() is None:
        pytest.skip("no headless Chromium on this machine (Debian package chromium)")
    out = scored / "report"
    assert invoke(["report", "--id", str(scored / "id.csv"), "--ood", f"dots={scored / 'ood.csv'}", "--out",
                   str(out)]).exit_code == 0
    png = scored / "shot.png"
    screenshot(out / "report.html", png, width=1000, height=1800)
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert image.shape == (1800, 1000)
    assert image.std() > 20  # a rendered page with text, plots and thumbnails, not a blank one


# -- score --explain ------------------------------------------------------------------------------------------
def test_explain_lists_the_closest_classes_and_negatives_with_their_cosines(scored):
    neg = scored / "neg.safetensors"
    out = scored / "x.jsonl"
    result = invoke(["score", str(scored / "ood"), "--prompts", str(neg), "--scorer", "negprompt", "--explain",
                     "--format", "jsonl", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for row in lines:
        classes, negatives = row["top_classes"], row["nearest_negatives"]
        assert [c["name"] for c in classes][0] == row["prediction"] and len(classes) == 2  # only 2 classes exist
        assert classes[0]["cos"] == pytest.approx(row["max_pos_cos"], abs=1e-4)
        assert classes[0]["cos"] >= classes[1]["cos"]
        assert len(negatives) == 3 and negatives[0]["cos"] == pytest.approx(row["max_neg_cos"], abs=1e-4)
        assert all(n["name"].split(":", 1)[0] in ("neg1", "neg2") for n in negatives)
        assert [n["cos"] for n in negatives] == sorted((n["cos"] for n in negatives), reverse=True)
    csv_out = scored / "x.csv"
    assert invoke(["score", str(scored / "ood"), "--prompts", str(neg), "--scorer", "negprompt", "--explain",
                   "--out", str(csv_out)]).exit_code == 0
    from negprompt_cli.outputs.score_file import read_score_file

    assert [(r["top_classes"], r["nearest_negatives"]) for r in read_score_file(csv_out)] == \
        [(r["top_classes"], r["nearest_negatives"]) for r in lines]
    cell = rows(csv_out)[0]["nearest_negatives"]
    assert cell.startswith('[["neg') and json.loads(cell)[0][1] == lines[0]["nearest_negatives"][0]["cos"]
    # a scorer that reads no negatives (energy): top classes only, no error
    plain = invoke(["score", str(scored / "ood"), "--prompts", str(neg), "--scorer", "energy", "--explain",
                    "--format", "jsonl"])
    assert plain.exit_code == 0, plain.stderr
    assert all(json.loads(line)["nearest_negatives"] == [] for line in plain.stdout.splitlines())
    # --explain-top: how many; without --explain it would do nothing, so it is refused
    one = invoke(["score", str(scored / "ood"), "--prompts", str(neg), "--scorer", "negprompt", "--explain",
                  "--explain-top", "1", "--format", "jsonl"])
    assert one.exit_code == 0 and all(len(json.loads(line)["nearest_negatives"]) == 1 for line in
                                      one.stdout.splitlines())
    alone = invoke(["score", str(scored / "ood"), "--prompts", str(neg), "--explain-top", "2"])
    assert alone.exit_code == 2 and alone.stdout == ""
    assert error_line(alone) == ("Error: --explain-top says how many classes and negatives --explain lists, and "
                                 "there is no --explain")


def test_explain_names_the_mined_labels_a_zero_shot_image_is_closest_to(tmp_path):
    images = make_image_folder(tmp_path / "img", classes=("red_stripes",), per_class=2)
    names = tmp_path / "names.txt"
    names.write_text("square\nhouse\n")
    result = invoke(["score", str(images), "--zero-shot", "--names", str(names), "--backbone", "toy", "--scorer",
                     "neglabel", "--explain", "--explain-top", "5", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    from negprompt_cli.scoring.lexicon import load_lexicon
    from negprompt_cli.world import lexicon_dir

    lexicon = load_lexicon(lexicon_dir())
    words = set(lexicon.nouns) | set(lexicon.adjectives)
    for line in result.stdout.splitlines():
        row = json.loads(line)
        negatives = row["nearest_negatives"]
        assert len(negatives) == 5 and {n["name"] for n in negatives} <= words
        assert negatives[0]["cos"] == pytest.approx(row["max_neg_cos"], abs=1e-4)
