"""Every task's data, as numpy arrays held in memory, and one batch iterator.

A task is a `Task(train, valid, test, score_mask)`. Each split holds inputs `X` [N, T, I]
(uint8 spike counts, or float32 intensities) and labels `Y` ([N] classes, or [N, T] for
MTS-XOR); batches are sliced by index and converted to float32 one batch at a time.
`score_mask` [T] marks the time steps that count for accuracy when every step has a
label (MTS-XOR), and is None otherwise.
"""

from typing import Callable, NamedTuple, Optional

import numpy as np

from utils_initialization import Config


class DataError(RuntimeError):
    """A data set is missing, unreadable or malformed; the message says how to fix it."""


class Split(NamedTuple):
    X: np.ndarray
    Y: np.ndarray
    # optional per-batch augmentation (x_BTI, rng) -> x_BTI, applied to training batches
    augment: Optional[Callable] = None

    def __len__(self):
        return len(self.Y)


class Task(NamedTuple):
    train: Split
    valid: Split
    test: Split
    score_mask: Optional[np.ndarray] = None
    # arrays a run needs to be re-evaluated later (e.g. the psMNIST pixel permutation);
    # train_hsnn saves them in the run folder as task.npz
    extras: Optional[dict] = None


def iterate_batches(split: Split, batch_size: int, rng: Optional[np.random.Generator] = None):
    """Yield time-major float32 (x [T, B, I], y) batches; shuffled and augmented when `rng`
    is given. The last batch may be smaller (at most one extra compiled shape). The float32
    conversion happens here: on XLA's CPU backend a device-side cast costs more than the
    larger transfer."""
    order = rng.permutation(len(split)) if rng is not None else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x_BTI = split.X[idx]
        if rng is not None and split.augment is not None:
            x_BTI = split.augment(x_BTI, rng)
        yield np.ascontiguousarray(x_BTI.transpose(1, 0, 2), dtype=np.float32), split.Y[idx]


def n_batches(split: Split, batch_size: int) -> int:
    return -(-len(split) // batch_size)


# --- MTS-XOR (paper Fig. 2a-b): a multi-timescale XOR --------------------------------------
MTS_XOR = dict(n_train=20 * 512, n_valid=1024, n_test=1024, n_steps=100, n_in=40,
               signal_steps=10, n_windows=6, silent_steps=5, coding_steps=10,
               low_rate=0.2, high_rate=0.6)


def mts_xor_score_mask(n_steps=100, signal_steps=10, silent_steps=5, window=15):
    """Coding steps of the six windows: t > 10 and (t - 10) mod 15 >= 5 (60 steps)."""
    t = np.arange(n_steps)
    return (t > signal_steps) & ((t - signal_steps) % window >= silent_steps)


def generate_mts_xor(n_samples: int, rng: np.random.Generator, noise_rate: float = 0.01):
    """Return X [N, 100, 40] uint8 spikes and Y [N, 100] int labels.

    Inputs 0-19 carry signal 1 in steps 0-9 at a low (0.2) or high (0.6) rate. Six windows of
    15 steps follow, each 5 silent steps then 10 steps of a fresh low/high pattern on inputs
    20-39; every step of a window is labelled XOR(signal 1 is high, the pattern is high),
    steps 0-9 are labelled 0. Background noise at `noise_rate` on every input and step.
    """
    p = MTS_XOR
    half, window = p["n_in"] // 2, p["silent_steps"] + p["coding_steps"]
    X = rng.random((n_samples, p["n_steps"], p["n_in"])) < noise_rate
    Y = np.zeros((n_samples, p["n_steps"]), dtype=np.int32)
    first_high = rng.random(n_samples) < 0.5
    rate = np.where(first_high, p["high_rate"], p["low_rate"])[:, None, None]
    X[:, :p["signal_steps"], :half] |= rng.random((n_samples, p["signal_steps"], half)) < rate
    for w in range(p["n_windows"]):
        start = p["signal_steps"] + w * window
        code = slice(start + p["silent_steps"], start + window)
        high = rng.random(n_samples) < 0.5
        rate = np.where(high, p["high_rate"], p["low_rate"])[:, None, None]
        X[:, code, half:] |= rng.random((n_samples, p["coding_steps"], half)) < rate
        Y[:, start:start + window] = (first_high ^ high)[:, None]
    return X.astype(np.uint8), Y


def load_mts_xor(cfg: Config) -> Task:
    """Train / validation / test sets drawn from independent seeded streams."""
    p = MTS_XOR
    streams = np.random.SeedSequence([cfg.seed, 0x5EED]).spawn(3)
    splits = [Split(*generate_mts_xor(n, np.random.default_rng(s), cfg.noise_rate))
              for n, s in zip((p["n_train"], p["n_valid"], p["n_test"]), streams)]
    return Task(*splits, score_mask=mts_xor_score_mask())


LOADERS = {"mts_xor": load_mts_xor}


def load_task(cfg: Config) -> Task:
    """The data of `cfg.dataset_name`."""
    if cfg.dataset_name not in LOADERS:
        raise DataError(f"--dataset_name {cfg.dataset_name}: this version has no loader for it yet; "
                        "available: " + ", ".join(LOADERS))
    return LOADERS[cfg.dataset_name](cfg)
