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
