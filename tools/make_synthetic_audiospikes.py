"""Write synthetic SHD- and SSC-sized spike files in the published layout, so that the whole
SHD/SSC pipeline (loading, checks, binning, cache, augmentation, training) runs offline.

    python3 tools/make_synthetic_audiospikes.py --dataset shd --out datasets/audiospikes
    python3 tools/make_synthetic_audiospikes.py --dataset ssc --n_train 2000 --n_valid 300 --n_test 600
    python3 tools/make_synthetic_audiospikes.py --dataset shd --gzip   # .h5.gz + md5sums.txt

The layout is that of the files at https://zenkelab.org/datasets/: HDF5 with `spikes/times`
(ragged float16, seconds), `spikes/units` (ragged uint16, channels 0-699) and `labels`
(uint16). Every class is a frequency sweep: its spikes run along a line in the
(time, channel) plane from a class-dependent start channel to a class-dependent end channel,
with per-sample jitter of onset, duration, start and end, plus uniform background spikes;
each sample has 5,000-10,000 spikes (about the published files' density). A network learns
it in a few epochs, so a run on these files shows that the pipeline works, not how well a
model does on speech. Default sizes are the published ones (SHD 8156 / 2264, SSC 75466 /
9981 / 20382). `--gzip` writes `.h5.gz` files and an `md5sums.txt`, the form in which the
site serves them (a local `python3 -m http.server` in that folder then stands in for it).
"""

import argparse
import gzip
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
from utils_dataset import AUDIO_CHANNELS, AUDIO_CLASSES, file_md5  # noqa: E402
from utils_io import atomic_path  # noqa: E402

SIZES = {"shd": dict(train=8156, test=2264), "ssc": dict(train=75466, valid=9981, test=20382)}
SPIKES = (5000, 10000)    # spikes per sample, drawn uniformly
RIDGE_FRACTION = 0.7      # share of a sample's spikes on its class's sweep; the rest is noise
RIDGE_WIDTH = 6.0         # [channels] sd of the spikes around the sweep
JITTER = 10.0             # [channels] sd of a sample's start and end channel
CHUNK = 256               # samples generated and written at a time
# the fewest samples a file may hold: one, and two for SHD's training file, which the loader
# splits 80/20 into training and validation samples
MIN_SAMPLES = {("shd", "train"): 2}


def class_sweeps(n_classes: int) -> np.ndarray:
    """[n_classes, 2] start and end channels: distinct starts on a grid over 60..640, ends on
    the same grid in another order, so that no two classes share a sweep."""
    grid = np.linspace(60, 640, n_classes)
    return np.stack([grid[(np.arange(n_classes) * 7) % n_classes],
                     grid[(np.arange(n_classes) * 11 + 3) % n_classes]], axis=1)


def synthetic_samples(labels: np.ndarray, sweeps: np.ndarray, rng: np.random.Generator):
    """Spike times [s] (float16, sorted) and units (uint16) of one sample per label."""
    n = len(labels)
    counts = rng.integers(SPIKES[0], SPIKES[1] + 1, n)
    onset, duration = rng.uniform(0.0, 0.25, n), rng.uniform(0.5, 0.9, n)
    ends = sweeps[labels] + rng.normal(0, JITTER, (n, 2))
    sample = np.repeat(np.arange(n), counts)
    phase = rng.random(len(sample))
    on_ridge = rng.random(len(sample)) < RIDGE_FRACTION
    ridge_t = onset[sample] + phase * duration[sample]
    start, end = ends[sample, 0], ends[sample, 1]
    ridge_c = start + phase * (end - start) + rng.normal(0, RIDGE_WIDTH, len(sample))
    noise_t = rng.uniform(0, 1.0, len(sample)) * (onset + duration + 0.1)[sample]
    t = np.where(on_ridge, ridge_t, noise_t)
    c = np.where(on_ridge, ridge_c, rng.uniform(0, AUDIO_CHANNELS, len(sample)))
    order = np.lexsort((t, sample))
    t = t[order].astype(np.float16)
    c = np.clip(np.round(c[order]), 0, AUDIO_CHANNELS - 1).astype(np.uint16)
    splits = np.cumsum(counts)[:-1]
    return np.split(t, splits), np.split(c, splits)


def ragged(arrays) -> np.ndarray:
    """A 1-d object array holding `arrays` (h5py's form of a ragged dataset's rows)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def write_spike_file(path: Path, labels: np.ndarray, sweeps: np.ndarray, rng: np.random.Generator):
    """One file in the published layout, generated and written CHUNK samples at a time."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        times = f.create_dataset("spikes/times", (len(labels),), h5py.vlen_dtype(np.float16))
        units = f.create_dataset("spikes/units", (len(labels),), h5py.vlen_dtype(np.uint16))
        f.create_dataset("labels", data=labels.astype(np.uint16))
        for start in range(0, len(labels), CHUNK):
            t, c = synthetic_samples(labels[start:start + CHUNK], sweeps, rng)
            if len(t) == 1:  # h5py reads a 1-element object array as one row's values
                times[start], units[start] = t[0], c[0]
            else:
                times[start:start + len(t)] = ragged(t)
                units[start:start + len(c)] = ragged(c)


def gzip_file(path: Path) -> Path:
    """`path` -> `path.gz`; returns the archive."""
    gz = path.with_name(path.name + ".gz")
    with atomic_path(gz) as tmp, open(path, "rb") as source, gzip.open(tmp, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 22)
    return gz


def update_md5sums(folder: Path, files):
    """Add or replace the files' lines in `folder/md5sums.txt` ("<md5>  <name>")."""
    listing = folder / "md5sums.txt"
    sums = {}
    if listing.exists():
        sums = dict(line.split()[::-1] for line in listing.read_text().splitlines() if len(line.split()) == 2)
    for f in files:
        sums[f.name] = file_md5(f)
    listing.write_text("".join(f"{md5}  {name}\n" for name, md5 in sorted(sums.items())))


def make_dataset(name: str, out: Path, sizes: dict, seed: int = 0, compress: bool = False,
                 force: bool = False) -> list:
    """Write `<out>/<name>_<part>.h5` (or `.h5.gz`) for every part in `sizes`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    targets = {part: out / f"{name}_{part}.h5{'.gz' if compress else ''}" for part in sizes}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} exist; pass --force to overwrite them")
    sweeps = class_sweeps(AUDIO_CLASSES[name])
    streams = np.random.SeedSequence([seed, AUDIO_CLASSES[name]]).spawn(len(sizes))
    for (part, n), stream in zip(sizes.items(), streams):
        rng = np.random.default_rng(stream)
        labels = rng.permutation(np.arange(n) % AUDIO_CLASSES[name])
        h5 = out / f"{name}_{part}.h5"
        write_spike_file(h5, labels, sweeps, rng)
        if compress:
            gzip_file(h5)
            h5.unlink()
        print(f"wrote {targets[part]} ({n} samples)", flush=True)
    if compress:
        update_md5sums(out, targets.values())
    return list(targets.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("shd", "ssc", "both"), default="shd")
    parser.add_argument("--out", default="datasets/audiospikes", help="folder of the files")
    for part in ("train", "valid", "test"):
        parser.add_argument(f"--n_{part}", type=int, default=None,
                            help=f"{part} samples (default: the published size; SHD has no valid file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gzip", action="store_true", help="write .h5.gz files and md5sums.txt")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    for name in (("shd", "ssc") if args.dataset == "both" else (args.dataset,)):
        sizes = {part: n if getattr(args, f"n_{part}") is None else getattr(args, f"n_{part}")
                 for part, n in SIZES[name].items()}
        for part, n in sizes.items():
            if n < MIN_SAMPLES.get((name, part), 1):
                parser.exit(2, f"{parser.prog}: error: --n_{part} {n}: {name} needs at least "
                               f"{MIN_SAMPLES.get((name, part), 1)} {part} samples"
                               + (" (its seeded 80/20 split needs one sample on each side)\n"
                                  if (name, part) == ("shd", "train") else "\n"))
        try:
            make_dataset(name, Path(args.out), sizes, args.seed, args.gzip, args.force)
        except FileExistsError as err:
            sys.exit(f"make_synthetic_audiospikes.py: error: {err}")


if __name__ == "__main__":
    main()
