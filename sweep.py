"""The paper's sweeps as data, a resumable runner, and the command line (figures: figures.py).

    python3 sweep.py --list
    python3 sweep.py --sweep_name hSNN_Figure_2b             # 180 runs, then the figure
    python3 sweep.py --sweep_name hSNN_Figure_2b --quick     # a reduced smoke version
    python3 sweep.py --sweep_name hSNN_Figure_2b --jobs 2    # two seed groups at once
    python3 sweep.py --sweep_name hSNN_Figure_2b --ray auto  # on a Ray cluster
    python3 sweep.py --sweep_name hSNN_Figure_2b --plot      # figure from existing results
    python3 sweep.py --sweep_name hSNN_Figure_3b --seeds 5-14  # more seeds, kept apart

The sweeps live in paper/sweeps.json (the published code's grids), the published numbers in
paper/paper_numbers.json. A run = the published SimArgs() defaults (Config defaults and
SWEEP_BASE) -> the sweep's 'fixed' -> one grid point -> `--set` overrides; it trains through
`training.train_seeds`, the entry point main.py's `train_hsnn` also serves, once per group of
runs that differ only in their seed. Results:

    results/<sweep>[_quick]/sweep.json     what was run (a re-run must match it)
                            runs.jsonl     one line per finished run (atomic appends)
                            runs/<key>/    each run's folder (config, metrics, params)
                            figure.png/.pdf, summary.csv
    results/<sweep>_seeds<S>/...       --seeds S: an extension beyond the published seeds
"""

import argparse
import contextlib
import difflib
import json
import os
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import figures
import panels
import report
import run_folder
from cli import OneLineParser, fail, parse_bool, parse_field
from models import neuron_of
from sweep_backends import WorkerDied, log_to_wandb, run_in_processes, run_on_ray
from sweep_definitions import (EXPERIMENTS_DIR, LINES, MANIFEST, PAPER_FILE, QUICK, ROOT, SWEEPS_FILE, RecordError,
                               Run, SweepError, append_line, changed_fields, conversion_notes, expand,
                               load_definitions, load_paper_numbers, make_run_config, parse_seeds, published_names,
                               read_lines, read_manifest, reduced, seeds_text, with_seeds)
from runtime import BackendError, OutOfMemory, check_backend, gpu_ids, on_accelerator
from sweep_task import NODE_CACHE, RUN_FAILURES, SWEEP_STOPPERS, configure_runtime, read_files, train_task
from training import TrainingDiverged, final_scalars, program_key
from utils_dataset import DataError, fetch_data
from utils_initialization import ConfigError
from utils_io import FileError, atomic_folder, atomic_write, locked, read_json, write_json

def groups_of(runs: list, seeds_per_task: int = 0, by_program: bool = True) -> list:
    """The sweep's tasks, in sweep order. `by_program`: runs that share one compiled program
    (`training.program_key`: they differ only in their seed, initial time constants, tanh
    settings or noise) form one task, which an accelerator trains as vmapped programs; else
    each grid point's seeds form one (the CPU, where each run trains alone anyway: more,
    smaller tasks keep every `--jobs` lane busy and record finished runs sooner). Split into
    chunks of at most `seeds_per_task` runs when that is > 0."""
    if not runs:
        return []
    by_group = {}
    for run in runs:
        key = program_key(make_run_config(run.overrides, run.seed)) if by_program else run.group
        by_group.setdefault(key, []).append(run)
    size = seeds_per_task or max(len(g) for g in by_group.values())
    return [g[i:i + size] for g in by_group.values() for i in range(0, len(g), size)]


def shard_runs(runs: list, shard) -> list:
    """The runs of shard I of N: every N-th seed group from the I-th, over the whole sweep
    (not over what is left), so the shards of a job array cover every run exactly once."""
    if shard is None:
        return runs
    index, count = shard
    names = list(dict.fromkeys(r.group for r in runs))
    mine = set(names[index::count])
    return [r for r in runs if r.group in mine]


# --- the results table: one line per finished run --------------------------------------------
def result_line(run: Run, metrics: dict, run_dir: Path) -> dict:
    """A finished run's line: what was trained (the run folder's config.json, which equals
    the run's resolved configuration: plan and train_task move any other aside), how it did,
    and what trained it (the run folder's provenance.json: commit, versions, device, command)."""
    config = make_run_config(run.overrides, run.seed).to_dict()
    with contextlib.suppress(FileError):
        stored = read_json(Path(run_dir) / run_folder.CONFIG)
        config = {**config, **stored} if isinstance(stored, dict) else config
    return dict(key=run.key, group=run.group, point=run.point, seed=run.seed, baseline=run.baseline,
                overrides=run.overrides, config=config,
                valid_acc=metrics["best_valid_acc"], test_acc=metrics["test_acc"],
                best_epoch=metrics["best_epoch"], n_epochs=len(metrics["epochs"]),
                seconds=metrics.get("seconds_total"), median_tau_per_layer=metrics["median_tau_per_layer"],
                median_tau_init=metrics.get("median_tau_init"), tau_per_neuron=metrics.get("tau_per_neuron"),
                w_rec_abs_eigenvalues=metrics.get("w_rec_abs_eigenvalues"), measures=final_scalars(metrics),
                host=socket.gethostname(),
                provenance=run_folder.read_provenance(run_dir),
                finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def stale_line(run: Run, line: dict):
    """Why a results line cannot stand for `run` (it was trained with another configuration,
    e.g. by an earlier version of this code), else None. Fields that the line does not know
    (added to Config later) are not compared."""
    if "config" not in line:
        return "it does not record its configuration (an older results table)"
    cfg = make_run_config(run.overrides, run.seed).to_dict()
    diff = sorted(k for k in line["config"] if k in cfg and line["config"][k] != cfg[k])
    return f"it was trained with other values of {', '.join(diff)}" if diff else None


def install_run_folder(dest: Path, files: dict):
    """Put a run folder that came back from a worker in place, atomically: written beside
    it, then renamed over any unfinished folder of the same run."""
    with atomic_folder(dest, replace=True) as tmp:
        for name, data in files.items():
            atomic_write(tmp / name, lambda f, data=data: f.write(data))


# --- the driver --------------------------------------------------------------------------------
class Sweep(NamedTuple):
    name: str
    folder: Path
    definition: dict
    runs: list        # this shard's runs
    all_runs: list    # every run of the sweep
    quick: bool
    sets: dict
    published: dict   # what the runs should train: the published definition (--quick: reduced)


def open_sweep(args, definitions) -> Sweep:
    """The sweep a command asks for; with --plot, the one its folder holds (--set included)."""
    definition = definitions[args.sweep_name]
    if args.quick:
        definition = reduced(definition)
    published = definition
    if args.seeds:
        definition = with_seeds(definition, args.seeds)
    sets = parse_sets(args.set or [])
    suffix = ("_quick" if args.quick else "") + (f"_seeds{seeds_text(args.seeds)}" if args.seeds else "")
    folder = Path(args.results_dir) / (args.sweep_name + suffix)
    if args.plot and (folder / MANIFEST).exists():
        stored = read_manifest(folder, "move it aside to plot the sweep as defined now")
        definition, sets = stored["definition"], stored["set"]
    try:
        all_runs = expand(definition, sets)
        for run in all_runs:
            neuron_of(make_run_config(run.overrides, run.seed))
    except ConfigError as err:
        raise SweepError(f"{args.sweep_name}: {err}")
    return Sweep(args.sweep_name, folder, definition, shard_runs(all_runs, args.shard), all_runs,
                 args.quick, sets, published)


def parse_sets(items: list) -> dict:
    """--set FIELD=VALUE, typed by the Config field (booleans as true/false)."""
    sets = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep:
            raise SweepError(f"--set {item}: expected FIELD=VALUE with a Config field (a main.py flag)")
        try:
            sets[field] = parse_field(field, text)
        except ValueError as err:
            raise SweepError(f"--set {item}: {err}")
    return sets


def check_manifest(sweep: Sweep):
    """A sweep folder holds one sweep: what a re-run asks must match what is there."""
    manifest = dict(sweep_name=sweep.name, definition=sweep.definition, quick=sweep.quick, set=sweep.sets)
    path = sweep.folder / MANIFEST
    try:
        (sweep.folder / "runs").mkdir(parents=True, exist_ok=True)
        with locked(sweep.folder / f".{MANIFEST}.lock"):
            if not path.exists():
                write_json(path, manifest)
                return
    except OSError as err:
        raise SweepError(f"cannot write the sweep folder {sweep.folder} ({err.strerror or err}); choose "
                         "another --results_dir") from None
    try:
        stored = read_json(path, "sweep manifest", "move it aside (the sweep then writes it anew) or use "
                           "another --results_dir")
    except FileError as err:
        raise SweepError(err) from None
    if not isinstance(stored, dict) or stored != json.loads(json.dumps(manifest)):
        stored = stored if isinstance(stored, dict) else {}
        diff = sorted(k for k in manifest if json.loads(json.dumps(manifest[k])) != stored.get(k))
        raise SweepError(f"{sweep.folder} holds a sweep run with other settings ({', '.join(diff)} differ, "
                         f"see {path}); use another --results_dir or remove that folder")


def plan(sweep: Sweep, lines: dict):
    """Record runs that finished without a line (killed in between); return the rest. A line
    trained with another configuration than the sweep's stops the sweep with exit code 2."""
    runs_dir = sweep.folder / "runs"
    pending = []
    for run in sweep.runs:
        if run.key in lines:
            why = stale_line(run, lines[run.key])
            if why:
                raise SweepError(f"{sweep.folder / LINES}: the line of {run.key} does not match this "
                                 f"sweep: {why}; use another --results_dir, or move that folder aside")
            continue
        folder, cfg = runs_dir / run.key, make_run_config(run.overrides, run.seed)
        why = run_folder.problem(folder, cfg) if folder.exists() else None
        if why:  # trained with other settings, or damaged: never adopted
            print(f"warning: {why}; its files were moved to {run_folder.move_aside(folder)}; training the "
                  "run again", file=sys.stderr, flush=True)
        metrics = run_folder.finished_run_of(folder, cfg)
        if metrics is not None:
            append_line(sweep.folder / LINES, result_line(run, metrics, folder))
        else:
            pending.append(run)
    return pending


def make_tasks(sweep: Sweep, pending: list, args, ship: bool) -> list:
    tasks = []
    by_program = ship or on_accelerator()  # Ray's workers may have what the driver lacks
    for group in groups_of(pending, args.seeds_per_task, by_program):
        cfgs = [make_run_config(r.overrides, r.seed).to_dict() for r in group]
        files = {r.key: read_files(sweep.folder / "runs" / r.key) for r in group} if ship else None
        tasks.append((group, dict(cfgs=cfgs,
                                  names=[r.key for r in group], files=files,
                                  runs_dir=None if ship else str(sweep.folder / "runs"),
                                  jax_cache=(args.jax_cache and NODE_CACHE) if ship else args.jax_cache,
                                  progress=("bars" if args.jobs == 1 and not ship else "lines") if args.progress
                                  else False, force=args.force)))
    return tasks


class RunsFailed(RuntimeError):
    """Some runs of the sweep failed; the others finished. Exit code 1."""


# what may end a run without being a bug of this code: the failures of a run, a dead worker
EXPECTED_FAILURES = RUN_FAILURES + (WorkerDied,)


class Recorder:
    """Writes each finished run (folder if it came back as bytes, then its line), prints
    one line per run and logs it to W&B when asked. A run that failed is printed and counted;
    its folder keeps error.txt, and the next invocation trains it again."""

    def __init__(self, sweep: Sweep, total: int, done: int, wandb_project=None):
        self.sweep, self.total, self.done, self.wandb_project = sweep, total, done, wandb_project
        self.t0, self.failed, self.stoppers = time.monotonic(), [], []

    def result(self, group: list, outcome):
        """A task's outcome: its results, or the exception it raised as a whole (a dead worker;
        the other tasks go on)."""
        if isinstance(outcome, SWEEP_STOPPERS):
            print(f"failed: {group[0].group} (seeds {[r.seed for r in group]}): {outcome}", file=sys.stderr)
            self.stoppers.append(outcome)
        elif isinstance(outcome, BaseException):
            for run in group:
                folder = self.sweep.folder / "runs" / run.key
                with contextlib.suppress(OSError, FileError):
                    folder.mkdir(parents=True, exist_ok=True)
                    run_folder.write_error(folder, outcome)
                self._failed(run, f"{type(outcome).__name__}: {outcome}", outcome)
        else:
            self(group, outcome)

    def _failed(self, run, why: str, err: BaseException = None):
        self.failed.append((run.key, why))
        if err is not None and not isinstance(err, EXPECTED_FAILURES):
            traceback.print_exception(err)  # a bug of this code: its traceback
        print(f"failed: {run.key}: {why}", file=sys.stderr, flush=True)

    def finish(self):
        """Raise what stopped the sweep, else a RunsFailed for the runs that failed."""
        if self.stoppers:
            raise self.stoppers[0]
        if self.failed:
            key, why = self.failed[0]
            raise RunsFailed(f"{len(self.failed)} run(s) failed, the others finished (first: {key}: {why}; "
                             "error.txt in its run folder); run the same command again to retry them")

    def __call__(self, group: list, results: list):
        runs = {r.key: r for r in group}
        for name, metrics, files, error in results:
            run = runs[name]
            if files is not None:
                install_run_folder(self.sweep.folder / "runs" / name, files)
            if metrics is None:
                self._failed(run, error or "it did not finish")
                continue
            if append_line(self.sweep.folder / LINES, result_line(run, metrics, self.sweep.folder / "runs" / name)):
                self.done += 1
                print(f"[{self.done}/{self.total}] {name}: test {metrics['test_acc']:.2%}, valid "
                      f"{metrics['best_valid_acc']:.2%} ({metrics.get('seconds_total', 0):.0f} s; "
                      f"sweep {time.monotonic() - self.t0:.0f} s)", flush=True)
                if self.wandb_project:
                    log_to_wandb(self.sweep, run, self.wandb_project)


def fetch_sweep_data(sweep: Sweep):
    """The data of the runs still to train present (downloaded once if missing), before the
    sweep's folder is written: a missing or undownloadable data set is one DataError line, not
    one failure per run."""
    lines = read_lines(sweep.folder) if sweep.folder.is_dir() else {}
    todo = [make_run_config(r.overrides, r.seed) for r in sweep.runs if r.key not in lines]
    seen = set()
    for cfg in todo:
        where = (cfg.dataset_name, cfg.data_dir, cfg.use_test_as_valid, cfg.n_in, cfg.n_out)
        if where not in seen:
            seen.add(where)
            fetch_data(cfg)


def run_sweep(sweep: Sweep, args):
    check_manifest(sweep)
    pending = plan(sweep, read_lines(sweep.folder))
    done = len(sweep.runs) - len(pending)
    print(f"{sweep.name}{' (quick)' if sweep.quick else ''}: {len(sweep.runs)} runs"
          f"{f' in shard {args.shard[0]}/{args.shard[1]}' if args.shard else ''}, {done} finished, "
          f"{len(pending)} to train; results in {sweep.folder}", flush=True)
    record = Recorder(sweep, len(sweep.runs), done, args.wandb_project if args.wandb else None)
    if pending and args.ray:
        run_on_ray(make_tasks(sweep, pending, args, ship=True), args, record)
    elif pending and args.jobs > 1:
        run_in_processes(make_tasks(sweep, pending, args, ship=False), args.jobs, record, gpu_ids())
    else:
        for group, task in make_tasks(sweep, pending, args, ship=False):
            try:
                outcome = train_task(task)
            except Exception as err:  # reported; the other groups go on
                outcome = err
            record.result(group, outcome)
    record.finish()
    return record.done


# --- the figure ----------------------------------------------------------------------------------
def folder_sweep(folder: Path, definitions: dict) -> Sweep:
    """The sweep a results folder holds, as its sweep.json records it (its definition, --quick,
    --seeds and --set), for redrawing; SweepError if the manifest is missing or damaged or
    names a sweep that is not defined."""
    if not (folder / MANIFEST).exists():
        raise SweepError(f"{folder}: no {MANIFEST}, so it is not known which sweep it holds")
    stored = read_manifest(folder, "restore it from git, or move the folder aside")
    name = stored["sweep_name"]
    if name not in definitions:
        raise SweepError(f"{folder / MANIFEST}: sweep {name!r} is not defined in the sweeps file")
    published = reduced(definitions[name]) if stored["quick"] else definitions[name]
    runs = expand(stored["definition"], stored["set"])
    return Sweep(name, folder, stored["definition"], runs, runs, stored["quick"], stored["set"], published)


def redraw_all(results_dir: Path, definitions: dict, paper_numbers: dict) -> list:
    """The figure and summary.csv of every sweep folder in `results_dir` that holds results,
    drawn anew (the report's figures); a folder that cannot be drawn is named in one warning
    line and the others are drawn. Returns the folders drawn."""
    drawn = []
    for folder in sorted(p for p in Path(results_dir).glob("*") if (p / LINES).is_file()):
        try:
            draw_figure(folder_sweep(folder, definitions), paper_numbers)
            drawn.append(folder)
        except RecordError as err:
            print(f"warning: {err}; its figure was not redrawn and the report leaves its results out",
                  file=sys.stderr, flush=True)
        except SweepError as err:
            print(f"warning: {err}; its figure was not redrawn", file=sys.stderr, flush=True)
    return drawn


def has_finished_runs(sweep: Sweep) -> bool:
    keys = {r.key for r in sweep.all_runs}
    return any(key in keys for key in read_lines(sweep.folder))


def draw_figure(sweep: Sweep, paper_numbers: dict) -> list:
    """The sweep's figure.png/.pdf and summary.csv from its finished runs (figures.py)."""
    keys = {r.key for r in sweep.all_runs}
    lines = [line for line in read_lines(sweep.folder).values() if line["key"] in keys]
    if not lines:
        raise SweepError(f"{sweep.folder} holds no finished run of {sweep.name} yet; nothing to plot")
    panel = figures.Panel(sweep.name, sweep.folder, sweep.definition, lines, len(sweep.all_runs),
                          QUICK if sweep.quick else None, changed_fields(lines, sweep.published),
                          sweep.name in published_names())
    try:
        return figures.plot_sweep(panel, paper_numbers)
    except panels.PanelError as err:
        raise SweepError(f"{sweep.folder}: {err}") from None


# --- command line --------------------------------------------------------------------------------
def parse_shard(text: str):
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, got {text!r}")
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return index, count


EXAMPLES = """examples:
  python3 sweep.py --list                                     # every sweep, its runs and estimated time
  python3 sweep.py --sweep_name hSNN_Figure_2b --jobs 2       # Fig. 2b: 180 runs, then its figure
  python3 sweep.py --sweep_name hSNN_Figure_2b --quick        # a reduced smoke version (12 runs)
  python3 sweep.py --sweep_name hSNN_Figure_3b --seeds 5-14   # more seeds, kept apart from the published grid
  python3 sweep.py --sweep_name hSNN_Figure_2b --plot         # the figure from the results present
  python3 sweep.py --report                                   # every figure, summary.csv and results/REPORT.md
"""


def build_parser():
    p = OneLineParser(prog="sweep.py", description="Run a sweep of the paper (or an added experiment) and draw its "
                      "figure; or write the reproduction report.", epilog=EXAMPLES, allow_abbrev=False)
    p.add_argument("--sweep_name", help="a name from --list, e.g. hSNN_Figure_2b")
    p.add_argument("--list", action="store_true", help="print every sweep, what it reproduces, its runs")
    p.add_argument("--report", action="store_true",
                   help="redraw every sweep's figure and summary.csv in --results_dir and (re)write "
                        "<results_dir>/REPORT.md from the results present, and exit")
    p.add_argument("--plot", action="store_true", help="only draw the figure and summary from existing results")
    p.add_argument("--print_configs", action="store_true",
                   help="print every run's resolved configuration, one JSON object per line, in run "
                        "order, and exit without training")
    p.add_argument("--quick", action="store_true", help=f"reduced sweep: {QUICK['seeds']} seeds, "
                   f"<= {QUICK['points']} points per axis, <= {QUICK['n_epochs']} epochs, in <sweep>_quick/")
    p.add_argument("--seeds", type=parse_seeds, metavar="SEEDS",
                   help="train these seeds (e.g. 5-14) instead of the sweep's: an extension beyond the "
                        "published grid, in <sweep>_seeds<SEEDS>/, reported apart from it")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a Config field in every run (e.g. --set n_epochs=1); repeatable")
    p.add_argument("--results_dir", default="results", help="parent folder of sweep folders")
    p.add_argument("--jobs", type=int, default=1, help="seed groups trained at once on this machine")
    p.add_argument("--seeds_per_task", type=int, default=0,
                   help="split tasks (on the CPU a grid point's seeds; on a GPU or Ray the runs that share a "
                        "compiled program) into tasks of at most this many runs (0: whole tasks)")
    p.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: 'auto' or its address")
    p.add_argument("--cpus_per_run", type=float, default=1, help="Ray: CPUs per task")
    p.add_argument("--gpus_per_run", type=float, default=0, help="Ray: GPUs per task (fractions share a GPU)")
    p.add_argument("--shard", type=parse_shard, metavar="I/N",
                   help="run only shard I of N (0 <= I < N), e.g. one task of a job array")
    p.add_argument("--wandb", action="store_true", help="log every finished run to Weights & Biases")
    p.add_argument("--wandb_project", default="hSNN", help="W&B project")
    p.add_argument("--progress", type=parse_bool, default=True,
                   help="report each run's epochs: one line per epoch, naming the run; on a terminal with "
                        "--jobs 1 a progress bar through each epoch too")
    p.add_argument("--force", action="store_true",
                   help="train even if a run's memory estimate exceeds the memory available")
    p.add_argument("--jax_cache", default=None,
                   help="JAX compilation cache folder (default <results_dir>/.jax_cache; 'none': off)")
    p.add_argument("--sweeps_file", action="append", default=[], metavar="FILE",
                   help=f"more sweep definitions (JSON), beside the published ones ({SWEEPS_FILE.relative_to(ROOT)}) "
                        f"and the added experiments ({EXPERIMENTS_DIR.relative_to(ROOT)}/*.json); repeatable")
    p.add_argument("--paper_file", default=str(PAPER_FILE),
                   help=f"published numbers (JSON) (default: {PAPER_FILE.relative_to(ROOT)})")
    return p


# seconds per epoch of each sweep's network, measured on a 2-core x86 CPU (sweep_step_times.py)
STEP_TIMES = ROOT / "benchmarks" / "results" / "cpu_2core" / "sweep_step_times.json"


def estimated_hours(name: str, definition: dict, measured: dict):
    """Hours of one process on the CPU the step times were measured on: every run's epochs
    times the measured seconds per epoch (validation adds 10-20 %); None if not measured."""
    entry = measured.get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("s_per_epoch"), (int, float)):
        return None
    epochs = sum(make_run_config(r.overrides, r.seed).n_epochs for r in expand(definition))
    return epochs * entry["s_per_epoch"] / 3600


def print_list(definitions: dict):
    try:
        measured = read_json(STEP_TIMES).get("sweeps", {})
    except (FileError, AttributeError):
        measured = {}
    width = max(map(len, definitions))
    print(f"{'sweep':<{width}}  runs (--quick)  time on a 2-core CPU, one process  what")
    for name, definition in definitions.items():
        n, nq = len(expand(definition)), len(expand(reduced(definition)))
        hours = estimated_hours(name, definition, measured)
        time_text = "not measured" if hours is None else (f"~{hours:.1f} h" if hours >= 0.1 else f"~{60 * hours:.0f} min")
        print(f"{name:<{width}}  {n:>4} ({nq:>2})  {time_text:>12}  {definition['what']}")
        for note in conversion_notes(definition):
            print(f"{'':<{width}}  note: {note}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        definitions = load_definitions(*args.sweeps_file)
        for name, definition in definitions.items():  # an added experiment's claim the report can judge
            problem = report.claim_problem(definition)
            if problem:
                raise SweepError(f"sweep {name!r}: {problem}")
        if args.list:
            return print_list(definitions)
        paper_numbers = load_paper_numbers(args.paper_file)  # before anything trains
        run_folder.check_results_dir(args.results_dir)
        if args.report:
            redraw_all(Path(args.results_dir), definitions, paper_numbers)
            return print(f"report: {report.write_folder_report(Path(args.results_dir), definitions, paper_numbers)}")
        check_args(args, definitions)
        sweep = open_sweep(args, definitions)
        if args.print_configs:
            for run in sweep.runs:
                print(json.dumps(make_run_config(run.overrides, run.seed).to_dict()))
            return
        failed = None
        if not args.plot:
            if args.jobs > 1 or args.ray:  # the driver trains nothing: it must not take a GPU's memory
                os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            configure_runtime(args.jax_cache,  # XLA's flags as main.py's, before its backend starts
                              [] if args.jobs > 1 or args.ray else [make_run_config(r.overrides, r.seed) for r in sweep.runs])
            check_backend()  # before the sweep's folder is written
            try:
                fetch_sweep_data(sweep)
            except DataError as err:  # no run of the sweep could train: one line, nothing written
                fail("sweep.py", err, 1)
            try:
                run_sweep(sweep, args)
            except RunsFailed as err:  # the figure shows the runs that finished
                failed = err
        if args.plot or failed is None or has_finished_runs(sweep):
            draw_figure(sweep, paper_numbers)
            print(f"figure and summary: {sweep.folder / 'figure.png'}, {sweep.folder / 'summary.csv'}")
        if failed is not None:
            raise failed
    except (SweepError, BackendError, run_folder.RunFolderError) as err:
        fail("sweep.py", err, 2)
    except KeyboardInterrupt:
        fail("sweep.py", "interrupted; run the same command again to continue with the unfinished runs", 130)
    except BrokenPipeError:  # --list or --print_configs piped into a reader that stopped early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except RunsFailed as err:
        fail("sweep.py", err, 1)
    except (DataError, TrainingDiverged, OutOfMemory, FileError) as err:
        fail("sweep.py", f"{err}; the other runs' results are kept", 1)


def check_args(args, definitions):
    if not args.sweep_name:
        raise SweepError("--sweep_name is required (see --list)")
    if args.sweep_name not in definitions:
        close = difflib.get_close_matches(args.sweep_name, list(definitions), n=3, cutoff=0.5)
        raise SweepError(f"unknown sweep {args.sweep_name!r}; closest: {', '.join(close) or 'none'} "
                         "(--list shows all)")
    if args.jobs < 1:
        raise SweepError("--jobs must be >= 1")
    if args.seeds_per_task < 0:
        raise SweepError("--seeds_per_task must be >= 0 (0: whole seed groups)")
    if Path(args.results_dir).exists() and not Path(args.results_dir).is_dir():
        raise SweepError(f"--results_dir {args.results_dir}: is a file, not a folder; choose another")
    if args.jax_cache is None:
        args.jax_cache = str(Path(args.results_dir).resolve() / ".jax_cache")
    elif args.jax_cache.lower() == "none":
        args.jax_cache = None



if __name__ == "__main__":
    main()
