"""A run's folder: created in one atomic step with its config.json, held by one process at a
time, checked when it is resumed, tidied after a kill, and never overwritten or deleted.

    <results_dir>/<save_dir_name>/
        config.json       the resolved configuration (written first, never changed)
        provenance.json   one entry per start: commit, versions, device, command line
        checkpoint.npz    parameters, optimizer state, best parameters and metrics after the
                          last finished epoch, with the configuration they belong to
                          (save_checkpoint writes it, load_checkpoint checks it,
                          restore_checkpoint reads it)
        metrics.json      per-epoch metrics; with test_acc once the run has finished
        params.npz        the best epoch's parameters (finished runs)
        error.txt         why the run stopped, if it failed (diverged or crashed)
        .lock             held (flock) by the process that trains the run
        previous-<time>/  files moved aside by --restart or after damage, never deleted

A kill at any moment leaves a folder that the next start or `--resume` completes: every file
is written atomically (utils_io), a finished run's leftover checkpoint and temporary files
are removed when the folder is next opened.
"""

import contextlib
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import traceback
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from utils_initialization import Config
from utils_io import FileError, atomic_folder, atomic_write, flock, read_json, write_json

CONFIG, METRICS, CHECKPOINT, PARAMS = "config.json", "metrics.json", "checkpoint.npz", "params.npz"
PROVENANCE, ERROR, LOCK, TASK = "provenance.json", "error.txt", ".lock", "task.npz"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, PARAMS, PROVENANCE, ERROR, TASK)  # what a run writes
ROOT = Path(__file__).resolve().parent  # the checkout whose commit provenance.json records
RESTART_HINT = "add --restart to move the run's files aside (never deleted) and train it from the start"


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (exists, busy, finished, another configuration)."""


NAME_MAX = 255    # bytes in one file or folder name (Linux, macOS)
PATH_MAX = 4096   # bytes in a whole path (Linux; macOS allows 1024)


def check_name(name: str) -> str:
    """A --save_dir_name is one plain folder name inside --results_dir: no separator, not '.'
    or '..' (which would make the whole --results_dir the run), not hidden, no control
    characters, at most NAME_MAX bytes."""
    plain = (name and name == name.strip() and not name.startswith(".") and "/" not in name
             and "\\" not in name and all(ord(c) >= 32 for c in name))
    if not plain:
        raise RunFolderError(f"--save_dir_name {name!r}: must be one plain folder name inside --results_dir "
                             "(no '/', not '.' or '..', not starting with '.'); use --results_dir for the "
                             "folder above it")
    if len(os.fsencode(name)) > NAME_MAX:
        raise RunFolderError(f"--save_dir_name: {len(os.fsencode(name))} bytes long, more than the {NAME_MAX} a "
                             "folder name may have; choose a shorter name")
    return name


def check_results_dir(results_dir, flag: str = "--results_dir") -> Path:
    """A results folder whose path the system accepts, with room for the run folders and files
    inside it: every part at most NAME_MAX bytes, the whole path well under PATH_MAX; else one
    RunFolderError line naming the flag. (A path the system refuses would otherwise be an
    OSError wherever it is first touched.)"""
    path = Path(os.path.abspath(results_dir))
    long_part = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long_part is not None:
        raise RunFolderError(f"{flag}: a folder name in it is {len(os.fsencode(long_part))} bytes long, more "
                             f"than the {NAME_MAX} a name may have; choose a shorter path")
    room = NAME_MAX + 64  # a run folder's name and the longest file inside it
    if len(os.fsencode(str(path))) + room > PATH_MAX:
        raise RunFolderError(f"{flag}: the path is {len(os.fsencode(str(path)))} bytes long, too long to hold run "
                             f"folders (the system allows {PATH_MAX} bytes in all); choose a shorter path")
    return path


class RunFolder:
    """An open run folder; `lock` is the open .lock file whose flock this process holds until
    `close` (or its exit, even by SIGKILL)."""

    def __init__(self, path: Path, lock, created: bool):
        self.path, self.lock, self.created = Path(path), lock, created

    def close(self):
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def discard(self):
        """Remove a folder that this process created and that holds nothing trained yet (the
        data could not be loaded, the network does not fit): a failed start leaves nothing
        behind. Any other folder is only released."""
        untrained = {p.name for p in self.path.iterdir()} <= {CONFIG, PROVENANCE, LOCK}
        if self.created and untrained:
            shutil.rmtree(self.path, ignore_errors=True)
        self.close()


def _lock(path: Path):
    """flock the folder's .lock without waiting; its text names the holder's process."""
    try:
        lock = flock(path / LOCK, wait=False)
    except BlockingIOError:
        holder = ((path / LOCK).read_text().strip().splitlines() or ["another process"])[-1]
        raise RunFolderError(f"{path} is being trained by {holder}; wait for it to finish, or choose "
                             "another --save_dir_name") from None
    lock.truncate(0)
    lock.write(f"process {os.getpid()}\n".encode())
    lock.flush()
    return lock


def _exists(path: Path) -> RunFolderError:
    return RunFolderError(f"run folder {path} already exists; choose another --save_dir_name, "
                          "or add --resume to continue it")


def create(cfg: Config, path: Path) -> RunFolder:
    """The folder with its config.json and a held lock, appearing under its name in one
    rename: a second run on the same name fails at once, whatever its timing."""
    if path.parent.exists() and not path.parent.is_dir():
        raise RunFolderError(f"--results_dir {path.parent}: is a file, not a folder; choose another")
    lock = None
    try:
        with atomic_folder(path) as tmp:  # appears under its name in one rename, or not at all
            write_json(tmp / CONFIG, cfg.to_dict())
            lock = _lock(tmp)
    except OSError as err:
        if lock is not None:
            lock.close()
        if path.exists():
            raise _exists(path) from None
        raise RunFolderError(f"cannot create the run folder {path} ({err.strerror or err}); choose "
                             "another --results_dir") from None
    return RunFolder(path, lock, created=True)


def open_run(cfg: Config, path: Path, resume: bool, restart: bool = False):
    """(RunFolder, checkpoint arrays or None) for training `cfg` in `path`.

    New folder: created. Existing folder: refused unless `resume` or `restart`; then locked,
    tidied (temporary files of a killed write), and with `restart` its files are moved aside.
    A resumed folder must hold `cfg` (config.json) and, if any epoch finished, a checkpoint of
    the same configuration; a finished run has nothing to resume. A folder without
    config.json (its files were moved aside) starts afresh."""
    if not path.exists():
        return create(cfg, path), None
    if not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a run folder; choose another --save_dir_name")
    if not (resume or restart):
        raise _exists(path)
    if not holds_run(path):
        raise RunFolderError(f"{path} is not a run folder of this project (no {CONFIG} of a run in it); "
                             "nothing in it was touched; choose another --save_dir_name")
    folder = RunFolder(path, _lock(path), created=False)
    try:
        tidy(path)
        if restart:
            move_aside(path)
        if not (path / CONFIG).exists():
            write_json(path / CONFIG, cfg.to_dict())
            return folder, None
        check_config(path, cfg)
        if finished_metrics(path) is not None:
            raise RunFolderError(f"{path} is a finished run; nothing to resume")
        return folder, load_checkpoint(path, cfg)
    except BaseException:
        folder.close()
        raise


def holds_run(path: Path) -> bool:
    """Whether the existing folder `path` holds a run of this project (or nothing): a
    config.json of Config fields, or a damaged config.json beside a provenance.json, or only
    what a restart leaves (its lock and previous-<time>/ folders) or a sweep whose worker died
    before the run began (its error.txt), or a move aside that a kill interrupted (its
    .aside-<time>/ folder: only this code makes one)."""
    if any(p.name.startswith(ASIDE) and p.is_dir() for p in path.iterdir()):
        return True
    if (path / CONFIG).is_file():
        try:
            stored = read_json(path / CONFIG)
        except FileError:
            return (path / PROVENANCE).is_file()
        return isinstance(stored, dict) and "dataset_name" in stored and set(stored) <= set(Config.__dataclass_fields__)
    return all(p.name in (LOCK, ERROR) or _ours_temporary(p) or (p.name.startswith("previous-") and p.is_dir())
               for p in path.iterdir())


def _ours_temporary(p: Path) -> bool:
    """A temporary file of utils_io.atomic_write for one of a run's files ('.metrics.json.x1y2.tmp')."""
    return p.is_file() and p.name.endswith(".tmp") and any(p.name.startswith(f".{f}.") for f in RUN_FILES)


def tidy(path: Path):
    """Complete what a kill interrupted: a move aside (`finish_moving_aside`), the temporary
    files of a run's own files (removed; nothing else is), a finished run's checkpoint."""
    finish_moving_aside(path)
    for tmp in path.iterdir():
        if _ours_temporary(tmp):
            tmp.unlink(missing_ok=True)
    try:
        finished = finished_metrics(path) is not None
    except FileError:
        finished = False
    if finished and (path / PARAMS).exists():
        (path / CHECKPOINT).unlink(missing_ok=True)


ASIDE = ".aside-"  # a move aside in progress: the files gather here, then one rename publishes them


def _run_files(path: Path) -> list:
    """Everything in a run folder but its lock and the folders of earlier moves aside."""
    return [p for p in path.iterdir() if p.name != LOCK and not p.name.startswith(("previous-", ASIDE))]


def move_aside(path: Path) -> Optional[Path]:
    """Move every file of the run (not the lock) into `previous-<UTC time>/`; returns it. The
    files gather in a hidden `.aside-<time>/` first, which one rename then publishes, so that a
    kill at any moment leaves either the run as it was, or a move that the next `tidy`
    completes (`finish_moving_aside`): never half a run in the folder."""
    files = _run_files(path)
    if not files:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    staging = path / f"{ASIDE}{stamp}"
    staging.mkdir()
    return _publish_aside(path, staging, files)


def _publish_aside(path: Path, staging: Path, files: list) -> Path:
    for p in files:
        os.rename(p, staging / p.name)
    aside = path / f"previous-{staging.name[len(ASIDE):]}"
    os.rename(staging, aside)
    return aside


def finish_moving_aside(path: Path):
    """Complete a move aside that a kill interrupted: the run's remaining files join the ones
    already moved, and the folder of them is published as `previous-<time>/`."""
    for staging in sorted(p for p in path.iterdir() if p.name.startswith(ASIDE) and p.is_dir()):
        _publish_aside(path, staging, _run_files(path))


def check_config(path: Path, cfg: Config):
    """The folder's config.json holds `cfg` (fields it does not know keep their defaults)."""
    stored = read_json(path / CONFIG, "run configuration", RESTART_HINT)
    if not isinstance(stored, dict):
        raise FileError(f"{path / CONFIG}: not a configuration (a JSON object); {RESTART_HINT}")
    diff = _differing(stored, cfg)
    if diff:
        raise RunFolderError(f"cannot resume {path}: its configuration differs in {diff}")


def _differing(stored: dict, cfg: Config) -> list:
    """The fields whose stored value differs from `cfg`'s (a field `stored` lacks keeps its
    default, so folders of an older version with fewer fields still match)."""
    ours = cfg.to_dict()
    return sorted(k for k in set(stored) | set(ours) if stored.get(k, ours.get(k)) != ours.get(k))


def finished_metrics(path: Path) -> Optional[dict]:
    """The final metrics of a finished run folder (metrics.json with test_acc and params.npz),
    else None; a damaged metrics.json raises FileError."""
    if not (path / METRICS).exists():
        return None
    metrics = read_json(path / METRICS, "run metrics", RESTART_HINT)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs"), list):
        raise FileError(f"{path / METRICS}: not the metrics of a run; {RESTART_HINT}")
    return metrics if "test_acc" in metrics and (path / PARAMS).exists() else None


def finished_run_of(path: Path, cfg: Config) -> Optional[dict]:
    """The final metrics of `path` if it is a finished run of `cfg`, else None (missing,
    unfinished, damaged, or another run's): its config.json holds `cfg`, and so do its
    metrics, whose checksum of params.npz matches (folders of older versions, without these
    records, by their config.json alone). What a sweep adopts as a finished run: left-over
    files of another run, parameters swapped in, or what an interrupted move aside left
    behind, never stand for this one."""
    try:
        if not (path / CONFIG).is_file() or any(p.name.startswith(ASIDE) for p in path.iterdir()):
            return None  # no configuration, or a move aside that a kill interrupted
        check_config(path, cfg)
        metrics = finished_metrics(path)
    except (FileError, RunFolderError, OSError):
        return None
    if metrics is None:
        return None
    stored = metrics.get("config", cfg.to_dict())
    if not isinstance(stored, dict) or _differing(stored, cfg):
        return None
    if "params_md5" in metrics and metrics["params_md5"] != _md5(path / PARAMS):
        return None
    return metrics


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def config_text(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def load_checkpoint(path: Path, cfg: Config) -> Optional[dict]:
    """The checkpoint's arrays, checked: readable, complete, and saved for `cfg`."""
    file = path / CHECKPOINT
    if not file.exists():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        raise FileError(f"{file}: damaged checkpoint (not a readable .npz archive of arrays); "
                        f"{RESTART_HINT}") from None
    missing = [k for k in ("config_json", "metrics_json", "opt_0") if k not in state]
    if missing:
        raise FileError(f"{file}: incomplete checkpoint (no {', '.join(missing)}); {RESTART_HINT}")
    diff = _differing(json.loads(str(state["config_json"])), cfg)
    if diff:
        raise RunFolderError(f"cannot resume {path}: its checkpoint was saved for other values of "
                             f"{', '.join(diff)} than config.json holds; restore config.json, or "
                             f"{RESTART_HINT}")
    return state


# --- the checkpoint and the parameters: written here, checked and read here ----------------------
# JAX is imported by the functions that turn arrays into a network's state, not at the top: the
# report reads run folders (errors, provenance) and needs no JAX.
def named_arrays(params, prefix=""):
    """{'L0_W': ..., 'L0_alpha': ...}: the golden files' naming."""
    return {f"{prefix}L{i}_{k}": np.asarray(v) for i, layer in enumerate(params) for k, v in layer.items()}


def params_from_arrays(arrays, prefix="") -> list:
    """Inverse of `named_arrays`."""
    import jax.numpy as jnp
    layers = {}
    for name, value in arrays.items():
        if name.startswith(prefix + "L"):
            i, key = name[len(prefix) + 1:].split("_", 1)
            layers.setdefault(int(i), {})[key] = jnp.asarray(value)
    return [layers[i] for i in sorted(layers)]


def check_present(run_dir):
    """The run folder still exists (a user may delete it while the run trains): else one
    RunFolderError line, and this run stops without touching anything else."""
    if not Path(run_dir).is_dir():
        raise RunFolderError(f"{run_dir} was deleted while the run trained, so its results have nowhere to go; "
                             "run the same command again to train it anew")


@contextlib.contextmanager
def writing_into(run_dir):
    """Writes into the run folder; the folder vanishing before or during them is one
    RunFolderError line (`check_present`), not an OSError."""
    check_present(run_dir)
    try:
        yield
    except FileNotFoundError:
        check_present(run_dir)
        raise


def save_checkpoint(run_dir, cfg, params, opt_state, best_params, metrics, data_md5=None):
    """Everything needed to continue after the last finished epoch, the configuration it
    belongs to and the fingerprint of the data it trained on (`data_md5`), in one atomic file."""
    import jax
    arrays = {f"opt_{i}": np.asarray(v) for i, v in enumerate(jax.tree_util.tree_leaves(opt_state))}
    arrays.update(named_arrays(params, "params/"), **named_arrays(best_params, "best/"))
    arrays["metrics_json"] = np.array(json.dumps(metrics))
    arrays["config_json"] = np.array(config_text(cfg))
    if data_md5 is not None:
        arrays["data_md5"] = np.array(data_md5)
    with writing_into(run_dir):
        atomic_write(run_dir / CHECKPOINT, lambda f: np.savez(f, **arrays))
        write_json(run_dir / METRICS, metrics)


def check_data(path: Path, state: Optional[dict], data_md5: Optional[str]):
    """A checkpoint continues only on the data it trained on: its fingerprint of the data
    (`save_checkpoint`'s data_md5) must be the fingerprint of the data loaded now, else one
    RunFolderError line (a checkpoint without one, or data without one, is not compared)."""
    if state is None or "data_md5" not in state or data_md5 is None:
        return
    saved = str(state["data_md5"])
    if saved != data_md5:
        raise RunFolderError(f"cannot resume {path}: the data differs from what its checkpoint trained on "
                             f"(fingerprint {saved[:12]}, now {data_md5[:12]}): were the data files replaced? "
                             f"put the original files back, or {RESTART_HINT}")


def epochs_done(state: Optional[dict]) -> int:
    """How many epochs a checkpoint (as `load_checkpoint` returns it) holds; 0 without one."""
    return len(json.loads(str(state["metrics_json"]))["epochs"]) if state else 0


def restore_checkpoint(state, params, opt_state, run_dir):
    """The checkpoint's training state, with the shapes of a fresh initialisation."""
    import jax
    import jax.numpy as jnp
    treedef = jax.tree_util.tree_structure(opt_state)
    try:
        leaves = [jnp.asarray(state[f"opt_{i}"]) for i in range(treedef.num_leaves)]
        restored = (params_from_arrays(state, "params/"), jax.tree_util.tree_unflatten(treedef, leaves),
                    params_from_arrays(state, "best/"), json.loads(str(state["metrics_json"])))
        shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)  # noqa: E731
        if shapes(restored[:3]) != shapes((params, opt_state, params)):
            raise ValueError("its arrays do not have this configuration's shapes")
    except (KeyError, ValueError) as err:
        raise FileError(f"{run_dir / CHECKPOINT}: incomplete checkpoint ({err}); "
                        f"{RESTART_HINT}") from None
    return restored


def save_task_arrays(run_dir, arrays: dict):
    """task.npz: arrays a run needs to be evaluated again later (psMNIST's pixel permutation);
    written once."""
    if not (run_dir / TASK).exists():
        atomic_write(run_dir / TASK, lambda f: np.savez(f, **arrays))


def finish_run(run_dir, cfg: Config, best_params, metrics):
    """The best parameters and the final metrics, which record the run's configuration and
    the MD5 of params.npz (so that the three files are known to belong together:
    `finished_run_of`); the checkpoint has served its purpose, and an error.txt of an earlier,
    resumed failure no longer describes the run."""
    buffer = io.BytesIO()
    np.savez(buffer, **named_arrays(best_params))
    data = buffer.getvalue()
    metrics.update(config=cfg.to_dict(), params_md5=hashlib.md5(data).hexdigest())
    with writing_into(run_dir):
        atomic_write(run_dir / PARAMS, lambda f: f.write(data))
        write_json(run_dir / METRICS, metrics)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    (run_dir / ERROR).unlink(missing_ok=True)


def problem(path: Path, cfg: Config) -> Optional[str]:
    """Why an existing run folder cannot be continued as `cfg` (damaged or foreign files),
    else None; for a sweep, which then moves its files aside and trains the run again."""
    if not (path / CONFIG).exists():
        return None
    try:
        check_config(path, cfg)
        if finished_metrics(path) is None:
            load_checkpoint(path, cfg)
    except (FileError, RunFolderError) as err:
        return str(err).split("; ")[0]
    return None


@functools.lru_cache(maxsize=1)
def _git_state():
    """(commit, whether tracked files differ from it) of the project's checkout, else Nones."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None


def provenance() -> dict:
    """What produced a run: the code's commit (and whether the checkout had uncommitted
    changes), Python and library versions, JAX's backend and device, the command line."""
    import jax
    import jaxlib
    import optax
    commit, dirty = _git_state()
    return dict(commit=commit, dirty=dirty, python=platform.python_version(), jax=jax.__version__,
                jaxlib=jaxlib.__version__, numpy=np.__version__, optax=optax.__version__,
                backend=jax.default_backend(), device=jax.devices()[0].device_kind,
                host=socket.gethostname(), platform=platform.platform(),
                command=" ".join([os.path.basename(sys.executable)] + sys.argv),
                time=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def read_provenance(run_dir: Path) -> Optional[list]:
    """The run folder's provenance.json entries, None if it has none."""
    path = Path(run_dir) / PROVENANCE
    if not path.exists():
        return None
    entries = read_json(path, "run provenance", RESTART_HINT)
    if not isinstance(entries, list):
        raise FileError(f"{path}: not a list of provenance entries; {RESTART_HINT}")
    return entries


def record_provenance(run_dir: Path, data_md5: Optional[str] = None):
    """Append this process's `provenance()` to the run folder's provenance.json, with the
    fingerprint of the data it trains on: one entry per start (the first made the folder,
    any later one resumed it)."""
    entry = dict(provenance(), **({"data_md5": data_md5} if data_md5 else {}))
    write_json(run_dir / PROVENANCE, (read_provenance(run_dir) or []) + [entry])


def write_error(path: Path, err: BaseException):
    """error.txt: when and why the run stopped, in its first line (a reader and sweep.py can
    tell a failed run), then the traceback where there is one."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = f"{stamp} {type(err).__name__}: {' '.join(str(err).split())}\n"
    if err.__traceback__ is not None:
        text += "".join(traceback.format_exception(err))
    atomic_write(path / ERROR, lambda f: f.write(text.encode()))


def read_error(path: Path) -> Optional[str]:
    """The first line of a run folder's error.txt (when and why it failed), else None."""
    try:
        return (Path(path) / ERROR).read_text().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
