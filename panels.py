"""Each panel's numbers, computed once from a sweep's results lines: pure functions of the
lines, the panel's layout and the published numbers (no files read, nothing drawn).
figures.py draws them and writes summary.csv from them; report.py tabulates them.

A panel is a list of `Point`s: one per series and x value (Fig. 2, S2, 4, 5, 6), per heatmap
cell (Fig. S2e), per configuration (Tables 1, 2), per hidden layer (Fig. 3's trained time
constants, Fig. S6's largest recurrent eigenvalues), each holding our value of every run.
"""

import json
import math
from typing import NamedTuple, Optional

import numpy as np

# The layout of each published panel: kind, x axis, and for tables which paper row each of
# our configurations is (conditions on the run's configuration; {} matches every run).
LAYOUTS = {
    "hSNN_Figure_2a": dict(kind="line", x="tau_mem", title="Fig. 2a: MTS-XOR accuracy against the membrane time "
                           "constant, without hierarchy"),
    "hSNN_Figure_2b": dict(kind="line", x="delta_tau", title="Fig. 2b: MTS-XOR accuracy against the time-constant "
                           "hierarchy (tanh, deepest minus shallowest)"),
    "hSNN_Figure_2c": dict(kind="line", x="n_layers", panel="n_hid", title="Fig. 2c: SHD accuracy with and without "
                           "hierarchy, by depth and width"),
    "hSNN_Figure_S2a": dict(kind="line", x="noise_rate", title="Fig. S2a: MTS-XOR accuracy against input noise, "
                            "hierarchy and anti-hierarchy"),
    "hSNN_Figure_S2b": dict(kind="line", x="tau_mem", title="Fig. S2b: SHD accuracy against the membrane time "
                            "constant, without hierarchy"),
    "hSNN_Figure_S2c": dict(kind="line", x="delta_tau", title="Fig. S2c: SHD accuracy against the time-constant "
                            "hierarchy"),
    "hSNN_Figure_S2e": dict(kind="heatmap", x="tanh_center", y="tanh_coef", title="Fig. S2e: SHD, the shape of the "
                            "tanh hierarchy: gain over no hierarchy"),
    "hSNN_Figure_S4a": dict(kind="line", x="conv_dilation", title="Fig. S4a: SHD convolutional network, dilation"),
    "hSNN_Figure_S4b": dict(kind="line", x="conv_kernel", title="Fig. S4b: SHD convolutional network, kernel size"),
    "hSNN_Figure_4b": dict(kind="line", x="delta_ker", title="Fig. 4b: SHD convolutional network, hierarchy of "
                           "kernel sizes"),
    "hSNN_Figure_4d": dict(kind="line", x="delta_dil", title="Fig. 4d: SHD convolutional network, hierarchy of "
                           "dilations"),
    "SHD_hCSNN_max_performance": dict(kind="table", rows={"test set as validation, augmentation": {}},
                                      title="Table 1: SHD, the hierarchical convolutional network"),
    "SHD_hCSNN_proper_validation": dict(kind="table", rows={
        "proper validation, augmentation": {"freq_shift": 10},
        "proper validation, no augmentation": {"freq_shift": 0}},
        title="Table 1: SHD, the hierarchical convolutional network with proper validation"),
    "SSC_hCSNN_max_performance": dict(kind="table", rows={"cSNN delta_ker 0": {"delta_ker": 0},
                                                          "hcSNN delta_ker 3": {"delta_ker": 3}},
                                      title="Table 2: SSC convolutional networks, without and with kernel hierarchy"),
    "SSC_hSNN_hierarchy": dict(kind="table", rows={"SNN delta_tau 0": {"delta_tau": 0},
                                                   "hSNN tanh delta_tau 0.15": {"delta_tau": 0.15}},
                               title="Table 2: SSC feed-forward networks, without and with hierarchy"),
    "hSNN_Figure_5b": dict(kind="line", x="tau_mem", title="Fig. 5b: latency-coded MNIST, accuracy against the "
                           "membrane time constant"),
    "hSNN_Figure_5c": dict(kind="line", x="delta_tau", title="Fig. 5c: latency-coded MNIST, accuracy against the "
                           "hierarchy"),
    "hSNN_Figure_6": dict(kind="line", x="delta_tau", x_scale=784, x_label="delta_tau [time steps of 1/784 s]",
                          title="Fig. 6: sequential MNIST, accuracy against the hierarchy"),
    "hSNN_Figure_3b": dict(kind="tau", paper="hSNN_Figure_3_mts_xor", title="Fig. 3b: time constants trained on "
                           "MTS-XOR, per hidden layer"),
    "hSNN_Figure_3c": dict(kind="tau", paper="hSNN_Figure_3_shd", title="Fig. 3c: time constants trained on SHD, "
                           "per hidden layer"),
    "hSNN_Figure_S6_mts_xor": dict(kind="eigen", title="Fig. S6: eigenvalues of the trained recurrent weights, "
                                   "MTS-XOR"),
    "hSNN_Figure_S6_shd": dict(kind="eigen", title="Fig. S6: eigenvalues of the trained recurrent weights, SHD"),
}
ACCURACY = "% test accuracy"
# Fig. S6: which recurrent matrix a spectrum is of (results lines' w_rec_abs_eigenvalues)
SPECTRA = {"stored": "W_rec as stored (as the published notebook plotted it)",
           "masked": "W_rec with its diagonal masked to zero (the matrix the forward pass uses)"}


class Point(NamedTuple):
    """One point of a panel: our value of every run there, and what it is compared with."""
    series: str                      # the series (or heatmap row, table row, quantity)
    x_name: str
    x: object                        # "" for a table row
    values: np.ndarray               # ours, one per run (accuracy, gain, time constant, eigenvalue)
    stat: str                        # the paper's statistic over seeds: "median" or "mean"
    unit: str = ACCURACY
    panel: object = None             # Fig. 2c's width, else None
    paper: Optional[float] = None
    paper_sd: Optional[float] = None
    paper_series: Optional[str] = None
    here: Optional[np.ndarray] = None  # the published code run on this machine kind, per seed
    note: str = ""

    @property
    def ours(self) -> float:
        return stat_of(self.values, self.stat)

    @property
    def sd(self) -> Optional[float]:
        """The runs' sample standard deviation; None with fewer than two runs."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None

    @property
    def here_value(self) -> Optional[float]:
        return None if self.here is None else stat_of(self.here, self.stat)


def layout(name: str, definition: dict) -> dict:
    """The panel's layout: LAYOUTS (the published panels), else the definition's 'figure'
    (an added experiment's), else a line against the first grid axis (a table for a grid of
    seeds only). Keys: kind (figures.KINDS), x (the grid axis along the panel), categorical
    (x values are names, in the grid's order, not numbers), measure (what is plotted: a name
    of the runs' final numbers, `training.final_scalars`; default: test accuracy in %),
    panel (one panel per value of this axis), paper (its entry in paper_numbers.json), title
    (what the panel shows, in the paper's words)."""
    spec = dict(LAYOUTS.get(name) or definition.get("figure") or {})
    axes = [k for k in definition["grid"] if k != "seed"]
    spec.setdefault("kind", "line" if axes else "table")
    spec.setdefault("x", axes[0] if axes else None)
    spec.setdefault("paper", definition.get("paper", name))
    spec.setdefault("rows", {})
    spec.setdefault("categorical", False)
    spec.setdefault("measure", None)
    spec.setdefault("title", definition.get("title", name))
    return spec


class PanelError(ValueError):
    """A panel asks for what its results lines do not hold (a measure no run recorded)."""


def values(lines, measure: Optional[str] = None) -> np.ndarray:
    """Each run's value of `measure` (a name of its final numbers), or its test accuracy in %."""
    if measure is None:
        return accuracy_pct(lines)
    missing = [line["key"] for line in lines if measure not in (line.get("measures") or {})]
    if missing:
        raise PanelError(f"the runs {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} record no "
                         f"measure {measure!r} (their final numbers: training.final_scalars)")
    return np.array([float(line["measures"][measure]) for line in lines])


def unit_of(spec: dict) -> str:
    return ACCURACY if spec.get("measure") is None else spec["measure"]


def x_order(definition: dict, spec: dict, xs) -> list:
    """The x values in the panel's order: the grid's order for a categorical axis, else ascending."""
    if spec.get("categorical"):
        grid = list(definition["grid"].get(spec["x"], []))
        return sorted(xs, key=lambda x: grid.index(x) if x in grid else len(grid))
    return sorted(xs)


# --- small pure helpers --------------------------------------------------------------------
def fmt(value) -> str:
    """A grid value as it appears in run keys and labels: true/false for booleans, else repr."""
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def series_label(series: dict) -> str:
    """'2 hidden layers,delta_tau=0.15': a series' settings as a reader sees them. The paper
    counts hidden layers, the flag n_layers counts the output layer too: n_layers=3 is '2
    hidden layers'."""
    return ",".join(f"{v - 1} hidden layers" if k == "n_layers" and isinstance(v, int) else f"{k}={fmt(v)}"
                    for k, v in series.items()) or "all"


def shown_label(label: str) -> str:
    """A label of the published numbers ('n_layers=3', 'n_hid=32,delta_tau=0') as series_label
    writes ours."""
    return series_label(parse_series(label)) if label and "=" in label else label


def shown_x(x_name: str, x):
    """An x value as a reader sees it: n_layers counts the output layer, the paper's axis
    the hidden layers."""
    return x - 1 if x_name == "n_layers" and isinstance(x, (int, float)) and not isinstance(x, bool) else x


def shown_axis(x_name: str) -> str:
    return "hidden layers" if x_name == "n_layers" else x_name


def parse_series(label: str) -> dict:
    """'n_hid=32,delta_tau=0.15' -> {'n_hid': 32.0, 'delta_tau': 0.15}."""
    pairs = [part.split("=", 1) for part in label.split(",") if "=" in part]
    return {k.strip(): json.loads(v) for k, v in pairs}


def matches(conditions: dict, config: dict) -> bool:
    return all(math.isclose(float(config[k]), float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool)
               else config[k] == v for k, v in conditions.items())


def accuracy_pct(lines) -> np.ndarray:
    return np.array([100 * line["test_acc"] for line in lines])


def stat_of(values, stat: str) -> float:
    return float(np.mean(values) if stat.startswith("mean") else np.median(values))


def paper_recoverable(paper: dict) -> bool:
    return bool(paper.get("series") or paper.get("rows") or paper.get("tau_median_ms")
                or paper.get("largest_abs_eigenvalue_per_hidden_layer"))


def changes_text(changed: dict) -> str:
    """{'n_epochs': [1], 'n_hid': [4]} -> 'n_epochs=1, n_hid=4'."""
    return ", ".join(f"{k}={'/'.join(fmt(v) for v in vs)}" for k, vs in changed.items())


# --- line panels: accuracy against one grid axis ---------------------------------------------
def lines_by_panel(definition: dict, lines: list, spec: dict) -> dict:
    """{panel value: {series label: {x: [lines]}}}; series named in grid-axis order."""
    x_name, panel = spec["x"], spec.get("panel")
    axes = [k for k in definition["grid"] if k not in ("seed", x_name, panel)]
    panels = {}
    for line in lines:
        if line["baseline"]:
            continue
        label = series_label({k: line["point"][k] for k in axes if k in line["point"]})
        by_x = panels.setdefault(line["point"].get(panel) if panel else None, {}).setdefault(label, {})
        by_x.setdefault(line["point"].get(x_name), []).append(line)
    return panels


def match_paper_series(paper: dict, config: dict):
    """The paper series a run belongs to: the one whose conditions its configuration meets;
    failing that, the only paper series when there is only one (named in a note)."""
    series = paper.get("series") or {}
    hits = [label for label in series if matches(parse_series(label), config)]
    if hits:
        return hits[0]
    return next(iter(series)) if len(series) == 1 else None


def paper_value(paper: dict, label, x):
    """(value, sd) of the paper's series `label` at x, else (None, None)."""
    if not label or x is None or isinstance(x, str):
        return None, None
    xs = paper.get("x_values", [])
    hit = [i for i, v in enumerate(xs) if math.isclose(float(v), float(x), abs_tol=1e-12)]
    if not hit:
        return None, None
    sd = (paper.get("std") or {}).get(label)
    return paper["series"][label][hit[0]], (sd[hit[0]] if sd else None)


def line_points(definition, lines, spec, paper, here) -> list:
    out = []
    stat = spec.get("stat") or paper.get("stat", "median")
    panels = lines_by_panel(definition, lines, spec)
    for panel in sorted(panels, key=lambda v: (v is None, v if v is not None else 0)):
        for label, by_x in sorted(panels[panel].items()):
            config = by_x[min(by_x)][0]["config"]
            paper_label = match_paper_series(paper, config)
            note = (f"compared with the paper's only series, {shown_label(paper_label)}, whose settings differ"
                    if paper_label and not matches(parse_series(paper_label), config) else "")
            for x in x_order(definition, spec, by_x):
                value, sd = paper_value(paper, paper_label, x)
                published = next((np.asarray(p["test_acc"], float) for p in here.get("points", [])
                                  if matches(p["series"], by_x[x][0]["config"]) and p["x"] == x), None)
                out.append(Point(label, spec["x"], x, values(by_x[x], spec.get("measure")), stat, unit_of(spec),
                                 panel=panel, paper=value, paper_sd=sd,
                                 paper_series=paper_label if value is not None else None,
                                 here=published, note=note if value is not None else ""))
    return out


def paper_only_points(paper: dict, pts: list, x_name: str) -> list:
    """The paper's points that a sweep has no run for (e.g. Fig. S4a's d = 7), valueless."""
    have = [(p.paper_series, float(p.x)) for p in pts if p.paper_series]
    extra = []
    for label, values in (paper.get("series") or {}).items():
        for x, v in zip(paper.get("x_values", []), values):
            if not any(s == label and math.isclose(hx, float(x)) for s, hx in have):
                extra.append(Point(f"paper: {shown_label(label)}", x_name, x, np.array([]), paper.get("stat", "median"),
                                   paper=v, note="no run of this sweep at this point"))
    return extra


# --- the heatmap (Fig. S2e): gains over the delta_tau = 0 baseline ------------------------------
def baseline_median(lines) -> Optional[float]:
    base = [line for line in lines if line["baseline"]]
    return float(np.median(accuracy_pct(base))) if base else None


def cell_paper_value(paper, y_name, y, x):
    label = f"{y_name}={fmt(y)}"
    return paper_value(paper, label, x)[0] if label in (paper.get("series") or {}) else None


def heatmap_points(definition, lines, spec, paper, here) -> list:
    """Per (y, x) cell each run's accuracy minus the baseline runs' median (points); without
    a finished baseline run, the accuracies themselves."""
    base = baseline_median(lines)
    cells = {}
    for line in lines:
        if not line["baseline"]:
            cells.setdefault((line["point"][spec["y"]], line["point"][spec["x"]]), []).append(line)
    unit = "points over the delta_tau=0 median" if base is not None else ACCURACY
    return [Point(f"{spec['y']}={fmt(y)}", spec["x"], x, accuracy_pct(cell) - (base or 0.0), "median", unit,
                  paper=cell_paper_value(paper, spec["y"], y, x) if base is not None else None,
                  note="" if base is not None else "no baseline run finished yet")
            for (y, x), cell in sorted(cells.items())]


# --- tables (Tables 1 and 2): one point per configuration ---------------------------------------
def table_points(definition, lines, spec, paper, here) -> list:
    by_point = {}
    for line in lines:
        by_point.setdefault(series_label(line["point"]), []).append(line)
    out = []
    for label, group in sorted(by_point.items()):
        row = next((name for name, cond in spec["rows"].items() if matches(cond, group[0]["config"])), None)
        value, sd = (paper.get("rows") or {}).get(row, (None, None))
        out.append(Point(row or label, "configuration", label, values(group, spec.get("measure")), "mean", unit_of(spec),
                         paper=value,
                         paper_sd=sd, paper_series=row if value is not None else None,
                         note=f"paper row: {row}" if value is not None else ""))
    return out


def paper_only_rows(paper: dict, pts: list) -> list:
    used = {p.paper_series for p in pts}
    return [Point(f"paper: {name}", "configuration", name, np.array([]), "mean", paper=pv, paper_sd=psd,
                  note="a setting this sweep does not run")
            for name, (pv, psd) in (paper.get("rows") or {}).items() if name not in used]


# --- Fig. 3: trained time constants per hidden layer ---------------------------------------------
def tau_points(definition, lines, spec, paper, here) -> list:
    """Per hidden layer each run's median trained time constant [ms]; the paper's median."""
    medians = np.array([line["median_tau_per_layer"] for line in lines]) * 1e3
    paper_ms = paper.get("tau_median_ms") or []
    published = [np.array([v for v in layer if v is not None], float)
                 for layer in zip(*here.get("tau_median_ms_per_seed", []))]
    return [Point("trained tau [ms], median of the runs' medians", "hidden layer", i + 1, medians[:, i], "median",
                  "ms", paper=paper_ms[i] if i < len(paper_ms) else None,
                  here=published[i] if i < len(published) else None)
            for i in range(medians.shape[1])]


# --- Fig. S6: the spectra of the trained recurrent matrices ---------------------------------------
class Spectrum(NamedTuple):
    """One hidden layer's spectrum over the runs of a sweep."""
    which: str            # "stored" or "masked" (SPECTRA)
    layer: int            # 1 = closest to the input
    mean: np.ndarray      # mean over runs of the sorted absolute eigenvalues
    q25: np.ndarray       # 25 % and 75 % quantiles over runs, per index
    q75: np.ndarray
    largest: np.ndarray   # each run's largest absolute eigenvalue


def spectra(lines: list) -> list:
    """Per kind of matrix and hidden layer, the runs' sorted absolute eigenvalues of the
    trained W_rec, summarised over runs."""
    out = []
    for which in SPECTRA:
        runs = np.array([line["w_rec_abs_eigenvalues"][which] for line in lines])  # [runs, layers, n]
        for i in range(runs.shape[1]):
            q25, q75 = np.percentile(runs[:, i], [25, 75], axis=0)
            out.append(Spectrum(which, i + 1, runs[:, i].mean(0), q25, q75, runs[:, i, 0]))
    return out


def eigen_points(definition, lines, spec, paper, here) -> list:
    """Per kind of matrix and hidden layer each run's largest absolute eigenvalue."""
    paper_largest = paper.get("largest_abs_eigenvalue_per_hidden_layer") or []
    published = [np.asarray(layer, float) for layer in zip(*here.get("largest_abs_eigenvalue_per_seed", []))]
    out = []
    for s in spectra(lines):
        stored = s.which == "stored"
        out.append(Point(f"largest abs. eigenvalue of W_rec, {s.which}", "hidden layer", s.layer, s.largest,
                         "mean", "", paper=paper_largest[s.layer - 1] if stored and s.layer <= len(paper_largest)
                         else None, here=published[s.layer - 1] if stored and s.layer <= len(published) else None))
    return out


def accuracy_point(lines, paper) -> Point:
    """The runs' test accuracy (mean), against the paper's printed accuracies if any."""
    acc = paper.get("test_acc")
    return Point("test accuracy", "", "", accuracy_pct(lines), "mean",
                 paper=float(np.mean(acc)) if acc else None,
                 paper_sd=float(np.std(acc, ddof=1)) if acc and len(acc) > 1 else None)



