"""figures.py: every kind of figure and its summary.csv, from results lines the test writes
(drawn in-process, through `sweep.py --plot`'s code path)."""

import csv

import numpy as np
import pytest

import figures
import panels
import sweep
import sweep_definitions


@pytest.fixture(scope="module")
def definitions():
    return sweep_definitions.load_definitions()


def fake_results(folder, definition, rng, with_taus=False):
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    for run in sweep_definitions.expand(definition):
        cfg = sweep_definitions.make_run_config(run.overrides, run.seed)
        n = cfg.n_layers - 1
        metrics = dict(best_valid_acc=0.8, test_acc=float(0.8 + 0.05 * rng.random()), best_epoch=1,
                       epochs=[{}] * 3, seconds_total=1.0, median_tau_init=[cfg.tau_mem] * n,
                       median_tau_per_layer=[0.05 * (i + 1) for i in range(n)])
        if with_taus:  # every neuron's trained time constant, as runs that train them record
            metrics["tau_per_neuron"] = [[0.05 * (i + 1)] * cfg.n_hid for i in range(n)]
        sweep_definitions.append_line(folder / "runs.jsonl", sweep.result_line(run, metrics, folder / "runs" / run.key))


@pytest.mark.parametrize("name,rows,check", [
    ("hSNN_Figure_S2e", 20, lambda r: r[0]["unit"].startswith("points over") and r[0]["paper"] == "2.4"),
    ("SHD_hCSNN_max_performance", 3, lambda r: r[0]["paper"] == "94.67" and r[0]["n_seeds"] == "10"),
    ("SHD_hCSNN_proper_validation", 3, lambda r: [x["paper"] for x in r[:2]] == ["92.23", "94.12"]),
    ("SSC_hSNN_hierarchy", 2, lambda r: [x["paper"] for x in r] == ["71", "73.07"]),
    ("hSNN_Figure_S4a", 5, lambda r: r[-1]["x"] == "7" and r[-1]["n_seeds"] == "0"),
    ("hSNN_Figure_5b", 5, lambda r: all("not recoverable" in x["note"] for x in r)),
    ("hSNN_Figure_2c", 24, lambda r: sum(x["paper"] != "" for x in r) == 16),
    ("hSNN_Figure_S2b", 4, lambda r: "settings differ" in r[0]["note"]),
    ("hSNN_Figure_3b", 4, lambda r: [x["paper"] for x in r] == ["48", "43", "102", "99.21"]
     and [x["ours"] for x in r[:3]] == ["50", "100", "150"]),
])
def test_plot_every_kind_of_figure(tmp_path, definitions, name, rows, check):
    fake_results(tmp_path / name, definitions[name], np.random.default_rng(0), name == "hSNN_Figure_3b")
    sweep.main(["--sweep_name", name, "--plot", "--results_dir", str(tmp_path)])
    summary = list(csv.DictReader(open(tmp_path / name / "summary.csv")))
    assert len(summary) == rows and check(summary), summary
    assert (tmp_path / name / "figure.png").stat().st_size > 10_000 and (tmp_path / name / "figure.pdf").exists()


def test_labels_and_values():
    assert panels.fmt(True) == "true" and panels.fmt(0.4) == "0.4"
    assert panels.parse_series("n_hid=32,delta_tau=0.15") == {"n_hid": 32, "delta_tau": 0.15}
    assert panels.matches({"delta_tau": 0.15}, {"delta_tau": 0.15000000001}) and not panels.matches(
        {"recurrent": True}, {"recurrent": False})
    paper = {"x_values": [0, 0.5], "series": {"a": [1.0, 2.0]}, "std": {"a": [0.1, 0.2]}}
    assert panels.paper_value(paper, "a", 0.5) == (2.0, 0.2) and panels.paper_value(paper, "a", 0.3) == (None, None)


def test_figures_and_the_report_need_no_jax(root):
    """panels, figures, report and the sweep definitions load without JAX."""
    import subprocess
    import sys
    code = "import sys; import panels, figures, report, sweep_definitions; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_figure_is_written_atomically_and_a_refused_write_is_one_line(tmp_path, monkeypatch):
    """A kill while the figure is drawn into its file leaves the good figure; a full disk is
    one FileError naming the file."""
    import errno
    import utils_io
    fig, ax = figures.new_figure()
    ax.plot([1, 2], [3, 4])
    path = tmp_path / "figure.png"
    figures.save_figure(fig, path)
    good = path.read_bytes()
    monkeypatch.setattr(figures.Figure, "savefig", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        figures.save_figure(fig, path)
    monkeypatch.undo()
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["figure.png"]

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils_io.os, "fsync", full)
    with pytest.raises(utils_io.FileError, match=r"cannot write .*figure.pdf \(No space left on device\)"):
        figures.save_figure(fig, tmp_path / "figure.pdf")
    assert not (tmp_path / "figure.pdf").exists()


def test_figures_carry_no_clock_and_redraw_to_the_same_bytes(tmp_path):
    for suffix in ("png", "pdf"):
        drawn = []
        for i in range(2):
            fig, ax = figures.new_figure()
            ax.plot([1, 2], [3, 4])
            figures.save_figure(fig, tmp_path / f"{i}.{suffix}")
            drawn.append((tmp_path / f"{i}.{suffix}").read_bytes())
        assert drawn[0] == drawn[1]
        assert b"CreationDate" not in drawn[0] and b"ModDate" not in drawn[0]


def test_a_line_figure_draws_the_statistic_the_report_prints(definitions):
    """Fig. 2a's paper printed means: the figure's line is the mean with +-sd (not the median
    with the IQR), the numbers the report and summary.csv give; Fig. 2b's are medians."""
    from test_report_rules import grid
    lines = grid({(("n_layers", 3), ("tau_mem", 0.1)): [60.0, 70.0, 95.0], (("n_layers", 3), ("tau_mem", 0.3)): [80.0, 81.0, 99.0]})
    for name, stat, expected in (("hSNN_Figure_2a", "mean", [75.0, 260 / 3]), ("hSNN_Figure_2b", "median", [70.0, 81.0])):
        spec = dict(panels.layout(name, definitions[name]), x="tau_mem")
        pts = panels.line_points({"grid": {}}, lines, spec, {"stat": stat}, {})
        sweep = figures.Panel(name, None, definitions[name], lines, 6)
        fig, _ = figures.line_figure(sweep, pts, spec, {"stat": stat})
        ours = fig.axes[0].get_lines()[0]
        np.testing.assert_allclose(ours.get_ydata(), expected)
        assert ours.get_label().startswith("ours (mean +- sd)" if stat == "mean" else "ours (median, IQR)")


def test_the_trained_tau_figure_names_each_mark(definitions):
    from test_report_rules import line
    lines = [line({}, s, 99.0, tau_per_neuron=[[0.04, 0.05], [0.08, 0.1]], median_tau_init=[0.2, 0.2]) for s in range(3)]
    for ln in lines:
        ln["median_tau_per_layer"] = [0.045, 0.09]
    spec = panels.layout("hSNN_Figure_3b", definitions["hSNN_Figure_3b"])
    pts = panels.tau_points({}, lines, spec, {}, {})
    fig, _ = figures.tau_figure(figures.Panel("hSNN_Figure_3b", None, definitions["hSNN_Figure_3b"], lines, 3),
                                pts, spec, {})
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert "ours: median of all neurons of all seeds" in labels and "initial time constant (200 ms)" in labels
    initial = next(ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("initial"))
    np.testing.assert_allclose(initial.get_xdata(), [0.7, 1.7])  # beside the boxes, not on their whiskers
    assert spec["title"] == "Fig. 3b: time constants trained on MTS-XOR, per hidden layer"
