"""The figure and summary.csv of each sweep, next to the paper's numbers.

`plot_sweep(panel, paper_numbers)` draws the published panel's axes and series from the
points that panels.py computes from a sweep's results lines (runs.jsonl): our median over
seeds with the interquartile range and every seed as a dot, the paper's values
(paper/paper_numbers.json) dashed in the colour of their series; tables as mean +- sd per
configuration; Fig. 3 as the trained time constants per layer; Fig. S6 as the spectra of the
trained recurrent matrices. summary.csv has one row per point: our statistic, the paper's
and their difference. The report (report.py) tabulates the same points.
"""

import csv
import io
import textwrap
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure

import panels
from panels import fmt
from utils_io import atomic_write

UNITS = {"tau_mem": "s", "delta_tau": "s", "noise_rate": "spike probability per step",
         "conv_dilation": "steps", "conv_kernel": "steps", "delta_ker": "steps", "delta_dil": "steps"}
SUMMARY_FIELDS = ["series", "x_name", "x", "stat", "ours", "ours_sd", "ours_median", "n_seeds",
                  "paper", "paper_sd", "difference", "unit", "paper_source", "note"]


class Panel(NamedTuple):
    """What a figure is drawn from: a sweep's name, folder and definition, its results lines,
    how many runs it has in all, the --quick reduction (None for the full sweep) and the
    fields in which its runs differ from the published definition ({field: values})."""
    name: str
    folder: Path
    definition: dict
    lines: list
    n_runs: int
    reduced: Optional[dict] = None
    changed: Optional[dict] = None
    published: bool = True   # one of the paper's sweeps (else an added experiment: no paper numbers)


def new_figure(nrows=1, ncols=1, figsize=(6.4, 4.4), **kwargs):
    """(figure, axes) without pyplot: no global state, no display backend."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


class Kind(NamedTuple):
    """A kind of panel: `points(definition, lines, spec, paper, here)` -> [panels.Point] (pure,
    shared with the report and summary.csv), and `draw(sweep, points, spec, paper)` ->
    (figure, extra points for summary.csv)."""
    points: Callable
    draw: Callable


def points(name: str, definition: dict, lines: list, paper: dict, here: Optional[dict] = None) -> list:
    """Every point of the panel of sweep `name` (its `definition`) from its results lines."""
    spec = panels.layout(name, definition)
    return KINDS[spec["kind"]].points(definition, lines, spec, paper, here or {})


def plot_sweep(sweep: Panel, paper_numbers: dict) -> list:
    """figure.png, figure.pdf and summary.csv in the sweep's folder, from its results lines;
    returns the points drawn."""
    spec = panels.layout(sweep.name, sweep.definition)
    paper = paper_numbers.get(spec["paper"], {})
    pts = points(sweep.name, sweep.definition, sweep.lines, paper)
    fig, extra = KINDS[spec["kind"]].draw(sweep, pts, spec, paper)
    annotate(fig, sweep, paper, spec)
    for suffix in ("png", "pdf"):
        save_figure(fig, sweep.folder / f"figure.{suffix}")
    write_summary(sweep.folder / "summary.csv", pts + extra, paper, sweep.changed, published=sweep.published)
    return pts + extra


# No creation date or other clock reading in the files: the same results give the same bytes
# (with the same matplotlib, pinned in requirements.txt), so a redrawn figure is no change.
REPRODUCIBLE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}


def save_figure(fig, path: Path):
    """The figure as PNG or PDF (by the suffix), written atomically and byte-for-byte
    reproducible."""
    kind = path.suffix[1:]
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, dpi=150, bbox_inches="tight", metadata=REPRODUCIBLE_METADATA[kind])
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def annotate(fig, sweep: Panel, paper: dict, spec: dict):
    """The title (what the panel shows, in the paper's words, and how many runs it holds); the
    caption (the sweep's name and definition, where the paper's numbers come from); and the
    warnings a reader must not miss."""
    n_epochs = "/".join(str(n) for n in sorted({line["n_epochs"] for line in sweep.lines}))
    fig.suptitle(f"{textwrap.fill(spec['title'], 80)}\n{len(sweep.lines)} of {sweep.n_runs} runs finished",
                 fontsize=10, y=1.02)
    source = f" Paper's numbers: {paper['source']}." if paper.get("source") else ""
    caption = textwrap.fill(f"{sweep.name}: {sweep.definition['what']}.{source}", 110)
    notes = []
    if sweep.reduced:
        notes.append(f"REDUCED (--quick): at most {sweep.reduced['seeds']} seeds, {sweep.reduced['points']} points per axis, "
                     f"{n_epochs} epochs - not comparable with the paper")
    if sweep.changed:
        notes.append("MODIFIED, not the published definition: " + panels.changes_text(sweep.changed))
    if sweep.published and not panels.paper_recoverable(paper):
        notes.append("The paper's numbers for this panel are not recoverable "
                     f"({paper.get('source', 'no entry in paper_numbers.json')}); ours only")
    fig.text(0.5, -0.02, caption, ha="center", va="top", fontsize=7, color="dimgrey")
    if notes:
        fig.text(0.5, -0.03 - 0.035 * (caption.count("\n") + 1), "\n".join(notes), ha="center", va="top", fontsize=9,
                 color="firebrick")


# --- line panels ---------------------------------------------------------------------------------
def line_figure(sweep, points, spec, paper):
    """Accuracy (or spec['measure']) against one grid axis, one series per value of the other
    axes (one panel per value of spec['panel']): median over seeds with the interquartile
    range and every seed as a dot; the paper's values dashed, in the colour of the series they
    belong to. A categorical axis puts its values side by side in the grid's order."""
    spec = dict(spec, x_values=panels.x_order(sweep.definition, spec, {p.x for p in points}))
    by_panel = {}
    for p in points:
        by_panel.setdefault(p.panel, {}).setdefault(p.series, []).append(p)
    names = sorted({p.series for p in points})
    colours = matplotlib.colormaps["tab10"]
    fig, axs = new_figure(1, len(by_panel), figsize=(2.2 + 4.2 * len(by_panel), 4.4), sharey=True, squeeze=False)
    for ax, panel in zip(axs[0], sorted(by_panel, key=lambda v: (v is None, v if v is not None else 0))):
        matched = {}
        for label, series in sorted(by_panel[panel].items()):
            colour = colours(names.index(label))
            draw_series(ax, label, series, colour, spec)
            for p in series:
                if p.paper_series:
                    matched[p.paper_series] = colour
        draw_paper_lines(ax, paper, matched, spec.get("x_scale", 1), only_matched=panel is not None)
        style_line_axes(ax, spec, panel, single=len(by_panel) == 1)
    axs[0][0].set_ylabel("test accuracy [%]" if spec.get("measure") is None else spec["measure"])
    # a reduced grid lacks most of the paper's points by design
    extra = [] if sweep.reduced else panels.paper_only_points(paper, points, spec["x"])
    return fig, extra


def x_positions(series, spec) -> np.ndarray:
    """Where the points sit along x: their values (times the panel's x_scale), or for a
    categorical axis their rank in the grid's order (the tick labels name them)."""
    if spec.get("categorical"):
        return np.array([spec["x_values"].index(p.x) for p in series], dtype=float)
    return np.array([panels.shown_x(p.x_name, p.x) for p in series], dtype=float) * spec.get("x_scale", 1)


def spread_band(p: panels.Point):
    """(low, high) of the band around a point's statistic: the interquartile range of a
    median, +- the sample standard deviation of a mean (the numbers the report prints)."""
    if p.stat.startswith("mean"):
        sd = p.sd or 0.0
        return p.ours - sd, p.ours + sd
    return tuple(np.percentile(p.values, [25, 75]))


def draw_series(ax, label, series, colour, spec):
    """Our statistic of each point (the paper's for the panel: median or mean, as the report
    and summary.csv give it) with its spread as a band, and every run as a dot."""
    xv = x_positions(series, spec)
    stat = series[0].stat
    band = np.array([spread_band(p) for p in series])
    what = "median, IQR" if not stat.startswith("mean") else "mean +- sd"
    ours = np.array([p.ours for p in series])
    if spec.get("categorical"):  # values side by side: no line between them, the spread as a bar
        ax.errorbar(xv, ours, yerr=[ours - band[:, 0], band[:, 1] - ours], fmt="o", color=colour, capsize=4,
                    label=f"ours ({what}): {label}")
    else:
        ax.plot(xv, ours, "o-", color=colour, label=f"ours ({what}): {label}")
        ax.fill_between(xv, band[:, 0], band[:, 1], color=colour, alpha=0.2, lw=0)
    for x, p in zip(xv, series):
        ax.plot(np.full(len(p.values), x), p.values, ".", color=colour, alpha=0.35, ms=4)


def style_line_axes(ax, spec, panel, single):
    x_name = spec["x"]
    ax.set_xlabel(spec.get("x_label") or panels.shown_axis(x_name) + (f" [{UNITS[x_name]}]" if x_name in UNITS else ""))
    if panel is not None:
        ax.set_title(f"{spec['panel']}={fmt(panel)}", fontsize=9)
    xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
    if spec.get("categorical"):
        ax.set_xticks(range(len(spec["x_values"])), [str(v) for v in spec["x_values"]])
        ax.set_xlim(-0.5, len(spec["x_values"]) - 0.5)
    elif xs and all(float(x).is_integer() for x in xs) and len(xs) <= 12:
        ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    if single:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=7, loc="lower right")


def draw_paper_lines(ax, paper, matched: dict, scale, only_matched=False):
    stat, source = paper.get("stat", "?"), paper.get("source", "?")
    x_name = paper.get("x", "")
    for label, values in sorted((paper.get("series") or {}).items(), key=lambda kv: panels.shown_label(kv[0])):
        if only_matched and label not in matched:
            continue
        x = np.array([panels.shown_x(x_name, v) for v in paper["x_values"]], dtype=float) * scale
        sd = (paper.get("std") or {}).get(label)
        ax.errorbar(x, values, yerr=sd, fmt="x--", color=matched.get(label, "black"), alpha=0.8, capsize=2,
                    lw=1, label=f"paper ({stat}, {source}): {panels.shown_label(label)}")


# --- the heatmap (Fig. S2e) ------------------------------------------------------------------------
def heatmap_figure(sweep, points, spec, paper):
    """Fig. S2e: per (tanh_coef, tanh_center) cell the median accuracy minus the median of
    the delta_tau = 0 baseline runs, in points; the paper's gain written under ours."""
    base = panels.baseline_median(sweep.lines)
    ys = sorted({panels.parse_series(p.series)[spec["y"]] for p in points})
    xs = sorted({p.x for p in points})
    grid = np.full((len(ys), len(xs)), np.nan)
    fig, ax = new_figure(figsize=(6.4, 4.4))
    for p in points:
        i, j = ys.index(panels.parse_series(p.series)[spec["y"]]), xs.index(p.x)
        grid[i, j] = p.ours
        ax.text(j, i, f"{p.ours:+.1f}" + ("" if p.paper is None else f"\npaper {p.paper:+.1f}"),
                ha="center", va="center", fontsize=7)
    lim = np.nanmax(np.abs(grid)) if base is not None else None
    im = ax.imshow(grid, cmap="RdBu" if lim else "viridis", vmin=-lim if lim else None, vmax=lim, origin="lower")
    ax.set_xticks(range(len(xs)), [fmt(x) for x in xs])
    ax.set_yticks(range(len(ys)), [fmt(y) for y in ys])
    ax.set_xlabel(spec["x"])
    ax.set_ylabel(spec["y"])
    label = (f"median gain over delta_tau=0 (median {base:.1f} %) [points]" if base is not None
             else "median test accuracy [%]")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(f"ours (top) and paper ({paper.get('stat', '?')}, {paper.get('source', '?')}; below)", fontsize=8)
    return fig, []


# --- tables (Tables 1 and 2) -------------------------------------------------------------------------
def table_figure(sweep, points, spec, paper):
    """Tables 1 and 2: each configuration's mean +- sd over seeds (dots: seeds) next to the
    paper's row; paper rows without a run of ours are drawn as such."""
    extra = panels.paper_only_rows(paper, points)
    fig, ax = new_figure(figsize=(6.4, 4.4))
    labels = []
    for i, p in enumerate(points):
        ax.errorbar([i], [p.ours], yerr=[p.sd or 0.0], fmt="o", color="C0", capsize=3, label="ours (mean +- sd)" if i == 0 else None)
        ax.plot(np.full(len(p.values), i + 0.08), p.values, ".", color="C0", alpha=0.4)
        if p.paper is not None:
            ax.errorbar([i + 0.2], [p.paper], yerr=[p.paper_sd], fmt="x", color="C3", capsize=3,
                        label="paper (mean +- sd, printed)" if not any(q.paper is not None for q in points[:i]) else None)
        labels.append((p.x if p.x != "all" else "this sweep") + (f"\n[paper: {p.paper_series}]" if p.paper_series else ""))
    for p in extra:
        ax.errorbar([len(labels)], [p.paper], yerr=[p.paper_sd], fmt="x", color="grey", capsize=3)
        labels.append(f"paper only:\n{p.x}")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("test accuracy [%]")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return fig, extra


# --- Fig. 3: trained time constants ----------------------------------------------------------------
def tau_figure(sweep, points, spec, paper):
    """Fig. 3: the trained time constants of every hidden layer, all neurons of all seeds
    (box, from the results lines' `tau_per_neuron`), each seed's median (dots), the
    initial value (grey) and the paper's medians."""
    pooled = pooled_taus(sweep)
    layers = np.array([p.x for p in points])
    fig, ax = new_figure(figsize=(6.4, 4.4))
    if pooled:
        ax.boxplot([1e3 * np.asarray(v) for v in pooled], positions=layers, widths=0.4, showfliers=False,
                   medianprops=dict(color="C1"))
        ax.plot([], [], "-", color="C1", label="ours: median of all neurons of all seeds")
        ax.plot([], [], "s", mfc="none", mec="black", label="box: their 25-75 %, whiskers: 1.5 x the box")
    for p in points:
        ax.plot(np.full(len(p.values), p.x + 0.3), p.values, ".", color="C0", alpha=0.6)
    ax.plot([], [], ".", color="C0", label="ours: each seed's median")
    init = sweep.lines[0].get("median_tau_init")
    if init:  # left of the box, so that it never hides behind a whisker's cap
        ax.plot(layers - 0.3, 1e3 * np.asarray(init), ">", color="grey", ms=6,
                label=f"initial time constant ({', '.join(f'{1e3 * t:.0f}' for t in sorted(set(np.round(init, 4))))} ms)")
    if any(p.paper is not None for p in points):
        ax.plot([p.x for p in points if p.paper is not None], [p.paper for p in points if p.paper is not None], "D",
                color="C3", label="paper: median of its seeds")
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xlabel("hidden layer (1 = closest to the input)")
    ax.set_ylabel("trained membrane time constant [ms]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    acc = panels.accuracy_point(sweep.lines, paper)
    ax.text(1.04, 0.02, f"test accuracy, mean of {len(acc.values)} seeds:\nours {acc.ours:.2f} %"
            + (f"\npaper {acc.paper:.2f} %" if acc.paper is not None else ""), transform=ax.transAxes, fontsize=8)
    return fig, [acc]


def pooled_taus(sweep: Panel):
    """Per hidden layer every neuron's trained tau [s] over all seeds, from the results lines
    (`tau_per_neuron`); None when a line lacks them (lines of an older version)."""
    if not all(line.get("tau_per_neuron") for line in sweep.lines):
        return None
    return [sum(layer, []) for layer in zip(*(line["tau_per_neuron"] for line in sweep.lines))]


# --- Fig. S6: spectra of the trained recurrent matrices -----------------------------------------------
EIGEN_TITLES = {"stored": "W_rec as stored (as the published notebook plotted it)",
                "masked": "W_rec with its diagonal masked (the matrix the model uses)"}


def eigen_figure(sweep, points, spec, paper):
    """Fig. S6: per hidden layer the absolute eigenvalues of the trained W_rec, sorted, largest
    first: the mean over seeds (line) and the 25-75 % quantiles over seeds (band); top, W_rec
    as stored, as the published notebook plotted it; bottom, with the diagonal the forward
    pass masks. The paper's largest eigenvalue per layer (read off its plot) as diamonds."""
    fig, axes = new_figure(2, 1, figsize=(6.4, 7.4), sharex=True)
    paper_largest = paper.get("largest_abs_eigenvalue_per_hidden_layer") or []
    spectra = panels.spectra(sweep.lines)
    for ax, which in zip(axes, panels.SPECTRA):
        for s in (s for s in spectra if s.which == which):
            index = np.arange(1, len(s.mean) + 1)
            ax.plot(index, s.mean, color=f"C{s.layer - 1}", label=f"hidden layer {s.layer}, ours")
            ax.fill_between(index, s.q25, s.q75, color=f"C{s.layer - 1}", alpha=0.2)
            if which == "stored" and s.layer <= len(paper_largest):
                ax.plot([1], [paper_largest[s.layer - 1]], "D", color=f"C{s.layer - 1}", mec="black",
                        label=f"hidden layer {s.layer}, paper's largest")
        ax.set_title(EIGEN_TITLES[which], fontsize=9)
        ax.set_ylabel("|eigenvalue| (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    axes[-1].set_xlabel("eigenvalue index, largest first (band: 25-75 % of the seeds)")
    return fig, [panels.accuracy_point(sweep.lines, paper)]


# --- summary.csv ------------------------------------------------------------------------------------
def summary_row(p: panels.Point, paper: dict) -> dict:
    has = len(p.values) > 0
    row = dict(series=p.series, x_name=panels.shown_axis(p.x_name), x=panels.shown_x(p.x_name, p.x), stat=p.stat,
               n_seeds=len(p.values), unit=p.unit,
               paper_source=paper.get("source", ""), note=p.note)
    if has:
        row.update(ours=p.ours, ours_median=float(np.median(p.values)),
                   ours_sd="" if p.sd is None else p.sd)
    if p.paper is not None:
        row.update(paper=p.paper, paper_sd=p.paper_sd if p.paper_sd is not None else "")
        if has:
            row["difference"] = p.ours - p.paper
    return row


def write_summary(path: Path, points: list, paper: dict, changed: Optional[dict] = None, published: bool = True):
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else v)

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, SUMMARY_FIELDS)
    writer.writeheader()
    for p in points:
        row = summary_row(p, paper)
        notes = [row["note"]] if row["note"] else []
        if published and not panels.paper_recoverable(paper):
            notes.append("the paper's numbers are not recoverable")
        if changed:
            notes.append("modified, not the published definition: " + panels.changes_text(changed))
        writer.writerow({k: cell(row.get(k, "")) for k in SUMMARY_FIELDS} | {"note": "; ".join(notes)})
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


# The kinds of panel: one entry each (its points from panels.py, its drawing from here).
KINDS = {"line": Kind(panels.line_points, line_figure), "heatmap": Kind(panels.heatmap_points, heatmap_figure),
         "table": Kind(panels.table_points, table_figure), "tau": Kind(panels.tau_points, tau_figure),
         "eigen": Kind(panels.eigen_points, eigen_figure)}
