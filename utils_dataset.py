"""Every task's data, as numpy arrays held in memory, and one batch iterator.

A task is a `Task(train, valid, test, score_mask)`. Each split holds inputs `X` [N, T, I]
and labels `Y` ([N] classes, or [N, T] for MTS-XOR); batches are sliced by index and
converted to float32 one batch at a time. `X` is a numpy array (MTS-XOR), or an object whose
`X[idx]` (idx an int array) builds the batch [len(idx), T, I] on the fly: SHD and SSC keep
their binned spikes as events (`SpikeCounts`), MNIST its uint8 images. `score_mask` [T]
marks the time steps that count for accuracy when every step has a label (MTS-XOR), and is
None otherwise.
"""

import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from utils_initialization import Config
from utils_io import atomic_folder, atomic_write, write_json


class DataError(RuntimeError):
    """A data set is missing, unreadable or malformed; the message says how to fix it.
    It is always one line (main.py prints it as the run's only error output)."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass(frozen=True)
class Split:
    """A split's samples: X (rows or an object that builds them) and labels Y; `len` is the
    number of samples. (A dataclass, not a NamedTuple: a NamedTuple whose len() is not its
    number of fields breaks its own _replace; use dataclasses.replace.)"""
    X: np.ndarray
    Y: np.ndarray
    # optional per-batch augmentation of training batches (FrequencyShift: its draws, its shift)
    augment: Optional["FrequencyShift"] = None
    # evaluated in a fresh random order at every pass, as the published loaders of the SHD
    # validation set and the SSC validation and test sets were (shuffle=True); batch norm uses
    # the evaluated batch's statistics, so the batches' composition matters
    reshuffle: bool = False

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
    # an MD5 that identifies the data (of the source files, or of the generated arrays): a
    # checkpoint records it, and a run resumes only on the same data
    fingerprint: Optional[str] = None


def fingerprint(*parts) -> str:
    """MD5 over byte strings, text and arrays (their bytes), in order."""
    digest = hashlib.md5()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else
                      np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else part)
    return digest.hexdigest()


def batch_plan(split: Split, batch_size: int, rng: Optional[np.random.Generator] = None, augment: bool = True):
    """Yield (idx, draws) per batch: the samples of the batch (positions in the split; shuffled
    when `rng` is given, else in order) and the augmentation's draws for it (None without
    one). The draws come from `rng` in the order the published loader drew them, whichever side
    builds the batch: the host (`iterate_batches`) or the train step (device-resident data)."""
    order = rng.permutation(len(split)) if rng is not None else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        draws = split.augment.draw(rng, len(idx)) if rng is not None and augment and split.augment else None
        yield idx, draws


def iterate_batches(split: Split, batch_size: int, rng: Optional[np.random.Generator] = None,
                    time_major: bool = True, augment: bool = True):
    """Yield (x, y) batches; shuffled (and augmented, if `augment`) when `rng` is given. The last batch may
    be smaller (at most one extra compiled shape). x is time-major float32 [T, B, I]; with
    `time_major` False it is the stored [B, T, I] array as it is (uint8 spike counts), for
    the training loop's `runtime.HostBatches`, which converts and transposes in one copy."""
    for idx, draws in batch_plan(split, batch_size, rng, augment):
        x_BTI = split.X[idx]
        if draws is not None:
            x_BTI = split.augment.apply(x_BTI, *draws)
        if time_major:
            x_BTI = np.ascontiguousarray(x_BTI.transpose(1, 0, 2), dtype=np.float32)
        yield x_BTI, split.Y[idx]


def dense(X, rows=None, chunk: int = 1024) -> np.ndarray:
    """The samples `rows` (default all) of a split's inputs as one array [N, T, I] (uint8 spike
    counts, or float32 for sequential MNIST), built a chunk at a time from the stored form
    (events, images): what a device holds when the data set fits it."""
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    if isinstance(X, np.ndarray):
        return X[rows]
    first = X[rows[:1]]
    out = np.empty((len(rows), *first.shape[1:]), first.dtype)
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = X[rows[start:start + chunk]]
    return out


def data_source(X):
    """(key, [N, T, I] source rows, positions of X's samples among them): SHD/SSC splits of one
    file share their file's rows (one key), so seeds of one program hold them once."""
    if isinstance(X, SpikeCounts):  # one file, however often loaded: its row pointers tell
        whole = SpikeCounts(X.ptr, X.flat, X.count, X.shape_TC)
        key = fingerprint(np.asarray(X.ptr), np.asarray(X.flat[:4096]), np.asarray(X.flat[-4096:]))
        return ("events", key, len(X.flat), X.shape_TC), whole, X.rows
    return ("array", id(X)), X, np.arange(len(X))


def n_batches(split: Split, batch_size: int) -> int:
    return math.ceil(len(split) / batch_size)


# --- MTS-XOR (paper Fig. 2a-b): a multi-timescale XOR --------------------------------------
# set sizes in batches of `batch_size`, as the published generator made them (20 x 512 = 10,240
# training samples at the published batch size)
MTS_XOR = dict(train_batches=20, valid_batches=2, test_batches=2, n_steps=100, n_in=40,
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
    """Train / validation / test sets of 20, 2 and 2 batches of `batch_size` samples, drawn
    from independent seeded streams."""
    p = MTS_XOR
    streams = np.random.SeedSequence([cfg.seed, 0x5EED]).spawn(3)
    sizes = [p[f"{part}_batches"] * cfg.batch_size for part in ("train", "valid", "test")]
    splits = [Split(*generate_mts_xor(n, np.random.default_rng(s), cfg.noise_rate))
              for n, s in zip(sizes, streams)]
    return Task(*splits, score_mask=mts_xor_score_mask(),
                fingerprint=fingerprint(*(a for sp in splits for a in (sp.X, sp.Y))))


# --- SHD and SSC (docs/datasets.md): download, checks, binning, on-disk cache --------------
AUDIO_URL = "https://zenkelab.org/datasets/"  # the published code's source, with md5sums.txt
AUDIO_PARTS = {"shd": ("train", "test"), "ssc": ("train", "valid", "test")}
AUDIO_CLASSES = {"shd": 20, "ssc": 35}
AUDIO_CHANNELS = 700      # cochlea channels (spikes/units 0..699)
SHD_TRAIN_FRACTION = 0.8  # SHD has no validation file: seeded 80/20 split of its training file
NET_TIMEOUT = (10, 30)    # [s] to connect, and to wait for the next bytes of a download
BIN_CELLS = 1 << 24       # (sample, bin, channel) cells counted at once: 128 MiB of int64
MAX_COUNT = 255           # counts are uint8; more spikes in one cell saturate here
CACHE_FORMAT = 4          # part of every cache folder's name; bump it when the layout changes


class SpikeCounts:
    """Binned spike counts [N, T, C] held as events (uint8 counts): row
    r's non-zero cells are `flat[ptr[r]:ptr[r + 1]]` (flat position t * C + c) with counts
    `count[ptr[r]:ptr[r + 1]]`. `X[idx]` builds the dense uint8 batch [len(idx), T, C] of the
    samples `rows[idx]`, so SSC (75466 x 200 x 700 cells) never exists as a dense array.
    `flat` and `count` may be memory-mapped from the cache."""

    def __init__(self, ptr, flat, count, shape_TC, rows=None):
        self.ptr, self.flat, self.count, self.shape_TC = ptr, flat, count, tuple(shape_TC)
        self.rows = np.arange(len(ptr) - 1) if rows is None else np.asarray(rows)

    def __len__(self):
        return len(self.rows)

    @property
    def shape(self):
        return (len(self), *self.shape_TC)

    def subset(self, rows) -> "SpikeCounts":
        """The samples at positions `rows` of this set, sharing its arrays."""
        return SpikeCounts(self.ptr, self.flat, self.count, self.shape_TC, self.rows[rows])

    def __getitem__(self, idx):
        rows = self.rows[idx]
        x = np.zeros((np.size(rows), self.shape_TC[0] * self.shape_TC[1]), np.uint8)
        for i, r in enumerate(np.atleast_1d(rows)):
            start, stop = self.ptr[r], self.ptr[r + 1]
            x[i, self.flat[start:stop]] = self.count[start:stop]
        x = x.reshape(-1, *self.shape_TC)
        return x if np.ndim(rows) else x[0]


class FrequencyShift(NamedTuple):
    """Frequency-shift augmentation of one training batch, as the published code does it:
    one shift size for the whole batch, max(0, int(N(0,1) * 3 + freq_shift)) channels, and
    for every sample a direction, up (to higher channel indices) or down with probability
    0.5 each; channels shifted in are zero. In two halves, so that the draws are the same
    whichever side shifts the batch: `draw` (on the host, from the epoch's generator) and
    `apply` (numpy here; `models.shift_channels` inside the train step)."""
    freq_shift: float

    def draw(self, rng: np.random.Generator, n: int):
        """(shift size, up [n] bool)."""
        shift = max(0, int(rng.normal() * 3 + self.freq_shift))
        return shift, rng.random(n) >= 0.5

    @staticmethod
    def apply(x_BTC, shift: int, up):
        n_channels = x_BTC.shape[-1]
        shift = min(shift, n_channels)
        out = np.zeros_like(x_BTC)
        out[up, :, shift:] = x_BTC[up, :, :n_channels - shift]
        out[~up, :, :n_channels - shift] = x_BTC[~up, :, shift:]
        return out

    def __call__(self, x_BTC, rng: np.random.Generator):
        return self.apply(x_BTC, *self.draw(rng, len(x_BTC)))


def frequency_shift(x_BTC, rng: np.random.Generator, freq_shift: float):
    """`FrequencyShift(freq_shift)` of one batch (its draws from `rng`)."""
    return FrequencyShift(freq_shift)(x_BTC, rng)


def channel_stride(n_in: int) -> int:
    """n_in < 700 keeps every ceil(700 / n_in)-th channel, as the published code did."""
    return math.ceil(AUDIO_CHANNELS / n_in)


# --- files: present, decompressed, or downloaded ---------------------------------------------
def _by_hand(path: Path) -> str:
    """How to place the file `path` (its .h5 or .h5.gz) by hand."""
    stem = path.name.split(".")[0]
    return (f"download {AUDIO_URL}{stem}.h5.gz by hand (a browser works) and put it, or its "
            f"decompressed {stem}.h5, into {path.parent}/")


def _bad_file(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; delete it, then {_by_hand(path)}")


def regular_file(path: Path) -> bool:
    """Whether `path` exists; refused (DataError) when it is anything but a regular file (a
    folder, a pipe, a device), before anything reads it: a pipe or /dev/zero would hang."""
    if not path.exists():
        return False
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (a folder, pipe or device stands where the data "
                        "file belongs); remove it, or point --data_dir at the data")
    return True


def audio_file(folder: Path, stem: str, base_url: str = AUDIO_URL) -> Path:
    """`<folder>/<stem>.h5`, ready to read. A present `.h5` is used as it is; else a present
    `<stem>.h5.gz` is decompressed once; else that archive is downloaded (md5-checked) first.
    Files already present need no network."""
    h5, gz = folder / f"{stem}.h5", folder / f"{stem}.h5.gz"
    if regular_file(h5):
        return h5
    if not regular_file(gz):
        download(gz, base_url)
    gunzip(gz, h5)
    return h5


def download(gz: Path, base_url: str = AUDIO_URL):
    """Fetch `gz` from `base_url` with pooch, checked against the md5 the site lists in its
    md5sums.txt (as the published code did). pooch streams into a temporary file and keeps
    it only when the md5 matches, so a failed download leaves nothing behind."""
    import pooch
    import requests
    pooch.get_logger().setLevel("WARNING")  # our own line below says what is downloaded
    url = base_url + gz.name
    print(f"downloading {url} into {gz.parent}/", flush=True)
    try:
        gz.parent.mkdir(parents=True, exist_ok=True)
        md5 = published_md5(base_url, gz)
        pooch.retrieve(url, f"md5:{md5}", fname=gz.name, path=gz.parent,
                       downloader=pooch.HTTPDownloader(progressbar=True, timeout=NET_TIMEOUT))
    except requests.RequestException as err:
        raise DataError(f"{gz}: missing, and downloading it failed ({_net_reason(err)}); check the "
                        f"network connection, or {_by_hand(gz)}") from err
    except ValueError as err:  # pooch's hash check
        raise DataError(f"{gz}: the download from {url} does not match its md5 in "
                        f"{base_url}md5sums.txt and was discarded; run again, or {_by_hand(gz)}") from err
    except OSError as err:
        raise DataError(f"{gz}: cannot write it ({err.strerror or err}); make {gz.parent} "
                        "writable or choose another --data_dir") from err


def published_md5(base_url: str, gz: Path) -> str:
    """The md5 that `<base_url>md5sums.txt` lists for `gz` (fetched into a temporary folder)."""
    import pooch
    with tempfile.TemporaryDirectory() as tmp:
        listing = pooch.retrieve(base_url + "md5sums.txt", None, fname="md5sums.txt", path=tmp,
                                 downloader=pooch.HTTPDownloader(timeout=NET_TIMEOUT))
        lines = [line.split() for line in Path(listing).read_text().splitlines()]
    sums = {Path(name.lstrip("*")).name: md5.lower() for md5, name in (w for w in lines if len(w) == 2)}
    if not re.fullmatch(r"[0-9a-f]{32}", sums.get(gz.name, "")):
        raise DataError(f"{gz}: missing, and {base_url}md5sums.txt lists no md5 for it, so it cannot "
                        f"be downloaded and checked; {_by_hand(gz)}")
    return sums[gz.name]


def _net_reason(err) -> str:
    """The useful part of a requests error: the HTTP status, a timeout or the socket error."""
    import requests
    response = getattr(err, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason} for {response.url}"
    if isinstance(err, requests.Timeout):
        return "the server did not answer in time"
    found = re.search(r"\[Errno -?\d+\][^'\")]*", str(err))
    return found.group(0).strip() if found else type(err).__name__


def gunzip(gz: Path, h5: Path, by_hand: Optional[str] = None):
    """Decompress `gz` into `h5` through a temporary file: a truncated or corrupt archive
    (gzip checks length and CRC) leaves no `.h5` behind, and the archive itself is kept.
    `by_hand`: how to place the file by hand, for the error (default: SHD/SSC's)."""
    print(f"decompressing {gz}", flush=True)
    try:
        with gzip.open(gz, "rb") as source:
            atomic_write(h5, lambda f: shutil.copyfileobj(source, f, 1 << 22))
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{gz}: truncated or corrupt archive ({err}); delete it and run again to "
                        f"download it anew, or {by_hand or _by_hand(gz)}") from err
    except OSError as err:
        raise DataError(f"cannot write {h5} ({err.strerror or err}); free some disk space, make "
                        f"{h5.parent} writable, or choose another --data_dir") from err


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


MD5_MEMO = "md5.json"
SPIKES = "spikes.json"  # in each cache folder: spikes of the kept channels, and those binned,
CACHE_ARRAYS = ("ptr.npy", "labels.npy", "flat.u32", "count.u8")  # and the CRC-32 of each array file


def source_md5(path: Path) -> str:
    """file_md5 of a source file, remembered in `<folder>/cache/md5.json` against the file's
    size, inode, modification time and status-change time (hashing SSC's files would cost
    seconds at every start). The status-change time cannot be set back by hand, so a file
    rewritten in place whose modification time was restored is hashed again. As git does for
    its index, a file changed less than 2 s before it was hashed is not remembered: a rewrite
    within the same clock tick could otherwise keep its size and times."""
    memo_path = path.parent / "cache" / MD5_MEMO
    st = path.stat()
    key = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}  # a memo of the wrong type is forgotten
    entry = memo.get(path.name)
    if isinstance(entry, list) and len(entry) == 5 and entry[:4] == key:
        return entry[4]
    md5 = file_md5(path)
    if time.time() - max(st.st_mtime, st.st_ctime) > 2:
        memo[path.name] = key + [md5]
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(memo_path, memo)  # atomic; removes its temporary file on failure
        except OSError:
            pass  # a read-only data folder: hash again next time
    return md5


# --- binning: HDF5 spike lists -> uint8 counts per (bin, channel) ----------------------------
def _spike_datasets(f, path: Path):
    """spikes/times, spikes/units and labels of an open file, checked for presence and length."""
    import h5py
    for name in ("spikes/times", "spikes/units", "labels"):
        if name not in f:
            raise _bad_file(path, f"it has no '{name}', so it is not an SHD/SSC file")
        if not isinstance(f[name], h5py.Dataset):
            raise _bad_file(path, f"'{name}' is a group, where an SHD/SSC file has a dataset")
    times, units, labels = f["spikes/times"], f["spikes/units"], f["labels"]
    shapes = [times.shape, units.shape, labels.shape]
    if any(len(s) != 1 for s in shapes) or len({s[0] for s in shapes}) != 1 or not shapes[0][0]:
        raise _bad_file(path, "spikes/times, spikes/units and labels must be 1-d and hold the same, "
                        f"non-zero number of samples (shapes {shapes})")
    return times, units, labels


def _checked_labels(labels, n_classes: int, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    bad = ~np.isin(labels, np.arange(n_classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise _bad_file(path, f"sample {i} has label {labels[i]}, outside the class range "
                        f"0..{n_classes - 1} ({int(bad.sum())} such samples)")
    return labels.astype(np.int32)


def _read(dataset, rows: slice, path: Path):
    try:
        return dataset[rows]
    except (OSError, ValueError, TypeError) as err:
        raise _bad_file(path, f"cannot read {dataset.name} ({err})") from err


def _spikes(times, units, path: Path, first: int):
    """One flat (sample, time [s] as float64, unit) triple per spike of consecutive samples,
    checked: as many units as times per sample, finite times >= 0, whole units in 0..699.
    `first` numbers the samples in error messages."""
    lengths = np.array([len(t) for t in times], np.int64)
    for i, (u, n) in enumerate(zip(units, lengths)):
        if len(u) != n:
            raise _bad_file(path, f"sample {first + i} has {n} spike times but {len(u)} units")
    try:
        t = np.concatenate([np.asarray(a, np.float64) for a in times] or [np.zeros(0)])
        u_raw = np.concatenate([np.asarray(a, np.float64) for a in units] or [np.zeros(0)])
    except (TypeError, ValueError) as err:
        raise _bad_file(path, f"its spike times or units are not numbers ({err})") from err

    def sample_of(bad):
        return first + int(np.searchsorted(np.cumsum(lengths), np.argmax(bad), side="right"))

    checks = [(~np.isfinite(t) | (t < 0), "spike time", "not a finite time >= 0 s"),
              (~np.isfinite(u_raw) | (u_raw != np.round(u_raw)), "unit", "not a whole channel number"),
              ((u_raw < 0) | (u_raw >= AUDIO_CHANNELS), "unit", f"outside the channels 0..{AUDIO_CHANNELS - 1}")]
    for bad, what, problem in checks:
        if bad.any():
            value = (t if what == "spike time" else u_raw)[np.argmax(bad)]
            raise _bad_file(path, f"sample {sample_of(bad)} has {what} {value:g}, {problem} "
                            f"({int(bad.sum())} such values)")
    return np.repeat(np.arange(len(lengths)), lengths), t, u_raw.astype(np.int64)


def bin_rows(times, units, cfg: Config, path: Path, first: int = 0):
    """Counts per (bin, channel) of consecutive samples (paper Sec. 3, SHD/SSC).

    `times` [s] and `units` hold one array per sample. With `binning` digitize (the
    published code), a spike at time t falls into bin np.digitize(t, linspace(0, time_max,
    nb_steps)): bin 0 stays empty and spikes at or after time_max are dropped; with uniform,
    into bin floor(t / (time_max / nb_steps)) for t in [0, time_max). Channel u becomes
    u // stride where u % stride == 0 (stride = ceil(700 / n_in)), and the inputs from
    ceil(700 / stride) to n_in - 1 stay empty. Times are float64 by now: float16 times (as in
    the published files) neither overflow nor round into the wrong bin.
    Returns the number of non-zero cells per sample, their flat positions t * n_in + c
    (uint32), their counts (uint8, saturating at 255), and the number of spikes of the kept
    channels and of those that fell inside the binned time."""
    sample, t, u = _spikes(times, units, path, first)
    if cfg.binning == "digitize":
        step = np.digitize(t, np.linspace(0, cfg.time_max, cfg.nb_steps))
    else:
        step = np.floor(t / (cfg.time_max / cfg.nb_steps))
    stride = channel_stride(cfg.n_in)
    in_time, channel = (step >= 0) & (step < cfg.nb_steps), u % stride == 0
    keep = in_time & channel
    cells_per_sample = cfg.nb_steps * cfg.n_in
    cell = (sample[keep] * cfg.nb_steps + step[keep].astype(np.int64)) * cfg.n_in + u[keep] // stride
    counts = np.bincount(cell, minlength=len(times) * cells_per_sample)
    nonzero = np.flatnonzero(counts)
    per_sample = np.bincount(nonzero // cells_per_sample, minlength=len(times))
    return (per_sample, (nonzero % cells_per_sample).astype(np.uint32),
            np.minimum(counts[nonzero], MAX_COUNT).astype(np.uint8), int(channel.sum()), int(keep.sum()))


def bin_file(path: Path, out: Path, cfg: Config, n_classes: int):
    """Bin every sample of an SHD/SSC file into the folder `out`, a few hundred samples at a
    time: `flat.u32` and `count.u8` (raw arrays, streamed to disk, so that SSC is never held
    in memory), `ptr.npy` (row pointers), `labels.npy`, and `spikes.json` (how many spikes of
    the kept channels there were, and how many fell inside the binned time)."""
    import h5py
    try:
        f = h5py.File(path, "r")
    except BlockingIOError as err:  # HDF5's file lock: another process has it open for writing
        raise DataError(f"{path}: another process has it open for writing (HDF5 reports the file as locked); "
                        "wait until that process has finished writing it, then run again") from err
    except OSError as err:
        raise _bad_file(path, f"not a readable HDF5 file ({err})") from err
    with f, open(out / "flat.u32", "wb") as flat_file, open(out / "count.u8", "wb") as count_file:
        times, units, labels = _spike_datasets(f, path)
        labels = _checked_labels(_read(labels, slice(None), path), n_classes, path)
        chunk = max(1, BIN_CELLS // (cfg.nb_steps * cfg.n_in))
        per_sample, spikes, binned = [], 0, 0
        for first in range(0, len(labels), chunk):
            rows = slice(first, first + chunk)
            n, flat, count, s, b = bin_rows(_read(times, rows, path), _read(units, rows, path), cfg, path, first)
            per_sample.append(n)
            spikes, binned = spikes + s, binned + b
            flat_file.write(flat.tobytes())
            count_file.write(count.tobytes())
    np.save(out / "ptr.npy", np.concatenate([[0], np.cumsum(np.concatenate(per_sample))]))
    np.save(out / "labels.npy", labels)
    write_json(out / SPIKES, dict(spikes=spikes, binned=binned, crc32={name: file_crc32(out / name)
                                                                       for name in CACHE_ARRAYS}))


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes (zlib's; about 1 GB/s, so opening SSC's cache costs well under
    a second)."""
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return crc


# --- the cache: one folder per (source checksum, nb_steps, n_in, time_max) -------------------
def cached_counts(path: Path, cfg: Config, n_classes: int):
    """(SpikeCounts, labels) of one SHD/SSC file, from its cache folder, built on first use.

    The folder `<file's folder>/cache/<stem>_T<nb_steps>_C<n_in>_<time_max>s_<binning>_v<format>_<md5>`
    is named by the binning settings and the md5 of the source file, so a changed source or
    setting gets a cache of its own; caches of an earlier version of the same file with the
    same settings are removed once the new one exists."""
    settings = (f"{path.name[:-len('.h5')]}_T{cfg.nb_steps}_C{cfg.n_in}_{cfg.time_max!r}s_"
                f"{cfg.binning}_v{CACHE_FORMAT}")
    cache = path.parent / "cache" / f"{settings}_{source_md5(path)}"
    if cache.exists():
        try:
            counts, labels, spikes = open_cache(cache, cfg, n_classes)
        except CacheDamaged as err:  # our own derived data: rebuilt from the source file
            print(f"warning: {err}; binning {path.name} again", file=sys.stderr, flush=True)
            shutil.rmtree(cache, ignore_errors=True)
    if not cache.exists():
        build_cache(path, cache, cfg, n_classes)
        for old in cache.parent.glob(f"{settings}_*"):
            if old != cache:
                shutil.rmtree(old, ignore_errors=True)
        counts, labels, spikes = open_cache(cache, cfg, n_classes)
    check_binned_share(path, cfg, spikes)
    return counts, labels


def check_binned_share(path: Path, cfg: Config, spikes: dict):
    """A file whose spikes all fall outside the binned time is refused; one that loses more
    than half of them gets a warning with the count (times in ms instead of s, say)."""
    total, binned = spikes["spikes"], spikes["binned"]
    window = f"--time_max {cfg.time_max} s in {cfg.nb_steps} bins (--binning {cfg.binning})"
    if binned == 0:
        raise DataError(f"{path}: none of its {total} spikes falls inside {window}; are the spike times "
                        "in seconds, and --nb_steps and --time_max right?")
    if binned < total / 2:
        print(f"warning: {path.name}: {total - binned} of its {total} spikes ({(total - binned) / total:.0%}) "
              f"fall outside {window} and are dropped", file=sys.stderr, flush=True)


def build_cache(path: Path, cache: Path, cfg: Config, n_classes: int):
    """Bin `path` into a temporary folder next to `cache`, then rename it into place: a
    failed or killed build leaves no folder that a later run would trust."""
    print(f"binning {path} into {cfg.nb_steps} bins x {cfg.n_in} channels "
          f"(once; cached in {cache.parent}/)", flush=True)
    start = time.time()
    try:
        with atomic_folder(cache) as tmp:
            bin_file(path, tmp, cfg, n_classes)
    except OSError as err:
        if not cache.exists():  # else another run built the same cache meanwhile
            raise _cache_error(cache, err) from err
    print(f"binned {path.name} in {time.time() - start:.1f} s", flush=True)


def _cache_error(cache: Path, err: OSError) -> DataError:
    return DataError(f"cannot write the cache {cache} ({err.strerror or err}); free some disk "
                     f"space, make {cache.parent} writable, or choose another --data_dir")


class CacheDamaged(RuntimeError):
    """A cache folder that cannot be what bin_file wrote."""


def open_cache(cache: Path, cfg: Config, n_classes: int):
    """(SpikeCounts, labels, spike totals) from a cache folder, checked for damage
    (CacheDamaged); the event arrays are memory-mapped, so a warm start reads almost nothing
    and the pages stay shareable between runs."""
    try:
        spikes = json.loads((cache / SPIKES).read_text())
        sums = spikes.get("crc32") if isinstance(spikes, dict) else None
        if not isinstance(sums, dict) or any(sums.get(name) != file_crc32(cache / name) for name in CACHE_ARRAYS):
            raise CacheDamaged(f"the cache {cache} is damaged (its files' checksums do not match)")
        ptr = np.load(cache / "ptr.npy", allow_pickle=False)
        labels = np.load(cache / "labels.npy", allow_pickle=False)
        flat, count = _mapped(cache / "flat.u32", np.uint32), _mapped(cache / "count.u8", np.uint8)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CacheDamaged(f"the cache {cache} is unreadable ({err})") from None
    cells = cfg.nb_steps * cfg.n_in
    intact = (ptr.ndim == 1 and len(ptr) >= 1 and ptr[0] == 0 and len(flat) == len(count) == ptr[-1]
              and len(labels) == len(ptr) - 1 and bool(np.all(np.diff(ptr) >= 0))
              and (len(flat) == 0 or (int(flat.max()) < cells and int(count.min()) > 0))
              and bool(np.isin(labels, np.arange(n_classes)).all())
              and isinstance(spikes, dict) and all(isinstance(spikes.get(k), int) for k in ("spikes", "binned")))
    if not intact:
        raise CacheDamaged(f"the cache {cache} is damaged (its arrays do not fit together)")
    return SpikeCounts(ptr, flat, count, (cfg.nb_steps, cfg.n_in)), labels, spikes


def _mapped(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # mmap refuses empty files
        return np.zeros(0, dtype)
    return np.asarray(np.memmap(path, dtype, "r"))  # a plain ndarray view: faster slicing


# --- the task ----------------------------------------------------------------------------------
def shd_validation_rows(n: int, seed: int):
    """SHD's seeded 80/20 split of its training file: sorted (train rows, validation rows)."""
    order = np.random.default_rng([seed, 0x5D]).permutation(n)
    n_train = int(SHD_TRAIN_FRACTION * n)
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def check_audio_config(cfg: Config):
    """Settings that SHD/SSC cannot satisfy, before any file is touched."""
    name, n_classes = cfg.dataset_name, AUDIO_CLASSES[cfg.dataset_name]
    if cfg.n_in > AUDIO_CHANNELS:
        raise DataError(f"--n_in {cfg.n_in}: {name} has {AUDIO_CHANNELS} input channels; use "
                        f"--n_in {AUDIO_CHANNELS} or fewer")
    if cfg.n_out < n_classes:
        raise DataError(f"--n_out {cfg.n_out}: {name} has {n_classes} classes; use --n_out {n_classes}")


def load_audiospikes(cfg: Config, base_url: Optional[str] = None) -> Task:
    """SHD or SSC from `<data_dir>/audiospikes/`, downloaded if missing.

    SHD validates on a seeded 80/20 split of its training file, SSC on its validation file;
    the SHD validation set and the SSC validation and test sets are evaluated in a fresh
    order at every pass, the SHD test set in file order (as the published loaders did).
    `use_test_as_valid` (the paper's Table 1 protocol) selects the model on the test set
    (training stays on the same split) and warns that the test accuracy is then optimistic.
    Training batches get the frequency-shift augmentation when `freq_shift` > 0. Missing
    files are downloaded from `base_url`, else $HSNN_AUDIO_URL, else zenkelab.org."""
    name, paths = cfg.dataset_name, audio_files(cfg, base_url)  # all present first
    data = {p: cached_counts(path, cfg, AUDIO_CLASSES[name]) for p, path in paths.items()}
    augment = FrequencyShift(cfg.freq_shift) if cfg.freq_shift > 0 else None
    X, Y = data["train"]
    test = Split(*data["test"], reshuffle=name == "ssc")
    if name == "ssc":
        train = Split(X, Y, augment)
        valid = None if cfg.use_test_as_valid else Split(*data["valid"], reshuffle=True)
    else:
        rows_train, rows_valid = shd_validation_rows(len(Y), cfg.seed)
        train = Split(X.subset(rows_train), Y[rows_train], augment)
        valid = Split(X.subset(rows_valid), Y[rows_valid], reshuffle=True)
    if cfg.use_test_as_valid:
        print(f"warning: --use_test_as_valid: the model is selected on the {name} test set (the "
              "paper's Table 1 protocol), so the reported test accuracy is optimistic", file=sys.stderr)
        valid = test
    return Task(train, valid, test, fingerprint=fingerprint(*(f"{p}:{source_md5(path)};" for p, path in paths.items())))


def audio_files(cfg: Config, base_url: Optional[str] = None) -> dict:
    """{part: the .h5 file} of SHD or SSC, downloaded (and decompressed) if missing; the
    settings the data cannot satisfy are refused first."""
    check_audio_config(cfg)
    base_url = base_url or os.environ.get("HSNN_AUDIO_URL") or AUDIO_URL  # a mirror, if set
    name, folder = cfg.dataset_name, Path(cfg.data_dir) / "audiospikes"
    parts = [p for p in AUDIO_PARTS[name] if not (p == "valid" and cfg.use_test_as_valid)]
    return {p: audio_file(folder, f"{name}_{p}", base_url) for p in parts}


def fetch_data(cfg: Config):
    """Make the files of `cfg`'s task present (downloading what is missing) without loading
    them: what a sweep does once, before any of its runs starts, so that a missing or
    undownloadable data set is one line instead of one failure per run. Returns where they
    are (None for MTS-XOR, which is generated)."""
    if cfg.dataset_name in AUDIO_PARTS:
        return audio_files(cfg)
    if cfg.dataset_name in ("mnist", "s-mnist", "ps-mnist"):
        raw_dir = Path(cfg.data_dir) / "MNIST" / "raw"
        if not all([regular_file(raw_dir / name) for name in MNIST_RAW_FILES]):  # each one checked
            download_mnist(raw_dir)
        return raw_dir
    return None


LOADERS = {"mts_xor": load_mts_xor, "shd": load_audiospikes, "ssc": load_audiospikes}


def load_task(cfg: Config) -> Task:
    """The data of `cfg.dataset_name`, with sets large enough to train on."""
    return check_sizes(LOADERS[cfg.dataset_name](cfg), cfg)


def check_sizes(task: Task, cfg: Config) -> Task:
    """Every split must make at least one batch (of one sample or more): a training,
    validation or test set without a sample is refused. Smaller sets than --batch_size train
    in one smaller batch, as the published loaders did. Every label must be a class of the
    network's output (0 .. n_out - 1): one outside would be trained on as no class at all."""
    names = {"train": "training", "valid": "validation", "test": "test"}
    for part, name in names.items():
        split = getattr(task, part)
        if len(split) == 0:
            raise DataError(f"the {cfg.dataset_name} {name} set holds no sample, too few for one batch; "
                            "the data files hold too few samples")
        bad = (np.asarray(split.Y) < 0) | (np.asarray(split.Y) >= cfg.n_out)
        if bad.any():
            i = int(np.argmax(bad.reshape(len(split), -1).any(axis=1)))
            raise DataError(f"the {cfg.dataset_name} {name} set has a label outside the classes 0..{cfg.n_out - 1} "
                            f"(sample {i}, {int(bad.sum())} such labels); the data files or their cache are "
                            "damaged: delete them and run again")
    return task


# --- MNIST, sequential MNIST, permuted sequential MNIST (docs/datasets.md) -----------------
# Images stay uint8 [N, 784] in memory; the Split.X objects below build each batch's
# [B, T, I] input on the fly, so a 60,000-image set costs 47 MB whatever the encoding.
MNIST = dict(side=28, n_pixels=784, valid_fraction=0.2,
             latency_tau=20.0,        # steps; a pixel x fires at tau ln(x / (x - threshold))
             latency_threshold=0.2,   # pixels below this intensity stay silent
             latency_epsilon=1e-7)    # intensities are raised to at least threshold + this
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MNIST_RAW_FILES = sum(MNIST_FILES.values(), ())
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # uint8 data, 3 or 1 dimensions
# The mirrors torchvision's MNIST downloads from (the published code used torchvision), in its
# order, and the MD5 of each archive as torchvision checks it (11 MB in all).
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}


def latency_steps(x, nb_steps: int) -> np.ndarray:
    """Spike step of intensities x in [0, 1]: floor(20 ln(x / (x - 0.2))), clipped to the
    last step; -1 (no spike) where x < 0.2. Computed in float32, as the published code did
    (its images were float32 tensors): x is first raised to at least 0.2 + 1e-7 (a float32
    bound), so a pixel of exactly 0.2 (51/255) fires at step 289 (float64 would give 290), i.e.
    at the last step of any input of up to 290 steps."""
    x = np.asarray(x, dtype=np.float32)
    threshold = np.float32(MNIST["latency_threshold"])
    fires = ~(x < threshold)
    safe = np.maximum(x, np.float32(MNIST["latency_threshold"] + MNIST["latency_epsilon"]))
    steps = np.floor(np.float32(MNIST["latency_tau"]) * np.log(safe / (safe - threshold)))
    return np.where(fires, np.minimum(steps, nb_steps - 1), -1).astype(np.int64)


class LatencyCoded:
    """Latency-coded MNIST: `X[idx]` is uint8 [B, nb_steps, 784] with at most one spike
    per pixel, built from the uint8 images [N, 784] of that batch only."""

    def __init__(self, images_NP: np.ndarray, nb_steps: int):
        self.images_NP, self.nb_steps = images_NP, nb_steps
        # per uint8 value, divided by 255 in float32 as the published code divided its tensors
        self.step_of_level = latency_steps(np.arange(256, dtype=np.float32) / np.float32(255), nb_steps)

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
    bad = labels > 9
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{raw_dir / label_file}: sample {i} has label {labels[i]}, outside the classes "
                        f"0..9 ({int(bad.sum())} such samples); delete the MNIST files and run again")
    return images.reshape(len(images), MNIST["n_pixels"]), labels


def download_mnist(raw_dir: Path, mirrors=None):
    """The four MNIST files into `raw_dir` (torchvision's layout, `<data_dir>/MNIST/raw/`): each
    archive fetched with pooch from the first of `mirrors` that answers (default
    $HSNN_MNIST_URL, else torchvision's mirrors), checked against its MD5, then decompressed.
    Present archives or files need no network; a failed download leaves nothing behind."""
    import pooch
    import requests
    pooch.get_logger().setLevel("WARNING")
    env = os.environ.get("HSNN_MNIST_URL")
    mirrors = mirrors or ((env,) if env else MNIST_MIRRORS)
    for name in MNIST_RAW_FILES:
        if regular_file(raw_dir / name):
            continue
        gz = raw_dir / f"{name}.gz"
        if not regular_file(gz):
            reasons = []
            for base in mirrors:
                print(f"downloading {base}{gz.name} into {raw_dir}/", flush=True)
                try:
                    raw_dir.mkdir(parents=True, exist_ok=True)
                    pooch.retrieve(base + gz.name, f"md5:{MNIST_MD5[gz.name]}", fname=gz.name, path=raw_dir,
                                   downloader=pooch.HTTPDownloader(progressbar=True, timeout=NET_TIMEOUT))
                    break
                except requests.RequestException as err:
                    reasons.append(f"{base}: {_net_reason(err)}")
                except ValueError:  # pooch's hash check
                    reasons.append(f"{base}: the file does not match its MD5 and was discarded")
                except OSError as err:
                    raise DataError(f"{gz}: cannot write it ({err.strerror or err}); make {raw_dir} writable or "
                                    "choose another --data_dir") from err
            else:
                raise DataError(f"MNIST download into {raw_dir} failed ({'; '.join(reasons)}); without network, copy "
                                f"{', '.join(MNIST_RAW_FILES)} (or their .gz archives) there")
        gunzip(gz, raw_dir / name, f"copy {name} (or {gz.name}) into {raw_dir}/ by hand")


def mnist_images(cfg: Config):
    """(train, valid, test) as (images [N, 784] uint8, labels [N]) pairs: a seeded 80/20
    split of the training file (validation rows in the split's random order); the test file
    kept apart. Reads `data_dir/MNIST/raw/`, downloading the files first when any is missing."""
    raw_dir = fetch_data(cfg)
    images, labels = read_mnist(raw_dir, "train")
    order = np.random.default_rng(mnist_seeds(cfg.seed)[0]).permutation(len(images))
    n_valid = int(round(MNIST["valid_fraction"] * len(images)))
    # the validation set in the order of the seeded split, as the published random_split
    # handed it to its (unshuffled) loader: batch norm's statistics depend on each batch
    valid, train = order[:n_valid], np.sort(order[n_valid:])
    return (images[train], labels[train]), (images[valid], labels[valid]), read_mnist(raw_dir, "test")


def mnist_seeds(seed: int):
    """Independent streams of one run's seed: the train/validation split, the permutation."""
    return np.random.SeedSequence([seed, 0x3A15]).spawn(2)


def pixel_permutation(seed: int) -> np.ndarray:
    """psMNIST's fixed pixel order, a function of the run's seed only."""
    return np.random.default_rng(mnist_seeds(seed)[1]).permutation(MNIST["n_pixels"])


def parts_fingerprint(parts) -> str:
    """The fingerprint of (images, labels) pairs."""
    return fingerprint(*(array for pair in parts for array in pair))


def load_mnist(cfg: Config) -> Task:
    """Latency-coded MNIST: `nb_steps` steps (50), 784 inputs, 10 classes."""
    parts = mnist_images(cfg)
    return Task(*(Split(LatencyCoded(images, cfg.nb_steps), labels) for images, labels in parts),
                fingerprint=parts_fingerprint(parts))


def load_s_mnist(cfg: Config) -> Task:
    """Sequential MNIST: the 784 pixels in raster order, one per step, 1 input."""
    parts = mnist_images(cfg)
    return Task(*(Split(PixelSequence(images), labels) for images, labels in parts),
                fingerprint=parts_fingerprint(parts))


def load_ps_mnist(cfg: Config) -> Task:
    """Permuted sequential MNIST: one seeded pixel permutation for every split, saved in
    the run folder (task.npz) through `Task.extras`."""
    perm, parts = pixel_permutation(cfg.seed), mnist_images(cfg)
    splits = [Split(PixelSequence(images[:, perm]), labels) for images, labels in parts]
    return Task(*splits, extras={"permutation": perm}, fingerprint=parts_fingerprint(parts))


LOADERS.update({"mnist": load_mnist, "s-mnist": load_s_mnist, "ps-mnist": load_ps_mnist})
