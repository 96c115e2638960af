"""Thresholds with a stated guarantee (#39 items 1-2): the split-conformal rank keeps at least the asked share of
new ID images in expectation, the Beta bound with the asked confidence, too few images is one line naming the
count needed, and every place that shows a threshold says what it promises."""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pytest
from conftest import error_line, invoke, make_image_folder

from negprompt_cli.errors import UsageError
from negprompt_cli.scoring.calibration import calibrate, describe, keep_interval, rank_for, smallest_count


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(U_(k) <= p) for the k-th of n uniform order statistics = P(Binomial(n, p) >= k), summed by hand (an
    independent check of scipy's Beta)."""
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def test_the_expected_keep_rate_is_at_least_the_one_asked_for_and_the_old_rank_fell_short():
    for n in (19, 20, 50, 120, 300, 1000):
        k = rank_for(n, 0.95)
        assert 1 - k / (n + 1) >= 0.95 and 1 - (k + 1) / (n + 1) < 0.95  # the highest rank that promises it
    old = math.floor(0.05 * 120) + 1  # the rank used before: 94.2 % on average for 120 images
    assert 1 - old / 121 == pytest.approx(0.9421, abs=1e-4) and rank_for(120, 0.95) == old - 1
    rng = np.random.default_rng(0)  # and by simulation: uniform scores, a new image kept with prob. 1 - threshold
    kept = [1 - calibrate(rng.random(120)).value for _ in range(4000)]
    assert np.mean(kept) == pytest.approx(1 - 6 / 121, abs=0.002) and np.mean(kept) >= 0.95 - 0.002


@pytest.mark.parametrize(("n", "keep", "confidence"), [(300, 0.95, 0.9), (120, 0.9, 0.8), (1000, 0.99, 0.95)])
def test_the_confident_rank_is_the_highest_that_promises_the_keep_rate_with_that_probability(n, keep, confidence):
    k = rank_for(n, keep, confidence)
    assert binomial_tail(n, 1 - keep, k) >= confidence > binomial_tail(n, 1 - keep, k + 1)
    assert k < rank_for(n, keep)  # a promise with probability costs a lower threshold than one in expectation
    rng = np.random.default_rng(1)
    held = [1 - calibrate(rng.random(n), keep, confidence).value >= keep for _ in range(3000)]
    assert np.mean(held) >= confidence - 0.02


def test_the_interval_is_that_of_the_beta_distribution_and_narrows_with_more_images():
    low, high = keep_interval(300, rank_for(300, 0.95))
    rng = np.random.default_rng(2)
    kept = np.array([1 - np.sort(rng.random(300))[14] for _ in range(20000)])  # rank 15 of 300
    assert np.quantile(kept, [0.05, 0.95]) == pytest.approx([low, high], abs=0.002)
    assert high - low < 0.045 < np.subtract(*keep_interval(120, 6)[::-1])  # 300 images: within about ±2 points


def test_too_few_images_is_one_error_with_the_smallest_sufficient_count():
    assert smallest_count(0.95) == 19 and rank_for(19, 0.95) == 1 and rank_for(18, 0.95) == 0
    assert smallest_count(0.99, 0.95) == 299 and rank_for(299, 0.99, 0.95) == 1 and rank_for(298, 0.99, 0.95) == 0
    with pytest.raises(UsageError) as info:
        calibrate(np.arange(30.0), 0.99, 0.95, source="my images")
    assert str(info.value.message) == ("30 image(s) in my images are too few for a threshold that keeps 99% with "
                                       "probability 0.95: at least 299 are needed")
    best = calibrate(np.arange(10.0), best_effort=True)  # fit-neg's own threshold: what it can, said
    assert (best.rank, best.value, best.requested) == (1, 0.0, 0.95) and best.keep == pytest.approx(10 / 11)
    assert "less than the 95% asked for: 10 images are too few (at least 19 are needed)" in describe(best.record())
    for keep, confidence in ((1.0, None), (0.95, 1.5)):
        with pytest.raises(UsageError):
            calibrate(np.arange(50.0), keep, confidence)


def test_the_intervals_docs_method_quotes():
    """docs/method.md, "Per class": 30 images of a class and 300 pooled images, at 95 % in expectation."""
    for n, quoted in ((30, (90.5, 99.8)), (300, (92.8, 96.9))):
        assert tuple(round(100 * v, 1) for v in keep_interval(n, rank_for(n, 0.95))) == quoted


def test_records_without_a_guarantee_say_so():
    assert "guarantee unknown" in describe({"value": 1.0, "id_kept": 0.95, "source": "validation"})


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    make_image_folder(root / "id", classes=("red_stripes", "green_bars"), per_class=12, seed=3)  # 24 images
    (root / "names.txt").write_text("red stripes\ngreen bars\n")
    return root


def test_score_calibrates_with_keep_and_confidence_and_says_what_it_promises(many, tmp_path):
    base = ["score", str(many / "id"), "--zero-shot", "--names", str(many / "names.txt"), "--backbone", "toy",
            "--scorer", "mcm", "--calibrate", str(many / "id"), "--out", str(tmp_path / "s.csv"), "--json"]
    result = invoke([*base, "--keep", "0.8", "--confidence", "0.7"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    record = summary["calibration"]
    assert (record["n_images"], record["rank"], record["id_kept"], record["confidence"]) == (24, rank_for(24, 0.8, 0.7),
                                                                                            0.8, 0.7)
    assert record["keep_interval"] == pytest.approx(list(keep_interval(24, record["rank"])), abs=1e-6)
    assert summary["threshold_promise"].startswith("keeps >= 80.0% of new ID images with probability 0.7 (90% "
                                                   "interval ")
    assert f"it {summary['threshold_promise']}" in result.stderr
    plain = invoke(base)  # 24 images at 95 % in expectation: rank 1
    assert plain.exit_code == 0 and json.loads(plain.stdout)["calibration"]["rank"] == 1
    refused = invoke([*base, "--keep", "0.99"])
    assert refused.exit_code == 2
    assert error_line(refused).endswith("too few for a threshold that keeps 99% in expectation: at least 99 are "
                                        "needed")


def test_fit_neg_and_transfer_take_the_request_and_inspect_and_the_model_card_state_it(many, tmp_path):
    from conftest import NEG_FAST, pos_fast

    from negprompt_cli.outputs.artifact import load_prompts
    from negprompt_cli.stages.hub import model_card

    pos, neg = tmp_path / "pos.safetensors", tmp_path / "neg.safetensors"
    assert invoke(["fit-pos", "--data", str(many / "id"), "--backbone", "toy", "--out", str(pos), *pos_fast(1),
                   "--quiet"]).exit_code == 0
    fitted = invoke(["fit-neg", "--data", str(many / "id"), "--pos", str(pos), "--out", str(neg), *NEG_FAST,
                     "--val-fraction", "0.5", "--shots", "6", "--keep", "0.9", "--quiet"])
    assert fitted.exit_code == 0, fitted.stderr
    record = load_prompts(neg).extra["threshold"]
    assert (record["source"], record["n_images"], record["id_kept"], record["rank"]) == ("validation", 12, 0.9, 1)
    said = describe(record)
    assert said.startswith("keeps >= 90.0% of new ID images in expectation (90% interval ")
    assert said in invoke(["inspect", str(neg)]).stdout
    assert said in html.unescape(model_card(load_prompts(neg), "me/prompts"))  # the card escapes ">" for Markdown
    # 12 held-out images: too few for 95 %; fit-neg stores what they can promise, and says so
    small = invoke(["fit-neg", "--data", str(many / "id"), "--pos", str(pos), "--out", str(tmp_path / "n2.safetensors"),
                    *NEG_FAST, "--val-fraction", "0.5", "--shots", "6", "--quiet"])
    assert small.exit_code == 0, small.stderr
    assert "less than the 95% asked for: 12 images are too few (at least 19 are needed)" in invoke(
        ["inspect", str(tmp_path / "n2.safetensors")]).stdout
    moved = tmp_path / "moved.safetensors"
    transferred = invoke(["transfer", "--prompts", str(neg), "--names", str(many / "names.txt"), "--out", str(moved),
                          "--calibrate", str(many / "id"), "--keep", "0.8", "--confidence", "0.6", "--quiet"])
    assert transferred.exit_code == 0, transferred.stderr
    moved_record = load_prompts(moved).extra["threshold"]
    assert (moved_record["n_images"], moved_record["confidence"], moved_record["rank"]) == (24, 0.6,
                                                                                          rank_for(24, 0.8, 0.6))


def test_labelled_id_images_that_keep_an_unlikely_share_are_said_to_differ_from_the_calibration_images(many, tmp_path):
    """#39 item 3: the calibration images themselves keep what they promised (no warning); ID-labelled images that
    are noise keep far less than 24 calibration images make likely (one warning with both numbers)."""
    from PIL import Image

    noise = tmp_path / "noise"
    rng = np.random.default_rng(5)
    for folder in ("red_stripes", "green_bars"):
        (noise / folder).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(noise / folder / f"{i}.png")
    base = ["--zero-shot", "--names", str(many / "names.txt"), "--backbone", "toy", "--scorer", "mcm", "--calibrate",
            str(many / "id"), "--keep", "0.8", "--labeled", "--json"]
    same = invoke(["score", str(many / "id"), *base, "--out", str(tmp_path / "same.csv")])
    assert same.exit_code == 0, same.stderr
    assert "differ from the calibration images" not in same.stderr
    shifted = invoke(["score", str(noise), *base, "--out", str(tmp_path / "noise.csv")])
    assert shifted.exit_code == 0, shifted.stderr
    kept = 20 - json.loads(shifted.stdout)["flagged_ood"]
    warning = next(line for line in shifted.stderr.splitlines() if "differ from the calibration images" in line)
    assert f"the threshold kept {kept} of these 20 labelled ID images ({100 * kept / 20:.1f}%)" in warning
    assert "images like its 24 calibration images would keep" in warning and "recalibrate" in warning
    # report reads how the threshold was calibrated from the score files, and checks its ID file the same way
    fine = invoke(["report", "--id", str(tmp_path / "same.csv"), "--ood", f"noise={tmp_path / 'noise.csv'}",
                   "--out", str(tmp_path / "r1")])
    assert fine.exit_code == 0, fine.stderr
    rank = rank_for(24, 0.8)  # the report says what the threshold promises, from the score files' n and rank
    low, high = keep_interval(24, rank)
    assert (f"Calibrated at rank {rank} of 24 ID scores, it keeps {100 * (1 - rank / 25):.1f}% of new ID images like "
            f"those in expectation (90% interval {100 * low:.1f}-{100 * high:.1f}%).") in \
        (tmp_path / "r1" / "report.md").read_text()
    assert "differ from the calibration images" not in fine.stderr
    swapped = invoke(["report", "--id", str(tmp_path / "noise.csv"), "--ood", f"same={tmp_path / 'same.csv'}",
                      "--out", str(tmp_path / "r2")])
    assert swapped.exit_code == 0, swapped.stderr
    assert f"the threshold kept {kept} of these 20 ID images (noise.csv)" in swapped.stderr


# --- #39 item 5: one threshold per predicted class (Mondrian conformal), each with the same promise ---------------

def _two_classes(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of class 0 ~ U(0, 1) and class 1 ~ U(0.5, 1.5): classes that differ in difficulty, n of each."""
    scores = np.concatenate([rng.random(n), 0.5 + rng.random(n)])
    return scores, np.repeat([0, 1], n)


def _true_keep(threshold: float, low: float) -> float:
    """The share of new U(low, low + 1) scores at or above ``threshold``."""
    return float(np.clip(low + 1 - threshold, 0.0, 1.0))


def test_per_class_thresholds_keep_the_asked_share_of_every_class_where_one_threshold_does_not():
    from negprompt_cli.scoring.calibration import KeepRequest, calibrate_request

    rng = np.random.default_rng(7)
    request = KeepRequest(0.9, per_class=True)
    kept, pooled_kept = [], []
    for _ in range(2000):
        scores, classes = _two_classes(rng, 40)
        record = calibrate_request(scores, classes, request, names=["hard", "easy"])
        values = record["per_class"]["values"]
        kept.append([_true_keep(values[0], 0.0), _true_keep(values[1], 0.5)])
        pooled_kept.append([_true_keep(record["value"], 0.0), _true_keep(record["value"], 0.5)])
    kept, pooled_kept = np.array(kept), np.array(pooled_kept)
    error = 3 * np.sqrt(0.9 * 0.1 / 41 / 2000)  # three standard errors of the mean keep-rate
    assert (kept.mean(axis=0) >= 0.9 - error).all()  # each class: at least 90 % in expectation
    assert kept.mean(axis=0) == pytest.approx(1 - rank_for(40, 0.9) / 41, abs=error)
    assert pooled_kept.mean(axis=0)[0] < 0.85 < 0.97 < pooled_kept.mean(axis=0)[1]  # one threshold: unequal classes
    confident = KeepRequest(0.9, 0.8, per_class=True)
    held = []
    for _ in range(2000):
        scores, classes = _two_classes(rng, 60)
        values = calibrate_request(scores, classes, confident, names=["hard", "easy"])["per_class"]["values"]
        held.append([_true_keep(values[0], 0.0) >= 0.9, _true_keep(values[1], 0.5) >= 0.9])
    assert (np.mean(held, axis=0) >= 0.8 - 3 * np.sqrt(0.8 * 0.2 / 2000)).all()


def test_a_class_with_too_few_images_uses_the_pooled_threshold_and_is_named():
    from negprompt_cli.scoring.calibration import Decision, KeepRequest, ThresholdWarning, calibrate_request

    scores = np.concatenate([np.linspace(0, 1, 30), np.linspace(2, 3, 5)])
    classes = np.array([0] * 30 + [1] * 5)
    with pytest.warns(ThresholdWarning, match=r"1 of 2 class\(es\) have fewer than 19 calibration images predicted "
                                              r"as them \('rare'; fewest 5\)"):
        record = calibrate_request(scores, classes, KeepRequest(per_class=True), names=["common", "rare"])
    per = record["per_class"]
    assert per["n_images"] == [30, 5] and per["rank"] == [rank_for(30, 0.95), None] and per["needed"] == 19
    assert per["values"] == [scores[rank_for(30, 0.95) - 1], record["value"]]  # its own; the pooled
    assert record["value"] == np.sort(scores)[rank_for(35, 0.95) - 1]
    said = describe(record)
    assert said.startswith("keeps, per class, >= 95.0% of the new ID images predicted as each of 1 class(es) in "
                           "expectation (90% interval as wide as ")
    assert "for the class with fewest images, 30); 1 class(es) with fewer than 19 images use the pooled " \
           "threshold, which promises nothing for them in particular" in said
    decision = Decision(record["value"], record)
    assert decision.threshold_for(0) == per["values"][0] and decision.threshold_for(1) == record["value"]
    assert decision.calibrated_for(0) == (30, per["rank"][0]) and decision.calibrated_for(1) == (None, None)


def test_the_kept_count_of_several_thresholds_is_the_sum_of_their_beta_binomials():
    """The interval for per-class thresholds against a direct convolution of the classes' pmfs (np.convolve, an
    independent computation) and, for one threshold, scipy's Beta-binomial itself."""
    from scipy.stats import betabinom

    from negprompt_cli.scoring.calibration import KeptCount, expected_kept

    counts = [KeptCount(40, 3, 25, 0), KeptCount(40, 3, 25, 0), KeptCount(19, 1, 7, 0), KeptCount(120, 9, 60, 0)]
    pmf = np.ones(1)
    for c in counts:
        pmf = np.convolve(pmf, betabinom(c.images, c.n + 1 - c.rank, c.rank).pmf(np.arange(c.images + 1)))
    cdf = np.cumsum(pmf)
    assert expected_kept(counts) == (int(np.searchsorted(cdf, 0.005)), int(np.searchsorted(cdf, 0.995)))
    one = betabinom(50, 120 + 1 - 6, 6)
    assert expected_kept([KeptCount(120, 6, 50, 0)]) == (int(one.ppf(0.005)), int(one.ppf(0.995)))


def test_score_transfer_detector_and_report_decide_per_class(many, tmp_path):
    """--per-class through every path: score's rows are decided by their predicted class's threshold and carry
    it, report draws the same decisions, transfer stores the record and score then uses it, the Detector
    calibrates the same thresholds."""
    from negprompt_cli.detector import Detector
    from negprompt_cli.outputs.artifact import load_prompts
    from negprompt_cli.outputs.score_file import read_score_file

    base = ["score", str(many / "id"), "--zero-shot", "--names", str(many / "names.txt"), "--backbone", "toy",
            "--scorer", "mcm", "--calibrate", str(many / "id"), "--keep", "0.8", "--per-class", "--labeled",
            "--json"]
    result = invoke([*base, "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    record, per_class = summary["calibration"], summary["class_thresholds"]
    rows = read_score_file(tmp_path / "s.csv")
    counts = [sum(r["prediction_index"] == c for r in rows) for c in (0, 1)]
    assert record["per_class"]["n_images"] == counts and min(counts) >= 4  # 4 images suffice for 80 %
    for c in (0, 1):  # each class's threshold is its own images' conformal rank
        own = sorted(r["score"] for r in rows if r["prediction_index"] == c)
        assert per_class[c] == pytest.approx(own[rank_for(counts[c], 0.8) - 1])
    for r in rows:
        c = r["prediction_index"]
        assert r["threshold"] == pytest.approx(per_class[c]) and r["ood"] == (r["score"] < per_class[c])
        assert (r["threshold_n"], r["threshold_rank"]) == (counts[c], record["per_class"]["rank"][c])
    assert "per-class thresholds" in result.stderr
    assert "it keeps, per class, >= 80.0% of the new ID images predicted as each of 2 class(es)" in result.stderr
    assert "differ from the calibration images" not in result.stderr
    pooled = invoke([*[a for a in base if a != "--per-class"], "--out", str(tmp_path / "p.csv")])
    assert pooled.exit_code == 0, pooled.stderr
    report = invoke(["report", "--id", str(tmp_path / "s.csv"), "--ood", f"same={tmp_path / 'p.csv'}", "--json",
                     "--out", str(tmp_path / "r")])
    assert report.exit_code == 0, report.stderr
    drawn = json.loads(report.stdout)
    assert "Per-class thresholds, " in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "histogram.png").stat().st_size > 0
    assert drawn["threshold"]["per_class"] == {str(c): pytest.approx(v) for c, v in enumerate(per_class)}
    assert drawn["decision"]["id_kept"] == pytest.approx(np.mean([not r["ood"] for r in rows]))
    assert "OOD set 'same' was scored with another threshold" in report.stderr  # p.csv: the pooled one
    # transfer stores the per-class record; score then decides with it, and inspect says what it promises
    pos = tmp_path / "pos.safetensors"
    from conftest import pos_fast

    assert invoke(["fit-pos", "--data", str(many / "id"), "--backbone", "toy", "--out", str(pos), *pos_fast(1),
                   "--quiet"]).exit_code == 0
    from conftest import NEG_FAST

    neg = tmp_path / "neg.safetensors"
    fitted = invoke(["fit-neg", "--data", str(many / "id"), "--pos", str(pos), "--out", str(neg), *NEG_FAST,
                     "--val-fraction", "0.5", "--shots", "6", "--keep", "0.8", "--per-class", "--quiet"])
    assert fitted.exit_code == 0, fitted.stderr
    held_out = load_prompts(neg).extra["threshold"]
    assert held_out["source"] == "validation" and sum(held_out["per_class"]["n_images"]) == 12
    moved = tmp_path / "moved.safetensors"
    transferred = invoke(["transfer", "--prompts", str(pos), "--names", str(many / "names.txt"), "--out", str(moved),
                          "--calibrate", str(many / "id"), "--keep", "0.8", "--per-class",
                          "--quiet"])
    assert transferred.exit_code == 0, transferred.stderr
    stored = load_prompts(moved).extra["threshold"]
    assert "per_class" in stored and describe(stored) in invoke(["inspect", str(moved)]).stdout
    again = invoke(["score", str(many / "id"), "--prompts", str(moved), "--out", str(tmp_path / "t.csv"), "--json"])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["class_thresholds"] == pytest.approx(stored["per_class"]["values"])
    for r in read_score_file(tmp_path / "t.csv"):
        assert r["ood"] == (r["score"] < stored["per_class"]["values"][r["prediction_index"]])
    detector = Detector.zero_shot(["red stripes", "green bars"], backbone="toy", scorer="mcm", device="cpu")
    paths = sorted(str(p) for p in (many / "id").rglob("*.png"))
    pooled_value = detector.calibrate(paths, keep=0.8, per_class=True)
    assert detector.class_thresholds == pytest.approx(per_class) and pooled_value == pytest.approx(record["value"])
    assert "per-class thresholds (2" in repr(detector)
    assert detector.with_threshold(0.5).class_thresholds is None


def test_per_class_and_keep_need_calibrate_and_a_given_threshold_excludes_it(many, tmp_path):
    base = ["score", str(many / "id"), "--zero-shot", "--names", str(many / "names.txt"), "--backbone", "toy"]
    alone = invoke([*base, "--per-class", "--keep", "0.9"])
    assert alone.exit_code == 2
    assert error_line(alone) == ("Error: --keep and --per-class say how a threshold is calibrated here, and there is "
                                 "no --calibrate")
    both = invoke([*base, "--threshold", "0.5", "--calibrate", str(many / "id")])
    assert both.exit_code == 2
    assert error_line(both) == "Error: give --threshold VALUE or --calibrate ID_IMAGES, not both"
    moved = invoke(["transfer", "--prompts", str(many / "names.txt"), "--names", str(many / "names.txt"), "--out",
                    str(tmp_path / "m.safetensors"), "--per-class"])
    assert moved.exit_code == 2 and "--per-class says how" in error_line(moved)


def test_the_per_class_shift_warning_fires_on_a_shortfall_and_stays_silent_on_a_likely_count():
    import warnings

    from negprompt_cli.scoring.calibration import KeptCount, ThresholdWarning, expected_kept, warn_if_shifted

    counts = [KeptCount(40, 3, 30, 28), KeptCount(60, 4, 30, 28)]
    low, high = expected_kept(counts)
    assert low <= 56 <= high
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_shifted(counts)  # 56 of 60 kept: likely
    short = [KeptCount(40, 3, 30, 20), KeptCount(60, 4, 30, 21)]
    with pytest.warns(ThresholdWarning, match=r"the threshold kept 41 of these 60 labelled ID images \(68\.3%\); "
                                              r"images like the calibration images of these 2 classes \(each class "
                                              rf"its own threshold\) would keep {low}-{high}"):
        warn_if_shifted(short)
