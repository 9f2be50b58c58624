"""The reproduction report: which of the paper's claims the results here reproduce, and how
closely.

`write_folder_report(results_dir, definitions, paper_numbers)` writes results_dir/REPORT.md,
one Markdown page from the sweeps' results lines (nothing else: no data set, no network), in the paper's order, one section per figure
or table: what the panel tests, the command that reproduces it, its status, our numbers next
to the paper's point by point with one summary line, the figure, the claim's verdict computed
by a rule the report states, and the provenance of the runs. The same results give the same
bytes: everything is sorted and no clock is read.
"""

import contextlib
import json
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

import figures
import panels
import run_folder
from sweep_definitions import (MANIFEST, ROOT, RecordError, SweepError, changed_fields, expand, published_names,
                               read_lines, read_manifest, reduced)
from utils_io import FileError, atomic_write, read_json

PUBLISHED_HERE_FILE = ROOT / "paper" / "published_runs_here.json"  # the published code, run on this machine kind


class SweepResults(NamedTuple):
    """What the report knows of one sweep: its definition, its results lines (of the full
    sweep, or of its --quick reduction when only that ran), how many runs the sweep has, and
    why runs failed (error.txt of its run folders)."""
    name: str
    definition: dict
    lines: list
    n_runs: int
    reduced: bool = False
    errors: tuple = ()
    folder: str = ""       # its folder under results/ when not the sweep's name (extensions)
    sets: dict = {}        # the --set values its sweep.json records
    changed: dict = {}     # {field: values} where the runs differ from the published definition
    unreadable: str = ""   # why its results table cannot be read (then it has no lines)
    published: bool = True  # one of the paper's sweeps (else an added experiment)


class Claim(NamedTuple):
    text: str   # the paper's claim, in words
    rule: str   # the verdict's rule: "rises", "rises_more", "beats", "deeper_slower", "gains"
    args: dict = {}


class Section(NamedTuple):
    title: str
    sweeps: tuple
    tests: str                      # what the panel tests, one sentence
    claim: Optional[Claim] = None   # None: the paper makes no claim this report can test


# The paper's figures and tables, in its order.
SECTIONS = [
    Section("Fig. 2a", ("hSNN_Figure_2a",), "MTS-XOR with one time constant in every layer: how "
            "accuracy depends on that time constant, for 2 and 3 hidden layers.",
            Claim("accuracy rises with tau_mem: short time constants cannot hold the task's slow signal",
                  "rises", dict(x="tau_mem"))),
    Section("Fig. 2b", ("hSNN_Figure_2b",), "MTS-XOR with a tanh hierarchy of time constants: "
            "accuracy against delta_tau (deep minus shallow), for 2 and 3 hidden layers.",
            Claim("accuracy rises with delta_tau (a hierarchy helps, an anti-hierarchy hurts), more with "
                  "2 hidden layers than with 3", "rises_more",
                  dict(x="delta_tau", more={"n_layers": 3}, less={"n_layers": 4}))),
    Section("Fig. 2c", ("hSNN_Figure_2c",), "SHD: networks of 2 to 5 hidden layers of 32, 64 or 128 "
            "neurons, with (delta_tau 0.15 s) and without a hierarchy.",
            Claim("the hierarchy beats no hierarchy at every depth and width", "beats",
                  dict(field="delta_tau", better=0.15, worse=0, by=("n_layers", "n_hid")))),
    Section("Fig. 3b", ("hSNN_Figure_3b",), "MTS-XOR: per-neuron time constants trained from equal "
            "values (0.2 s); the trained time constant of each hidden layer.",
            Claim("a hierarchy emerges: the trained time constants grow with depth", "deeper_slower")),
    Section("Fig. 3c", ("hSNN_Figure_3c",), "SHD: time constants trained from 0.1 s in 5 hidden "
            "layers; the trained time constant of each layer.",
            Claim("a hierarchy emerges: the trained time constants grow with depth", "deeper_slower")),
    Section("Fig. S2a", ("hSNN_Figure_S2a",), "MTS-XOR: robustness to input noise of a linear "
            "hierarchy (delta_tau 0.4 s) and an anti-hierarchy (-0.4 s).",
            Claim("the hierarchy beats the anti-hierarchy at every noise level", "beats",
                  dict(field="delta_tau", better=0.4, worse=-0.4, by=("noise_rate",)))),
    Section("Fig. S6", ("hSNN_Figure_S6_mts_xor", "hSNN_Figure_S6_shd"), "Recurrent networks without a "
            "time-constant hierarchy, MTS-XOR and SHD: the absolute eigenvalues of each hidden layer's trained "
            "recurrent matrix (larger eigenvalues are slower modes of the recurrent dynamics).",
            Claim("a hierarchy appears in the recurrent dynamics: deeper layers have larger recurrent eigenvalues",
                  "deeper_larger")),
    Section("Fig. S2b", ("hSNN_Figure_S2b",), "SHD without hierarchy: accuracy against tau_mem "
            "(the tuning behind the SHD runs' 0.1 s)."),
    Section("Fig. S2c", ("hSNN_Figure_S2c",), "SHD, 5 hidden layers of 32: accuracy against the tanh "
            "hierarchy's delta_tau.",
            Claim("accuracy rises with delta_tau", "rises", dict(x="delta_tau"))),
    Section("Fig. S2e", ("hSNN_Figure_S2e",), "SHD: the shape of the tanh hierarchy (steepness x "
            "centre), as the gain over no hierarchy (delta_tau 0).",
            Claim("every shape of the hierarchy gains over no hierarchy", "gains")),
    Section("Fig. 4b", ("hSNN_Figure_4b",), "SHD, convolutional: a hierarchy of kernel sizes "
            "(delta_ker, deep minus shallow).",
            Claim("accuracy rises with delta_ker", "rises", dict(x="delta_ker"))),
    Section("Fig. 4d", ("hSNN_Figure_4d",), "SHD, convolutional: a hierarchy of dilations (delta_dil).",
            Claim("accuracy rises with delta_dil", "rises", dict(x="delta_dil"))),
    Section("Fig. S4a", ("hSNN_Figure_S4a",), "SHD, convolutional: the dilation without hierarchy "
            "(tuning)."),
    Section("Fig. S4b", ("hSNN_Figure_S4b",), "SHD, convolutional: the kernel size without hierarchy "
            "(tuning)."),
    Section("Fig. 5b", ("hSNN_Figure_5b",), "Latency-coded MNIST: accuracy against tau_mem."),
    Section("Fig. 5c", ("hSNN_Figure_5c",), "Latency-coded MNIST: a linear hierarchy's delta_tau."),
    Section("Fig. 6", ("hSNN_Figure_6",), "Sequential MNIST: a linear hierarchy's delta_tau, "
            "feed-forward and recurrent."),
    Section("Table 1", ("SHD_hCSNN_max_performance", "SHD_hCSNN_proper_validation"),
            "SHD: the best hierarchical convolutional network, selected on the test set (the published "
            "protocol) and on a proper validation split, with and without augmentation.",
            Claim("the frequency-shift augmentation helps (proper validation)", "beats",
                  dict(field="freq_shift", better=10, worse=0, by=()))),
    Section("Table 2", ("SSC_hCSNN_max_performance", "SSC_hSNN_hierarchy"),
            "SSC: convolutional networks with and without a kernel hierarchy, feed-forward networks with "
            "and without a time-constant hierarchy.",
            Claim("each hierarchical network beats its homogeneous counterpart", "beats",
                  dict(field=("delta_ker", "delta_tau"), better=(3, 0.15), worse=(0, 0), by=()))),
]

RULES = {
    "rises": "Spearman's rank correlation between {x} and {measure} over all runs of a series "
             "is positive in every series",
    "rises_more": "Spearman's rank correlation between {x} and {measure} is positive in every "
                  "series, and the rise (median at the largest {x} minus median at the smallest) is "
                  "larger for {more} than for {less}",
    "beats": "the median {measure} with {field} = {better} is above the one with {field} = {worse} "
             "in at least three quarters of the comparisons{by}",
    "deeper_slower": "Spearman's rank correlation between the hidden layer's depth and each run's "
                     "median trained time constant is positive, and the deepest hidden layer's median "
                     "over runs is above the first's",
    "gains": "the median gain over the delta_tau 0 runs is positive in at least three quarters of "
             "the cells",
    "above": "the median {measure} with {field} = {better} is above the one with {field} = {worse}",
    "deeper_larger": "Spearman's rank correlation between the hidden layer's depth and each run's largest "
                     "absolute eigenvalue of W_rec (as stored) is positive, and the deepest hidden layer's "
                     "mean over runs is above the first's",
}
DATA_OF = {"mts_xor": None, "shd": "SHD", "ssc": "SSC", "mnist": "MNIST", "s-mnist": "MNIST",
           "ps-mnist": "MNIST"}


# --- statistics ---------------------------------------------------------------------------------
def ranks(values) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    _, where, counts = np.unique(np.asarray(values, dtype=float), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return ((last - counts + 1 + last) / 2.0)[where]


def spearman(x, y) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def num(v, digits=2) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


# --- points: ours next to the paper's (panels.py computes them, as it does for the figures) ------
def spread(p: panels.Point) -> str:
    """'q25-q75' of a median, '+-sd' of a mean."""
    if p.stat.startswith("mean"):
        return "" if p.sd is None else f"+-{p.sd:.2f}"
    q25, q75 = np.percentile(p.values, [25, 75])
    return f"{q25:.2f}-{q75:.2f}"


def in_iqr(p: panels.Point) -> bool:
    q25, q75 = np.percentile(p.values, [25, 75])
    return bool(q25 <= p.paper <= q75)


def in_paper_bar(p: panels.Point) -> Optional[bool]:
    return None if not p.paper_sd else bool(abs(p.ours - p.paper) <= p.paper_sd)


def series_name(p: panels.Point, spec: dict) -> str:
    if p.panel is None:
        return p.series
    return f"{spec['panel']}={panels.fmt(p.panel)}" + ("" if p.series == "all" else f",{p.series}")


def summary(points) -> str:
    compared = [p for p in points if p.paper is not None]
    if not compared:
        return "no published numbers to compare with"
    diff = np.mean([abs(p.ours - p.paper) for p in compared])
    text = (f"{len(compared)} points compared, mean absolute difference {diff:.2f}; "
            f"{sum(in_iqr(p) for p in compared)} of {len(compared)} paper values inside our seeds' "
            "interquartile range")
    with_bar = [p for p in compared if in_paper_bar(p) is not None]
    if with_bar:
        text += f", {sum(in_paper_bar(p) for p in with_bar)} of {len(with_bar)} of ours inside the paper's +-sd"
    return text


# --- verdicts -----------------------------------------------------------------------------------
def _values(lines, field):
    return [line["config"][field] for line in lines]


def _series(lines, x):
    """Runs grouped by every grid value but x and the seed."""
    groups = {}
    for line in lines:
        if not line.get("baseline"):
            key = panels.series_label({k: v for k, v in line["point"].items() if k != x})
            groups.setdefault(key, []).append(line)
    return groups


class Stat(NamedTuple):
    """A rule's statistic and the threshold it must clear (value > threshold, or >= with
    `inclusive`)."""
    name: str
    value: float
    threshold: float
    inclusive: bool = False

    def clears(self, value) -> bool:
        return bool(value >= self.threshold if self.inclusive else value > self.threshold)


def stats_rises(lines, x, more=None, less=None, measure=None):
    groups = _series(lines, x)
    rhos = {k: spearman(_values(g, x), panels.values(g, measure)) for k, g in sorted(groups.items())}
    if not rhos or any(np.isnan(r) for r in rhos.values()):
        return None, "not enough distinct values to rank"
    text = "rank correlation " + ", ".join(f"{k}: {r:+.2f}" for k, r in rhos.items())
    stats = [Stat("smallest rank correlation", min(rhos.values()), 0.0)]
    if more is not None:
        def rise(cond):
            group = [line for line in lines if panels.matches(cond, line["config"]) and not line.get("baseline")]
            xs = sorted(set(_values(group, x)))
            at = lambda v: np.median(panels.values([run for run in group if run["config"][x] == v], measure))  # noqa: E731
            return at(xs[-1]) - at(xs[0]) if len(xs) > 1 else float("nan")
        r_more, r_less = rise(more), rise(less)
        text += f"; rise {panels.series_label(more)}: {r_more:+.2f}, {panels.series_label(less)}: {r_less:+.2f}"
        stats.append(Stat("difference of the rises [points]", r_more - r_less, 0.0))
    return stats, text


def stats_beats(lines, field, better, worse, by, measure=None):
    fields, betters, worses = ((field,), (better,), (worse,)) if isinstance(field, str) else (field, better, worse)
    wins, cells = 0, 0
    parts = []
    for f, b, w in zip(fields, betters, worses):
        relevant = [line for line in lines if f in line["point"] or f in line["config"]]
        groups = {}
        for line in relevant:
            key = panels.series_label({k: line["config"][k] for k in by})
            groups.setdefault(key, {}).setdefault(line["config"][f], []).append(line)
        for key, by_value in sorted(groups.items()):
            hi = [run for v, runs in by_value.items() if panels.matches({f: b}, {f: v}) for run in runs]
            lo = [run for v, runs in by_value.items() if panels.matches({f: w}, {f: v}) for run in runs]
            if hi and lo and (len(fields) == 1 or set(by_value) == {b, w}):
                diff = np.median(panels.values(hi, measure)) - np.median(panels.values(lo, measure))
                cells += 1
                wins += diff > 0
                parts.append(f"{key if key != 'all' else f}: {diff:+.2f}")
    if not cells:
        return None, "no pair of runs to compare yet"
    return ([Stat("share of the comparisons won", wins / cells, 0.75, inclusive=True)],
            f"better in {wins} of {cells} ({'; '.join(parts)} points)")


def stats_above(lines, field, better, worse, measure=None):
    """The median of the runs with `field` = `better` minus the median of those with `worse`."""
    hi = [line for line in lines if panels.matches({field: better}, {field: line["config"][field]})]
    lo = [line for line in lines if panels.matches({field: worse}, {field: line["config"][field]})]
    if not hi or not lo:
        return None, "no pair of runs to compare yet"
    a, b = np.median(panels.values(hi, measure)), np.median(panels.values(lo, measure))
    what = measure or "test accuracy"
    return ([Stat(f"difference of the medians{' [points]' if measure is None else ''}", a - b, 0.0)],
            f"median {what} {a:.2f} with {field} = {better} ({len(hi)} runs), {b:.2f} with {field} = {worse} "
            f"({len(lo)} runs)")


def depth_trend(values, centre):
    """Of a quantity per run and hidden layer [runs, layers]: its rank correlation with depth,
    its centre (np.median, np.mean) over the runs in the first and in the deepest layer, and in
    how many runs the deepest layer's value is the largest."""
    rho = spearman(np.tile(np.arange(values.shape[1]), len(values)), values.ravel())
    top = int(np.sum(np.argmax(values, axis=1) == values.shape[1] - 1))
    return rho, centre(values[:, 0]), centre(values[:, -1]), top


def stats_deeper_slower(lines):
    medians = np.array([line["median_tau_per_layer"] for line in lines]) * 1e3
    rho, first, last, slowest = depth_trend(medians, np.median)
    if np.isnan(rho):
        return None, "not enough layers or runs to rank"
    return ([Stat("rank correlation", rho, 0.0), Stat("deepest minus first hidden layer [ms]", last - first, 0.0)],
            f"rank correlation {rho:+.2f}; first hidden layer {first:.0f} ms, deepest {last:.0f} ms; the deepest "
            f"hidden layer is the slowest in {slowest} of {len(medians)} runs")


def stats_deeper_larger(lines):
    """Per task: a section may hold an MTS-XOR and an SHD sweep."""
    stats, texts = [], []
    for task in sorted({line["config"]["dataset_name"] for line in lines}):
        group = [line for line in lines if line["config"]["dataset_name"] == task]
        largest = np.array([[spectrum[0] for spectrum in line["w_rec_abs_eigenvalues"]["stored"]] for line in group])
        rho, first, last, ordered = depth_trend(largest, np.mean)
        if np.isnan(rho):
            return None, f"{task}: not enough layers or runs to rank"
        stats += [Stat(f"rank correlation ({task})", rho, 0.0),
                  Stat(f"deepest minus first hidden layer ({task})", last - first, 0.0)]
        texts.append(f"{task}: rank correlation {rho:+.2f}, first hidden layer {first:.2f}, deepest {last:.2f}, "
                     f"the deepest layer's eigenvalue the largest in {ordered} of {len(largest)} runs")
    return stats, "; ".join(texts)


def stats_gains(lines):
    base_median = panels.baseline_median(lines)
    cells = {}
    for line in lines:
        if not line["baseline"]:
            cells.setdefault(panels.series_label(line["point"]), []).append(line)
    if base_median is None or not cells:
        return None, "no delta_tau 0 runs to compare with yet"
    wins = sum(np.median(panels.accuracy_pct(c)) > base_median for c in cells.values())
    return ([Stat("share of the cells with a gain", wins / len(cells), 0.75, inclusive=True)],
            f"positive in {wins} of {len(cells)} cells")


STATISTICS = {"rises": stats_rises, "rises_more": stats_rises, "beats": stats_beats, "above": stats_above,
              "deeper_slower": stats_deeper_slower, "deeper_larger": stats_deeper_larger, "gains": stats_gains}
# the bootstrap over seeds behind every verdict: resamples, and a fixed generator seed so that
# the same results give the same report
BOOTSTRAP = dict(resamples=1000, seed=2407_18838)


def statistics(claim: Claim, lines):
    return STATISTICS[claim.rule](lines, **claim.args)


def seed_groups(lines) -> list:
    """The runs of each point: runs that differ only in their seed."""
    points = {}
    for line in lines:
        key = json.dumps({k: v for k, v in line["config"].items() if k != "seed"}, sort_keys=True)
        points.setdefault((key, bool(line.get("baseline"))), []).append(line)
    return list(points.values())


def resample_seeds(groups: list, rng) -> list:
    """One bootstrap sample of the runs: within each point, as many runs as it has, drawn
    with replacement."""
    return [group[i] for group in groups for i in rng.integers(0, len(group), len(group))]


def verdict(claim: Claim, lines):
    """(word, evidence): 'holds' when the 95 % bootstrap interval of every statistic of the
    rule clears its threshold, 'holds within noise' when the statistics do but an interval
    does not, 'not supported' when a statistic does not, 'not decided' without enough runs."""
    stats, text = statistics(claim, lines)
    if stats is None:
        return "not decided", text
    rng, groups = np.random.default_rng(BOOTSTRAP["seed"]), seed_groups(lines)
    samples = []
    for _ in range(BOOTSTRAP["resamples"]):
        boot, _ = statistics(claim, resample_seeds(groups, rng))
        samples.append([b.value for b in boot] if boot is not None and len(boot) == len(stats) else
                       [np.nan] * len(stats))
    samples = np.array(samples, dtype=float)
    parts, word = [], "holds"
    for i, st in enumerate(stats):
        column = samples[:, i][np.isfinite(samples[:, i])]
        lo, hi = (np.percentile(column, [2.5, 97.5]) if len(column) else (np.nan, np.nan))
        need = f"{'>=' if st.inclusive else '>'} {st.threshold:g}"
        parts.append(f"{st.name} {st.value:+.2f} (95 % interval {lo:+.2f} to {hi:+.2f}; needs {need})")
        if not st.clears(st.value):
            word = "not supported"
        elif not (np.isfinite(lo) and st.clears(lo)) and word == "holds":
            word = "holds within noise"
    return word, f"{text}; " + "; ".join(parts)


def rule_text(claim: Claim) -> str:
    args = dict(claim.args)
    args["measure"] = args.get("measure") or "test accuracy"
    if claim.rule == "rises_more":
        args.update(more=panels.series_label(args["more"]), less=panels.series_label(args["less"]))
    if claim.rule == "beats":
        by = args.get("by") or ()
        args["by"] = f" (one comparison per value of {', '.join(by)})" if by else ""
        if not isinstance(args["field"], str):
            pairs = [f"{f} = {b} against {f} = {w}" for f, b, w in zip(args["field"], args["better"], args["worse"])]
            return (f"the median {args['measure']} is higher with " + "; with ".join(pairs)
                    + ", in at least three quarters of the comparisons")
    return RULES[claim.rule].format(**args)


# --- the page -------------------------------------------------------------------------------------
def changes_text(sweep: SweepResults) -> str:
    """'n_epochs=1, n_hid=4': what the runs changed against the published definition."""
    return panels.changes_text(sweep.changed)


def command(sweep: SweepResults) -> str:
    """The command that made (or makes) these results: --quick, --seeds and --set included."""
    flags = " --quick" if sweep.reduced else ""
    if sweep.definition.get("extension"):
        flags += " --seeds " + sweep.definition["extension_seeds"]
    sets = dict(sweep.sets)
    sets.update({k: vs[0] for k, vs in sweep.changed.items() if len(vs) == 1 and k not in sets and k != "grid point"})
    flags += "".join(f" --set {k}={'none' if v is None else json_value(v)}" for k, v in sorted(sets.items()))
    return f"python3 sweep.py --sweep_name {sweep.name}{flags}"


def json_value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def status(sweep: SweepResults) -> str:
    n = len(sweep.lines)
    if sweep.unreadable:
        return f"results unreadable ({sweep.unreadable})"
    if sweep.reduced:
        return f"reduced (--quick{', modified: ' + changes_text(sweep) if sweep.changed else ''}): {n} runs"
    if sweep.changed and n:
        return f"modified ({changes_text(sweep)}): {n} of {sweep.n_runs} runs, not the published definition"
    if n == 0:
        if sweep.errors:
            return f"not run: failed ({sweep.errors[0]})"
        data = DATA_OF.get(sweep.definition["fixed"].get("dataset_name"))
        return "not run" + (f" (needs the {data} data set: docs/datasets.md)" if data else "")
    return f"complete ({n} of {sweep.n_runs} runs)" if n >= sweep.n_runs else f"partial ({n} of {sweep.n_runs} runs)"


def provenance_summary(lines) -> list:
    entries = [e for line in lines for e in (line.get("provenance") or [])]
    commits = sorted({(e.get("commit") or "unknown")[:10] + (" (with uncommitted changes)" if e.get("dirty") else "")
                      for e in entries})
    software = sorted({f"Python {e.get('python')}, JAX {e.get('jax')}, jaxlib {e.get('jaxlib')}, numpy {e.get('numpy')}"
                       for e in entries})
    machines = sorted({f"{e.get('backend')} ({e.get('device')}) on {e.get('host')}" for e in entries})
    dates = sorted(line["finished"][:10] for line in lines if line.get("finished"))
    out = []
    if commits:
        out.append("commit " + ", ".join(commits))
    if software:
        out.append("; ".join(software))
    if machines:
        out.append("; ".join(machines))
    if dates:
        out.append(f"runs finished {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else ""))
    return out or ["no provenance recorded"]


def points_table(points, spec) -> list:
    """Ours, the paper's, and where it was run here (paper/published_runs_here.json) the
    published code's."""
    if not points:
        return []
    here = any(p.here is not None for p in points)
    rows = [f"| series | {panels.shown_axis(points[0].x_name) or 'x'} | ours | spread | seeds | paper | paper sd | difference |"
            + (" published code here |" if here else ""), "|---|---|---|---|---|---|---|---|" + ("---|" if here else "")]
    for p in points:
        x = panels.shown_x(p.x_name, p.x)
        x = panels.fmt(x) if x != "" and not isinstance(x, str) else x
        diff = "" if p.paper is None else f"{p.ours - p.paper:+.2f}"
        rows.append(f"| {series_name(p, spec)} | {x} | {p.ours:.2f} ({p.stat}) | {spread(p)} | {len(p.values)} | "
                    f"{num(p.paper)} | {num(p.paper_sd)} | {diff} |" + (f" {num(p.here_value)} |" if here else ""))
    return rows


def extension_lines(sec: Section, ext: SweepResults, paper_numbers: dict, published: list, here: dict) -> list:
    """An extension of a sweep (`sweep.py --seeds`): its numbers and verdict on its own, then
    with the published grid's runs, kept out of the section's status and verdict."""
    spec = panels.layout(ext.name, ext.definition)
    points = figures.points(ext.name, ext.definition, ext.lines, paper_numbers.get(spec["paper"], {}),
                           here.get(ext.name))
    modified = f", modified: {changes_text(ext)}" if ext.changed else ""
    out = [f"### Extension `{ext.folder}`: {len(ext.lines)} runs, {ext.definition['extension']}{modified}", "",
           f"`{command(ext)}`", "",
           "Not part of the published grid, so not counted in this section's status and verdict above.", ""]
    line = summary(points)
    out += points_table(points, spec) + ["", line[0].upper() + line[1:] + ".", "",
                                   f"![{ext.folder}]({ext.folder}/figure.png)", "",
                                   "Provenance: " + "; ".join(provenance_summary(ext.lines)) + ".", ""]
    if sec.claim is not None:
        for what, lines in (("the extension alone", ext.lines), ("the extension and the published grid's runs together", published + ext.lines)):
            word, evidence = verdict(sec.claim, lines)
            out += [f"**Verdict on {what} ({len(lines)} runs):** {word}: {evidence}.", ""]
    return out


def section(sec: Section, sweeps: dict, paper_numbers: dict, extensions: dict = None, here: dict = None) -> tuple:
    """(the section's lines, its row of the top table)."""
    out = [f"## {sec.title}", "", sec.tests, ""]
    statuses, verdict_text = [], "no claim tested"
    all_points, all_lines = [], []
    for name in sec.sweeps:
        sweep = sweeps.get(name)
        if sweep is None:
            continue
        spec = panels.layout(name, sweep.definition)
        paper = paper_numbers.get(spec["paper"], {})
        out += [f"### `{name}`: {status(sweep)}", "", f"`{command(sweep)}`", ""]
        statuses.append(status(sweep) if len(sec.sweeps) == 1 else f"`{name}`: {status(sweep)}")
        if sweep.published and not panels.paper_recoverable(paper):
            out += [f"The paper's numbers for this panel are not recoverable ({paper.get('source', 'none listed')}); "
                    "ours only.", ""]
        if not sweep.lines:
            continue
        try:
            points = figures.points(name, sweep.definition, sweep.lines, paper, (here or {}).get(name))
        except panels.PanelError as err:
            out += [f"Its points cannot be computed: {err}.", ""]
            continue
        all_points += points
        all_lines += sweep.lines
        line = summary(points)
        out += points_table(points, spec) + ["", line[0].upper() + line[1:] + ".", ""]
        folder = f"{name}_quick" if sweep.reduced else name
        out += [f"![{name}]({folder}/figure.png)", ""]
        out += ["Provenance: " + "; ".join(provenance_summary(sweep.lines)) + ".", ""]
    if sec.claim is not None:
        out += [f"**Claim:** {sec.claim.text}.", "", f"**Rule:** {rule_text(sec.claim)}.", ""]
        if all_lines:
            word, evidence = verdict(sec.claim, all_lines)
            reduced = " (on reduced --quick runs)" if any(sweeps[n].reduced for n in sec.sweeps if n in sweeps) else ""
            if any(sweeps[n].changed for n in sec.sweeps if n in sweeps):
                reduced += " (on modified runs: " + "; ".join(changes_text(sweeps[n]) for n in sec.sweeps
                                                               if n in sweeps and sweeps[n].changed) + ")"
            verdict_text = f"{word}{reduced}"
            out += [f"**Verdict:** {word}{reduced}: {evidence}.", ""]
        else:
            verdict_text = "not decided (no runs)"
            out += ["**Verdict:** not decided: no runs yet.", ""]
    for name in sec.sweeps:
        for ext in (extensions or {}).get(name, []):
            published = sweeps[name].lines if name in sweeps and not sweeps[name].reduced else []
            out += extension_lines(sec, ext, paper_numbers, published, here or {})
    top = (sec.title, ", ".join(f"`{n}`" for n in sec.sweeps), "; ".join(statuses) or "not defined",
           summary(all_points) if all_lines else "", verdict_text)
    return out, top


def experiment_section(name: str, definition: dict) -> Section:
    """The section of a sweep that no section of the paper lists (an added experiment): its
    title and what it tests from its definition, and its claim and rule where it states one
    ({"text": ..., "rule": a key of RULES, "args": {...}})."""
    claim = definition.get("claim")
    return Section(definition.get("title", name), (name,), definition["what"],
                   Claim(claim["text"], claim["rule"], claim.get("args", {})) if claim else None)


def claim_problem(definition: dict):
    """Why a definition's claim cannot be judged (its rule is not one of RULES, or its
    arguments not the rule's), else None."""
    claim = definition.get("claim")
    if claim is None:
        return None
    if not (isinstance(claim, dict) and isinstance(claim.get("text"), str) and claim.get("rule") in RULES
            and isinstance(claim.get("args", {}), dict)):
        return f"its claim must be an object with a 'text', a 'rule' (one of {', '.join(RULES)}) and 'args'"
    try:
        rule_text(Claim(claim["text"], claim["rule"], claim.get("args", {})))
    except (KeyError, TypeError) as err:
        return f"its claim's arguments do not fit the rule {claim['rule']!r} ({err})"
    return None


def render(sweeps: dict, paper_numbers: dict, extensions: dict = None, here: dict = None) -> str:
    """The report: a section per figure and table of the paper (SECTIONS), then one per added
    experiment (every other sweep defined)."""
    listed = {name for sec in SECTIONS for name in sec.sweeps}
    added = [experiment_section(name, s.definition) for name, s in sweeps.items() if name not in listed]
    sections, top = [], []
    for sec in SECTIONS + added:
        if sec is (added[0] if added else None):
            sections += ["# Added experiments", "",
                         "Experiments the paper did not run, defined beside its sweeps (experiments/ or "
                         "--sweeps_file); their claims are ours, judged by the same rules.", ""]
        lines, row = section(sec, sweeps, paper_numbers, extensions, here)
        sections += lines
        top.append(row)
    head = ["# Reproduction report", "",
            "Which of the claims of \"The Role of Temporal Hierarchy in Spiking Neural Networks\" (arXiv "
            "2407.18838) the results in this folder reproduce, and how closely. Written by "
            "`python3 sweep.py --report` from the sweeps' `runs.jsonl` files only; our numbers are test "
            "accuracies in % (the paper's statistic over seeds: median with the interquartile range, or mean "
            "with the standard deviation), the paper's are read off its figures (+-0.3 points) or printed in "
            "its tables. Where the authors' published code was itself run on the kind of machine these "
            "results come from (`paper/published_runs_here.json`), its numbers are a column of their own. A "
            "verdict follows the rule stated under it, computed from our runs alone: 'holds' when the 95 % "
            "interval of each statistic of the rule (a bootstrap over the seeds of every point, "
            f"{BOOTSTRAP['resamples']} resamples, a fixed generator seed) clears the rule's threshold, 'holds "
            "within noise' when the statistics do but an interval does not, 'not supported' when a statistic "
            "does not.", "",
            "| panel | sweeps | status | ours against the paper | verdict |", "|---|---|---|---|---|"]
    head += [f"| {t} | {s} | {st} | {summ} | {v} |" for t, s, st, summ, v in top]
    return "\n".join(head + [""] + sections).rstrip() + "\n"


def write_report(path, sweeps: dict, paper_numbers: dict, extensions: dict = None, here: dict = None) -> str:
    """Write the report to `path` atomically; returns its text. `extensions`: {sweep name:
    [SweepResults of its `--seeds` extensions]}, reported after the sweep's own results;
    `here`: {sweep name: the published code's numbers on this machine kind}."""
    text = render(sweeps, paper_numbers, extensions, here)
    atomic_write(path, lambda f: f.write(text.encode()))
    return text


# --- the report of a results folder ------------------------------------------------------------------
def sweep_results(folder: Path, name: str, definition: dict, reduced_: bool) -> SweepResults:
    """The finished runs of the sweep in `folder` (with the definition and --set of its
    sweep.json when present and sound, else the sweep as defined now), sorted by key, the
    failures its run folders record, and how the runs' configurations differ from
    `definition` (the published one, or its --quick reduction), whatever sweep.json says. A
    results table with a damaged run record gives no lines and says why (`unreadable`); the
    caller names the problem (sweep.py --report does, when it redraws the figures)."""
    sets, stored_definition = {}, definition
    if (folder / MANIFEST).exists():
        with contextlib.suppress(SweepError):  # a damaged manifest: the sweep as defined now
            stored = read_manifest(folder, "")
            stored_definition, sets = stored["definition"], stored["set"]
    runs = expand(stored_definition, sets)
    try:
        present = read_lines(folder) if folder.exists() else {}
    except RecordError as err:  # this sweep's section says so; the others are reported
        return SweepResults(name, stored_definition, [], len(runs), reduced_, sets=sets, unreadable=str(err))
    lines = [present[r.key] for r in sorted(runs, key=lambda r: r.key) if r.key in present]
    errors = sorted({run_folder.read_error(d) for d in sorted((folder / "runs").glob("*"))
                     if (d / run_folder.ERROR).exists()} - {None}) if (folder / "runs").exists() else []
    return SweepResults(name, stored_definition, lines, len(runs), reduced_, tuple(errors),
                               sets=sets, changed=changed_fields(lines, definition))


def write_folder_report(results_dir: Path, definitions: dict, paper_numbers: dict) -> Path:
    """results_dir/REPORT.md from every sweep's results (the full sweep's, else its --quick
    reduction's), and the extensions that --seeds trained beside them."""
    sweeps, extensions, published = {}, {}, published_names()
    for name, definition in definitions.items():
        full = sweep_results(results_dir / name, name, definition, False)._replace(published=name in published)
        if not full.lines and (results_dir / f"{name}_quick").exists():
            quick = sweep_results(results_dir / f"{name}_quick", name, reduced(definition), True)
            full = quick._replace(published=full.published) if quick.lines else full
        sweeps[name] = full
        for folder in sorted(results_dir.glob(f"{name}_seeds*")):
            ext = sweep_results(folder, name, definition, False)
            if ext.definition.get("extension") and ext.lines:
                extensions.setdefault(name, []).append(ext._replace(folder=folder.name))
    path = results_dir / "REPORT.md"
    here = {k: v for k, v in read_json(PUBLISHED_HERE_FILE, "published code's numbers").items()
            if not k.startswith("_")}
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        write_report(path, sweeps, paper_numbers, extensions, here)
    except (OSError, FileError) as err:
        raise SweepError(f"cannot write the report {path} ({getattr(err, 'strerror', None) or err}); "
                         "choose another --results_dir") from None
    return path
