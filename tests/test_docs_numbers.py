"""Numbers in the README that come from a results file are checked against it, so a sentence cannot drift from
its data (docs/quality.md is rendered from the same file by benchmarks/quality.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
QUALITY = json.loads((ROOT / "benchmarks" / "results" / "quality.json").read_text())
ROWS = {"zero-shot CSP": "zero-shot CSP", "zero-shot NegLabel": "zero-shot NegLabel", "CoOp + energy": "CoOp + energy",
        "NegPrompt (`fit-neg` defaults, Eq. 3)": "NegPrompt (official)",
        "NegPrompt + CSP (hybrid; tuned τ 0.05)": "NegPrompt + CSP (official)", "zero-shot MCM": "zero-shot MCM"}
SETS = ("near_lexicon", "near_unnamed", "far")


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def test_the_readme_quality_table_is_the_stored_closed_set_test_result():
    table = QUALITY["test"]["closed"]
    found = 0
    for line in README.splitlines():
        cells = [c.strip().replace("*", "") for c in line.strip("|").split("|")]
        label = re.sub(r" \(winner on validation\)$", "", cells[0]) if cells else ""
        if label not in ROWS or len(cells) != 5:
            continue
        found += 1
        metrics = table[ROWS[label]]
        expected = [f"{pct(metrics[f'{s}_fpr95'][0])} ± {pct(metrics[f'{s}_fpr95'][1])}" for s in SETS]
        assert cells[1:4] == expected, label
        assert cells[4] == pct(metrics["id_accuracy"][0]), label
    assert found == len(ROWS)


def test_the_readme_open_vocabulary_sentence_is_the_stored_result():
    table = QUALITY["test"]["open"]
    for label, method in (("zero-shot CSP", "zero-shot CSP"), ("CoOp + energy", "CoOp + energy"),
                          ("NegPrompt", "NegPrompt (official)")):
        numbers = " / ".join(pct(table[method][f"{s}_fpr95"][0]) for s in SETS)
        assert f"{label} {numbers}" in " ".join(README.split()), label


def test_the_readme_claims_about_the_adaptive_mode_and_lexicon_coverage_hold():
    pairs = {f"adaptive {m}": m for m in ("zero-shot NegLabel", "zero-shot CSP", "CoOp + NegLabel",
                                          "NegPrompt + NegLabel (official)", "NegPrompt + NegLabel (paper)")}
    diffs = [100 * (table[a][f"{s}_fpr95"][0] - table[b][f"{s}_fpr95"][0])
             for table in QUALITY["test"].values() for a, b in pairs.items() for s in SETS]
    text = " ".join(README.split())
    assert len(diffs) == 30 and all(d > 0 for d in diffs)
    assert f"worse than its static base in all 30 test cells (5 methods × 2 setups × 3 OOD sets, FPR95), by " \
           f"{min(diffs):.1f} to {max(diffs):.1f} points" in text
    covered = QUALITY["test"]["closed"]["zero-shot NegLabel"]["near_lexicon_fpr95"][0]
    uncovered = QUALITY["coverage"]["closed"]["zero-shot NegLabel"]["near_lexicon_fpr95"][0]
    csp = QUALITY["test"]["closed"]["zero-shot CSP"]["near_lexicon_fpr95"][0]
    csp_uncovered = QUALITY["coverage"]["closed"]["zero-shot CSP"]["near_lexicon_fpr95"][0]
    assert (f"near-OOD FPR95 from {pct(covered)} to {100 * uncovered:.2f} (CSP: {pct(csp)} to "
            f"{pct(csp_uncovered)})") in text


def test_the_lexicon_encoding_numbers_are_the_stored_measurement(monkeypatch):
    lexicon = json.loads((ROOT / "benchmarks" / "results" / "lexicon.json").read_text())
    encode, first = lexicon["encode"], lexicon["first_zero_shot_score"]
    text = " ".join(README.split())
    assert f"took {first['seconds']:.0f} s on 2 CPU cores for ViT-B/16" in text
    assert f"is {first['candidates']:,} WordNet candidates" in text and first["scorer"] == "csp"
    assert f"{encode['speedup']:.1f}× faster than `encode_text` at the full context" in text
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from lexicon import markdown

    assert markdown(lexicon) in (ROOT / "docs" / "performance.md").read_text()  # the section perf.py renders


def test_the_readme_says_which_rows_run_the_shipped_defaults():
    from negprompt_cli.scoring.lexicon import load_lexicon
    from negprompt_cli.world import lexicon_dir

    world = load_lexicon(lexicon_dir()).mining
    for method in QUALITY["methods"]:
        setting = min(QUALITY["validation"][method], key=lambda r: r["criterion"])["setting"]
        if "labels" in setting or "weight" in setting:  # TANL's and GL-MCM's own grids: no README row
            continue
        shipped = not setting or (setting["fraction"], setting["groups"], setting["temperature"]) == (
            world["fraction"], world["groups"], 0.01)
        label = next((k for k, v in ROWS.items() if v == method), None)
        if label is not None:  # every README row runs the shipped defaults, or says it is tuned
            assert shipped != ("tuned" in label), (method, setting)
    hybrid = {tuple(r["setting"].values()): r["criterion"] for r in QUALITY["validation"]["NegPrompt + CSP (official)"]}
    gap = 100 * (hybrid[(0.5, 0.01, 1)] - hybrid[(0.5, 0.05, 1)])
    assert f"at the default τ 0.01 it validates {gap:.1f} points worse" in " ".join(README.split())


def _benchmark(name: str, monkeypatch):  # noqa: ANN202
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import importlib

    return importlib.import_module(name)


def _results(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())


def test_every_rendered_doc_is_its_results_file_rendered_again(monkeypatch):
    """docs/performance.md and docs/quality.md are rendered whole, docs/scale.md and docs/benchmarks.md hold a
    rendered section: each must be what its benchmark's renderer makes of the stored results, today."""
    perf, quality = _benchmark("perf", monkeypatch), _benchmark("quality", monkeypatch)
    assert (ROOT / "docs" / "performance.md").read_text() == perf.render_docs(_results("perf"))
    assert (ROOT / "docs" / "quality.md").read_text() == quality.render_docs(_results("quality"))
    scale, shape = _benchmark("scale", monkeypatch), _benchmark("imagenet_shape", monkeypatch)
    assert scale.markdown(_results("scale")) in (ROOT / "docs" / "scale.md").read_text()
    assert scale.memory_markdown(_results("scale")) in (ROOT / "docs" / "scale.md").read_text()
    assert shape.render(_results("imagenet_shape")) in (ROOT / "docs" / "benchmarks.md").read_text()


def test_the_readme_memory_claim_is_the_stored_measurement():
    rows = [r for r in _results("scale")["memory"]["rows"] if not r["calibrate"]]
    text = " ".join(README.split())
    assert f"Measured flat from {rows[0]['images']:,} to {rows[-1]['images']:,} images" in text
    peaks = [r["peak_rss_mib"] for r in rows]
    assert max(peaks) - min(peaks) < 64  # flat: within allocator noise, 20x the images


def test_the_readme_performance_numbers_are_the_stored_measurement():
    rows = {r["classes"]: r for r in _results("perf")["fit_neg"]}
    c200, c1000 = rows[200], rows[1000]["ours"]
    text = " ".join(README.split())
    assert (f"({c200['ours']['seconds_per_step']:.1f} s vs {c200['reference']['seconds_per_step']:.1f} s per step, "
            f"{c200['ours']['peak_rss_gb']:.1f} GB vs {c200['reference']['peak_rss_gb']:.1f} GB peak") in text
    assert f"about {c200['speedup']:.0f}× faster than the released code's approach at C = 200 classes" in text
    assert f"runs at C = 1000 in {c1000['peak_rss_gb']:.1f} GB" in text
    assert f"gradients within {c200['max_abs_delta_grad']:.0e}".replace("e-07", "e-7") in text
    score = {r["arch"]: r["ratio_excluding_load"] for r in _results("perf")["score"]}
    assert (f"({score['ViT-B-32']:.2f}× bare `encode_image` for ViT-B/32, {score['ViT-B-16']:.2f}× for "
            "ViT-B/16") in text
