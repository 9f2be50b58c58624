"""Shared fixtures: the project root on sys.path, JAX on the CPU, no network, tiny tasks."""

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the XLA flags of main.py and sweep.py (runtime.configure_jax), before JAX starts here: the
# tests' numbers are the entry points' numbers, and in-process calls of the entry points find
# them set
import runtime  # noqa: E402

runtime.add_our_xla_flags()
# SHD/SSC downloads of this process and of every main.py / sweep.py it starts go to a closed
# local port: no test can reach the network (tests of the download pass their own local URL)
os.environ["HSNN_AUDIO_URL"] = "http://127.0.0.1:9/"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Connections of the test process itself go to this machine only."""
    connect = socket.socket.connect

    def loopback_only(self, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise OSError(f"tests do not touch the network (connect to {address[0]})")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent compilation cache per session (empty at its start, so nothing carries
    over between sessions), shared by pytest-xdist's workers and, through $HSNN_CACHE_DIR, by
    every main.py and sweep.py they start: tests that build the same program again (the
    training-loop tests train the same tiny network many times) compile it once, and no test
    writes to the user's own cache."""
    import runtime
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache"
    cache.mkdir(exist_ok=True)
    os.environ["HSNN_CACHE_DIR"] = str(cache)
    runtime.use_compilation_cache(cache)


@pytest.fixture(scope="session")
def root():
    return ROOT


def tiny_mts_xor_task(n_train=128, n_eval=64, seed=0):
    """A small MTS-XOR task (same generator, fewer samples) for fast training tests."""
    import utils_dataset
    rng = np.random.default_rng(seed)
    make = lambda n: utils_dataset.Split(*utils_dataset.generate_mts_xor(n, rng))  # noqa: E731
    return utils_dataset.Task(make(n_train), make(n_eval), make(n_eval),
                              utils_dataset.mts_xor_score_mask())


@pytest.fixture
def tiny_task():
    return tiny_mts_xor_task()


@pytest.fixture
def trained_groups(monkeypatch) -> list:
    """The sizes of the groups that training.train_runs trains, in order. A group that fails is
    trained seed by seed instead, so a test of a vmapped group checks this list as well as the
    numbers, which the fallback would make equal."""
    import training
    groups, real = [], training._train_group

    def recorded(cfgs, *args):
        groups.append(len(cfgs))
        return real(cfgs, *args)
    monkeypatch.setattr(training, "_train_group", recorded)
    return groups


# --- a patch of training.py inside the processes a test starts ------------------------------
# `training_hook(folder, patch_source)` writes a sitecustomize.py that applies `patch(module)`
# to the module `training` as soon as any process started with the returned environment
# imports it: main.py, sweep.py and every sweep worker. Tests use it to make a run pause or
# die at a known point, so that an interruption never races the run.
HOOK = '''
import importlib.util, os, signal, sys, time


class _PatchTraining:
    def find_spec(self, name, path, target=None):
        if name != "training":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec


{patch}

sys.meta_path.insert(0, _PatchTraining())
'''

PAUSE_AT_EPOCH = '''
def patch(module):
    """Before epoch {epoch} of the runs where {when}: touch {marker!r}, then wait forever (the
    epochs before it are checkpointed)."""
    real = module._train_epoch

    def _train_epoch(steps, params, opt_state, tasks, cfgs, epoch, *rest):
        cfg = cfgs[0]
        if epoch == {epoch} and ({when}):
            open({marker!r}, "w").close()
            while True:
                time.sleep(0.05)
        return real(steps, params, opt_state, tasks, cfgs, epoch, *rest)
    module._train_epoch = _train_epoch
'''


def training_hook(folder, patch_source) -> dict:
    """The environment of processes whose `training` module gets `patch_source` applied."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK.replace("{patch}", patch_source))
    return {**os.environ, "PYTHONPATH": str(folder)}


def pause_at_epoch(folder, epoch: int, when: str = "True"):
    """(environment, marker): the runs whose Config `cfg` makes the expression `when` true
    stop for good before `epoch` (0-based) and touch the marker file when they get there."""
    marker = folder / "paused"
    return training_hook(folder, PAUSE_AT_EPOCH.format(epoch=epoch, when=when, marker=str(marker))), marker


def wait_for(path, proc, timeout=300):
    """Until `path` exists (the process must not end first)."""
    import time
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the process ended before it got there"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def fresh_programs():
    """Each test builds its own jitted programs: a program kept by an earlier test
    (training.programs_of) would not see what this one patches."""
    import training
    training._programs.clear()
    yield
    training._programs.clear()
