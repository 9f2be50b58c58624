"""run_folder.py and the run-folder guarantees of main.py, tried as a hostile user would: two
runs on one name, damaged files, edited configurations, kills at every write, Ctrl-C.

Runs go through main.py as a subprocess, the way users run it (tiny MTS-XOR networks)."""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import run_folder
from conftest import pause_at_epoch, wait_for
from test_main import run_main
from utils_initialization import make_config

TINY = ["--dataset_name", "mts_xor", "--n_epochs", "2", "--n_hid", "4", "--batch_size", "32", "--progress", "false"]


def one_line_error(result, code, *parts):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def files(folder):
    """The run's files: not the lock, not what --restart moved aside."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.name != run_folder.LOCK and not p.name.startswith("previous-"))


def assert_complete(folder, n_epochs=2):
    """A finished, consistent run folder: nothing half-written, no leftover checkpoint."""
    assert files(folder) == ["config.json", "metrics.json", "params.npz", "provenance.json"], files(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "test_acc" in metrics and len(metrics["epochs"]) == n_epochs
    config = json.loads((folder / "config.json").read_text())
    params = np.load(folder / "params.npz")
    assert params["L0_W"].shape == (config["n_in"], config["n_hid"])
    return metrics


def timeless(metrics):
    strip = lambda d: {k: v for k, v in d.items() if k not in ("seconds", "seconds_total")}  # noqa: E731
    return {**strip(metrics), "epochs": [strip(e) for e in metrics["epochs"]]}


@pytest.fixture(scope="module")
def straight(root, tmp_path_factory):
    """An uninterrupted run, to compare resumed runs with."""
    results = tmp_path_factory.mktemp("straight")
    result = run_main(root, *TINY, "--results_dir", str(results), "--save_dir_name", "run")
    assert result.returncode == 0, result.stderr
    return assert_complete(results / "run")


# --- one process per run folder --------------------------------------------------------------
@pytest.mark.slow
def test_two_runs_on_one_name_cannot_mix(root, tmp_path):
    """Started together on the same --save_dir_name: one trains, the other exits 2 at once,
    and the folder's config, parameters and metrics are all the winner's."""
    procs = [subprocess.Popen([sys.executable, str(root / "main.py"), *TINY, "--seed", str(k),
                               "--n_hid", str(10 + 5 * k), "--results_dir", str(tmp_path), "--save_dir_name",
                               "same"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    outcomes = [(p.wait(300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    winner = [k for k, (code, _) in enumerate(outcomes) if code == 0][0]
    loser_err = outcomes[1 - winner][1].strip().splitlines()
    assert len(loser_err) == 1 and "already exists" in loser_err[0]
    run = tmp_path / "same"
    assert json.loads((run / "config.json").read_text())["n_hid"] == 10 + 5 * winner
    assert np.load(run / "params.npz")["L0_W"].shape == (40, 10 + 5 * winner)
    assert_complete(run)


@pytest.mark.slow
def test_a_resume_waits_for_no_one(root, tmp_path):
    """--resume takes the same lock: while another process holds the folder, it exits 2."""
    run = tmp_path / "run"
    result = run_main(root, *TINY, "--results_dir", str(tmp_path), "--save_dir_name", "run")
    (run / "metrics.json").write_text(json.dumps({"epochs": []}))  # pretend it is unfinished
    with open(run / run_folder.LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write("process 4242\n")
        lock.flush()
        result = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "run", "--resume")
    one_line_error(result, 2, "is being trained by process 4242")


# --- damaged and edited files ----------------------------------------------------------------
def killed_after_one_epoch(root, tmp_path, name="run"):
    """A run folder as a kill after its first epoch leaves it: a checkpoint, no params.npz."""
    args = [*TINY, "--n_epochs", "3", "--results_dir", str(tmp_path), "--save_dir_name", name]
    proc = subprocess.Popen([sys.executable, str(root / "main.py"), *args], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = tmp_path / name / "metrics.json"
    deadline = time.time() + 240
    while time.time() < deadline and not metrics.exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / name / "checkpoint.npz").exists()
    return tmp_path / name


DAMAGE = {
    "truncated": lambda b: b[:len(b) // 2],
    "random bytes": lambda b: np.random.default_rng(0).bytes(len(b)),
    "empty": lambda b: b"",
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_and_restart_moves_it_aside(root, tmp_path, damage):
    run = killed_after_one_epoch(root, tmp_path)
    original = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(DAMAGE[damage](original))
    result = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "run", "--resume")
    one_line_error(result, 2, str(run / "checkpoint.npz"), "checkpoint", "--restart")
    again = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "run", "--restart",
                     "--progress", "false")
    assert again.returncode == 0, again.stderr
    (aside,) = run.glob("previous-*")
    assert (aside / "checkpoint.npz").read_bytes() == DAMAGE[damage](original)  # never deleted
    assert_complete(run, n_epochs=3)


@pytest.mark.slow
def test_a_checkpoint_without_its_arrays_is_one_line(root, tmp_path):
    run = killed_after_one_epoch(root, tmp_path)
    with np.load(run / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("opt_")}
    np.savez(run / "checkpoint.npz", **arrays)
    result = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "run", "--resume")
    one_line_error(result, 2, "incomplete checkpoint", "--restart")


@pytest.mark.parametrize("name,text", [("config.json", "{not json"), ("metrics.json", "\x00\x01garbage"),
                                       ("config.json", "[1, 2]"), ("metrics.json", "42")])
@pytest.mark.slow
def test_damaged_json_files_are_one_line(root, tmp_path, name, text):
    run = killed_after_one_epoch(root, tmp_path)
    (run / name).write_text(text)
    result = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "run", "--resume")
    one_line_error(result, 2, str(run / name))


@pytest.mark.slow
def test_resume_refuses_an_edited_configuration(root, tmp_path):
    """config.json edited after a kill: the checkpoint says which configuration it holds."""
    run = killed_after_one_epoch(root, tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "n_hid": 20}))
    result = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "run", "--resume")
    one_line_error(result, 2, "checkpoint was saved for other values of n_hid")


# --- every write point ---------------------------------------------------------------------
KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
real_replace, hits = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    if os.path.basename(str(dst)) == {name!r}:
        hits[0] += 1
        if hits[0] == {nth}:
            if {after!r}:
                real_replace(src, dst, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
import main
main.main({argv!r})
"""
# (file, how many times a 2-epoch run writes it): config and provenance once, a checkpoint per
# epoch, metrics per epoch and once more when finished, the best parameters at the end
WRITES = [("config.json", 1), ("provenance.json", 1), ("checkpoint.npz", 2), ("metrics.json", 3),
          ("params.npz", 1)]
KILLS = [(name, nth, after) for name, n in WRITES for nth in range(1, n + 1) for after in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("name,nth,after", KILLS, ids=[f"{n}#{k}-{'after' if a else 'before'}" for n, k, a in KILLS])
def test_a_kill_at_any_write_is_completed_by_the_next_start(root, tmp_path, straight, name, nth, after):
    """SIGKILL just before or just after the nth write of `name` lands; then the next start
    (--resume where the folder holds a run, else the same command) ends with a complete,
    consistent folder whose numbers equal an uninterrupted run's."""
    argv = [*TINY, "--results_dir", str(tmp_path), "--save_dir_name", "run"]
    killed = subprocess.run([sys.executable, "-c", KILLER.format(root=str(root), name=name, nth=nth,
                                                                 after=after, argv=argv)],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "run"
    if (run / "config.json").exists():
        result = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "run", "--resume",
                          "--progress", "false")
        if result.returncode == 2 and "finished run" in result.stderr:  # killed after its last write
            assert json.loads((run / "metrics.json").read_text())["test_acc"] is not None
        else:
            assert result.returncode == 0, result.stderr
    else:
        result = run_main(root, *argv)
        assert result.returncode == 0, result.stderr
    assert timeless(assert_complete(run)) == timeless(straight)
    assert not list(run.glob(".*.tmp"))


# --- failures and interruptions -------------------------------------------------------------
@pytest.mark.slow
def test_a_diverged_run_leaves_error_txt(root, tmp_path):
    result = run_main(root, *TINY, "--lr", "1e38", "--results_dir", str(tmp_path), "--save_dir_name", "run")
    one_line_error(result, 1, "the loss became")
    error = (tmp_path / "run" / "error.txt").read_text()
    assert "TrainingDiverged" in error and "the loss became" in error


# preexec_fn makes subprocess fork (not spawn), and JAX warns of forks; the child only resets
# SIGINT and execs Python at once, so nothing of JAX's threads is used in it
@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
def test_ctrl_c_prints_the_resume_command(root, tmp_path):
    """Ctrl-C while the run is provably training (it waits before its second epoch). The run
    gets the default SIGINT handling even where the test runner ignores SIGINT (a background
    job of a non-interactive shell does, and its children inherit that)."""
    env, marker = pause_at_epoch(tmp_path / "hook", epoch=1)
    proc = subprocess.Popen([sys.executable, str(root / "main.py"), *TINY, "--n_epochs", "3",
                             "--results_dir", str(tmp_path), "--save_dir_name", "run"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert f"run folder {tmp_path / 'run'} " in out.splitlines()[0]  # the start line names it
    assert err.strip().splitlines()[-1].endswith(f"--results_dir {tmp_path} --save_dir_name run --resume")
    assert not (tmp_path / "run" / "error.txt").exists()  # an interruption is not a failure


@pytest.mark.slow
def test_too_large_a_network_stops_before_training(root, tmp_path):
    result = run_main(root, *TINY, "--n_hid", "100000", "--results_dir", str(tmp_path))
    one_line_error(result, 2, "GiB", "--n_hid 100000", "--force")
    assert not any(tmp_path.iterdir())  # nothing was trained: no folder is left


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../outside", "a/../../b", ".", "./", "..", "a/b",
                                  ".hidden", " padded", "tab\tname"])
@pytest.mark.slow
def test_save_dir_name_is_one_plain_folder_name(root, tmp_path, name):
    result = run_main(root, *TINY, "--results_dir", str(tmp_path / "results"), "--save_dir_name", name)
    one_line_error(result, 2, "--save_dir_name", "one plain folder name")
    assert not (tmp_path / "outside").exists() and not Path("/tmp/elsewhere").exists()
    assert not (tmp_path / "results").exists()


def snapshot(folder):
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["./", ".", ""])
def test_the_results_dir_itself_is_never_a_run_to_restart(root, tmp_path, name):
    """`--save_dir_name ./ --restart` once moved every run of --results_dir aside and deleted
    its hidden temporary files."""
    results = tmp_path / "results"
    (results / "other_run").mkdir(parents=True)
    (results / "other_run" / "config.json").write_text(json.dumps(make_config("mts_xor").to_dict()))
    (results / ".notes.tmp").write_text("mine")
    (results / "config.json").write_text(json.dumps(make_config("mts_xor").to_dict()))
    before = snapshot(results)
    for flag in ("--restart", "--resume"):
        result = run_main(root, *TINY, "--results_dir", str(results), "--save_dir_name", name, flag)
        one_line_error(result, 2, "--save_dir_name")
    assert snapshot(results) == before


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--restart", "--resume"])
def test_a_folder_that_is_not_a_run_is_left_alone(root, tmp_path, flag):
    """--restart and --resume act only on a folder that holds a run of this project."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("chapter 1")
    (folder / ".draft.tmp").write_text("unsaved")
    (folder / "config.json").write_text(json.dumps({"font": "serif"}))  # someone else's config
    before = snapshot(folder)
    result = run_main(root, *TINY, "--results_dir", str(tmp_path), "--save_dir_name", "mine", flag)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "not a run folder of this project" in result.stderr or "not a run configuration" in result.stderr
    assert snapshot(folder) == before


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--restart"], ["--resume"]])
def test_a_file_where_the_run_folder_belongs_is_one_line(root, tmp_path, flags):
    (tmp_path / "r").write_text("my notes")
    result = run_main(root, *TINY, "--results_dir", str(tmp_path), "--save_dir_name", "r", *flags)
    one_line_error(result, 2, str(tmp_path / "r"))
    assert (tmp_path / "r").read_text() == "my notes"


@pytest.mark.slow
def test_restart_moves_every_file_aside_and_deletes_nothing_it_did_not_make(root, tmp_path):
    """A run folder with a user's files in it: --restart moves them aside with the run's
    files; only the run's own temporary files (a killed write's) are removed."""
    results = tmp_path / "results"
    assert run_main(root, *TINY, "--results_dir", str(results), "--save_dir_name", "r").returncode == 0
    folder = results / "r"
    (folder / "notes.txt").write_text("keep me")
    (folder / ".user.tmp").write_text("keep me too")
    (folder / ".metrics.json.abc123.tmp").write_text("half-written by a killed run")
    result = run_main(root, *TINY, "--results_dir", str(results), "--save_dir_name", "r", "--restart")
    assert result.returncode == 0, result.stderr
    (aside,) = folder.glob("previous-*")
    moved = sorted(p.name for p in aside.iterdir())
    assert moved == sorted([".user.tmp", "config.json", "metrics.json", "notes.txt", "params.npz",
                            "provenance.json"])
    assert (aside / ".user.tmp").read_text() == "keep me too"
    assert_complete(folder)


@pytest.mark.slow
def test_results_dir_that_is_a_file_or_unwritable(root, tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(run_main(root, *TINY, "--results_dir", str(tmp_path / "file")), 2, "is a file")
    if Path("/sys").is_dir():  # not writable, even for root
        one_line_error(run_main(root, *TINY, "--results_dir", "/sys/hsnn-results"), 2, "cannot create")


@pytest.mark.slow
def test_invalid_seeds_leave_no_folder(root, tmp_path):
    for seed in ("-1", "99999999999999999999"):
        one_line_error(run_main(root, *TINY, "--seed", seed, "--results_dir", str(tmp_path)), 2, "--seed")
    assert not any(tmp_path.iterdir())


# --- the module itself ---------------------------------------------------------------------
def test_tidy_removes_the_runs_temporaries_and_a_finished_runs_checkpoint(tmp_path):
    (tmp_path / ".params.npz.abc.tmp").write_bytes(b"half")
    (tmp_path / ".someone.else.tmp").write_bytes(b"not ours")
    (tmp_path / "checkpoint.npz").write_bytes(b"stale")
    (tmp_path / "params.npz").write_bytes(b"")
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": [], "test_acc": 0.5}))
    run_folder.tidy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".someone.else.tmp", "metrics.json", "params.npz"]


def test_what_counts_as_a_run_folder(tmp_path):
    cfg = make_config("mts_xor", n_hid=4)
    run_folder.create(cfg, tmp_path / "run").close()
    assert run_folder.holds_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    assert run_folder.holds_run(tmp_path / "empty")
    (tmp_path / "half_restarted" / "previous-x").mkdir(parents=True)
    (tmp_path / "half_restarted" / ".lock").write_text("")
    assert run_folder.holds_run(tmp_path / "half_restarted")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{broken")
    assert not run_folder.holds_run(tmp_path / "damaged")
    (tmp_path / "damaged" / "provenance.json").write_text("[]")
    assert run_folder.holds_run(tmp_path / "damaged")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"lr": 0.1}))
    assert not run_folder.holds_run(tmp_path / "foreign")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "data.csv").write_text("1,2")
    assert not run_folder.holds_run(tmp_path / "user")


def test_problem_names_damage_and_foreign_runs(tmp_path):
    cfg = make_config("mts_xor", n_hid=4)
    folder = run_folder.create(cfg, tmp_path / "run")
    folder.close()
    assert run_folder.problem(tmp_path / "run", cfg) is None
    assert "n_hid" in run_folder.problem(tmp_path / "run", cfg.replace(n_hid=5))
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"junk")
    assert "damaged checkpoint" in run_folder.problem(tmp_path / "run", cfg)
    aside = run_folder.move_aside(tmp_path / "run")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint.npz", "config.json"]


@pytest.mark.parametrize("content", ["[{", "{}"])
def test_damaged_provenance_is_one_line_naming_the_file(tmp_path, content):
    (tmp_path / "provenance.json").write_text(content)
    with pytest.raises(run_folder.FileError, match="provenance.json.*--restart"):
        run_folder.record_provenance(tmp_path)
    (tmp_path / "provenance.json").unlink()
    run_folder.record_provenance(tmp_path)
    run_folder.record_provenance(tmp_path)
    assert len(run_folder.read_provenance(tmp_path)) == 2


def finished_folder(path, cfg, test_acc=0.5):
    """A run folder as a finished run leaves it, written by run_folder's own functions."""
    import jax
    from models import init_params
    run_folder.create(cfg, path).close()
    params = init_params(jax.random.PRNGKey(cfg.seed), cfg)
    run_folder.finish_run(path, cfg, params, dict(epochs=[{}], best_epoch=0, best_valid_acc=0.5, test_acc=test_acc,
                                                  median_tau_per_layer=[0.1]))
    return path


@pytest.mark.parametrize("resume,restart", [(True, False), (False, True)])
def test_a_kill_while_moving_a_run_aside_is_completed_by_the_next_start(tmp_path, monkeypatch, resume, restart):
    """The move aside gathers the files in a hidden folder and publishes it with one rename:
    killed after one file, the folder still counts as a run, a sweep adopts nothing from it,
    and the next start (resume or restart) completes the move, so no half of the old run is
    ever taken for a new one."""
    cfg = make_config("mts_xor", n_hid=4, seed=0)
    path = finished_folder(tmp_path / "run", cfg)
    real_rename, calls = os.rename, []

    def killed_after_one(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill
        return real_rename(src, dst)

    monkeypatch.setattr(run_folder.os, "rename", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_folder.move_aside(path)
    monkeypatch.undo()
    assert len([p for p in path.iterdir() if p.name.startswith(run_folder.ASIDE)]) == 1
    assert run_folder.holds_run(path) and run_folder.finished_run_of(path, cfg) is None
    folder, state = run_folder.open_run(cfg, path, resume, restart)
    folder.close()
    assert state is None and [p.name for p in path.iterdir() if p.name.startswith(run_folder.ASIDE)] == []
    (moved,) = [p for p in path.iterdir() if p.name.startswith("previous-")]
    assert sorted(q.name for q in moved.iterdir()) == ["config.json", "metrics.json", "params.npz"]
    assert files(path) == ["config.json"]  # a fresh start: only the new config.json


def test_a_sweep_adopts_a_finished_folder_only_for_its_own_run(tmp_path):
    cfg0, cfg1 = (make_config("mts_xor", n_hid=4, seed=s) for s in (0, 1))
    zero, one = finished_folder(tmp_path / "seed0", cfg0, 0.5), finished_folder(tmp_path / "seed1", cfg1, 0.9)
    assert run_folder.finished_run_of(zero, cfg0)["test_acc"] == 0.5
    assert run_folder.finished_run_of(zero, cfg1) is None  # config.json says seed 0
    assert run_folder.finished_run_of(tmp_path / "missing", cfg0) is None
    (zero / "metrics.json").write_bytes((one / "metrics.json").read_bytes())  # another seed's metrics
    assert run_folder.finished_run_of(zero, cfg0) is None
    finished_folder(tmp_path / "again", cfg0)
    (tmp_path / "again" / "params.npz").write_bytes((one / "params.npz").read_bytes())  # another run's parameters
    assert run_folder.finished_run_of(tmp_path / "again", cfg0) is None
    (one / "config.json").unlink()  # left-over metrics and parameters without a configuration
    assert run_folder.finished_run_of(one, cfg1) is None
    pending = finished_folder(tmp_path / "pending", cfg0)  # a move aside that a kill interrupted
    (pending / f"{run_folder.ASIDE}20260101T000000Z").mkdir()
    assert run_folder.finished_run_of(pending, cfg0) is None
    older = finished_folder(tmp_path / "older", cfg0)  # a folder of an earlier version: no records
    metrics = json.loads((older / "metrics.json").read_text())
    (older / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                   if k not in ("config", "params_md5")}))
    assert run_folder.finished_run_of(older, cfg0) is not None


def test_names_and_paths_too_long_for_the_system_are_one_line(tmp_path):
    run_folder.check_name("r" * 255)
    with pytest.raises(run_folder.RunFolderError, match="--save_dir_name: 256 bytes long, more than the 255"):
        run_folder.check_name("r" * 256)
    with pytest.raises(run_folder.RunFolderError, match="--save_dir_name: 256 bytes"):
        run_folder.check_name("é" * 128)
    cfg = make_config("mts_xor", n_hid=4)
    run_folder.create(cfg, tmp_path / ("r" * 250)).close()  # the longest names work
    assert (tmp_path / ("r" * 250) / "config.json").exists()
    with pytest.raises(run_folder.RunFolderError, match="--results_dir: a folder name in it is 300 bytes long"):
        run_folder.check_results_dir(tmp_path / ("d" * 300))
    deep = tmp_path.joinpath(*["d" * 200] * 20)
    with pytest.raises(run_folder.RunFolderError, match="--results_dir: the path is .* bytes long, too long"):
        run_folder.check_results_dir(deep)
    assert run_folder.check_results_dir(tmp_path / "results") == tmp_path / "results"


@pytest.mark.slow
@pytest.mark.parametrize("name,flag", [("r" * 256, "--save_dir_name"), (None, "--results_dir")])
def test_main_refuses_names_too_long_in_one_line(root, tmp_path, name, flag):
    results = tmp_path / ("d" * 300) if name is None else tmp_path
    args = ["--results_dir", str(results)] + (["--save_dir_name", name] if name else [])
    one_line_error(run_main(root, *TINY, *args), 2, flag, "bytes long")
    assert list(tmp_path.iterdir()) == []


# --- the checks themselves, without a run (what a sample of their mutants let through) -------
def test_a_stored_configuration_matches_field_by_field(tmp_path):
    cfg = make_config("mts_xor", n_hid=4)
    stored = cfg.to_dict()
    older = {k: v for k, v in stored.items() if k not in ("lr", "neuron")}  # an older version's fields
    (tmp_path / run_folder.CONFIG).write_text(json.dumps(older))
    run_folder.check_config(tmp_path, cfg)  # the fields it lacks keep their defaults: it matches
    (tmp_path / run_folder.CONFIG).write_text(json.dumps(dict(stored, n_hid=5, lr=1.0)))
    with pytest.raises(run_folder.RunFolderError, match=r"its configuration differs in \['lr', 'n_hid'\]$"):
        run_folder.check_config(tmp_path, cfg)
    (tmp_path / run_folder.CONFIG).write_text("{torn")
    with pytest.raises(run_folder.FileError, match="invalid JSON .*; add --restart to move the run's files aside"):
        run_folder.check_config(tmp_path, cfg)


def test_a_move_aside_is_named_by_its_utc_time(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / run_folder.LOCK).write_text("")
    aside = run_folder.move_aside(tmp_path)
    assert re.fullmatch(r"previous-\d{8}T\d{6}\.\d{6}Z", aside.name), aside.name
    assert sorted(p.name for p in aside.iterdir()) == ["metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run_folder.LOCK, aside.name])
    assert run_folder.move_aside(tmp_path) is None  # nothing left to move
