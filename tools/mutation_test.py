"""Mutation testing of the formulas the paper's numbers rest on, and of the code behind the
report, with mutmut 3.

    pip install -r requirements/requirements_dev.txt
    python3 tools/mutation_test.py [--rev HEAD] [--work /tmp/hsnn-mutation] [--modules models ...]
                                   [--report_modules] [--sample K] [--jobs N] [--report]

Copies the git revision `--rev` into `--work` (never the working tree itself), marks every
function that is not a formula of the model, the loss, the training rule, the hierarchies or
the data (`FORMULAS` below; with --report_modules: the report's statistics, tables, summary.csv,
run keys, results table and resume checks, `REPORT`) with `# pragma: no mutate` so that mutmut
leaves it alone, and runs
`mutmut run` there with the quick test suite (`-m "not slow"`). Then prints, per module, how
many mutants the tests killed and lists the survivors with their diffs (`mutmut show`).

A full run takes hours on 2 cores (about 2,700 mutants; mutmut runs only the tests that reach
the mutated function). `--sample K` runs every K-th mutant of each function instead (the same
ones for any revision whose functions are the same), to compare two revisions in reasonable
time; `--offset R` takes the mutants numbered R, R + K, ... instead, a second sample to check
that tests written against the first did not just learn its list. A run can be stopped and
started again: mutmut continues where it stopped. `--modules` limits it to some modules,
`--report` only prints the results of an earlier run. Lines that only raise, print or
describe progress are not mutated (their text is no formula).
"""

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The functions (and classes) whose one-line changes must fail a quick test: the model, the
# normalisation, the loss and each of its terms, the learning-rate schedule, the optimizer and
# the decay-gradient rule, evaluation, the hierarchies and initialisation, and the data.
FORMULAS = {
    "models": None,  # every function
    "utils_normalization": None,
    "training": ["safe_norm", "cross_entropy", "regularizers", "loss_fn", "firing_rates", "per_layer", "measure",
                 "correct_counts", "learning_rate", "scale_by_epoch_adam", "make_optimizer", "decay_grad_scales",
                 "decay_grad_rule", "freeze_fixed_decays", "make_step_fns", "make_steps", "step_programs",
                 "device_data", "picks_of", "Tally", "evaluate", "evaluate_on_device", "eval_rngs",
                 "median_tau_per_layer", "tau_per_neuron", "final_scalars", "recurrent_spectra", "_init_run",
                 "epoch_record", "is_better", "select_best", "_train_group", "_train_epoch", "batch_calls",
                 "_new_metrics"],
    "utils_initialization": ["tau_hierarchy", "conv_hierarchy", "layer_sizes", "tau_from_alpha",
                             "weight_scales", "uniform", "tau_layers", "draw_decays"],
    "utils_dataset": ["batch_plan", "iterate_batches", "dense", "n_batches", "mts_xor_score_mask", "generate_mts_xor",
                      "load_mts_xor", "SpikeCounts", "FrequencyShift", "frequency_shift", "channel_stride", "_spikes",
                      "bin_rows", "shd_validation_rows", "load_audiospikes", "latency_steps", "LatencyCoded",
                      "PixelSequence", "mnist_images", "mnist_seeds", "pixel_permutation", "load_ps_mnist"],
}
# The report's modules: every number a reviewer reads (each panel's statistic, the verdicts and
# their bootstrap, summary.csv, the report's tables), run keys, the results table and its repair,
# and the checks that decide which runs a sweep adopts or resumes.
REPORT = {
    "panels": None,
    "report": None,
    "sweep_definitions": None,
    "figures": ["summary_row", "write_summary", "pooled_taus"],
    "sweep": ["groups_of", "shard_runs", "result_line", "stale_line", "parse_sets", "plan", "folder_sweep",
              "has_finished_runs"],
    "run_folder": ["check_name", "check_results_dir", "holds_run", "_ours_temporary", "tidy", "_run_files",
                   "move_aside", "_publish_aside", "finish_moving_aside", "check_config", "_differing",
                   "finished_metrics", "finished_run_of", "load_checkpoint", "check_data", "epochs_done", "problem",
                   "finish_run", "named_arrays", "params_from_arrays"],
}
MODULES = {**FORMULAS, **REPORT}
CONFIG = """[mutmut]
source_paths =
{sources}
only_mutate =
{modules}
also_copy =
    paper/
    tools/
    benchmarks/
    pytest.ini
    requirements.txt
    README.md
    .ci/
pytest_add_cli_args =
    -m
    not slow
    -x
    -n
    0
    -p
    no:cacheprovider
pytest_add_cli_args_test_selection = tests/
process_isolation = forkserver
forkserver_warmup = none
do_not_mutate_patterns =
    raise\\s
    print\\(
    tqdm
"""


def top_level_names(path: Path) -> set:
    """The functions and classes defined at the top of the module `path`."""
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def unknown_names(root: Path, modules: list) -> list:
    """'module.name' for each function or class listed in MODULES that the module under `root`
    does not define: a list gone stale after a rename would leave that code unmutated, unnoticed."""
    unknown = []
    for m in modules:
        if MODULES[m]:
            defined = top_level_names(root / f"{m}.py")
            unknown += [f"{m}.{name}" for name in MODULES[m] if name not in defined]
    return unknown


def mutated_names(module: str) -> set:
    """The functions and classes of `module` that a run mutates (all, where MODULES lists none)."""
    return set(MODULES[module] or top_level_names(ROOT / f"{module}.py"))


SEP = "\u01c1"  # mutmut's separator of a class and its method in a mutant's name


def function_of(key: str) -> str:
    """The function (or class) a mutant belongs to: 'training.x_loss_fn__mutmut_3' -> 'loss_fn',
    'utils_dataset.x' SEP 'SpikeCounts' SEP '__len____mutmut_1' -> 'SpikeCounts'."""
    name = key.partition(".")[2].rpartition("__mutmut_")[0]
    return name.split(SEP)[1] if name.startswith("x" + SEP) else name[2:]


def first_mutants(modules: list, offset: int, functions=None) -> list:
    """mutmut's patterns for the sample's first mutants: those numbered `offset` of the first
    module's functions, or of the first of `functions` (a function's or a class's)."""
    if not functions:
        return [f"{modules[0]}.x_*__mutmut_{offset}"]
    name = functions[0]
    module = next(m for m in modules if name in mutated_names(m))
    return [f"{module}.x_{name}__mutmut_{offset}", f"{module}.x{SEP}{name}{SEP}*__mutmut_{offset}"]


def exclude_non_formulas(path: Path, keep):
    """Wrap every top-level function or class not in `keep` (None: keep all) in
    `# pragma: no mutate start` / `end`."""
    if keep is None:
        return
    lines = path.read_text().splitlines()
    spans = [(n.lineno - 1 - len(n.decorator_list), n.end_lineno) for n in ast.parse("\n".join(lines)).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name not in keep]
    for start, end in sorted(spans, reverse=True):
        lines[end:end] = ["# pragma: no mutate end"]
        lines[start:start] = ["# pragma: no mutate start"]
    path.write_text("\n".join(lines) + "\n")


def fail(message: str):
    print(f"mutation_test.py: {message}", file=sys.stderr)
    sys.exit(2)


def prepare(rev: str, work: Path, modules: list):
    work.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    unknown = unknown_names(work, modules)
    if unknown:
        fail(f"{rev} defines no {', '.join(unknown)}: bring the lists (FORMULAS, REPORT) up to date")
    for name in modules:
        exclude_non_formulas(work / f"{name}.py", MODULES[name])
    sources = sorted(p.name for p in work.glob("*.py"))  # every module of that revision
    (work / "setup.cfg").write_text(CONFIG.format(sources="\n".join(f"    {s}" for s in sources),
                                                  modules="\n".join(f"    {m}.py" for m in modules)))


def sample(work: Path, modules: list, every: int, offset: int = 1, functions=None) -> list:
    """Every `every`-th mutant of each function, by mutmut's numbering, from the `offset`-th;
    with `functions`, of those functions (and classes) only."""
    names = []
    for name in modules:
        keys = json.loads((work / "mutants" / f"{name}.py.meta").read_text())["exit_code_by_key"]
        for key in keys:
            _, _, number = key.rpartition("__mutmut_")
            if int(number) % every == offset % every and (not functions or function_of(key) in functions):
                names.append(key)
    return sorted(names)


def report(work: Path, modules: list, chosen=None):
    """Per module: mutants by mutmut's status (of `chosen` only, if given); the score counts
    killed and timed-out mutants against all that were checked (a mutant no quick test
    reaches counts as survived)."""
    from mutmut.stats import status_by_exit_code
    print("| module | mutants | killed | timeout | survived | no test reaches it | not checked | score |")
    print("|---|---|---|---|---|---|---|---|")
    survivors = []
    for name in modules:
        meta = work / "mutants" / f"{name}.py.meta"
        if not meta.exists():
            print(f"| {name} | not run yet | | | | | | |")
            continue
        status = {k: status_by_exit_code[c] for k, c in json.loads(meta.read_text())["exit_code_by_key"].items()
                  if chosen is None or k in chosen}
        count = {s: sum(1 for v in status.values() if v == s)
                 for s in ("killed", "timeout", "survived", "no tests", "not checked")}
        checked = count["killed"] + count["timeout"] + count["survived"] + count["no tests"]
        score = (count["killed"] + count["timeout"]) / max(1, checked)
        print(f"| {name} | {len(status)} | {count['killed']} | {count['timeout']} | {count['survived']} | "
              f"{count['no tests']} | {count['not checked']} | {score:.1%} |")
        survivors += [k for k, v in status.items() if v in ("survived", "no tests")]
    for key in survivors:
        shown = subprocess.run(["mutmut", "show", key], cwd=work, capture_output=True, text=True, check=False).stdout
        print(f"\n### {key}\n```diff\n{shown.strip()}\n```")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD", help="git revision to test (default HEAD)")
    parser.add_argument("--work", default="/tmp/hsnn-mutation", help="work folder (a copy of the revision)")
    parser.add_argument("--modules", nargs="*", default=list(FORMULAS), choices=list(MODULES),
                        help="modules to mutate (default: the formulas; --report_modules: the report's)")
    parser.add_argument("--report_modules", action="store_true",
                        help="mutate the report's modules (REPORT) instead of the formulas")
    parser.add_argument("--sample", type=int, default=1, metavar="K", help="every K-th mutant of each function")
    parser.add_argument("--offset", type=int, default=1, metavar="R",
                        help="with --sample K: the mutants numbered R, R + K, ... (another sample of the same size)")
    parser.add_argument("--functions", nargs="+", default=None, metavar="NAME",
                        help="only the mutants of these listed functions or classes (with --sample 1: all of them)")
    parser.add_argument("--jobs", type=int, default=None, help="mutants checked at once (default: the CPU count)")
    parser.add_argument("--report", action="store_true", help="only print the results of an earlier run")
    args = parser.parse_args()
    if args.report_modules:
        args.modules = list(REPORT)
    listed = set().union(*(mutated_names(m) for m in args.modules))
    for name in args.functions or ():
        if name not in listed:
            fail(f"--functions {name}: not a listed function or class of {', '.join(args.modules)}")
    work = Path(args.work)
    jobs = ["--max-children", str(args.jobs)] if args.jobs else []
    chosen = None
    if not (work / "setup.cfg").exists():
        prepare(args.rev, work, args.modules)
    if (args.sample > 1 or args.functions) and not (work / "mutants" / f"{args.modules[0]}.py.meta").exists():
        # generates every mutant and the test statistics, and checks the sample's first ones
        subprocess.run(["mutmut", "run", *jobs, *first_mutants(args.modules, args.offset, args.functions)], cwd=work,
                       check=False)
    if args.sample > 1 or args.functions:
        chosen = sample(work, args.modules, args.sample, args.offset, args.functions)
    if not args.report:
        subprocess.run(["mutmut", "run", *jobs, *(chosen or [])], cwd=work, check=False)
    report(work, args.modules, set(chosen) if chosen else None)


if __name__ == "__main__":
    sys.exit(main())
