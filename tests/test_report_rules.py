"""Every rule of the report, pinned by value: constructed results lines whose right answers
are worked out by hand in each test (the comments show the arithmetic), for each panel's
statistic, the seeds' spread, the order of points, each verdict rule with its threshold and
ties, the bootstrap, the published code's column, the marking of modified runs, summary.csv,
run keys and the results table's repair. No JAX, no files but the test's own."""

import csv
import json
import socket

import numpy as np
import pytest

import figures
import panels
import report
import sweep
import sweep_definitions


def line(point, seed, acc, baseline=False, config=None, **extra):
    """A results line as the sweep writes it, for a run at grid `point` with test accuracy
    `acc` [%]; its configuration is the point (and `config`) with the seed."""
    group = sweep_definitions.group_key(point, baseline)
    return dict(key=f"{group}__seed={seed}", group=group, point=dict(point), seed=seed, baseline=baseline,
                overrides=dict(point), config={**point, **(config or {}), "seed": seed}, test_acc=acc / 100,
                valid_acc=0.5, best_epoch=1, n_epochs=3, median_tau_per_layer=[0.1], **extra)


def grid(values: dict, other=None):
    """Lines for {(point items): [accuracy per seed]}."""
    return [line(dict(point), seed, acc, config=other) for point, accs in values.items()
            for seed, acc in enumerate(accs)]


def mts_xor_definition(grid: dict) -> dict:
    """A sweep definition of MTS-XOR runs whose configurations can be resolved (make_run_config)."""
    return {"what": "", "fixed": {"dataset_name": "mts_xor", "decoder": "vmem_time", "n_in": 40, "n_out": 2},
            "grid": grid}


DEFINITION = {"what": "", "fixed": {}, "grid": {"n_layers": [3, 4], "delta_tau": [-0.5, 0.5], "seed": [0, 1, 2]}}
# accuracies chosen so that mean and median differ at every point
ACCS = {(("n_layers", 3), ("delta_tau", -0.5)): [60.0, 70.0, 74.0],   # median 70, mean 68
        (("n_layers", 3), ("delta_tau", 0.5)): [80.0, 90.0, 97.0],    # median 90, mean 89
        (("n_layers", 4), ("delta_tau", -0.5)): [85.0, 86.0, 90.0],   # median 86, mean 87
        (("n_layers", 4), ("delta_tau", 0.5)): [90.0, 96.0, 99.0]}    # median 96, mean 95
PAPER = {"x_values": [-0.5, 0.5], "series": {"n_layers=3": [70.0, 90.0], "n_layers=4": [88.0, 98.0]}}


def line_points(stat, lines=None, here=None):
    lines = grid(ACCS) if lines is None else lines
    return panels.line_points(DEFINITION, lines, dict(x="delta_tau"), dict(PAPER, stat=stat), here or {})


# --- each panel's statistic, spread and order ---------------------------------------------------
def test_line_panels_take_the_papers_statistic_and_keep_their_order():
    shuffled = grid(ACCS)[::-1]
    median = line_points("median", shuffled)
    # series in the paper's words (n_layers counts the output layer), fewer hidden layers first
    assert [(p.series, p.x) for p in median] == [("2 hidden layers", -0.5), ("2 hidden layers", 0.5),
                                                 ("3 hidden layers", -0.5), ("3 hidden layers", 0.5)]
    assert [p.ours for p in median] == [70, 90, 86, 96]
    assert [p.paper for p in median] == [70, 90, 88, 98]
    assert [p.paper_series for p in median] == ["n_layers=3"] * 2 + ["n_layers=4"] * 2
    assert [p.ours for p in line_points("mean")] == pytest.approx([68, 89, 87, 95])
    assert [sorted(p.values) for p in median][0] == [60, 70, 74]


def test_the_seeds_spread_is_the_sample_standard_deviation():
    p = line_points("mean")[0]  # 60, 70, 74: mean 68, squares 64 + 4 + 36 = 104, / (3 - 1) = 52
    assert p.sd == pytest.approx(np.sqrt(52))  # 7.211; with ddof 0 it would be sqrt(104 / 3) = 5.888
    assert report.spread(p) == "+-7.21"
    assert panels.Point("a", "x", 0, np.array([80.0]), "mean").sd is None  # one run: no spread
    # a median's spread is the interquartile range (numpy's linear quantiles):
    # 60, 70, 74 -> q25 = 60 + 0.5 * 10 = 65, q75 = 70 + 0.5 * 4 = 72
    assert report.spread(line_points("median")[0]) == "65.00-72.00"


def test_the_paper_inside_our_spread_counts_its_bounds():
    pts = line_points("median")
    # 85, 86, 90: q25 85.5, q75 88 -> the paper's 88 sits on the upper bound: inside
    # 90, 96, 99: q25 93, q75 97.5 -> the paper's 98 is outside
    assert [report.in_iqr(p) for p in pts] == [True, True, True, False]
    with_bar = panels.Point("a", "x", 0, np.array([88.0, 90.0]), "mean", paper=90.0, paper_sd=1.0)
    assert report.in_paper_bar(with_bar)  # |89 - 90| = 1 = sd: inside
    assert not report.in_paper_bar(with_bar._replace(paper_sd=0.5))
    assert report.in_paper_bar(with_bar._replace(paper_sd=None)) is None
    # differences 0, 0, -2, -2: mean absolute 1.00; 3 of 4 paper values inside our IQR
    assert report.summary(pts) == ("4 points compared, mean absolute difference 1.00; 3 of 4 paper values "
                                   "inside our seeds' interquartile range")
    assert report.summary([with_bar]).endswith(", 1 of 1 of ours inside the paper's +-sd")
    assert report.summary([pts[0]._replace(paper=None)]) == "no published numbers to compare with"


def test_a_point_without_a_paper_value_and_the_only_series():
    paper = {"stat": "median", "x_values": [-0.5], "series": {"n_layers=9": [50.0]}}
    pts = panels.line_points(DEFINITION, grid(ACCS), dict(x="delta_tau"), paper, {})
    # one paper series whose settings differ: both series are compared with it, with a note
    assert [(p.x, p.paper) for p in pts] == [(-0.5, 50.0), (0.5, None), (-0.5, 50.0), (0.5, None)]
    assert "whose settings differ" in pts[0].note and pts[1].note == ""
    extra = panels.paper_only_points(dict(PAPER, stat="mean"), line_points("mean")[:1], "delta_tau")
    assert [(p.series, p.x, p.paper) for p in extra] == [("paper: 2 hidden layers", 0.5, 90.0),
                                                         ("paper: 3 hidden layers", -0.5, 88.0),
                                                         ("paper: 3 hidden layers", 0.5, 98.0)]
    assert panels.paper_value({"x_values": [0.1], "series": {"a": [1.0]}}, "a", 0.1 + 1e-13) == (1.0, None)


def test_tables_give_the_mean_of_each_configuration():
    spec = dict(kind="table", rows={"augmented": {"freq_shift": 10}, "plain": {"freq_shift": 0}})
    lines = grid({(("freq_shift", 10),): [90.0, 91.0, 99.0], (("freq_shift", 0),): [80.0, 82.0, 90.0]})
    paper = {"rows": {"augmented": [92.0, 0.5], "plain": [85.0, 1.0], "other": [70.0, 2.0]}}
    pts = panels.table_points({}, lines, spec, paper, {})
    # sorted by series label: freq_shift=0 before freq_shift=10
    assert [p.series for p in pts] == ["plain", "augmented"]
    assert [p.ours for p in pts] == pytest.approx([84.0, 280 / 3])  # means (medians would be 82 and 91)
    assert [p.stat for p in pts] == ["mean", "mean"] and [p.paper for p in pts] == [85.0, 92.0]
    assert [p.paper_sd for p in pts] == [1.0, 0.5]
    only = panels.paper_only_rows(paper, pts)
    assert [(p.x, p.paper, p.paper_sd) for p in only] == [("other", 70.0, 2.0)]


def test_trained_time_constants_are_medians_in_ms_beside_the_published_codes():
    lines = [line({}, s, 99.0) for s in range(3)]
    for ln, taus in zip(lines, ([0.05, 0.08], [0.04, 0.10], [0.07, 0.09])):
        ln["median_tau_per_layer"] = taus
    here = {"tau_median_ms_per_seed": [[58, 50], [None, 71], [40, 80], [44, 66]]}
    pts = panels.tau_points({}, lines, {}, {"tau_median_ms": [48, 102]}, here)
    assert [p.x for p in pts] == [1, 2] and [p.stat for p in pts] == ["median", "median"]
    assert [p.ours for p in pts] == pytest.approx([50, 90])  # medians of 50, 40, 70 ms and 80, 100, 90 ms
    assert [p.paper for p in pts] == [48, 102]
    # the published code's column: the layer's median over its seeds, a null (clipped) layer left out
    assert [p.here_value for p in pts] == [44, 68.5]  # 58, 40, 44 -> 44; 50, 71, 80, 66 -> 68.5


def test_the_largest_eigenvalues_are_means_beside_the_published_codes():
    lines = [line({}, s, 80.0) for s in range(3)]
    largest = ([0.2, 0.3], [0.3, 0.6], [0.7, 0.3])
    for ln, top in zip(lines, largest):
        ln["w_rec_abs_eigenvalues"] = {which: [[v, 0.01] for v in top] for which in panels.SPECTRA}
    here = {"largest_abs_eigenvalue_per_seed": [[0.1, 0.4], [0.3, 0.5]]}
    pts = panels.eigen_points({}, lines, {}, {"largest_abs_eigenvalue_per_hidden_layer": [0.27, 0.29]}, here)
    stored = [p for p in pts if p.series.endswith("stored")]
    masked = [p for p in pts if p.series.endswith("masked")]
    assert [p.ours for p in stored] == pytest.approx([0.4, 0.4])  # means; medians would be 0.3 and 0.3
    assert [p.paper for p in stored] == [0.27, 0.29] and [p.paper for p in masked] == [None, None]
    assert [p.here_value for p in stored] == pytest.approx([0.2, 0.45]) and masked[0].here is None


def test_the_heatmap_is_each_cells_gain_over_the_baseline_median():
    definition = {"grid": {"tanh_coef": [0.5], "tanh_center": [0.2, 0.8]}}
    lines = grid({(("tanh_coef", 0.5), ("tanh_center", 0.2)): [81.0, 83.0, 90.0],
                  (("tanh_coef", 0.5), ("tanh_center", 0.8)): [70.0, 79.0, 80.0]})
    lines += [line({"delta_tau": 0}, s, acc, baseline=True) for s, acc in enumerate([78.0, 80.0, 95.0])]
    paper = {"x_values": [0.2, 0.8], "series": {"tanh_coef=0.5": [2.4, -1.0]}}
    pts = panels.heatmap_points(definition, lines, dict(x="tanh_center", y="tanh_coef"), paper, {})
    assert panels.baseline_median(lines) == 80.0  # median of the baseline runs, not their mean (84.33)
    assert [(p.x, p.ours) for p in pts] == [(0.2, 3.0), (0.8, -1.0)]  # medians 83 and 79, minus 80
    assert [p.paper for p in pts] == [2.4, -1.0] and pts[0].unit.startswith("points over")
    assert report.stats_gains(lines)[0][0].value == 0.5  # 1 of 2 cells gains


def test_the_accuracy_point_is_a_mean_against_the_papers_printed_accuracies():
    p = panels.accuracy_point([line({}, s, a) for s, a in enumerate([98.0, 99.0, 100.0, 95.0])],
                              {"test_acc": [99.0, 97.0]})
    assert p.ours == pytest.approx(98.0) and p.paper == 98.0
    assert p.paper_sd == pytest.approx(np.sqrt(2))  # sample sd of 99 and 97


# --- verdict rules ---------------------------------------------------------------------------------
def rises_lines(slopes):
    """Three x values, two seeds, accuracy = 80 + slope * x + seed per series."""
    return [line({"series": k, "x": x}, s, 80.0 + slope * x + s) for k, slope in slopes.items()
            for x in (0, 1, 2) for s in range(2)]


def test_rises_needs_a_positive_rank_correlation_in_every_series():
    stats, text = report.stats_rises(rises_lines({"a": 5, "b": 5}), "x")
    # x ranks 1.5, 1.5, 3.5, 3.5, 5.5, 5.5 (ties share their mean rank), accuracy ranks 1..6:
    # covariance sum 16, variance sums 16 and 17.5 -> rho = 16 / sqrt(16 * 17.5) = 0.956
    assert stats[0].value == pytest.approx(16 / np.sqrt(280))
    assert text == "rank correlation series='a': +0.96, series='b': +0.96"  # one entry per series
    stats, _ = report.stats_rises(rises_lines({"a": 5, "b": -5}), "x")
    assert stats[0].value < 0 and not stats[0].clears(stats[0].value)
    flat = [line({"x": x}, 0, 80.0) for x in (0, 1, 2)]  # constant accuracy: nothing to rank
    assert report.stats_rises(flat, "x") == (None, "not enough distinct values to rank")
    zero = report.Stat("smallest rank correlation", 0.0, 0.0)
    assert not zero.clears(0.0)  # a rank correlation of exactly 0 is no rise


def rises_more_lines():
    """Two series (n_layers 3 and 4) at x 0 and 2, three seeds each."""
    return [line({"n_layers": n, "x": x}, s, acc, config={"n_layers": n})
            for n, accs in ((3, {0: [70, 72, 90], 2: [80, 90, 91]}), (4, {0: [85, 86, 99], 2: [88, 89, 90]}))
            for x, values in accs.items() for s, acc in enumerate(values)]


def test_rises_more_compares_the_median_rises_of_two_series():
    lines = rises_more_lines()
    stats, text = report.stats_rises(lines, "x", more={"n_layers": 3}, less={"n_layers": 4})
    # medians: n_layers 3: 72 -> 90 (+18); n_layers 4: 86 -> 89 (+3); difference +15
    assert [s.name for s in stats] == ["smallest rank correlation", "difference of the rises [points]"]
    assert stats[1].value == pytest.approx(15.0)
    assert "rise 2 hidden layers: +18.00, 3 hidden layers: +3.00" in text


def beats_lines(by_cell):
    """{cell: (accuracies with delta_tau 0.4, with -0.4)} over three seeds."""
    return [line({"noise_rate": cell, "delta_tau": dt}, s, acc)
            for cell, pair in by_cell.items() for dt, accs in zip((0.4, -0.4), pair) for s, acc in enumerate(accs)]


def test_beats_compares_medians_per_cell_and_a_tie_is_no_win():
    by_cell = {0.0: ([90.0, 91.0, 50.0], [80.0, 85.0, 99.0]),   # medians 90 vs 85: a win (means: 77 vs 88)
               0.1: ([80.0, 81.0, 82.0], [70.0, 81.0, 90.0]),   # medians 81 vs 81: a tie, no win
               0.2: ([75.0, 76.0, 77.0], [60.0, 61.0, 62.0]),   # a win
               0.3: ([70.0, 70.0, 70.0], [71.0, 71.0, 71.0])}   # a loss
    stats, text = report.stats_beats(beats_lines(by_cell), "delta_tau", 0.4, -0.4, ("noise_rate",))
    assert stats[0].value == 0.5  # 2 wins of 4
    assert "better in 2 of 4 (noise_rate=0.0: +5.00; noise_rate=0.1: +0.00; noise_rate=0.2: +15.00; " \
           "noise_rate=0.3: -1.00 points)" in text
    assert stats[0].threshold == 0.75 and stats[0].inclusive
    assert stats[0].clears(0.75) and not stats[0].clears(0.74)  # three quarters is enough
    three = {k: v for k, v in by_cell.items() if k != 0.1}
    assert report.stats_beats(beats_lines(three), "delta_tau", 0.4, -0.4, ("noise_rate",))[0][0].value == 2 / 3
    assert report.stats_beats([], "delta_tau", 0.4, -0.4, ())[0] is None


def test_beats_over_two_fields_compares_each_pair_on_its_own():
    lines = [line({"delta_ker": k}, s, acc, config={"delta_ker": k}) for k, accs in ((3, [80, 81, 82]), (0, [70, 71, 72]))
             for s, acc in enumerate(accs)]
    lines += [line({"delta_tau": t}, s, acc, config={"delta_tau": t}) for t, accs in ((0.15, [60, 61, 62]), (0, [65, 66, 67]))
              for s, acc in enumerate(accs)]
    stats, text = report.stats_beats(lines, ("delta_ker", "delta_tau"), (3, 0.15), (0, 0), ())
    assert stats[0].value == 0.5 and "delta_ker: +10.00; delta_tau: -5.00" in text


def tau_lines(per_seed):
    lines = [line({}, s, 99.0) for s in range(len(per_seed))]
    for ln, taus in zip(lines, per_seed):
        ln["median_tau_per_layer"] = taus
    return lines


def test_deeper_slower_ranks_depth_and_compares_the_medians_of_the_outer_layers():
    stats, text = report.stats_deeper_slower(tau_lines([[0.05, 0.06, 0.09], [0.04, 0.08, 0.07], [0.06, 0.07, 0.20]]))
    # first layer 50, 40, 60 ms -> median 50; deepest 90, 70, 200 -> median 90; +40 ms
    assert [s.name for s in stats] == ["rank correlation", "deepest minus first hidden layer [ms]"]
    assert stats[1].value == pytest.approx(40.0) and "first hidden layer 50 ms, deepest 90 ms" in text
    assert "the deepest hidden layer is the slowest in 2 of 3 runs" in text
    # depth against the 9 values 50, 60, 90 | 40, 80, 70 | 60, 70, 200 [ms], ties sharing their
    # mean rank: depth ranks 2, 5, 8 per run; value ranks 2, 3.5, 8 | 1, 7, 5.5 | 3.5, 5.5, 9
    depth_rank = np.array([2.0, 5.0, 8.0] * 3)
    value_rank = np.array([2, 3.5, 8, 1, 7, 5.5, 3.5, 5.5, 9])
    assert stats[0].value == pytest.approx(np.corrcoef(depth_rank, value_rank)[0, 1])
    assert report.stats_deeper_slower(tau_lines([[0.05]]))[0] is None


def test_deeper_larger_takes_the_mean_largest_eigenvalue_per_task():
    lines = [line({}, s, 80.0, config={"dataset_name": "mts_xor"}) for s in range(3)]
    for ln, top in zip(lines, ([0.2, 0.3], [0.3, 0.2], [0.1, 0.9])):
        ln["w_rec_abs_eigenvalues"] = {"stored": [[v] for v in top], "masked": [[v] for v in top]}
    stats, text = report.stats_deeper_larger(lines)
    # first layer mean 0.2, deepest mean 0.4667: +0.2667; the median (0.3 - 0.2) would give +0.1
    assert stats[1].value == pytest.approx(0.4 / 1.5) and "first hidden layer 0.20, deepest 0.47" in text
    assert "the largest in 2 of 3 runs" in text


def test_gains_needs_three_quarters_of_the_cells():
    cells = {0.1: [81.0], 0.2: [82.0], 0.3: [83.0], 0.4: [80.0]}  # the last ties with the baseline median
    lines = [line({"tanh_center": c}, 0, a) for c, accs in cells.items() for a in accs]
    lines += [line({"delta_tau": 0}, s, a, baseline=True) for s, a in enumerate([79.0, 80.0, 99.0])]
    stats, text = report.stats_gains(lines)
    assert stats[0].value == 0.75 and stats[0].clears(0.75) and text == "positive in 3 of 4 cells"


# --- the bootstrap and the verdict's words -------------------------------------------------------------
def test_the_bootstrap_is_95_percent_over_seeds_within_each_point_with_a_fixed_generator(monkeypatch):
    """With the rule's statistic replaced by the mean accuracy of the runs it is given, the
    interval must be the 2.5 % and 97.5 % quantiles of that mean over 1000 resamples that draw,
    point by point, as many runs as the point has, with replacement, from the generator seeded
    2407_18838."""
    accs = {0: [50.0, 60.0, 70.0, 95.0], 1: [10.0, 20.0, 30.0]}
    lines = [line({"x": x}, s, a) for x, values in accs.items() for s, a in enumerate(values)]
    monkeypatch.setitem(report.STATISTICS, "rises", lambda lines, **_: (
        [report.Stat("mean", float(np.mean([100 * ln["test_acc"] for ln in lines])), 0.0)], "mean"))
    word, evidence = report.verdict(report.Claim("", "rises"), lines)
    rng, means = np.random.default_rng(2407_18838), []
    for _ in range(1000):
        drawn = [values[i] for values in (accs[0], accs[1]) for i in rng.integers(0, len(values), len(values))]
        means.append(np.mean(drawn))
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert f"mean {np.mean(accs[0] + accs[1]):+.2f} (95 % interval {lo:+.2f} to {hi:+.2f}; needs > 0)" in evidence
    assert word == "holds"
    assert report.BOOTSTRAP == dict(resamples=1000, seed=2407_18838)


def test_seed_groups_are_points_and_the_baseline_apart():
    lines = [line({"x": 1}, 0, 50.0), line({"x": 1}, 1, 50.0), line({"x": 2}, 0, 50.0),
             line({"x": 1}, 0, 50.0, baseline=True)]
    groups = report.seed_groups(lines)
    assert [[(ln["config"]["x"], ln["seed"], ln["baseline"]) for ln in g] for g in groups] == [
        [(1, 0, False), (1, 1, False)], [(2, 0, False)], [(1, 0, True)]]


def test_the_verdicts_words_follow_the_statistic_and_its_interval(monkeypatch):
    def verdict_for(values, threshold=0.0):
        lines = [line({"x": 0}, s, 50.0) for s in range(len(values))]
        for ln, v in zip(lines, values):
            ln["v"] = v
        monkeypatch.setitem(report.STATISTICS, "rises", lambda lines, **_: (
            [report.Stat("v", float(np.mean([ln["v"] for ln in lines])), threshold)], "v"))
        return report.verdict(report.Claim("", "rises"), lines)[0]

    assert verdict_for([1.0, 2.0, 3.0]) == "holds"                  # every resample above 0
    assert verdict_for([-1.0, 2.0, 3.0]) == "holds within noise"    # mean +1.33, some resamples at -1
    assert verdict_for([-3.0, -2.0, 1.0]) == "not supported"
    assert verdict_for([0.0, 0.0]) == "not supported"                # 0 does not clear > 0
    monkeypatch.setitem(report.STATISTICS, "rises", lambda lines, **_: (None, "why"))
    assert report.verdict(report.Claim("", "rises"), [line({"x": 0}, 0, 50.0)]) == ("not decided", "why")


# --- the report's tables, the published code's column, modified runs ------------------------------------
def test_the_points_table_and_summary_csv_agree_on_the_difference(tmp_path):
    pts = line_points("median")
    rows = report.points_table(pts, dict(x="delta_tau"))
    assert rows[0].startswith("| series | delta_tau | ours |")
    assert rows[2] == "| 2 hidden layers | -0.5 | 70.00 (median) | 65.00-72.00 | 3 | 70.00 |  | +0.00 |"
    assert rows[4] == "| 3 hidden layers | -0.5 | 86.00 (median) | 85.50-88.00 | 3 | 88.00 |  | -2.00 |"
    figures.write_summary(tmp_path / "summary.csv", pts, {"source": "Fig. X"})
    table = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert list(table[0]) == figures.SUMMARY_FIELDS == [
        "series", "x_name", "x", "stat", "ours", "ours_sd", "ours_median", "n_seeds", "paper", "paper_sd",
        "difference", "unit", "paper_source", "note"]
    assert [r["difference"] for r in table] == ["0", "0", "-2", "-2"]  # ours minus the paper's, as in the report
    assert table[0]["ours"] == "70" and table[0]["ours_median"] == "70" and table[0]["n_seeds"] == "3"
    assert table[0]["ours_sd"] == "7.211" and table[0]["paper_source"] == "Fig. X"
    mean = list(csv.DictReader(open(_summary(tmp_path, line_points("mean")))))
    assert mean[0]["ours"] == "68" and mean[0]["ours_median"] == "70" and mean[0]["difference"] == "-2"


def _summary(folder, pts, **kwargs):
    path = folder / "mean.csv"
    figures.write_summary(path, pts, {"source": "s", "series": {"a": [1]}}, **kwargs)
    return path


def test_summary_csv_marks_modified_runs_and_unrecoverable_papers(tmp_path):
    pts = line_points("median")[:1]
    path = _summary(tmp_path, pts, changed={"n_epochs": [1]})
    assert list(csv.DictReader(open(path)))[0]["note"] == "modified, not the published definition: n_epochs=1"
    figures.write_summary(tmp_path / "s.csv", [pts[0]._replace(paper=None)], {})
    row = list(csv.DictReader(open(tmp_path / "s.csv")))[0]
    assert row["note"] == "the paper's numbers are not recoverable" and row["difference"] == row["paper"] == ""


def test_the_published_codes_column_is_its_statistic_at_the_same_point():
    here = {"points": [{"series": {"n_layers": 3}, "x": -0.5, "test_acc": [50.0, 60.0, 100.0]},
                       {"series": {"n_layers": 4}, "x": 0.7, "test_acc": [1.0]}]}
    lines = [dict(ln, config={**ln["config"], "n_layers": ln["point"]["n_layers"]}) for ln in grid(ACCS)]
    median = line_points("median", lines, here)
    assert [p.here_value for p in median] == [60.0, None, None, None]
    assert line_points("mean", lines, here)[0].here_value == pytest.approx(70.0)
    rows = report.points_table(median, dict(x="delta_tau"))
    assert rows[0].endswith(" published code here |") and rows[2].endswith("| -0.5 | 70.00 (median) | 65.00-72.00 | "
                                                                            "3 | 70.00 |  | +0.00 | 60.00 |")
    assert rows[3].endswith("|  |")  # no published-code number at that point


def test_runs_that_differ_from_the_definition_are_named():
    definition = mts_xor_definition({"delta_tau": [0.1, 0.2], "seed": [0, 1]})
    runs = sweep_definitions.expand(definition)
    lines = [dict(key=r.key, group=r.group, seed=r.seed,
                  config=sweep_definitions.make_run_config({**r.overrides, **({"n_hid": 4} if r.seed else {})},
                                                           r.seed).to_dict()) for r in runs]
    lines[0]["config"]["data_dir"] = "/elsewhere"  # where the data is, not what is trained
    assert sweep_definitions.changed_fields(lines, definition) == {"n_hid": [4]}
    lines.append(dict(lines[0], group="delta_tau=0.3"))
    assert sweep_definitions.changed_fields(lines, definition)["grid point"] == ["delta_tau=0.3"]
    results = report.SweepResults("s", definition, lines, 4, changed={"n_hid": [4]})
    assert report.status(results) == "modified (n_hid=4): 5 of 4 runs, not the published definition"
    assert report.command(results) == "python3 sweep.py --sweep_name s --set n_hid=4"
    assert report.status(results._replace(changed={}, lines=lines[:3])) == "partial (3 of 4 runs)"
    assert report.status(results._replace(changed={}, lines=lines[:4])) == "complete (4 of 4 runs)"
    assert report.status(results._replace(reduced=True, changed={})) == "reduced (--quick): 5 runs"


# --- run keys and the results table ---------------------------------------------------------------
def test_layer_counts_read_as_hidden_layers_everywhere(tmp_path):
    """n_layers counts the output layer; a reader sees hidden layers: in series labels, the
    paper's labels, an n_layers axis (Fig. 2c) in the report's table and summary.csv."""
    assert panels.series_label({"n_layers": 4, "n_hid": 32}) == "3 hidden layers,n_hid=32"
    assert panels.shown_label("n_layers=3") == "2 hidden layers" and panels.shown_label("delta_tau=0") == "delta_tau=0"
    depth = [line({"n_layers": n}, s, 80.0 + n) for n in (3, 6) for s in range(2)]
    pts = panels.line_points({"grid": {"n_layers": [3, 6]}}, depth, dict(x="n_layers"), {}, {})
    rows = report.points_table(pts, dict(x="n_layers"))
    assert rows[0].startswith("| series | hidden layers |") and rows[2].startswith("| all | 2 | 83.00")
    figures.write_summary(tmp_path / "s.csv", pts, {})
    table = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [(r["x_name"], r["x"]) for r in table] == [("hidden layers", "2"), ("hidden layers", "5")]


def test_run_keys_name_the_grid_point_in_grid_order_and_the_seed():
    definition = {"what": "", "fixed": {}, "grid": {"n_layers": [3], "delta_tau": [-0.5, 0.5], "seed": [0, 7]},
                  "baseline": {"what": "", "overrides": {"delta_tau": 0.0}}}
    keys = [r.key for r in sweep_definitions.expand(definition)]
    assert keys == ["n_layers=3__delta_tau=-0.5__seed=0", "n_layers=3__delta_tau=-0.5__seed=7",
                    "n_layers=3__delta_tau=0.5__seed=0", "n_layers=3__delta_tau=0.5__seed=7",
                    "baseline__delta_tau=0.0__seed=0", "baseline__delta_tau=0.0__seed=7"]
    seeds_only = sweep_definitions.expand({"what": "", "fixed": {}, "grid": {"seed": [3]}})
    assert [(r.key, r.group) for r in seeds_only] == [("seed=3", "all")]
    assert sweep_definitions.group_key({"recurrent": True, "tau_mem": 0.02}, False) == "recurrent=true__tau_mem=0.02"


def test_a_torn_line_is_cut_and_a_key_is_written_once(tmp_path):
    path = tmp_path / "runs.jsonl"
    first = line({"x": 1}, 0, 50.0)
    assert sweep_definitions.append_line(path, first)
    path.write_bytes(path.read_bytes() + b'{"key": "x=1__seed=1", "te')  # killed mid-write
    second = line({"x": 1}, 1, 60.0)
    assert sweep_definitions.append_line(path, second)
    assert [json.loads(t)["key"] for t in path.read_text().splitlines()] == [first["key"], second["key"]]
    assert not sweep_definitions.append_line(path, dict(second, test_acc=0.9))  # the first line of a key stands
    assert sweep_definitions.read_lines(tmp_path)[second["key"]]["test_acc"] == 0.6
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 2


def test_a_line_stands_for_a_run_only_with_its_configuration():
    definition = mts_xor_definition({"seed": [0]})
    run = sweep_definitions.expand(definition)[0]
    config = sweep_definitions.make_run_config(run.overrides, 0).to_dict()
    assert sweep.stale_line(run, {"config": config}) is None
    assert sweep.stale_line(run, {"config": dict(config, n_hid=4, lr=1.0)}) == \
        "it was trained with other values of lr, n_hid"
    older = {k: v for k, v in config.items() if k != "lr"}  # a field added since is not compared
    assert sweep.stale_line(run, {"config": older}) is None
    assert "does not record its configuration" in sweep.stale_line(run, {})


def test_fig_3s_boxes_pool_every_neuron_of_every_seed_from_the_results_lines():
    lines = [line({}, s, 99.0, tau_per_neuron=[[0.01 * s, 0.02], [0.1]]) for s in (1, 2)]
    panel = figures.Panel("x", None, {}, lines, 2)
    assert figures.pooled_taus(panel) == [[0.01, 0.02, 0.02, 0.02], [0.1, 0.1]]
    lines[1].pop("tau_per_neuron")  # a line of an older version: no boxes, rather than half of them
    assert figures.pooled_taus(panel._replace(lines=lines)) is None


def test_verdicts_name_their_statistics(monkeypatch):
    cells = [line({"tanh_center": c}, 0, 81.0) for c in (0.1, 0.2)]
    base = [line({"delta_tau": 0}, 0, 80.0, baseline=True)]
    word, evidence = report.verdict(report.Claim("", "gains"), cells + base)
    assert "share of the cells with a gain +1.00 (95 % interval +1.00 to +1.00; needs >= 0.75)" in evidence
    assert word == "holds"


def test_commands_write_booleans_as_the_command_line_reads_them():
    results = report.SweepResults("s", {"what": "", "fixed": {}, "grid": {"seed": [0]}}, [], 1,
                                  sets={"recurrent": True, "timestep": None, "lr": 0.5})
    assert report.command(results) == "python3 sweep.py --sweep_name s --set lr=0.5 --set recurrent=true --set timestep=none"


def test_an_extension_says_what_it_changed_and_where_its_runs_come_from():
    definition = sweep_definitions.with_seeds({"what": "w", "fixed": {}, "grid": {"seed": [0]}}, [5, 6])
    lines = [line({}, s, 90.0, provenance=[dict(commit="abcdef1234567", dirty=False)]) for s in (5, 6)]
    ext = report.SweepResults("s", definition, lines, 2, folder="s_seeds5-6", changed={"n_hid": [4]})
    text = "\n".join(report.extension_lines(report.Section("t", ("s",), ""), ext, {}, [], {}))
    assert "### Extension `s_seeds5-6`: 2 runs, seeds 5-6, beyond the published grid's seeds 0, modified: n_hid=4" in text
    assert "Not part of the published grid, so not counted in this section's status and verdict above." in text
    assert "Provenance: commit abcdef1234;" in text


def test_an_extensions_two_verdicts_each_end_a_paragraph(monkeypatch):
    monkeypatch.setitem(report.STATISTICS, "rises", lambda lines, **_: (None, f"{len(lines)} lines"))
    definition = sweep_definitions.with_seeds({"what": "w", "fixed": {}, "grid": {"seed": [0]}}, [5, 6])
    ext = report.SweepResults("s", definition, [line({}, s, 90.0) for s in (5, 6)], 2, folder="s_seeds5-6")
    out = report.extension_lines(report.Section("t", ("s",), "", report.Claim("", "rises")), ext, {},
                                 [line({}, 0, 80.0)], {})
    assert out[-4:] == ["**Verdict on the extension alone (2 runs):** not decided: 2 lines.", "",
                        "**Verdict on the extension and the published grid's runs together (3 runs):** not decided: "
                        "3 lines.", ""]


def test_the_report_ends_with_one_newline_after_its_last_line():
    text = report.render({}, {})
    assert text.startswith("# Reproduction report\n\n") and text.endswith("\n") and not text.endswith("\n\n")
    assert text.rstrip("\n").splitlines()[-1].strip() != ""


def test_a_sweep_knows_whether_any_of_its_runs_finished(tmp_path):
    definition = {"what": "", "fixed": {}, "grid": {"seed": [0, 1]}}
    runs = sweep_definitions.expand(definition)
    opened = sweep.Sweep("s", tmp_path, definition, runs, runs, False, {}, definition)
    assert not sweep.has_finished_runs(opened)
    sweep_definitions.append_line(tmp_path / "runs.jsonl", line({}, 7, 50.0) | {"key": "seed=7"})  # another sweep's
    assert not sweep.has_finished_runs(opened)
    sweep_definitions.append_line(tmp_path / "runs.jsonl", line({}, 1, 50.0) | {"key": "seed=1"})
    assert sweep.has_finished_runs(opened)


# --- what a sample of mutants of the report's modules let through (docs/testing.md) ------------
def test_an_added_experiment_draws_the_figure_its_definition_asks_for():
    definition = {"what": "", "fixed": {}, "grid": {"neuron": ["lif", "alif"], "seed": [0]},
                  "figure": {"kind": "table", "title": "LIF and ALIF"}}
    spec = panels.layout("my_experiment", definition)
    assert (spec["kind"], spec["title"], spec["x"]) == ("table", "LIF and ALIF", "neuron")
    assert panels.layout("my_experiment", {**definition, "figure": None})["kind"] == "line"
    # a published panel's layout wins over a definition's
    assert panels.layout("hSNN_Figure_3b", definition)["kind"] == "tau"


def test_a_panel_of_a_measure_plots_that_measure_in_its_own_unit():
    lines = [line({"x": x}, s, 90.0, measures={"silent_fraction": 0.1 * x + 0.01 * s})
             for x in (1, 2) for s in range(3)]
    assert panels.values(lines[:3], "silent_fraction") == pytest.approx([0.1, 0.11, 0.12])
    pts = panels.line_points({"grid": {"x": [1, 2]}}, lines, dict(x="x", measure="silent_fraction"), {}, {})
    assert [p.ours for p in pts] == pytest.approx([0.11, 0.21])  # medians over the seeds
    assert [p.unit for p in pts] == ["silent_fraction"] * 2
    assert [p.unit for p in line_points("median")] == [panels.ACCURACY] * 4
    lines[4].pop("measures")
    with pytest.raises(panels.PanelError, match="the runs x=2__seed=1 record no measure 'silent_fraction'"):
        panels.values(lines, "silent_fraction")


def test_a_categorical_axis_keeps_the_grids_order():
    definition = {"grid": {"hierarchy": ["tanh", "linear", "none"], "seed": [0, 1]}}
    lines = [line({"hierarchy": h}, s, acc) for h, acc in (("none", 80.0), ("tanh", 90.0), ("linear", 85.0))
             for s in range(2)]
    pts = panels.line_points(definition, lines, dict(x="hierarchy", categorical=True), {}, {})
    assert [p.x for p in pts] == ["tanh", "linear", "none"]  # not alphabetical
    # an axis the grid does not list: the values' own order, unsorted
    assert panels.x_order({"grid": {}}, dict(x="other", categorical=True), ["b", "a"]) == ["b", "a"]
    assert panels.x_order({"grid": {}}, dict(x="other"), [2.0, 1.0]) == [1.0, 2.0]


def test_a_paper_entry_without_x_values_has_no_value_at_any_x():
    assert panels.paper_value({"series": {"a": [1.0]}}, "a", 0.5) == (None, None)
    assert panels.paper_value({"series": {"a": [1.0, 2.0]}, "x_values": [0.1, 0.5],
                               "std": {"a": [0.3, 0.4]}}, "a", 0.5) == (2.0, 0.4)


def test_spectra_summarise_each_layer_over_the_runs():
    lines = [line({}, s, 80.0) for s in range(3)]
    for s, ln in enumerate(lines):  # 2 hidden layers of 3 neurons: the layers' count is not n's
        ln["w_rec_abs_eigenvalues"] = {w: [[0.5 + s, 0.2, 0.1], [0.9, 0.3 * s, 0.0]] for w in panels.SPECTRA}
    out = panels.spectra(lines)
    assert [(s.which, s.layer) for s in out] == [("stored", 1), ("stored", 2), ("masked", 1), ("masked", 2)]
    assert out[0].mean == pytest.approx([1.5, 0.2, 0.1]) and out[0].largest == pytest.approx([0.5, 1.5, 2.5])
    assert out[1].mean == pytest.approx([0.9, 0.3, 0.0])
    assert out[1].q25 == pytest.approx([0.9, 0.15, 0.0]) and out[1].q75 == pytest.approx([0.9, 0.45, 0.0])


def test_the_accuracy_point_is_a_table_row_without_x(tmp_path):
    p = panels.accuracy_point([line({}, 0, 98.0)], {})
    assert (p.x_name, p.x) == ("", "")
    figures.write_summary(tmp_path / "s.csv", [p], {})
    row = list(csv.DictReader(open(tmp_path / "s.csv")))[0]
    assert (row["x_name"], row["x"], row["ours"], row["paper_sd"]) == ("", "", "98", "")


def test_summary_csv_gives_the_papers_spread(tmp_path):
    figures.write_summary(tmp_path / "s.csv", [line_points("median")[0]._replace(paper_sd=1.25)], {})
    row = list(csv.DictReader(open(tmp_path / "s.csv")))[0]
    assert (row["paper"], row["paper_sd"]) == ("70", "1.25")


def test_baseline_runs_are_no_part_of_a_rise():
    lines = rises_more_lines()
    # a baseline run that matches n_layers 3 at x 2: counted, the median there would be 85, not 90
    lines.append(line({"n_layers": 3, "x": 2}, 9, 0.0, baseline=True))
    stats, text = report.stats_rises(lines, "x", more={"n_layers": 3}, less={"n_layers": 4})
    assert stats[1].value == pytest.approx(15.0) and "rise 2 hidden layers: +18.00" in text
    # the difference of the rises must be above 0, not above some margin
    assert stats[1].threshold == 0.0 and stats[1].clears(0.5) and not stats[1].inclusive


def test_above_compares_the_medians_of_two_values_of_a_field():
    lines = [line({"neuron": n}, s, acc, config={"neuron": n})
             for n, accs in (("alif", [90.0, 93.0, 99.0]), ("lif", [91.0, 95.0, 96.0])) for s, acc in enumerate(accs)]
    stats, text = report.stats_above(lines, "neuron", "alif", "lif")
    assert [(s.name, s.threshold, s.inclusive) for s in stats] == [("difference of the medians [points]", 0.0, False)]
    assert stats[0].value == pytest.approx(-2.0)  # medians 93 and 95 (means would be 94 and 94)
    assert text == "median test accuracy 93.00 with neuron = alif (3 runs), 95.00 with neuron = lif (3 runs)"
    assert report.stats_above(lines[:3], "neuron", "alif", "lif") == (None, "no pair of runs to compare yet")
    for ln, v in zip(lines, (1, 2, 3, 4, 5, 6)):
        ln["measures"] = {"silent_fraction": v}
    stats, text = report.stats_above(lines, "neuron", "alif", "lif", measure="silent_fraction")
    assert stats[0].name == "difference of the medians" and stats[0].value == -3.0
    assert text.startswith("median silent_fraction 2.00 with neuron = alif")


def test_an_extension_is_drawn_as_its_sweeps_panel_and_laid_out_as_a_section():
    definition = sweep_definitions.with_seeds({"what": "w", "fixed": {}, "grid": {"seed": [0]}}, [5, 6])
    lines = [line({}, s, 90.0, provenance=[dict(commit="abcdef1234567", dirty=False)]) for s in (5, 6)]
    lines[0]["median_tau_per_layer"], lines[1]["median_tau_per_layer"] = [0.05, 0.08], [0.07, 0.1]
    ext = report.SweepResults("hSNN_Figure_3b", definition, lines, 2, folder="hSNN_Figure_3b_seeds5-6")
    out = report.extension_lines(report.Section("t", ("hSNN_Figure_3b",), ""), ext, {}, [], {})
    # Fig. 3b's panel (time constants per hidden layer), not a table of accuracies
    assert out[6] == "| series | hidden layer | ours | spread | seeds | paper | paper sd | difference |"
    assert out[8].startswith("| trained tau [ms], median of the runs' medians | 1 | 60.00 (median) |")
    assert out[10:] == ["", "No published numbers to compare with.", "",
                        "![hSNN_Figure_3b_seeds5-6](hSNN_Figure_3b_seeds5-6/figure.png)", "",
                        "Provenance: commit abcdef1234; Python None, JAX None, jaxlib None, numpy None; "
                        "None (None) on None.", ""]


def test_an_added_experiments_section_and_its_claim():
    definition = {"title": "ALIF against LIF", "what": "adaptive neurons against LIF", "fixed": {},
                  "grid": {"seed": [0]}, "claim": {"text": "ALIF is better", "rule": "above",
                                                   "args": {"field": "neuron", "better": "alif", "worse": "lif"}}}
    sec = report.experiment_section("alif", definition)
    assert sec == report.Section("ALIF against LIF", ("alif",), "adaptive neurons against LIF",
                                 report.Claim("ALIF is better", "above", definition["claim"]["args"]))
    assert report.experiment_section("x", {"what": "w"}) == report.Section("x", ("x",), "w", None)
    assert report.claim_problem(definition) is None and report.claim_problem({"what": ""}) is None
    wrong_args = {"claim": dict(definition["claim"], args=["neuron"])}
    assert report.claim_problem(wrong_args).startswith("its claim must be an object with a 'text', a 'rule'")
    assert report.claim_problem({"claim": dict(definition["claim"], rule="better")}).startswith("its claim must")
    assert "do not fit the rule 'above'" in report.claim_problem({"claim": dict(definition["claim"], args={})})


def test_a_damaged_sweep_manifest_says_how_to_go_on(tmp_path):
    (tmp_path / sweep_definitions.MANIFEST).write_text("{torn")
    with pytest.raises(sweep_definitions.SweepError, match=r"invalid JSON .*; move the folder aside$"):
        sweep_definitions.read_manifest(tmp_path, "move the folder aside")


def test_a_results_line_of_another_configuration_stops_the_sweep(tmp_path):
    definition = mts_xor_definition({"seed": [0, 1]})
    runs = sweep_definitions.expand(definition)
    opened = sweep.Sweep("s", tmp_path, definition, runs, runs, False, {}, definition)
    config = sweep_definitions.make_run_config(runs[0].overrides, 0).to_dict()
    assert [r.key for r in sweep.plan(opened, {"seed=0": {"config": config}})] == ["seed=1"]
    with pytest.raises(sweep_definitions.SweepError, match="the line of seed=0 does not match this sweep: it was "
                                                          "trained with other values of n_hid; use another"):
        sweep.plan(opened, {"seed=0": {"config": dict(config, n_hid=3)}})


def test_two_distinct_runs_are_enough_to_rank():
    assert report.spearman([0.0, 1.0], [5.0, 7.0]) == pytest.approx(1.0)
    assert report.spearman([0.0, 1.0], [7.0, 5.0]) == pytest.approx(-1.0)
    assert np.isnan(report.spearman([0.0], [5.0])) and np.isnan(report.spearman([0.0, 1.0], [5.0, 5.0]))


def test_the_paper_inside_our_interquartile_range_uses_the_quartiles():
    p = line_points("median")[0]._replace(values=np.array([0.0, 1.0, 2.0, 3.0, 4.0]))  # quartiles 1 and 3
    assert [report.in_iqr(p._replace(paper=v)) for v in (0.99, 1.0, 3.0, 3.02)] == [False, True, True, False]


def test_a_panel_axis_names_its_value_before_the_series():
    p = line_points("median")[0]._replace(panel=128)
    assert report.series_name(p, dict(panel="n_hid")) == "n_hid=128,2 hidden layers"
    assert report.series_name(p._replace(series="all"), dict(panel="n_hid")) == "n_hid=128"
    assert report.series_name(p._replace(panel=None), dict(panel="n_hid")) == "2 hidden layers"


def test_a_rule_on_a_measure_names_the_measure():
    claim = report.Claim("", "above", {"field": "neuron", "better": "alif", "worse": "lif",
                                       "measure": "silent_fraction"})
    assert report.rule_text(claim) == "the median silent_fraction with neuron = alif is above the one with neuron = lif"
    assert report.rule_text(claim._replace(args={"field": "neuron", "better": "alif", "worse": "lif"})).startswith(
        "the median test accuracy with neuron = alif")


def test_a_reduced_modified_sweep_says_both():
    results = report.SweepResults("s", {"what": "", "fixed": {}, "grid": {"seed": [0]}}, [{}] * 2, 5,
                                  reduced=True, changed={"n_hid": [4]})
    assert report.status(results) == "reduced (--quick, modified: n_hid=4): 2 runs"
    assert report.status(results._replace(changed={})) == "reduced (--quick): 2 runs"


def test_provenance_gives_the_days_the_runs_finished():
    lines = [dict(finished=f"2026-12-0{d}T10:00:00+00:00") for d in (5, 3, 4)]
    assert report.provenance_summary(lines) == ["runs finished 2026-12-03 to 2026-12-05"]
    assert report.provenance_summary(lines[:1]) == ["runs finished 2026-12-05"]
    assert report.provenance_summary([{}]) == ["no provenance recorded"]


def test_the_report_states_each_statistic_with_its_spread():
    text = report.render({}, {})
    assert ("our numbers are test accuracies in % (the paper's statistic over seeds: median with the "
            "interquartile range, or mean with the standard deviation), the paper's are read off its figures "
            "(+-0.3 points) or printed in its tables.") in " ".join(text.split())


def test_a_sweeps_results_name_the_failures_of_its_runs(tmp_path):
    definition = {"what": "", "fixed": {"dataset_name": "mts_xor"}, "grid": {"seed": [0, 1]}}
    (tmp_path / "runs" / "seed=1").mkdir(parents=True)
    (tmp_path / "runs" / "seed=1" / "error.txt").write_text("2026-12-06: training diverged (NaN loss)\nmore\n")
    (tmp_path / "runs" / "seed=0").mkdir()
    results = report.sweep_results(tmp_path, "s", definition, False)
    assert results.errors == ("2026-12-06: training diverged (NaN loss)",) and results.lines == []
    assert report.status(results) == "not run: failed (2026-12-06: training diverged (NaN loss))"


def test_a_results_line_is_written_with_its_keys_sorted(tmp_path):
    path = tmp_path / "runs.jsonl"
    sweep_definitions.append_line(path, {"key": "k", "b": 1, "a": {"z": 1, "y": 2}})
    assert path.read_text() == '{"a": {"y": 2, "z": 1}, "b": 1, "key": "k"}\n'  # the same bytes for the same run


def test_a_results_line_records_the_configuration_its_run_folder_trained(tmp_path):
    definition = mts_xor_definition({"seed": [0]})
    run = sweep_definitions.expand(definition)[0]
    config = sweep_definitions.make_run_config(run.overrides, 0).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(dict(config, data_dir="/where/the/data/was")))
    metrics = dict(best_valid_acc=0.9, test_acc=0.8, best_epoch=2, epochs=[{}, {}, {}], median_tau_per_layer=[0.1])
    out = sweep.result_line(run, metrics, tmp_path)
    assert out["config"] == dict(config, data_dir="/where/the/data/was")
    assert out["host"] == socket.gethostname()
    assert (out["key"], out["test_acc"], out["valid_acc"], out["best_epoch"], out["n_epochs"]) == ("seed=0", 0.8, 0.9, 2, 3)
    assert out["seconds"] is None  # a run folder of a version that did not time its runs
    assert sweep.result_line(run, dict(metrics, seconds_total=12.5), tmp_path)["seconds"] == 12.5


def test_the_top_table_names_the_sweep_only_in_a_section_of_several():
    sweeps = {n: report.SweepResults(n, mts_xor_definition({"seed": [0, 1]}), [], 2) for n in ("a", "b")}
    _, top = report.section(report.Section("one", ("a",), "tests"), sweeps, {})
    assert top == ("one", "`a`", "not run", "", "no claim tested")
    _, top = report.section(report.Section("two", ("a", "b"), "tests"), sweeps, {})
    assert top[1:3] == ("`a`, `b`", "`a`: not run; `b`: not run")


def test_a_beats_rule_names_the_fields_of_its_comparisons():
    claim = report.Claim("", "beats", {"field": "delta_tau", "better": 0.4, "worse": -0.4,
                                       "by": ["noise_rate", "n_layers"]})
    plain = ("the median test accuracy with delta_tau = 0.4 is above the one with delta_tau = -0.4 in at least "
             "three quarters of the comparisons")
    assert report.rule_text(claim) == plain + " (one comparison per value of noise_rate, n_layers)"
    assert report.rule_text(claim._replace(args={k: v for k, v in claim.args.items() if k != "by"})) == plain


def test_an_older_line_without_its_configuration_gets_the_one_of_its_overrides_and_seed(tmp_path):
    definition = mts_xor_definition({"seed": [3]})
    run = sweep_definitions.expand(definition)[0]
    older = {k: v for k, v in line({}, 3, 80.0).items() if k != "config"}
    older["overrides"] = run.overrides
    (tmp_path / "runs.jsonl").write_text(json.dumps(older) + "\n")
    config = sweep_definitions.read_lines(tmp_path)[older["key"]]["config"]
    assert config == sweep_definitions.make_run_config(run.overrides, 3).to_dict() and config["seed"] == 3
