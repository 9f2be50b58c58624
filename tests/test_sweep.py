"""sweep.py: definitions, the results table, resume after a kill, shards, Ray, figures.

Runs go through the command line as a subprocess, the way users run sweeps. Sweeps that train
use a tiny MTS-XOR definition written by the test (4 hidden neurons, 2-4 epochs) and one JAX
compilation cache for the whole session, so that only the first run of a shape compiles.
"""

import csv
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import panels
import sweep
import training
import sweep_definitions
from conftest import pause_at_epoch, training_hook, wait_for
from utils_initialization import conv_hierarchy

PUBLISHED_RUNS = {  # the grids of paper/sweeps.json, counted by hand
    "hSNN_Figure_2a": 2 * 5 * 8, "hSNN_Figure_2b": 2 * 10 * 9, "hSNN_Figure_2c": 4 * 3 * 6 * 2,
    "hSNN_Figure_S2a": 10 * 2 * 6, "hSNN_Figure_S2b": 4 * 6, "hSNN_Figure_S2c": 8 * 10,
    "hSNN_Figure_S2e": 4 * 5 * 10 + 10, "hSNN_Figure_S4a": 10 * 4, "hSNN_Figure_S4b": 10 * 4,
    "hSNN_Figure_4b": 10 * 9, "hSNN_Figure_4d": 10 * 7, "SHD_hCSNN_max_performance": 10,
    "SSC_hCSNN_max_performance": 10 * 2, "SSC_hSNN_hierarchy": 5 * 2, "hSNN_Figure_5b": 5 * 5,
    "hSNN_Figure_5c": 5 * 5, "hSNN_Figure_6": 5 * 5 * 2, "hSNN_Figure_3b": 5, "hSNN_Figure_3c": 5,
    "SHD_hCSNN_proper_validation": 10 * 2, "hSNN_Figure_S6_mts_xor": 10, "hSNN_Figure_S6_shd": 10,
}
# a sweep starts from the published SimArgs() defaults, so the task's sizes are given here,
# as the published MTS-XOR sweeps gave them
TINY_FIXED = {"dataset_name": "mts_xor", "n_in": 40, "n_out": 2, "decoder": "vmem_time", "time_max": 1.0,
              "timestep": 0.01, "batch_size": 32, "n_hid": 4, "n_layers": 3, "tau_mem": 0.3,
              "hierarchy_tau": "tanh", "n_epochs": 2}


@pytest.fixture(scope="module")
def definitions():
    return sweep_definitions.load_definitions()


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def tiny_sweeps(tmp_path, grid, **fixed):
    path = tmp_path / "tiny_sweeps.json"
    path.write_text(json.dumps({"tiny": {"what": "tiny MTS-XOR sweep", "paper": "hSNN_Figure_2b",
                                         "fixed": {**TINY_FIXED, **fixed}, "grid": grid}}))
    return path


def sweep_command(root, jax_cache, *args):
    return [sys.executable, str(root / "sweep.py"), "--progress", "false", "--jax_cache", str(jax_cache), *args]


def run_sweep(root, jax_cache, *args, env=None, timeout=600):
    return subprocess.run(sweep_command(root, jax_cache, *args), cwd=root, capture_output=True, text=True,
                          timeout=timeout, env=env)


def lines_of(path):
    """Every line of a runs.jsonl, parsed (a torn line fails the test)."""
    return [json.loads(text) for text in Path(path).read_text().splitlines()]


def without_timings(metrics):
    strip = lambda d: {k: v for k, v in d.items() if k not in ("seconds", "seconds_total")}  # noqa: E731
    return {**strip(metrics), "epochs": [strip(e) for e in metrics["epochs"]]}


# --- definitions -------------------------------------------------------------------------------
def test_every_published_sweep_is_defined(definitions):
    assert sweep_definitions.published_names() == set(PUBLISHED_RUNS) and set(PUBLISHED_RUNS) <= set(definitions)
    assert set(panels.LAYOUTS) == set(PUBLISHED_RUNS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_RUNS))
def test_sweeps_expand_to_the_published_run_counts(definitions, name):
    runs = sweep_definitions.expand(definitions[name])
    assert len(runs) == PUBLISHED_RUNS[name]
    assert len({r.key for r in runs}) == len(runs)
    seeds = definitions[name]["grid"]["seed"]
    for run in runs:  # every run is a valid configuration: preset -> fixed -> grid point
        cfg = sweep_definitions.make_run_config(run.overrides, run.seed)
        assert cfg.seed == run.seed and cfg.dataset_name == definitions[name]["fixed"]["dataset_name"]
        for field, value in run.point.items():
            assert getattr(cfg, field) == value
    for group in sweep.groups_of(runs):  # runs that share one compiled program
        assert {r.seed for r in group} == set(seeds) and len(group) % len(seeds) == 0
        cfgs = [sweep_definitions.make_run_config(r.overrides, r.seed) for r in group]
        assert len({training.program_key(c) for c in cfgs}) == 1
    points = sweep.groups_of(runs, by_program=False)  # the CPU's tasks: one grid point's seeds each
    assert [[r.key for r in g] for g in points] == [[r.key for r in runs if r.group == g[0].group] for g in points]
    assert len(points) == len({r.group for r in runs}) and sum(map(len, points)) == len(runs)
    assert all(len(g) <= 3 for g in sweep.groups_of(runs, 3, by_program=False))


def test_grid_points_and_baseline(definitions):
    runs = sweep_definitions.expand(definitions["hSNN_Figure_2b"])
    assert {(r.point["n_layers"], r.point["delta_tau"]) for r in runs} == {
        (n, d) for n in (3, 4) for d in (-0.5, -0.4, -0.2, -0.1, 0, 0.1, 0.2, 0.4, 0.5)}
    cfg = sweep_definitions.make_run_config(runs[0].overrides, 0)
    assert (cfg.tau_mem, cfg.hierarchy_tau, cfg.n_epochs, cfg.n_hid, cfg.decoder) == (0.3, "tanh", 60, 10, "vmem_time")
    s2e = sweep_definitions.expand(definitions["hSNN_Figure_S2e"])
    base = [r for r in s2e if r.baseline]
    assert [r.seed for r in base] == list(range(10))
    assert all(sweep_definitions.make_run_config(r.overrides, r.seed).delta_tau == 0 for r in base)


def test_published_conv_hierarchy_runs_as_it_computed(definitions):
    """Table 1 says 'kernel' with delta_dil 2; the published code spreads the dilations by
    delta_dil whatever hierarchy_conv says: kernels [3, 6] and dilations [4, 6]."""
    run = sweep_definitions.expand(definitions["SHD_hCSNN_max_performance"])[0]
    cfg = sweep_definitions.make_run_config(run.overrides, 0)
    assert cfg.hierarchy_conv == "kernel" and conv_hierarchy(cfg) == ((3, 6), (4, 6))
    fig4b = sweep_definitions.make_run_config(sweep_definitions.expand(definitions["hSNN_Figure_4b"])[-1].overrides, 0)
    assert fig4b.hierarchy_conv == "kernel" and conv_hierarchy(fig4b) == ((3, 7), (5, 5))
    fig4d = sweep_definitions.make_run_config(sweep_definitions.expand(definitions["hSNN_Figure_4d"])[-1].overrides, 0)
    assert fig4d.hierarchy_conv == "dilation" and conv_hierarchy(fig4d) == ((5, 5), (3, 6))


def test_published_distrib_tau_true_means_none():
    definition = {"what": "", "fixed": {"dataset_name": "shd", "distrib_tau": True}, "grid": {"seed": [0]}}
    run = sweep_definitions.expand(definition)[0]
    assert sweep_definitions.make_run_config(run.overrides, 0).distrib_tau == "none"
    assert any("distrib_tau" in note for note in sweep_definitions.conversion_notes(definition))


def test_quick_reduces_seeds_epochs_and_points(definitions):
    quick = sweep_definitions.reduced(definitions["hSNN_Figure_2b"])
    runs = sweep_definitions.expand(quick)
    assert len(runs) == 2 * 3 * 2
    assert {r.point["delta_tau"] for r in runs} == {-0.5, 0, 0.5}
    assert {r.seed for r in runs} == {0, 1} and runs[0].overrides["n_epochs"] == sweep_definitions.QUICK["n_epochs"]
    assert len(sweep_definitions.expand(sweep_definitions.reduced(definitions["hSNN_Figure_S2e"]))) == 3 * 3 * 2 + 2


def test_set_overrides_every_run_but_not_a_grid_axis(definitions):
    sets = sweep.parse_sets(["n_epochs=1", "n_hid=4", "train_alpha=false", "timestep=none"])
    assert sets == {"n_epochs": 1, "n_hid": 4, "train_alpha": False, "timestep": None}
    runs = sweep_definitions.expand(definitions["hSNN_Figure_2b"], sets)
    assert all(r.overrides["n_epochs"] == 1 and r.overrides["n_hid"] == 4 for r in runs)
    with pytest.raises(sweep.SweepError, match="grid axis"):
        sweep_definitions.expand(definitions["hSNN_Figure_2b"], {"delta_tau": 0.1})
    for bad in (["n_epochs"], ["bogus=1"], ["n_hid=many"]):
        with pytest.raises(sweep.SweepError):
            sweep.parse_sets(bad)


def test_shards_cover_every_run_once_with_whole_seed_groups(definitions):
    runs = sweep_definitions.expand(definitions["hSNN_Figure_2c"])
    shards = [sweep.shard_runs(runs, (i, 5)) for i in range(5)]
    keys = [r.key for shard in shards for r in shard]
    assert sorted(keys) == sorted(r.key for r in runs)
    groups = [{r.group for r in shard} for shard in shards]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert [len(s) for s in shards] == [len(s) for s in (sweep.shard_runs(runs, (i, 5)) for i in range(5))]
    assert max(map(len, shards)) - min(map(len, shards)) <= 6  # balanced to one group of 6 seeds


@pytest.mark.slow
def test_list_and_unknown_names(root):
    listing = subprocess.run([sys.executable, "sweep.py", "--list"], cwd=root, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:2] == ["sweep", "runs"]
    for name, count in PUBLISHED_RUNS.items():  # name, runs (quick runs), estimated hours, what
        assert any(re.match(rf"{name} +{count} \( *\d+\) +(~\d+\.\d h|~\d+ min|not measured)  \S", line)
                   for line in listing.stdout.splitlines()), name
    unknown = subprocess.run([sys.executable, "sweep.py", "--sweep_name", "hSNN_Figure_2x"], cwd=root,
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "hSNN_Figure_2b" in unknown.stderr and "Traceback" not in unknown.stderr
    shard = subprocess.run([sys.executable, "sweep.py", "--sweep_name", "hSNN_Figure_2b", "--shard", "3/3"],
                           cwd=root, capture_output=True, text=True)
    assert shard.returncode == 2 and "--shard" in shard.stderr


def test_the_full_figure_2b_command_plans_180_runs(tmp_path, definitions):
    args = sweep.build_parser().parse_args(["--sweep_name", "hSNN_Figure_2b", "--results_dir", str(tmp_path)])
    opened = sweep.open_sweep(args, definitions)
    assert len(opened.runs) == 180 and opened.folder == tmp_path / "hSNN_Figure_2b"
    tasks = sweep.make_tasks(opened, opened.runs, args, ship=False)
    # on the CPU one task per grid point (each run trains alone there): 18 of 10 seeds
    assert len(tasks) == 18 and [len(task["cfgs"]) for _, task in tasks] == [10] * 18
    # delta_tau changes only the initial time constants: on an accelerator (and Ray) one
    # program per depth, 90 runs each
    shipped = sweep.make_tasks(opened, opened.runs, args, ship=True)
    assert [len(task["cfgs"]) for _, task in shipped] == [90, 90]
    assert [{c["n_layers"] for c in task["cfgs"]} for _, task in shipped] == [{3}, {4}]
    assert sorted(c["seed"] for c in shipped[0][1]["cfgs"]) == sorted(list(range(10)) * 9)


def test_extra_seeds_run_apart_from_the_published_grid(tmp_path, definitions):
    """--seeds trains other seeds of a sweep into their own folder, marked as an extension;
    a seed of the published grid is refused (it would be counted twice)."""
    assert sweep_definitions.parse_seeds("5-14") == list(range(5, 15))
    assert sweep_definitions.parse_seeds("9-11,5,7,5") == [5, 7, 9, 10, 11]
    assert sweep_definitions.seeds_text([5, 6, 7, 9, 11, 12]) == "5-7,9,11-12" and sweep_definitions.seeds_text([3]) == "3"
    for bad in ("", "five", "3-x", "-1"):
        with pytest.raises(Exception):
            sweep_definitions.parse_seeds(bad)
    args = sweep.build_parser().parse_args(["--sweep_name", "hSNN_Figure_3b", "--seeds", "5-14",
                                            "--results_dir", str(tmp_path)])
    opened = sweep.open_sweep(args, definitions)
    assert opened.folder == tmp_path / "hSNN_Figure_3b_seeds5-14"
    assert [r.seed for r in opened.runs] == list(range(5, 15))
    assert "seeds 5-14" in opened.definition["extension"] and "EXTENSION" in opened.definition["what"]
    assert all(r.overrides == sweep_definitions.expand(definitions["hSNN_Figure_3b"])[0].overrides for r in opened.runs)
    args.seeds = [4, 5]
    with pytest.raises(sweep.SweepError, match="seed 4 is in the published grid"):
        sweep.open_sweep(args, definitions)


def fake_finished_run(folder, cfg):
    """A run folder as a finished run leaves it (no training needed)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    (folder / "metrics.json").write_text(json.dumps(dict(epochs=[{}], test_acc=0.9, best_valid_acc=0.9, best_epoch=0,
                                                         median_tau_per_layer=[0.1, 0.2])))
    (folder / "params.npz").write_bytes(b"")


def test_a_finished_folder_joins_only_with_its_own_configuration(tmp_path, capsys):
    """Once sweep.json and runs.jsonl are gone, a rerun with other --set values must not
    claim the old runs: a finished folder of another configuration is moved aside."""
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1], "delta_tau": [0.4]})
    definitions = sweep_definitions.load_definitions(sweeps_file)
    args = sweep.build_parser().parse_args(["--sweep_name", "tiny", "--results_dir", str(tmp_path),
                                            "--set", "n_hid=6"])
    opened = sweep.open_sweep(args, definitions)
    same, other = opened.runs
    fake_finished_run(opened.folder / "runs" / same.key, sweep_definitions.make_run_config(same.overrides, same.seed))
    fake_finished_run(opened.folder / "runs" / other.key,
                      sweep_definitions.make_run_config({**other.overrides, "n_hid": 4}, other.seed))
    pending = sweep.plan(opened, {})
    assert [r.key for r in pending] == [other.key]
    assert [line["key"] for line in lines_of(opened.folder / "runs.jsonl")] == [same.key]
    assert len(list((opened.folder / "runs" / other.key).glob("previous-*"))) == 1
    assert not (opened.folder / "runs" / other.key / "metrics.json").exists()
    err = capsys.readouterr().err
    assert "n_hid" in err and "training the run again" in err


@pytest.mark.parametrize("flag", ["--sweeps_file", "--paper_file"])
@pytest.mark.parametrize("content", [None, "{broken", "[1, 2]", "folder"])
def test_flag_files_are_checked_before_anything_runs(tmp_path, capsys, flag, content):
    path = tmp_path / "file.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--sweep_name", "hSNN_Figure_3b", flag, str(path), "--results_dir", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and flag in err and str(path) in err
    assert not (tmp_path / "results").exists()  # nothing trained, nothing written


def test_a_definitions_file_with_a_malformed_sweep_is_one_line(tmp_path, capsys):
    path = tmp_path / "sweeps.json"
    path.write_text(json.dumps({"tiny": {"what": "x", "fixed": {}, "grid": {"seed": []}}}))
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--list", "--sweeps_file", str(path)])
    assert exit_.value.code == 2 and "sweep 'tiny' is not a definition" in capsys.readouterr().err


def test_a_report_into_an_unwritable_folder_is_one_line(capsys):
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc, which not even root can write")
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--report", "--results_dir", "/proc/hsnn-results"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "cannot write the report" in err


# --- the results table -------------------------------------------------------------------------
def test_append_line_is_whole_unique_and_repairs_a_torn_tail(tmp_path):
    path = tmp_path / "runs.jsonl"
    assert sweep_definitions.append_line(path, {"key": "a", "test_acc": 0.1})
    assert not sweep_definitions.append_line(path, {"key": "a", "test_acc": 0.2})  # never twice
    with open(path, "ab") as f:
        f.write(b'{"key": "b", "test_acc"')  # a crash in the middle of a write
    assert sweep_definitions.append_line(path, {"key": "c", "test_acc": 0.3})
    assert [line["key"] for line in lines_of(path)] == ["a", "c"]
    with pytest.raises(sweep_definitions.RecordError, match=r"runs.jsonl, line 1: the run record 'a' lacks its 'group'"):
        sweep_definitions.read_lines(tmp_path)  # records without their fields


def _append_many(path, prefix):
    for i in range(40):
        sweep_definitions.append_line(Path(path), {"key": f"{prefix}{i}", "test_acc": 0.5, "payload": "x" * 2000})


@pytest.mark.slow
def test_concurrent_appends_from_processes(tmp_path):
    path = tmp_path / "runs.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), p)) for p in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    keys = [line["key"] for line in lines_of(path)]
    assert sorted(keys) == sorted(f"{p}{i}" for p in "ab" for i in range(40))


# --- running sweeps ----------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_results_equal_main_per_run(root, tmp_path, jax_cache):
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1], "delta_tau": [0.4]})
    result = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                       "--results_dir", str(tmp_path / "results"))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "results" / "tiny"
    lines = {line["seed"]: line for line in lines_of(folder / "runs.jsonl")}
    assert sorted(lines) == [0, 1]
    printed = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                        "--print_configs")
    configs = [json.loads(text) for text in printed.stdout.splitlines()]
    assert printed.returncode == 0 and [c["seed"] for c in configs] == [0, 1]
    assert all(lines[c["seed"]]["config"] == c for c in configs)  # each line says what it trained
    for seed in (1,):  # the second seed of the group, trained after the first in one call
        flags = [f"--{k}={'none' if v is None else v}" for k, v in configs[seed].items()]
        main = subprocess.run([sys.executable, "main.py", *flags, "--results_dir", str(tmp_path / "main"),
                               "--save_dir_name", f"s{seed}", "--progress", "false"],
                              cwd=root, capture_output=True, text=True, timeout=300)
        assert main.returncode == 0, main.stderr
        ours = json.loads((folder / "runs" / lines[seed]["key"] / "metrics.json").read_text())
        theirs = json.loads((tmp_path / "main" / f"s{seed}" / "metrics.json").read_text())
        assert without_timings(ours) == without_timings(theirs)
        assert lines[seed]["test_acc"] == theirs["test_acc"] and lines[seed]["valid_acc"] == theirs["best_valid_acc"]
        assert lines[seed]["median_tau_per_layer"] == theirs["median_tau_per_layer"]
        assert lines[seed]["overrides"]["delta_tau"] == 0.4 and lines[seed]["seconds"] > 0
    assert (folder / "figure.png").exists() and (folder / "summary.csv").exists()
    again = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                      "--results_dir", str(tmp_path / "results"))
    assert again.returncode == 0 and "2 finished, 0 to train" in again.stdout
    other = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                      "--results_dir", str(tmp_path / "results"), "--set", "n_epochs=1")
    assert other.returncode == 2 and "set" in other.stderr and "Traceback" not in other.stderr


def children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


@pytest.mark.slow
def test_killed_sweep_resumes_without_training_a_run_twice(root, tmp_path, jax_cache):
    """SIGKILL the driver of a 2-process sweep while runs are in flight; its workers die
    with it; the same command finishes the sweep: every run once, finished runs untouched,
    interrupted runs continued from their last epoch."""
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1], "delta_tau": [-0.4, 0, 0.4]}, n_epochs=4)
    args = ["--sweep_name", "tiny", "--sweeps_file", str(sweeps_file), "--results_dir", str(tmp_path), "--jobs", "2"]
    folder = tmp_path / "tiny"
    env, marker = pause_at_epoch(tmp_path / "hook", epoch=2, when="cfg.seed == 1 and cfg.delta_tau == 0.4")
    proc = subprocess.Popen(sweep_command(root, jax_cache, *args), cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        wait_for(marker, proc)
        snapshot = wait_for_runs_in_flight(folder, proc)
        workers = children_of(proc.pid)
        assert len(workers) >= 2  # two training processes (and multiprocessing's helper)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "a worker outlived the driver"
    finally:
        with_pgroup_killed(proc)
    before = {line["key"]: line for line in lines_of(folder / "runs.jsonl")}
    assert 1 <= len(before) < 6

    resumed = run_sweep(root, jax_cache, *args)
    assert resumed.returncode == 0, resumed.stderr
    lines = lines_of(folder / "runs.jsonl")
    assert sorted(line["key"] for line in lines) == sorted(r.key for r in sweep_definitions.expand(
        sweep_definitions.load_definitions(sweeps_file)["tiny"]))
    for line in lines:
        if line["key"] in before:
            assert line == before[line["key"]]
        metrics = json.loads((folder / "runs" / line["key"] / "metrics.json").read_text())
        assert len(metrics["epochs"]) == 4 and line["test_acc"] == metrics["test_acc"]
    for key, epochs in snapshot.items():  # the epochs done before the kill were not redone
        if key in before:
            continue
        metrics = json.loads((folder / "runs" / key / "metrics.json").read_text())
        assert metrics["epochs"][:len(epochs)] == epochs


def wait_for_runs_in_flight(folder, proc, timeout=300):
    """Wait until a line is written and another run has finished an epoch but not the run;
    return {key: epochs so far} of the unfinished runs."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        lines = folder / "runs.jsonl"
        if lines.exists() and lines.read_text().count("\n") >= 1:
            partial = {}
            for metrics_file in (folder / "runs").glob("*/metrics.json"):
                with_retry = _read_json(metrics_file)
                if with_retry and "test_acc" not in with_retry and with_retry["epochs"]:
                    partial[metrics_file.parent.name] = with_retry["epochs"]
            if partial:
                return partial
        time.sleep(0.02)
    pytest.fail("the sweep never had a run in flight after a finished one")


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def with_pgroup_killed(proc):
    """Clean up what this test started: the process group of its own subprocess."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_shards_append_to_one_table_and_plot_merges(root, tmp_path, jax_cache):
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1], "delta_tau": [0, 0.4]}, n_epochs=1)
    common = ["--sweep_name", "tiny", "--sweeps_file", str(sweeps_file), "--results_dir", str(tmp_path)]
    procs = [subprocess.Popen(sweep_command(root, jax_cache, *common, "--shard", f"{i}/2"), cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all("2 runs in shard" in out for out, _ in outputs)
    lines = lines_of(tmp_path / "tiny" / "runs.jsonl")
    assert sorted(line["key"] for line in lines) == sorted(
        f"delta_tau={d}__seed={s}" for d in ("0", "0.4") for s in (0, 1))
    plot = run_sweep(root, jax_cache, *common, "--plot")
    assert plot.returncode == 0, plot.stderr
    rows = list(csv.DictReader(open(tmp_path / "tiny" / "summary.csv")))
    assert [int(r["n_seeds"]) for r in rows if r["n_seeds"] != "0"] == [2, 2]


@pytest.mark.slow
def test_quick_figure_2b_writes_figure_and_summary(root, tmp_path, jax_cache):
    result = run_sweep(root, jax_cache, "--sweep_name", "hSNN_Figure_2b", "--quick", "--set", "n_epochs=1",
                       "--set", "n_hid=4", "--set", "batch_size=32", "--results_dir", str(tmp_path), "--jobs", "2")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "hSNN_Figure_2b_quick"
    assert len(lines_of(folder / "runs.jsonl")) == 12
    for name in ("figure.png", "figure.pdf"):
        assert (folder / name).stat().st_size > 10_000
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    assert len(rows) == 6 and {r["series"] for r in rows} == {"2 hidden layers", "3 hidden layers"}
    paper = json.loads(sweep_definitions.PAPER_FILE.read_text())["hSNN_Figure_2b"]
    for row in rows:
        assert row["stat"] == "median" and row["n_seeds"] == "2"
        published = f"n_layers={int(row['series'].split()[0]) + 1}"  # the flag counts the output layer
        expected = paper["series"][published][paper["x_values"].index(float(row["x"]))]
        assert float(row["paper"]) == expected
        assert float(row["difference"]) == pytest.approx(float(row["ours"]) - expected, abs=0.01)
    manifest = json.loads((folder / "sweep.json").read_text())
    assert manifest["quick"] and manifest["set"] == {"n_epochs": 1, "n_hid": 4, "batch_size": 32}


@pytest.mark.slow
def test_plot_without_results_exits_2(root, tmp_path):
    result = subprocess.run([sys.executable, "sweep.py", "--sweep_name", "hSNN_Figure_2a", "--plot",
                             "--results_dir", str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 2 and "no finished run" in result.stderr


@pytest.mark.slow
def test_a_sweep_without_its_data_stops_with_exit_1(root, tmp_path, jax_cache):
    """SHD is not in the (empty) data folder and its download is pointed at a closed local
    port: offline anywhere, nothing is downloaded into the repository."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = run_sweep(root, jax_cache, "--sweep_name", "hSNN_Figure_3c", "--quick", "--set", "n_epochs=1",
                       "--set", f"data_dir={tmp_path / 'data'}", "--results_dir", str(tmp_path),
                       env={**os.environ, "HSNN_AUDIO_URL": f"http://127.0.0.1:{closed}/"})
    assert result.returncode == 1 and "shd" in result.stderr and "Traceback" not in result.stderr
    assert "downloading it failed" in result.stderr


# --- Ray and W&B (optional dependencies, tested for real when installed) ------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A real local Ray instance with 2 CPUs, started and stopped by the test."""
    pytest.importorskip("ray")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    beside_python = Path(sys.executable).parent / "ray"  # the ray of this environment
    ray_cli = str(beside_python) if beside_python.exists() else shutil.which("ray")
    head = subprocess.Popen([ray_cli, "start", "--head", "--num-cpus", "2", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", temp, "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, head)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(15)
        except subprocess.TimeoutExpired:
            pass
        with_pgroup_killed(head)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_port(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(2)  # the GCS answers before the raylet has registered
                return
        time.sleep(0.5)
    pytest.fail("ray start did not come up")


@pytest.mark.slow
def test_ray_runs_seed_groups_as_tasks_and_the_driver_writes_results(root, tmp_path, jax_cache, ray_cluster):
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1], "delta_tau": [0.4]})
    local = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                      "--results_dir", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    # an unfinished run folder of seed 1 on the driver: the Ray task must continue it
    partial = tmp_path / "ray" / "tiny" / "runs"
    shutil.copytree(tmp_path / "local" / "tiny" / "runs" / "delta_tau=0.4__seed=1", partial / "delta_tau=0.4__seed=1")
    metrics_file = partial / "delta_tau=0.4__seed=1" / "metrics.json"
    shutil.copy(metrics_file, tmp_path / "finished_metrics.json")
    metrics_file.unlink()  # without metrics.json, the run folder is one that never finished
    (partial / "delta_tau=0.4__seed=1" / "params.npz").unlink()
    on_ray = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                       "--results_dir", str(tmp_path / "ray"), "--ray", ray_cluster, "--cpus_per_run", "1")
    assert on_ray.returncode == 0, on_ray.stderr
    ours = {line["key"]: line for line in lines_of(tmp_path / "ray" / "tiny" / "runs.jsonl")}
    ref = {line["key"]: line for line in lines_of(tmp_path / "local" / "tiny" / "runs.jsonl")}
    assert sorted(ours) == sorted(ref)
    for key in ours:
        assert ours[key]["test_acc"] == ref[key]["test_acc"]
        run_dir = tmp_path / "ray" / "tiny" / "runs" / key
        assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.json", "params.npz",
                                                             "provenance.json"]
        assert without_timings(json.loads((run_dir / "metrics.json").read_text())) == without_timings(
            json.loads((tmp_path / "local" / "tiny" / "runs" / key / "metrics.json").read_text()))
    assert (tmp_path / "ray" / "tiny" / "figure.png").exists()


@pytest.mark.slow
def test_wandb_offline_logs_each_run(root, tmp_path, jax_cache):
    pytest.importorskip("wandb")
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0], "delta_tau": [0.4]}, n_epochs=1)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    result = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                       "--results_dir", str(tmp_path), "--wandb", env=env)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "tiny" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


# --- damaged results and bad flags: one line, and the sweep goes on --------------------------------
KILL_SEED = """
def patch(module):
    \"\"\"A sweep worker training seed {seed} dies as the out-of-memory killer would end it.\"\"\"
    import multiprocessing
    real = module.train_runs

    def train_runs(cfgs, *args, **kwargs):
        if multiprocessing.parent_process() and {seed} in [c.seed for c in cfgs]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(cfgs, *args, **kwargs)
    module.train_runs = train_runs
"""


@pytest.mark.slow
def test_a_dead_worker_costs_only_its_own_run(root, tmp_path, jax_cache):
    """A worker killed by SIGKILL (the out-of-memory killer, say) while training seed 1: the
    other runs finish, seed 1 is recorded as failed (error.txt, a line on stderr, exit code
    1, no traceback), and the next invocation trains it."""
    env = training_hook(tmp_path / "hook", KILL_SEED.format(seed=1))
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1, 2], "delta_tau": [0.4]}, n_epochs=1)
    args = ["--sweep_name", "tiny", "--sweeps_file", str(sweeps_file), "--results_dir", str(tmp_path),
            "--jobs", "2", "--seeds_per_task", "1"]
    result = run_sweep(root, jax_cache, *args, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "failed: delta_tau=0.4__seed=1: WorkerDied" in result.stderr
    assert "1 run(s) failed, the others finished" in result.stderr.strip().splitlines()[-1]
    folder = tmp_path / "tiny"
    assert sorted(line["seed"] for line in lines_of(folder / "runs.jsonl")) == [0, 2]
    assert "WorkerDied" in (folder / "runs" / "delta_tau=0.4__seed=1" / "error.txt").read_text()
    assert (folder / "figure.png").exists()  # drawn from the runs that finished
    again = run_sweep(root, jax_cache, *args)
    assert again.returncode == 0, again.stderr
    assert sorted(line["seed"] for line in lines_of(folder / "runs.jsonl")) == [0, 1, 2]
    assert not (folder / "runs" / "delta_tau=0.4__seed=1" / "error.txt").exists()


@pytest.mark.slow
def test_a_damaged_run_folder_is_moved_aside_and_trained_again(root, tmp_path, jax_cache):
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1], "delta_tau": [0.4]}, n_epochs=1)
    args = ["--sweep_name", "tiny", "--sweeps_file", str(sweeps_file), "--results_dir", str(tmp_path)]
    folder = tmp_path / "tiny"
    runs = folder / "runs"
    (runs / "delta_tau=0.4__seed=0").mkdir(parents=True)
    (runs / "delta_tau=0.4__seed=0" / "config.json").write_text("{broken")
    (runs / "delta_tau=0.4__seed=1").mkdir()
    (runs / "delta_tau=0.4__seed=1" / "config.json").write_text(json.dumps(
        sweep_definitions.make_run_config(sweep_definitions.expand(json.loads(sweeps_file.read_text())["tiny"])[1].overrides, 1).to_dict()))
    (runs / "delta_tau=0.4__seed=1" / "checkpoint.npz").write_bytes(b"\x00" * 100)
    result = run_sweep(root, jax_cache, *args)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("training the run again" in w for w in warnings), result.stderr
    assert len(lines_of(folder / "runs.jsonl")) == 2
    for name in ("delta_tau=0.4__seed=0", "delta_tau=0.4__seed=1"):
        assert len(list((runs / name).glob("previous-*"))) == 1 and (runs / name / "params.npz").exists()


@pytest.mark.slow
def test_junk_in_runs_jsonl_is_skipped_with_a_warning(root, tmp_path, jax_cache):
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0], "delta_tau": [0.4]}, n_epochs=1)
    args = ["--sweep_name", "tiny", "--sweeps_file", str(sweeps_file), "--results_dir", str(tmp_path)]
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "runs.jsonl").write_bytes(b'42\n{"a": 1}\n\xff\xfe binary junk\n')
    result = run_sweep(root, jax_cache, *args)
    assert result.returncode == 0, result.stderr
    assert "skipped 3 line(s)" in result.stderr and "Traceback" not in result.stderr
    assert [parse["key"] for parse in map(sweep_definitions.parse_line, (tmp_path / "tiny" / "runs.jsonl").read_bytes().splitlines())
            if parse] == ["delta_tau=0.4__seed=0"]
    again = run_sweep(root, jax_cache, *args, "--plot")
    assert again.returncode == 0 and (tmp_path / "tiny" / "summary.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("content", ["{broken", "[]", "\x00\x01"])
def test_a_damaged_sweep_json_is_one_line(root, tmp_path, jax_cache, content):
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0], "delta_tau": [0.4]}, n_epochs=1)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "sweep.json").write_text(content)
    for extra in ([], ["--plot"]):
        result = run_sweep(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                           "--results_dir", str(tmp_path), *extra)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "sweep.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [(["--seeds_per_task", "-1"], "--seeds_per_task"),
                                          (["--jobs", "0"], "--jobs"),
                                          (["--results_dir", "FILE"], "is a file")])
def test_bad_sweep_flags_are_one_line(root, tmp_path, jax_cache, args, message):
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    result = run_sweep(root, jax_cache, "--sweep_name", "hSNN_Figure_2a", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "FILE").is_dir()


@pytest.mark.slow
def test_an_unwritable_results_dir_is_one_line(root, jax_cache):
    if not Path("/sys").is_dir():
        pytest.skip("needs /sys, which not even root can write")
    result = run_sweep(root, jax_cache, "--sweep_name", "hSNN_Figure_2a", "--results_dir", "/sys/hsnn")
    assert result.returncode == 2 and "cannot write the sweep folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_shd_recurrence_sweep_runs_on_synthetic_files(root, tmp_path, jax_cache):
    """Fig. S6's SHD sweep (it waits for the real data here) on a small synthetic SHD: every
    run records each hidden layer's sorted eigenvalue magnitudes of W_rec, the figure and the
    summary follow, and the report has its section."""
    from test_audiospikes import synthetic
    synthetic.make_dataset("shd", tmp_path / "data" / "audiospikes", {"train": 40, "test": 10}, seed=2)
    args = ["--sweep_name", "hSNN_Figure_S6_shd", "--quick", "--set", f"data_dir={tmp_path / 'data'}",
            "--set", "n_epochs=2", "--results_dir", str(tmp_path / "results")]
    result = run_sweep(root, jax_cache, *args)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "results" / "hSNN_Figure_S6_shd_quick"
    lines = lines_of(folder / "runs.jsonl")
    assert sorted(line["seed"] for line in lines) == [0, 1]
    for line in lines:
        spectra = line["w_rec_abs_eigenvalues"]
        assert [len(layer) for layer in spectra["stored"]] == [32, 32, 32] and len(spectra["masked"]) == 3
        for layer in spectra["stored"] + spectra["masked"]:
            assert layer == sorted(layer, reverse=True) and layer[0] > 0
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    assert [r["x"] for r in rows if r["series"] == "largest abs. eigenvalue of W_rec, stored"] == ["1", "2", "3"]
    assert (folder / "figure.png").exists()
    report = run_sweep(root, jax_cache, "--report", "--results_dir", str(tmp_path / "results"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "results" / "REPORT.md").read_text()
    section = text[text.index("## Fig. S6"):text.index("## Fig. S2b")]
    assert "`hSNN_Figure_S6_shd`: reduced (--quick, modified: n_epochs=2" in section
    assert "shd: rank correlation" in section


# --- hand-edited and older results files, careless definitions (one line each) -----------------
def sweep_main(capsys, *args):
    """sweep.py's main in this process: (exit code, stderr lines)."""
    try:
        sweep.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def two_reported_sweeps(tmp_path, definitions):
    from test_report import write_results
    write_results(tmp_path / "hSNN_Figure_3b", definitions["hSNN_Figure_3b"], lambda run: 99.0)
    write_results(tmp_path / "hSNN_Figure_S6_mts_xor", definitions["hSNN_Figure_S6_mts_xor"], lambda run: 80.0)
    for name in ("hSNN_Figure_3b", "hSNN_Figure_S6_mts_xor"):
        (tmp_path / name / "sweep.json").write_text(json.dumps(dict(
            sweep_name=name, definition=definitions[name], quick=False, set={})))
    lines = (tmp_path / "hSNN_Figure_S6_mts_xor" / "runs.jsonl").read_text().splitlines()
    for line in lines:  # the recurrent spectra that this sweep's lines hold
        record = json.loads(line)
        record["w_rec_abs_eigenvalues"] = {k: [[0.2, 0.1], [0.3, 0.1], [0.4, 0.1]] for k in ("stored", "masked")}
        lines[lines.index(line)] = json.dumps(record)
    (tmp_path / "hSNN_Figure_S6_mts_xor" / "runs.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit,problem", [
    (lambda r: r.pop("point"), "lacks its 'point'"),
    (lambda r: r.update(test_acc="0.9"), "has a str for 'test_acc', where a int or float belongs"),
    (lambda r: r.update(seed=True), "has a bool for 'seed'"),
    (lambda r: r.update(config=[1]), "has a list for 'config'"),
])
def test_a_hand_edited_results_line_is_one_line_and_the_other_sweeps_are_reported(
        tmp_path, capsys, definitions, edit, problem):
    two_reported_sweeps(tmp_path, definitions)
    path = tmp_path / "hSNN_Figure_3b" / "runs.jsonl"
    records = [json.loads(t) for t in path.read_text().splitlines()]
    edit(records[2])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, err = sweep_main(capsys, "--report", "--results_dir", str(tmp_path))
    assert code == 0 and len(err) == 1 and f"{path}, line 3: the run record 'seed=2' {problem}" in err[0], err
    text = (tmp_path / "REPORT.md").read_text()
    assert "### `hSNN_Figure_3b`: results unreadable" in text
    assert "### `hSNN_Figure_S6_mts_xor`: complete (10 of 10 runs)" in text  # the other sweep is reported
    for args in (["--plot"], ["--jax_cache", "none"]):  # drawing it, and running it: before anything trains
        code, err = sweep_main(capsys, "--sweep_name", "hSNN_Figure_3b", "--results_dir", str(tmp_path), *args)
        assert code == 2 and len(err) == 1 and "line 3" in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize("manifest", [
    {"sweep_name": "hSNN_Figure_3b", "definition": [1, 2], "quick": False, "set": {}},
    {"sweep_name": "hSNN_Figure_3b", "definition": {"what": "x", "fixed": {}, "grid": {"seed": 3}}, "quick": False,
     "set": {}},
    {"sweep_name": "hSNN_Figure_3b", "quick": "no", "set": {}},
    {"sweep_name": "hSNN_Figure_3b", "quick": False, "set": {"bogus": 1}},
])
def test_a_sweep_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, definitions, manifest):
    two_reported_sweeps(tmp_path, definitions)
    manifest.setdefault("definition", definitions["hSNN_Figure_3b"])
    (tmp_path / "hSNN_Figure_3b" / "sweep.json").write_text(json.dumps(manifest))
    code, err = sweep_main(capsys, "--sweep_name", "hSNN_Figure_3b", "--plot", "--results_dir", str(tmp_path))
    assert code == 2 and len(err) == 1 and "sweep.json: not a sweep manifest" in err[0], err
    code, err = sweep_main(capsys, "--report", "--results_dir", str(tmp_path))
    assert code == 0 and all("sweep.json: not a sweep manifest" in e for e in err) and err, err
    assert "### `hSNN_Figure_3b`: complete (5 of 5 runs)" in (tmp_path / "REPORT.md").read_text()


def test_a_definition_that_repeats_a_grid_value_is_refused(tmp_path, capsys):
    path = tmp_path / "sweeps.json"
    for grid, value in (({"delta_tau": [0.1, 0.2, 0.1], "seed": [0]}, "0.1"), ({"seed": [0, 1, 0]}, "0")):
        path.write_text(json.dumps({"tiny": {"what": "", "fixed": TINY_FIXED, "grid": grid}}))
        code, err = sweep_main(capsys, "--sweep_name", "tiny", "--sweeps_file", str(path),
                               "--results_dir", str(tmp_path))
        assert code == 2 and len(err) == 1 and f"repeats the value {value} of its grid axis" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweeps.json"]


@pytest.mark.parametrize("seeds,message", [("5-100000000000", "expected seeds in 0 .. 2**32 - 1"),
                                           ("5-99999", "asks for more than 10000 seeds"),
                                           ("0-5000,6000-12000", "asks for more than 10000 seeds"),
                                           ("9-5", "from low to high")])
def test_seeds_beyond_what_a_sweep_can_hold_are_refused(tmp_path, capsys, seeds, message):
    code, err = sweep_main(capsys, "--sweep_name", "hSNN_Figure_3b", "--seeds", seeds, "--results_dir", str(tmp_path))
    assert code == 2 and len(err) == 1 and message in err[0], err


SLOW_IMPORT = """
def patch(module):
    \"\"\"A sweep worker takes its time importing (as JAX can), and says so in {marker!r}.\"\"\"
    import multiprocessing
    if multiprocessing.current_process().name != "MainProcess":  # a worker, still starting
        with open({marker!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        time.sleep(6)
"""


@pytest.mark.slow
def test_workers_of_a_driver_killed_while_they_start_end_too(root, tmp_path, jax_cache):
    """The driver killed (SIGKILL) while its workers still import their modules: once they
    get to the point where they would take work, they find their driver gone and end."""
    if not Path("/proc").is_dir():
        pytest.skip("needs Linux's /proc")
    marker = tmp_path / "importing"
    env = training_hook(tmp_path / "hook", SLOW_IMPORT.format(marker=str(marker)))
    sweeps_file = tiny_sweeps(tmp_path, {"seed": [0, 1], "delta_tau": [0.4]}, n_epochs=1)
    driver = subprocess.Popen(sweep_command(root, jax_cache, "--sweep_name", "tiny", "--sweeps_file", str(sweeps_file),
                                            "--results_dir", str(tmp_path), "--jobs", "2", "--seeds_per_task", "1"),
                              cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(marker, driver, timeout=120)
    time.sleep(0.5)
    driver.kill()
    driver.wait()
    workers = [int(pid) for pid in marker.read_text().split()]
    deadline = time.time() + 60
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers), "a worker outlived its driver"


@pytest.mark.slow
def test_the_added_experiment_runs_at_its_smallest_size_into_its_figure_and_report(root, tmp_path, jax_cache):
    """experiments/alif_vs_lif.json, the worked example of docs/extending.md: its sweep at the
    smallest size (--quick, one epoch) trains both neurons, draws its categorical figure and
    gets its own report section with its claim's verdict."""
    args = ["--sweep_name", "ALIF_vs_LIF_mts_xor", "--quick", "--set", "n_epochs=1", "--set", "n_hid=4",
            "--set", "batch_size=32", "--results_dir", str(tmp_path)]
    result = run_sweep(root, jax_cache, *args)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "ALIF_vs_LIF_mts_xor_quick"
    assert sorted(line["config"]["neuron"] for line in lines_of(folder / "runs.jsonl")) == ["alif"] * 2 + ["lif"] * 2
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    assert [r["x"] for r in rows] == ["lif", "alif"] and "not recoverable" not in rows[0]["note"]
    assert all("valid_silent_L1" in line["measures"] and "test_vmem_L3" in line["measures"] for line in lines_of(folder / "runs.jsonl"))
    assert run_sweep(root, jax_cache, "--report", "--results_dir", str(tmp_path)).returncode == 0
    section = (tmp_path / "REPORT.md").read_text().split("## ALIF against LIF (MTS-XOR)")[1]
    assert "**Rule:** the median test accuracy with neuron = alif is above the one with neuron = lif." in section
    assert "**Verdict:** " in section and "difference of the medians [points]" in section


def test_a_sweep_without_its_data_stops_before_any_run_in_one_line(tmp_path, capsys, monkeypatch):
    """SHD absent and its server unreachable: one try to download, one line, exit code 1, and
    no sweep folder (no lock files, no failed runs)."""
    import utils_dataset
    path = tmp_path / "sweeps.json"
    fixed = {"dataset_name": "shd", "n_hid": 4, "n_epochs": 1, "data_dir": str(tmp_path / "data")}
    path.write_text(json.dumps({"tiny_shd": {"what": "", "fixed": fixed, "grid": {"seed": [0, 1], "n_layers": [3, 4]}}}))
    tries, real = [], utils_dataset.download
    monkeypatch.setattr(utils_dataset, "download", lambda *a: tries.append(a) or real(*a))
    code, err = sweep_main(capsys, "--sweep_name", "tiny_shd", "--sweeps_file", str(path), "--results_dir",
                           str(tmp_path / "results"), "--jax_cache", "none")
    assert code == 1 and len(err) == 1 and "shd_train.h5.gz: missing, and downloading it failed" in err[0], err
    assert "kept" not in err[0] and len(tries) == 1
    assert not (tmp_path / "results" / "tiny_shd").exists()


# --- workers on GPUs: their share of the memory, their own device --------------------------------
def test_each_worker_gets_its_share_of_a_gpu_and_its_own_device():
    import sweep_backends as sb
    assert sb.worker_env(0, 2, []) == {}  # the CPU: nothing
    one = [sb.worker_env(lane, 2, ["0"]) for lane in range(2)]
    assert one[0] == one[1] == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.450"}
    four_on_two = [sb.worker_env(lane, 4, ["2", "5"]) for lane in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in four_on_two] == ["2", "5", "2", "5"]
    assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450" for e in four_on_two)  # two lanes per GPU
    assert sb.worker_env(1, 3, ["0", "1", "2"])["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.900"
    assert sb.ray_env(0) == {} and sb.ray_env(0.25)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
    assert sb.ray_env(2)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.900"


def test_worker_processes_start_with_their_lanes_environment(monkeypatch):
    """What run_in_processes hands each worker process: its initializer applies the lane's
    environment before anything else runs there (tried in this process on a copy of its
    environment)."""
    import concurrent.futures as cf
    import sweep_backends as sb
    started = []

    class Pool:
        def __init__(self, workers, mp_context, initializer, initargs):
            started.append((initializer, initargs))

        def submit(self, fn, task):
            future = cf.Future()
            future.set_result(task)
            return future

        def shutdown(self, **kwargs):
            pass

    monkeypatch.setattr(sb.cf, "ProcessPoolExecutor", Pool)
    recorded = []
    sb.run_in_processes([("g1", "t1"), ("g2", "t2")], 2, type("R", (), {"result": lambda self, g, o: recorded.append(g)})(),
                        gpus=["0", "1"])
    assert sorted(recorded) == ["g1", "g2"]
    envs = sorted(args[1]["CUDA_VISIBLE_DEVICES"] for _, args in started)
    assert envs == ["0", "1"] and all(args[0] == os.getpid() for _, args in started)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    initializer, args = started[0]
    initializer(os.getppid(), args[1])  # as the worker would run it, with the driver its parent
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.900" and os.environ["CUDA_VISIBLE_DEVICES"] in ("0", "1")
