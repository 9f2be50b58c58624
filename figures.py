"""The figure and summary.csv of each sweep, next to the paper's numbers.

`plot_sweep(panel, paper_numbers)` draws the published panel's axes and series from a sweep's
results lines (runs.jsonl): our median over seeds with the interquartile range and every seed
as a dot, the paper's values (paper/paper_numbers.json) dashed in the colour of their series;
tables as mean +- sd per configuration; Figure 3 as the trained time constants per layer.
summary.csv has one row per point with our statistic, the paper's and their difference.
"""

import csv
import io
import json
import math
import textwrap
from pathlib import Path
from typing import NamedTuple, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from models import ALPHA_MAX, ALPHA_MIN
from utils_initialization import Config, tau_from_alpha
from utils_io import atomic_write


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


def fmt(value) -> str:
    """A grid value as it appears in run keys and labels: true/false for booleans, else repr."""
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def new_figure(nrows=1, ncols=1, figsize=(6.4, 4.4), **kwargs):
    """(figure, axes) without pyplot: no global state, no display backend."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


# The layout of each published panel: kind, x axis, and for tables which paper row each of
# our configurations is (conditions on the run's configuration; {} matches every run).
FIGURES = {
    "hSNN_Figure_2a": dict(kind="line", x="tau_mem"),
    "hSNN_Figure_2b": dict(kind="line", x="delta_tau"),
    "hSNN_Figure_2c": dict(kind="line", x="n_layers", panel="n_hid"),
    "hSNN_Figure_S2a": dict(kind="line", x="noise_rate"),
    "hSNN_Figure_S2b": dict(kind="line", x="tau_mem"),
    "hSNN_Figure_S2c": dict(kind="line", x="delta_tau"),
    "hSNN_Figure_S2e": dict(kind="heatmap", x="tanh_center", y="tanh_coef"),
    "hSNN_Figure_S4a": dict(kind="line", x="conv_dilation"),
    "hSNN_Figure_S4b": dict(kind="line", x="conv_kernel"),
    "hSNN_Figure_4b": dict(kind="line", x="delta_ker"),
    "hSNN_Figure_4d": dict(kind="line", x="delta_dil"),
    "SHD_hCSNN_max_performance": dict(kind="table", rows={"test set as validation, augmentation": {}}),
    "SHD_hCSNN_proper_validation": dict(kind="table", rows={
        "proper validation, augmentation": {"freq_shift": 10},
        "proper validation, no augmentation": {"freq_shift": 0}}),
    "SSC_hCSNN_max_performance": dict(kind="table", rows={"cSNN delta_ker 0": {"delta_ker": 0},
                                                          "hcSNN delta_ker 3": {"delta_ker": 3}}),
    "SSC_hSNN_hierarchy": dict(kind="table", rows={"SNN delta_tau 0": {"delta_tau": 0},
                                                   "hSNN tanh delta_tau 0.15": {"delta_tau": 0.15}}),
    "hSNN_Figure_5b": dict(kind="line", x="tau_mem"),
    "hSNN_Figure_5c": dict(kind="line", x="delta_tau"),
    "hSNN_Figure_6": dict(kind="line", x="delta_tau", x_scale=784, x_label="delta_tau [time steps of 1/784 s]"),
    "hSNN_Figure_3b": dict(kind="tau", paper="hSNN_Figure_3_mts_xor"),
    "hSNN_Figure_3c": dict(kind="tau", paper="hSNN_Figure_3_shd"),
    "hSNN_Figure_S6_mts_xor": dict(kind="eigen"),
    "hSNN_Figure_S6_shd": dict(kind="eigen"),
}
# Fig. S6: which recurrent matrix a spectrum is of (results lines' w_rec_abs_eigenvalues)
SPECTRA = {"stored": "W_rec as stored (as the published notebook plotted it)",
           "masked": "W_rec with its diagonal masked to zero (the matrix the forward pass uses)"}
UNITS = {"tau_mem": "s", "delta_tau": "s", "noise_rate": "spike probability per step",
         "conv_dilation": "steps", "conv_kernel": "steps", "delta_ker": "steps", "delta_dil": "steps"}
SUMMARY_FIELDS = ["series", "x_name", "x", "stat", "ours", "ours_sd", "ours_median", "n_seeds",
                  "paper", "paper_sd", "difference", "unit", "paper_source", "note"]


def figure_spec(name: str, definition: dict) -> dict:
    spec = dict(FIGURES.get(name) or definition.get("figure") or {})
    axes = [k for k in definition["grid"] if k != "seed"]
    spec.setdefault("kind", "line" if axes else "table")
    spec.setdefault("x", axes[0] if axes else None)
    spec.setdefault("paper", definition.get("paper", name))
    spec.setdefault("rows", {})
    return spec


def plot_sweep(sweep: "Panel", paper_numbers: dict) -> list:
    """figure.png, figure.pdf and summary.csv in the sweep's folder, from its results lines."""
    lines = sweep.lines
    spec = figure_spec(sweep.name, sweep.definition)
    paper = paper_numbers.get(spec["paper"], {})
    draw = {"line": line_figure, "heatmap": heatmap_figure, "table": table_figure, "tau": tau_figure,
            "eigen": eigen_figure}[spec["kind"]]
    fig, rows = draw(sweep, lines, spec, paper)
    annotate(fig, sweep, lines, paper)
    for suffix in ("png", "pdf"):
        fig.savefig(sweep.folder / f"figure.{suffix}", dpi=150, bbox_inches="tight")
    write_summary(sweep.folder / "summary.csv", rows, paper, sweep.changed)
    return rows


def annotate(fig, sweep: "Panel", lines: list, paper: dict):
    """Title, what the statistics are, and the warnings a reader must not miss."""
    n_epochs = "/".join(str(n) for n in sorted({line["n_epochs"] for line in lines}))
    what = textwrap.fill(f"{sweep.name}: {sweep.definition['what']}", 100)
    title = f"{what}\n{len(lines)} of {sweep.n_runs} runs finished"
    fig.suptitle(title, fontsize=9, y=1.02)
    notes = []
    if sweep.reduced:
        notes.append(f"REDUCED (--quick): at most {sweep.reduced['seeds']} seeds, {sweep.reduced['points']} points per axis, "
                     f"{n_epochs} epochs - not comparable with the paper")
    if sweep.changed:
        notes.append("MODIFIED, not the published definition: " + changes_text(sweep.changed))
    if not paper_recoverable(paper):
        notes.append("The paper's numbers for this panel are not recoverable "
                     f"({paper.get('source', 'no entry in paper_numbers.json')}); ours only")
    if notes:
        fig.text(0.5, -0.02, "\n".join(notes), ha="center", va="top", fontsize=9, color="firebrick")


def paper_recoverable(paper: dict) -> bool:
    return bool(paper.get("series") or paper.get("rows") or paper.get("tau_median_ms")
                or paper.get("largest_abs_eigenvalue_per_hidden_layer"))


def accuracy_pct(lines):
    return np.array([100 * line["test_acc"] for line in lines])


def stat_of(values, stat: str) -> float:
    return float(np.mean(values) if stat.startswith("mean") else np.median(values))


def run_config(line: dict) -> dict:
    """The configuration a results line was trained with."""
    return line["config"]


def matches(conditions: dict, config: dict) -> bool:
    return all(math.isclose(float(config[k]), float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool)
               else config[k] == v for k, v in conditions.items())


def parse_series(label: str) -> dict:
    """'n_hid=32,delta_tau=0.15' -> {'n_hid': 32.0, 'delta_tau': 0.15}."""
    pairs = [part.split("=", 1) for part in label.split(",") if "=" in part]
    return {k.strip(): json.loads(v) for k, v in pairs}


def series_label(series: dict) -> str:
    return ",".join(f"{k}={fmt(v)}" for k, v in series.items()) or "all"


def line_figure(sweep, lines, spec, paper):
    """Accuracy against one grid axis, one series per value of the other axes (one panel per
    value of spec['panel']): median over seeds with the interquartile range and every seed
    as a dot; the paper's values dashed, in the colour of the series they belong to."""
    panels = lines_by_panel(sweep, lines, spec)
    names = sorted({label for series in panels.values() for label in series})
    colours = matplotlib.colormaps["tab10"]
    fig, axs = new_figure(1, len(panels), figsize=(2.2 + 4.2 * len(panels), 4.4), sharey=True, squeeze=False)
    rows = []
    for ax, panel in zip(axs[0], sorted(panels, key=lambda v: (v is None, v if v is not None else 0))):
        series = panels[panel]
        matched = {}
        for label, by_x in sorted(series.items()):
            rows += draw_series(ax, label, by_x, colours(names.index(label)), spec, paper, matched)
        draw_paper_lines(ax, paper, matched, spec.get("x_scale", 1), only_matched=panel is not None)
        style_line_axes(ax, spec, panel, single=len(panels) == 1)
    axs[0][0].set_ylabel("test accuracy [%]")
    if not sweep.reduced:  # a reduced grid lacks most of the paper's points by design
        rows += paper_only_rows(paper, rows, spec["x"])
    return fig, rows


def lines_by_panel(sweep, lines, spec) -> dict:
    """{panel value: {series label: {x: [lines]}}}; series named in grid-axis order."""
    x_name, panel = spec["x"], spec.get("panel")
    axes = [k for k in sweep.definition["grid"] if k not in ("seed", x_name, panel)]
    panels = {}
    for line in lines:
        if line["baseline"]:
            continue
        label = series_label({k: line["point"][k] for k in axes if k in line["point"]})
        by_x = panels.setdefault(line["point"].get(panel) if panel else None, {}).setdefault(label, {})
        by_x.setdefault(line["point"].get(x_name), []).append(line)
    return panels


def draw_series(ax, label, by_x, colour, spec, paper, matched) -> list:
    xs = sorted(by_x)
    acc = [accuracy_pct(by_x[x]) for x in xs]
    xv = np.array(xs, dtype=float) * spec.get("x_scale", 1)
    q25, med, q75 = (np.array([np.percentile(a, q) for a in acc]) for q in (25, 50, 75))
    ax.plot(xv, med, "o-", color=colour, label=f"ours (median, IQR): {label}")
    ax.fill_between(xv, q25, q75, color=colour, alpha=0.2, lw=0)
    for x, a in zip(xv, acc):
        ax.plot(np.full(len(a), x), a, ".", color=colour, alpha=0.35, ms=4)
    paper_label = match_paper_series(paper, by_x[xs[0]][0])
    if paper_label:
        matched[paper_label] = colour
    stat = paper.get("stat", "median")
    return [summary_row(label, spec["x"], x, by_x[x], stat, paper, paper_label) for x in xs]


def style_line_axes(ax, spec, panel, single):
    x_name = spec["x"]
    ax.set_xlabel(spec.get("x_label") or x_name + (f" [{UNITS[x_name]}]" if x_name in UNITS else ""))
    if panel is not None:
        ax.set_title(f"{spec['panel']}={fmt(panel)}", fontsize=9)
    xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
    if xs and all(float(x).is_integer() for x in xs) and len(xs) <= 12:
        ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    if single:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=7, loc="lower right")


def match_paper_series(paper: dict, line: dict):
    """The paper series a run belongs to: the one whose conditions its configuration meets;
    failing that, the only paper series when there is only one (named in the summary)."""
    series = paper.get("series") or {}
    config = run_config(line)
    hits = [label for label in series if matches(parse_series(label), config)]
    if hits:
        return hits[0]
    return next(iter(series)) if len(series) == 1 else None


def draw_paper_lines(ax, paper, matched: dict, scale, only_matched=False):
    stat, source = paper.get("stat", "?"), paper.get("source", "?")
    for label, values in (paper.get("series") or {}).items():
        if only_matched and label not in matched:
            continue
        x = np.array(paper["x_values"], dtype=float) * scale
        sd = (paper.get("std") or {}).get(label)
        ax.errorbar(x, values, yerr=sd, fmt="x--", color=matched.get(label, "black"), alpha=0.8, capsize=2,
                    lw=1, label=f"paper ({stat}, {source}): {label}")


def summary_row(label, x_name, x, lines, stat, paper, paper_label) -> dict:
    acc = accuracy_pct(lines)
    row = dict(series=label, x_name=x_name, x=x, stat=stat, ours=stat_of(acc, stat),
               ours_sd=float(np.std(acc, ddof=1)) if len(acc) > 1 else "", ours_median=float(np.median(acc)),
               n_seeds=len(acc), unit="% test accuracy", paper_source=paper.get("source", ""))
    value, sd = paper_value(paper, paper_label, x)
    if value is not None:
        row.update(paper=value, paper_sd=sd if sd is not None else "", difference=row["ours"] - value,
                   paper_series=paper_label)
        if not matches(parse_series(paper_label), run_config(lines[0])):
            row["note"] = f"compared with the paper's only series, {paper_label}, whose settings differ"
    return row


def paper_value(paper, label, x):
    if not label or x is None:
        return None, None
    xs = paper.get("x_values", [])
    hit = [i for i, v in enumerate(xs) if math.isclose(float(v), float(x), abs_tol=1e-12)]
    if not hit:
        return None, None
    sd = (paper.get("std") or {}).get(label)
    return paper["series"][label][hit[0]], (sd[hit[0]] if sd else None)


def paper_only_rows(paper, rows, x_name) -> list:
    """Rows for the paper's points that this sweep has no run for (e.g. Fig. S4a's d = 7)."""
    have = [(r["paper_series"], float(r["x"])) for r in rows if "paper_series" in r]
    extra = []
    for label, values in (paper.get("series") or {}).items():
        for x, v in zip(paper.get("x_values", []), values):
            if not any(s == label and math.isclose(hx, float(x)) for s, hx in have):
                extra.append(dict(series=f"paper: {label}", x_name=x_name, x=x, stat=paper.get("stat"),
                                  n_seeds=0, paper=v, unit="% test accuracy", paper_source=paper.get("source"),
                                  note="no run of this sweep at this point"))
    return extra


def heatmap_figure(sweep, lines, spec, paper):
    """Fig. S2e: per (tanh_coef, tanh_center) cell the median accuracy minus the median of
    the delta_tau = 0 baseline runs, in points; the paper's gain written under ours."""
    xn, yn = spec["x"], spec["y"]
    base = [line for line in lines if line["baseline"]]
    base_med = float(np.median(accuracy_pct(base))) if base else None
    cells = {}
    for line in lines:
        if not line["baseline"]:
            cells.setdefault((line["point"][yn], line["point"][xn]), []).append(line)
    ys = sorted({k[0] for k in cells})
    xs = sorted({k[1] for k in cells})
    grid = np.full((len(ys), len(xs)), np.nan)
    rows = []
    stat = "median gain (points)" if base_med is not None else "median"
    for (y, x), cell in cells.items():
        value = float(np.median(accuracy_pct(cell))) - (base_med or 0)
        grid[ys.index(y), xs.index(x)] = value
        pv = cell_paper_value(paper, yn, y, x)
        rows.append(dict(series=f"{yn}={fmt(y)}", x_name=xn, x=x, stat=stat, ours=value, ours_median=value,
                         n_seeds=len(cell), paper="" if pv is None else pv,
                         difference="" if pv is None or base_med is None else value - pv,
                         unit="points over the delta_tau=0 median" if base_med is not None else "% test accuracy",
                         paper_source=paper.get("source", ""),
                         note="" if base_med is not None else "no baseline run finished yet"))
    fig, ax = new_figure(figsize=(6.4, 4.4))
    lim = np.nanmax(np.abs(grid)) if base_med is not None else None
    im = ax.imshow(grid, cmap="RdBu" if lim else "viridis", vmin=-lim if lim else None, vmax=lim, origin="lower")
    for (y, x), _ in cells.items():
        i, j = ys.index(y), xs.index(x)
        pv = cell_paper_value(paper, yn, y, x)
        text = f"{grid[i, j]:+.1f}" + ("" if pv is None else f"\npaper {pv:+.1f}")
        ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(xs)), [fmt(x) for x in xs])
    ax.set_yticks(range(len(ys)), [fmt(y) for y in ys])
    ax.set_xlabel(xn)
    ax.set_ylabel(yn)
    label = (f"median gain over delta_tau=0 (median {base_med:.1f} %, {len(base)} seeds) [points]"
             if base_med is not None else "median test accuracy [%]")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(f"ours (top) and paper ({paper.get('stat', '?')}, {paper.get('source', '?')}; below)", fontsize=8)
    return fig, rows


def cell_paper_value(paper, y_name, y, x):
    label = f"{y_name}={fmt(y)}"
    return paper_value(paper, label, x)[0] if label in (paper.get("series") or {}) else None


def table_figure(sweep, lines, spec, paper):
    """Tables 1 and 2: each configuration's mean +- sd over seeds (dots: seeds) next to the
    paper's row; paper rows without a run of ours are drawn as such."""
    by_point = {}
    for line in lines:
        by_point.setdefault(series_label(line["point"]), []).append(line)
    fig, ax = new_figure(figsize=(6.4, 4.4))
    rows, labels, used = [], [], set()
    for i, (label, group) in enumerate(sorted(by_point.items())):
        acc = accuracy_pct(group)
        sd = float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0
        ax.errorbar([i], [acc.mean()], yerr=[sd], fmt="o", color="C0", capsize=3,
                    label="ours (mean +- sd)" if i == 0 else None)
        ax.plot(np.full(len(acc), i + 0.08), acc, ".", color="C0", alpha=0.4)
        row_name = next((name for name, cond in spec["rows"].items() if matches(cond, run_config(group[0]))), None)
        row = dict(series=label, x_name="configuration", x=label, stat="mean", ours=float(acc.mean()),
                   ours_sd=sd, ours_median=float(np.median(acc)), n_seeds=len(acc), unit="% test accuracy",
                   paper_source=paper.get("source", ""))
        if row_name in (paper.get("rows") or {}):
            pv, psd = paper["rows"][row_name]
            used.add(row_name)
            ax.errorbar([i + 0.2], [pv], yerr=[psd], fmt="x", color="C3", capsize=3,
                        label="paper (mean +- sd, printed)" if len(used) == 1 else None)
            row.update(paper=pv, paper_sd=psd, difference=row["ours"] - pv, note=f"paper row: {row_name}")
        rows.append(row)
        labels.append((label if label != "all" else "this sweep") + (f"\n[paper: {row_name}]" if row_name else ""))
    for name, (pv, psd) in (paper.get("rows") or {}).items():
        if name not in used:
            i = len(labels)
            ax.errorbar([i], [pv], yerr=[psd], fmt="x", color="grey", capsize=3)
            labels.append(f"paper only:\n{name}")
            rows.append(dict(series=f"paper: {name}", x_name="configuration", x=name, stat="mean", n_seeds=0,
                             paper=pv, paper_sd=psd, unit="% test accuracy", paper_source=paper.get("source"),
                             note="a setting this sweep does not run"))
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("test accuracy [%]")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return fig, rows


def tau_figure(sweep, lines, spec, paper):
    """Fig. 3: the trained time constants of every hidden layer, all neurons of all seeds
    (box), each seed's median (dots), the initial value (grey) and the paper's medians."""
    per_layer, run_medians = tau_samples(sweep, lines)
    n = len(run_medians[0])
    fig, ax = new_figure(figsize=(6.4, 4.4))
    layers = np.arange(1, n + 1)
    if per_layer:
        ax.boxplot([1e3 * np.asarray(v) for v in per_layer], positions=layers, widths=0.5, showfliers=False)
    for medians in run_medians:
        ax.plot(layers + 0.15, 1e3 * np.asarray(medians), ".", color="C0", alpha=0.6)
    ax.plot([], [], ".", color="C0", label="ours: median per seed (box: all neurons)")
    init = lines[0].get("median_tau_init")
    if init:
        ax.plot(layers, 1e3 * np.asarray(init), "_", color="grey", ms=20, label="initial tau")
    paper_ms = paper.get("tau_median_ms")
    if paper_ms:
        ax.plot(np.arange(1, len(paper_ms) + 1), paper_ms, "D", color="C3", label=f"paper median ({paper.get('source')})")
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xlabel("hidden layer (1 = closest to the input)")
    ax.set_ylabel("trained membrane time constant [ms]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    rows = [tau_row(l, per_layer, run_medians, paper) for l in range(n)]
    rows += accuracy_rows(lines, paper)
    acc = rows[-1]
    ax.text(1.04, 0.02, f"test accuracy, mean of {acc['n_seeds']} seeds:\nours {acc['ours']:.2f} %"
            + (f"\npaper {acc['paper']:.2f} %" if "paper" in acc else ""), transform=ax.transAxes, fontsize=8)
    return fig, rows


class Spectrum(NamedTuple):
    """One hidden layer's spectrum over the runs of a sweep (Fig. S6)."""
    which: str            # "stored" or "masked" (SPECTRA)
    layer: int            # 1 = closest to the input
    mean: np.ndarray      # mean over runs of the sorted absolute eigenvalues
    q25: np.ndarray       # 25 % and 75 % quantiles over runs, per index
    q75: np.ndarray
    largest: np.ndarray   # each run's largest absolute eigenvalue


def spectra(lines: list) -> list:
    """Fig. S6's numbers, for the figure and the report alike: per kind of matrix and hidden
    layer, the runs' sorted absolute eigenvalues of the trained W_rec summarised over runs."""
    out = []
    for which in SPECTRA:
        runs = np.array([line["w_rec_abs_eigenvalues"][which] for line in lines])  # [runs, layers, n]
        for l in range(runs.shape[1]):
            q25, q75 = np.percentile(runs[:, l], [25, 75], axis=0)
            out.append(Spectrum(which, l + 1, runs[:, l].mean(0), q25, q75, runs[:, l, 0]))
    return out


def eigen_figure(sweep, lines, spec, paper):
    """Fig. S6: per hidden layer the absolute eigenvalues of the trained W_rec, sorted, largest
    first: the mean over seeds (line) and the 25-75 % quantiles over seeds (band); top, W_rec
    as stored, as the published notebook plotted it; bottom, with the diagonal the forward
    pass masks. The paper's largest eigenvalue per layer (read off its plot) as diamonds."""
    fig, axes = new_figure(2, 1, figsize=(6.4, 7.4), sharex=True)
    paper_largest = paper.get("largest_abs_eigenvalue_per_hidden_layer") or []
    rows = []
    for ax, which in zip(axes, SPECTRA):
        for s in (s for s in spectra(lines) if s.which == which):
            index = np.arange(1, len(s.mean) + 1)
            ax.plot(index, s.mean, color=f"C{s.layer - 1}", label=f"hidden layer {s.layer}, ours")
            ax.fill_between(index, s.q25, s.q75, color=f"C{s.layer - 1}", alpha=0.2)
            row = dict(series=f"largest |eigenvalue|, {which}", x_name="hidden layer", x=s.layer, stat="mean",
                       ours=float(s.largest.mean()), ours_median=float(np.median(s.largest)),
                       ours_sd=float(np.std(s.largest, ddof=1)) if len(s.largest) > 1 else "",
                       n_seeds=len(s.largest), unit="", paper_source=paper.get("source", ""))
            if which == "stored" and s.layer <= len(paper_largest):
                p = paper_largest[s.layer - 1]
                ax.plot([1], [p], "D", color=f"C{s.layer - 1}", mec="black",
                        label=f"hidden layer {s.layer}, paper's largest")
                row.update(paper=p, difference=row["ours"] - p)
            rows.append(row)
        ax.set_title(SPECTRA[which], fontsize=9)
        ax.set_ylabel("|eigenvalue| (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    axes[-1].set_xlabel("eigenvalue index, largest first (band: 25-75 % of the seeds)")
    return fig, rows + accuracy_rows(lines, paper)


def tau_samples(sweep: "Panel", lines: list):
    """Per hidden layer every neuron's trained tau [s] over all seeds (from params.npz), and
    each run's per-layer medians (from its line)."""
    run_medians = [line["median_tau_per_layer"] for line in lines]
    pooled = [[] for _ in run_medians[0]]
    for line in lines:
        path = sweep.folder / "runs" / line["key"] / "params.npz"
        if not path.exists():
            return None, run_medians
        params, dt = np.load(path), Config(**line["config"]).dt
        for l in range(len(pooled)):
            alpha = np.clip(params[f"L{l}_alpha"], ALPHA_MIN, ALPHA_MAX)
            pooled[l].extend(np.atleast_1d(tau_from_alpha(alpha, dt)).tolist())
    return pooled, run_medians


def tau_row(l, per_layer, run_medians, paper):
    values = per_layer[l] if per_layer else [m[l] for m in run_medians]
    ours = 1e3 * float(np.median(values))
    paper_ms = paper.get("tau_median_ms") or []
    row = dict(series="trained tau", x_name="hidden layer", x=l + 1, stat="median", ours=ours,
               ours_median=ours, n_seeds=len(run_medians), unit="ms", paper_source=paper.get("source", ""),
               note="over all neurons of all seeds" if per_layer else "median of the per-seed medians")
    if l < len(paper_ms):
        row.update(paper=paper_ms[l], difference=ours - paper_ms[l])
    return row


def accuracy_rows(lines, paper):
    acc = accuracy_pct(lines)
    row = dict(series="test accuracy", x_name="", x="", stat="mean", ours=float(acc.mean()),
               ours_sd=float(np.std(acc, ddof=1)) if len(acc) > 1 else "", ours_median=float(np.median(acc)),
               n_seeds=len(acc), unit="% test accuracy", paper_source=paper.get("source", ""))
    if paper.get("test_acc"):
        pv = float(np.mean(paper["test_acc"]))
        row.update(paper=pv, paper_sd=float(np.std(paper["test_acc"], ddof=1)), difference=row["ours"] - pv)
    return [row]


def changes_text(changed: dict) -> str:
    """{'n_epochs': [1], 'n_hid': [4]} -> 'n_epochs=1, n_hid=4'."""
    return ", ".join(f"{k}={'/'.join(fmt(v) for v in vs)}" for k, vs in changed.items())


def write_summary(path: Path, rows: list, paper: dict, changed: Optional[dict] = None):
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else v)

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, SUMMARY_FIELDS)
    writer.writeheader()
    for row in rows:
        notes = [row.get("note")] if row.get("note") else []
        if not paper_recoverable(paper):
            notes.append("the paper's numbers are not recoverable")
        if changed:
            notes.append("modified, not the published definition: " + changes_text(changed))
        writer.writerow({k: cell(row.get(k, "")) for k in SUMMARY_FIELDS} | {"note": "; ".join(notes)})
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
