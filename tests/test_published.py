"""The paper's published numbers: every row of NegPrompt's Tables 2, 3 and 5 sits in the protocol files with
exactly the paper's numbers, copied rows and slips labelled, and is printed beside the matching run rows.

tests/data/negprompt-published.json is the paper's tables as data (a copy of
../shared/reference/negprompt-published.json, checked against it where that folder exists);
scripts/published-rows.py writes the protocol rows from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke

from negprompt_cli.benchmark.protocol import load_protocol, protocol_names
from negprompt_cli.composers.benchmark_run import markdown, published_for, published_table, stated_average_slips, table
from negprompt_cli.features.backbone import BackboneRequest

DATA = Path(__file__).parent / "data" / "negprompt-published.json"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "negprompt-published.json"
PAPER = json.loads(DATA.read_text(encoding="utf-8"))
SOURCE = "NegPrompt (Li et al., CVPR 2024)"
LAION = BackboneRequest(name="ViT-B/16", pretrained="laion2b_s34b_b88k")


def paper_rows(name: str) -> list[dict]:
    return [p for p in load_protocol(name).published if p["source"].startswith(SOURCE)]


@pytest.mark.skipif(not SHARED.is_file(), reason="no ../shared next to this checkout (a CI clone)")
def test_the_copy_is_the_shared_reference():
    assert json.loads(SHARED.read_text(encoding="utf-8")) == PAPER


def test_table_2_is_in_the_far_ood_protocols_number_for_number():
    rows = {r["method"]: r for name in ("imagenet1k-mcm", "imagenet1k-mcm-open-vocabulary")
            for r in paper_rows(name) if r["source"].endswith("Table 2")}
    assert sorted(rows) == sorted(r["method"] for r in PAPER["table2_imagenet1k_far_ood"])  # all 13
    for row in PAPER["table2_imagenet1k_far_ood"]:
        ours = rows[row["method"]]
        assert ours["fpr95"] == row["fpr95"] and ours["auroc"] == row["auroc"]  # four sets and the average
        copied = "taken" in row.get("note", "")
        assert ("taken_from" in ours) == copied  # rows copied from CLIPN / LoCoOp say so ...
        assert ours["pretrained"] == ("openai" if copied else "laion2b_s34b_b88k")  # ... and carry their weights
        assert ours.get("note") == row.get("note")
        target = "imagenet1k-mcm-open-vocabulary" if "(10%)" in row["method"] else "imagenet1k-mcm"
        assert ours in load_protocol(target).published
    # the rows from MCM's, NegLabel's, CSP's and TANL's own papers and NegRefine's release stay beside them
    others = [p["method"] for p in load_protocol("imagenet1k-mcm").published if not p["source"].startswith(SOURCE)]
    assert others == ["MCM", "NegLabel", "CSP", "TANL", "NegRefine"]


def test_table_3_is_in_each_hard_split_protocol():
    for row in PAPER["table3_imagenet1k_hard_splits"]:
        for n in range(1, 5):
            name = f"imagenet1k-hard-split{n}" + ("-open-vocabulary" if "(10%)" in row["method"] else "")
            (ours,) = [r for r in paper_rows(name) if r["method"] == row["method"]]
            assert ours["source"] == f"{SOURCE}, Table 3"
            for metric in ("fpr95", "auroc"):
                assert ours[metric] == {f"split{n} unknown": row[metric][f"Split-{n}"]}
                assert f"{metric.upper()} {row[metric]['average']}" in ours["note"]
    assert all(len(paper_rows(f"imagenet1k-hard-split{n}")) == 10 for n in range(1, 5))
    assert all(len(paper_rows(f"imagenet1k-hard-split{n}-open-vocabulary")) == 3 for n in range(1, 5))
    coop = next(r for r in paper_rows("imagenet1k-hard-split1-open-vocabulary") if r["method"] == "CoOp (10%)")
    assert coop["fpr95"] == {"split1 unknown": 12.217} and "12.217" in coop["note"]  # printed as the paper has it


def test_table_5_backbone_rows_match_runs_with_that_backbone_whatever_the_weights():
    protocol = load_protocol("imagenet1k-mcm-open-vocabulary")
    rows = {r["method"]: r for r in paper_rows("imagenet1k-mcm-open-vocabulary") if r["source"].endswith("Table 5")}
    assert sorted(rows) == sorted(r["method"] for r in PAPER["table5_ablations"])
    for row in PAPER["table5_ablations"]:
        assert (rows[row["method"]]["fpr95"], rows[row["method"]]["auroc"]) == (row["fpr95"], row["auroc"])
    rn50 = published_for(protocol, BackboneRequest(name="RN50", pretrained="openai"), "negprompt", "negprompt")
    assert [r["method"] for r in rn50] == ["NegPrompt, ResNet-50"]  # the paper names no weights for RN50
    # ablations with other training settings, and the reference row (Table 2's 10 % row again), match no run
    laion = published_for(protocol, LAION, "negprompt", "negprompt")
    assert [r["method"] for r in laion] == ["NegPrompt (10%)"]
    assert published_for(protocol, BackboneRequest(name="ViT-B/16", pretrained="openai"), "negprompt",
                         "negprompt") == []


def test_matching_follows_method_training_and_weights():
    mcm = load_protocol("imagenet1k-mcm")
    openai = BackboneRequest(name="ViT-B/16", pretrained="openai")
    assert [(r["method"], r["source"][:8]) for r in published_for(mcm, openai, "zero-shot", "mcm")] == [
        ("MCM", "MCM (Min"), ("MCM", "NegPromp")]  # MCM's own number and the paper's copy of it
    assert [r["method"] for r in published_for(mcm, LAION, "negprompt", "mcm")] == ["CoOp"]
    assert [r["method"] for r in published_for(mcm, LAION, "negprompt", "negprompt")] == ["NegPrompt"]
    assert [r["method"] for r in published_for(mcm, openai, "zero-shot", "energy")] == ["Energy"]
    assert published_for(mcm, LAION, "zero-shot", "energy") == []  # the paper's Energy ran on OpenAI weights


def test_the_papers_slips_are_shown_not_corrected():
    rows = {r["method"]: r for r in paper_rows("imagenet1k-mcm")}
    sets = ["iNaturalist", "SUN", "Places", "Textures"]
    assert stated_average_slips(rows["CoOp"], sets) == {"fpr95": pytest.approx(38.9375)}
    assert rows["CoOp"]["fpr95"]["average"] == 51.68  # kept as printed
    assert stated_average_slips(rows["MCM"], sets) == {"fpr95": pytest.approx(41.99)}  # SUN 34.59, not 37.59
    assert stated_average_slips(rows["NegPrompt"], sets) == {}  # rounding is not a slip
    slipped = set()
    for name in protocol_names():
        protocol = load_protocol(name)
        names = [o.name for o in protocol.ood]
        slipped |= {(p["method"], m) for p in protocol.published for m in stated_average_slips(p, names)}
    # the two slips the data notes, and two more the check finds: MSP's averages (copied from CLIPN / LoCoOp)
    # and LoCoOp (10 %)'s AUROC average (91.72 from its sets, 90.15 printed)
    assert slipped == {("CoOp", "fpr95"), ("MCM", "fpr95"), ("MSP", "fpr95"), ("MSP", "auroc"),
                       ("LoCoOp (10%)", "auroc")}


def _report(rows):
    protocol = load_protocol("imagenet1k-mcm")
    stat = {"mean": 0.5, "std": 0.0}
    sets = {n: {k: stat for k in ("auroc", "fpr95", "fpr95_ood_positive")} for n in [o.name for o in protocol.ood]}
    return {"protocol": protocol.name, "title": protocol.title, "weights": {}, "seeds": [1], "shots": 16,
            "ood_sets": [o.name for o in protocol.ood], "published": list(protocol.published),
            "rows": [{"row": f"{mode}/{scorer}", "sets": sets, "id_accuracy": stat,
                      "average": {k: stat for k in ("auroc", "fpr95", "fpr95_ood_positive")},
                      "published": published_for(protocol, LAION, mode, scorer)} for mode, scorer in rows]}


def test_the_report_prints_published_rows_per_set_beside_the_run_and_all_of_them_below():
    report = _report([("negprompt", "negprompt"), ("negprompt", "mcm"), ("zero-shot", "csp")])
    lines = table(report)
    assert [line[0] for line in lines[1:]] == ["negprompt/negprompt", "↳ published: NegPrompt", "negprompt/mcm",
                                               "↳ published: CoOp", "zero-shot/csp"]
    assert lines[2][1:6] == ["6.32 / 98.73", "22.89 / 95.55", "27.60 / 93.34", "35.21 / 91.60", "23.01 / 94.81"]
    assert lines[4][5] == "51.68 / 91.78 (mean of the sets: 38.94 / =)"
    text = markdown(report)
    assert "## Published for this protocol" in text
    published = published_table(report)
    assert len(published) == 1 + len(load_protocol("imagenet1k-mcm").published)
    clipn = next(r for r in published if r[0] == "CLIPN")  # a method with no run of ours: listed below only
    assert clipn[-3:-1] == ["ViT-B/16, openai", f"{SOURCE}, Table 2, taken from CLIPN [47] / LoCoOp [33] "
                                                "(OpenAI CLIP weights; the paper copied these numbers)"]
    assert "| MCM | zero-shot | 30.91 / 94.61 | 34.59 / 92.57 |" in text


@pytest.mark.parametrize(("change", "message"), [
    ({"fpr95": {"ImageNet-O": 12.0}}, "published row 'X' names OOD set 'ImageNet-O', which the protocol does not "
                                      "have (its sets: unknown)"),
    ({"auroc": {"unknown": "high"}}, "published row 'X': auroc of 'unknown' is 'high', not a percentage"),
    ({"auroc": [1, 2]}, "published row 'X': auroc is not an object of set -> number"),
    ({"fpr95": {"unknown": 12.0}}, "published row 'X' has no 'source' (a published number says what it is, where "
                                   "it is from and which backbone measured it)"),
])
def test_a_published_row_for_a_set_the_protocol_lacks_is_one_line_exit_2(tmp_path, change, message):
    spec = {"schema": 1, "name": "x", "classes": ["n01440764"], "id": {"path": "v"}, "train": {"path": "t"},
            "ood": [{"name": "unknown", "path": "u"}], "published": [{"method": "X", **change}]}
    (tmp_path / "p.json").write_text(json.dumps(spec))
    result = invoke(["benchmark", "check", str(tmp_path / "p.json"), "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"Error: {tmp_path / 'p.json'}: {message}"
