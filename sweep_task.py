"""The task a sweep's worker runs: train one seed group into its run folders, wherever it
runs (the driver itself, a worker process of `--jobs`, a Ray task). sweep.py makes the tasks
and records their outcomes; sweep_backends.py runs them; both import this module, and this
module imports neither.
"""

import contextlib
import sys
import tempfile
import traceback
from pathlib import Path

import run_folder
from runtime import OutOfMemory, configure_jax
from training import TrainingDiverged, train_runs
from utils_dataset import DataError
from utils_initialization import Config
from utils_io import FileError, locked

_CONFIGURED = False  # configure_runtime has run in this process
NODE_CACHE = "node-local"  # a Ray worker's compilation cache: in its own temporary folder
# errors that stop a whole sweep: no run of it can train (a missing data set, too little memory)
SWEEP_STOPPERS = (DataError, OutOfMemory)
# what may end a run without being a bug of this code
RUN_FAILURES = (TrainingDiverged, FileError, run_folder.RunFolderError)


def train_task(task: dict) -> list:
    """Train one seed group (a local worker process, the driver itself, or a Ray task).

    `task`: cfgs (each run's Config as a dict: they share one compiled program), names (run
    folder names), runs_dir (where the run folders live; None on Ray: a temporary folder),
    files ({name: {file: bytes}} of
    unfinished run folders to continue), jax_cache, progress. Returns, per run,
    (name, metrics, files) where files holds the run folder's contents when `runs_dir` was
    None, so that the driver writes them: workers need no shared results folder."""
    configure_runtime(task.get("jax_cache"), [Config(**values) for values in task["cfgs"]])
    with contextlib.ExitStack() as stack:
        runs_dir = task["runs_dir"]
        if runs_dir is None:
            runs_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hsnn-run-"))
        runs_dir = Path(runs_dir)
        for name, files in (task.get("files") or {}).items():
            if files:  # an unfinished run folder to continue
                _write_files(runs_dir / name, files)
        dirs = [runs_dir / name for name in task["names"]]
        for d in sorted(dirs):  # one trainer per run folder, even if two drivers meet
            stack.enter_context(locked(runs_dir / f".{d.name}.lock"))
        cfgs = [Config(**values) for values in task["cfgs"]]
        for d, cfg in zip(dirs, cfgs):  # damaged files, or another configuration (finished or not):
            why = run_folder.problem(d, cfg) if d.exists() else None
            if why:  # moved aside (never deleted), the run trained again
                aside = run_folder.move_aside(d)
                print(f"warning: {why}; its files were moved to {aside}; training the run again",
                      file=sys.stderr, flush=True)
        todo = [i for i, d in enumerate(dirs) if run_folder.finished_run_of(d, cfgs[i]) is None]
        if todo:
            try:
                train_runs([cfgs[i] for i in todo], [dirs[i] for i in todo], resume=True,
                           progress=task.get("progress", False), force=task.get("force", False), label_runs=True)
            except SWEEP_STOPPERS:  # no run of the sweep can train: the sweep stops
                raise
            except Exception as err:  # a run that failed has its error.txt; the others have finished
                if not isinstance(err, RUN_FAILURES):
                    traceback.print_exc()  # a bug of this code: its traceback, as it happens
        ship = task["runs_dir"] is None
        return [(d.name, run_folder.finished_run_of(d, c), read_files(d) if ship else None, run_folder.read_error(d))
                for d, c in zip(dirs, cfgs)]


def configure_runtime(path, cfgs=()):
    """The runtime settings of main.py for the runs `cfgs` (runtime.configure_jax, once per
    process, before JAX's backend starts: a worker's first task decides), with JAX's
    persistent compilation cache in `path`: the runs of a sweep compile the same programs
    (only the seed differs), so all but the first load them from disk."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    _CONFIGURED = True
    if path == NODE_CACHE:
        path = Path(tempfile.gettempdir()) / "hsnn-jax-cache"
    configure_jax(compilation_cache=bool(path), cache_dir=path, cfgs=cfgs)


def read_files(folder: Path) -> dict:
    """A run folder's files as bytes (not its lock, which belongs to the process holding it)."""
    if not Path(folder).exists():
        return {}
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file() and p.name != run_folder.LOCK}


def _write_files(folder: Path, files: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
