"""Shared fixtures: the project root on sys.path, JAX on the CPU, tiny tasks."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


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
