"""Every task's data, as numpy arrays held in memory, and one batch iterator.

A task is a `Task(train, valid, test, score_mask)`. Each split holds inputs `X` [N, T, I]
(uint8 spike counts, or float32 intensities; for MNIST an object whose `X[idx]` builds the
batch's [B, T, I] array from uint8 images) and labels `Y` ([N] classes, or [N, T] for
MTS-XOR); batches are sliced by index and converted to float32 one batch at a time.
`score_mask` [T] marks the time steps that count for accuracy when every step has a
label (MTS-XOR), and is None otherwise.
"""

import socket
from pathlib import Path
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


# --- MNIST, sequential MNIST, permuted sequential MNIST (DESIGN.md Sec. 3) -----------------
# Images stay uint8 [N, 784] in memory; the Split.X objects below build each batch's
# [B, T, I] input on the fly, so a 60,000-image set costs 47 MB whatever the encoding.
MNIST = dict(side=28, n_pixels=784, valid_fraction=0.2,
             latency_tau=20.0,        # steps; a pixel x fires at tau ln(x / (x - threshold))
             latency_threshold=0.2,   # pixels at or below this intensity stay silent
             download_timeout=60.0)   # [s] per network operation while torchvision downloads
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MNIST_RAW_FILES = sum(MNIST_FILES.values(), ())
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # uint8 data, 3 or 1 dimensions
MNIST_PIP = "pip install -r requirements/requirements_mnist.txt"


def latency_steps(x, nb_steps: int) -> np.ndarray:
    """Spike step of intensities x in [0, 1]: floor(20 ln(x / (x - 0.2))), clipped to the
    last step; -1 (no spike) where x <= 0.2. The published code let exactly 0.2 fire at the
    last step; here it stays silent, like every pixel below it."""
    x = np.asarray(x, dtype=np.float64)
    fires = x > MNIST["latency_threshold"]
    safe = np.where(fires, x, 1.0)
    steps = np.floor(MNIST["latency_tau"] * np.log(safe / (safe - MNIST["latency_threshold"])))
    return np.where(fires, np.minimum(steps, nb_steps - 1), -1).astype(np.int64)


class LatencyCoded:
    """Latency-coded MNIST: `X[idx]` is uint8 [B, nb_steps, 784] with at most one spike
    per pixel, built from the uint8 images [N, 784] of that batch only."""

    def __init__(self, images_NP: np.ndarray, nb_steps: int):
        self.images_NP, self.nb_steps = images_NP, nb_steps
        self.step_of_level = latency_steps(np.arange(256) / 255.0, nb_steps)  # per uint8 value

    def __len__(self):
        return len(self.images_NP)

    @property
    def shape(self):
        return (len(self), self.nb_steps, self.images_NP.shape[1])

    def __getitem__(self, idx):
        steps_BP = self.step_of_level[self.images_NP[idx]]
        b, p = np.nonzero(steps_BP >= 0)
        x_BTP = np.zeros((len(steps_BP), self.nb_steps, steps_BP.shape[1]), np.uint8)
        x_BTP[b, steps_BP[b, p], p] = 1
        return x_BTP


class PixelSequence:
    """Sequential MNIST: `X[idx]` is float32 [B, 784, 1], one pixel intensity in [0, 1]
    per step, in the (possibly permuted) pixel order of the uint8 images [N, 784]."""

    def __init__(self, images_NP: np.ndarray):
        self.images_NP = images_NP

    def __len__(self):
        return len(self.images_NP)

    @property
    def shape(self):
        return (len(self), self.images_NP.shape[1], 1)

    def __getitem__(self, idx):
        return self.images_NP[idx].astype(np.float32)[..., None] / np.float32(255)


def read_idx(path: Path, kind: str) -> np.ndarray:
    """One IDX file (big-endian header: magic, then one uint32 per dimension; uint8 data)."""
    data = path.read_bytes()
    magic = IDX_MAGIC[kind]
    n_dims = magic & 0xFF
    if len(data) < 4 + 4 * n_dims or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{path} is not an MNIST {kind} file (wrong IDX header); delete it and run again")
    shape = [int.from_bytes(data[4 + 4 * d:8 + 4 * d], "big") for d in range(n_dims)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * n_dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes of data, its header says {shape}; "
                        "delete it and run again")
    return body.reshape(shape)


def read_mnist(raw_dir: Path, part: str):
    """Images uint8 [N, 784] and labels int32 [N] of `part` ('train' or 'test')."""
    image_file, label_file = MNIST_FILES[part]
    images = read_idx(raw_dir / image_file, "images")
    labels = read_idx(raw_dir / label_file, "labels").astype(np.int32)
    if len(images) != len(labels) or images.shape[1:] != (MNIST["side"], MNIST["side"]):
        raise DataError(f"{raw_dir}: {image_file} holds {images.shape} images for {len(labels)} labels; "
                        "expected [N, 28, 28] and N labels")
    return images.reshape(len(images), MNIST["n_pixels"]), labels


def download_mnist(data_dir: Path):
    """Download MNIST through torchvision, as the published code did, into
    `data_dir/MNIST/raw/` (torchvision's layout; it verifies each file's MD5)."""
    raw_dir = data_dir / "MNIST" / "raw"
    try:
        import torchvision
    except ImportError:
        raise DataError(f"MNIST is not in {raw_dir} and downloading it needs torch and torchvision: "
                        f"{MNIST_PIP}") from None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(MNIST["download_timeout"])  # torchvision's urlopen has none
    try:
        for train in (True, False):
            torchvision.datasets.MNIST(str(data_dir), train=train, download=True)
    except (OSError, RuntimeError) as err:
        lines = str(err).strip().splitlines()  # torchvision: one line per mirror tried
        reason = lines[-1] if lines else type(err).__name__
        raise DataError(f"MNIST download into {raw_dir} failed ({reason}); without network, copy "
                        f"{', '.join(MNIST_RAW_FILES)} there") from None
    finally:
        socket.setdefaulttimeout(previous)


def mnist_images(cfg: Config):
    """(train, valid, test) as (images [N, 784] uint8, labels [N]) pairs: a seeded 80/20
    split of the training file; the test file kept apart. Reads `data_dir/MNIST/raw/`,
    downloading the files first when any is missing."""
    data_dir = Path(cfg.data_dir)
    raw_dir = data_dir / "MNIST" / "raw"
    if not all((raw_dir / name).is_file() for name in MNIST_RAW_FILES):
        download_mnist(data_dir)
    images, labels = read_mnist(raw_dir, "train")
    order = np.random.default_rng(mnist_seeds(cfg.seed)[0]).permutation(len(images))
    n_valid = int(round(MNIST["valid_fraction"] * len(images)))
    valid, train = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    return (images[train], labels[train]), (images[valid], labels[valid]), read_mnist(raw_dir, "test")


def mnist_seeds(seed: int):
    """Independent streams of one run's seed: the train/validation split, the permutation."""
    return np.random.SeedSequence([seed, 0x3A15]).spawn(2)


def pixel_permutation(seed: int) -> np.ndarray:
    """psMNIST's fixed pixel order, a function of the run's seed only."""
    return np.random.default_rng(mnist_seeds(seed)[1]).permutation(MNIST["n_pixels"])


def load_mnist(cfg: Config) -> Task:
    """Latency-coded MNIST: `nb_steps` steps (50), 784 inputs, 10 classes."""
    return Task(*(Split(LatencyCoded(images, cfg.nb_steps), labels)
                  for images, labels in mnist_images(cfg)))


def load_s_mnist(cfg: Config) -> Task:
    """Sequential MNIST: the 784 pixels in raster order, one per step, 1 input."""
    return Task(*(Split(PixelSequence(images), labels) for images, labels in mnist_images(cfg)))


def load_ps_mnist(cfg: Config) -> Task:
    """Permuted sequential MNIST: one seeded pixel permutation for every split, saved in
    the run folder (task.npz) through `Task.extras`."""
    perm = pixel_permutation(cfg.seed)
    splits = [Split(PixelSequence(images[:, perm]), labels) for images, labels in mnist_images(cfg)]
    return Task(*splits, extras={"permutation": perm})


LOADERS.update({"mnist": load_mnist, "s-mnist": load_s_mnist, "ps-mnist": load_ps_mnist})
