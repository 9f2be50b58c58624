"""SHD and SSC: files, download failures, binning, cache, splits, augmentation, training.

Every file here is written by the test into tmp_path; downloads go to a local HTTP server
or to a closed local port, never to the network.
"""

import functools
import gzip
import hashlib
import importlib.util
import os
import socket
import threading
import time
import types
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

import utils_dataset
from test_main import run_main
from training import train_hsnn
from utils_dataset import DataError, cached_counts, frequency_shift, iterate_batches
from utils_initialization import make_config

ROOT = Path(__file__).resolve().parents[1]


# --- helpers -------------------------------------------------------------------------------
def load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_audiospikes", ROOT / "tools" / "make_synthetic_audiospikes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = load_generator()


def write_h5(path, times, units, labels, times_dtype=np.float16, skip=(), labels_dtype=np.uint16,
             unit_dtype=np.uint16):
    """A file in the published layout (or without the datasets named in `skip`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, rows, dtype in (("spikes/times", times, times_dtype), ("spikes/units", units, unit_dtype)):
            if name not in skip:
                ds = f.create_dataset(name, (len(rows),), h5py.vlen_dtype(dtype))
                for i, row in enumerate(rows):
                    ds[i] = np.asarray(row, dtype)
        if "labels" not in skip:
            f.create_dataset("labels", data=np.asarray(labels, labels_dtype))
    return path


def random_samples(n, rng, max_time=1.6, spikes=300):
    times = [rng.uniform(0, max_time, rng.integers(0, spikes)) for _ in range(n)]
    units = [rng.integers(0, 700, len(t)) for t in times]
    return times, units, rng.integers(0, 20, n)


def dense_reference(times, units, nb_steps, n_in, time_max, binning="digitize"):
    """Straightforward per-spike binning: digitize (the published code's bins) or uniform."""
    stride = -(-700 // n_in)
    edges = np.linspace(0, time_max, nb_steps)
    x = np.zeros((len(times), nb_steps, n_in), np.int64)
    for i, (t, u) in enumerate(zip(times, units)):
        for ti, ui in zip(np.asarray(t, np.float64), u):
            if not np.isfinite(ti):
                b = -1
            elif binning == "digitize":
                b = int(np.digitize(ti, edges))
            else:
                b = int(np.floor(ti / (time_max / nb_steps)))
            if 0 <= b < nb_steps and ui % stride == 0:
                x[i, b, ui // stride] += 1
    return np.minimum(x, 255).astype(np.uint8)


def cfg_for(data_dir, name="shd", **overrides):
    return make_config(name, data_dir=str(data_dir), **overrides)


def files_in(folder):
    """Every file and folder under `folder` (hidden temporaries included), as relative names."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line(err: DataError, *parts):
    message = str(err)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


@pytest.fixture(scope="module")
def shd_dir(tmp_path_factory):
    """A tiny synthetic SHD (48 training, 16 test samples), shared by read-only tests."""
    data = tmp_path_factory.mktemp("data")
    synthetic.make_dataset("shd", data / "audiospikes", {"train": 48, "test": 16}, seed=1)
    return data


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def site(tmp_path):
    """A local HTTP server standing in for zenkelab.org: (its folder, its base URL)."""
    root = tmp_path / "site"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


# --- binning (the published code's np.digitize, and uniform bins) ----------------------------
HAND_SPIKES = dict(times=[[0.0, 0.1, 0.25, 0.3, 0.3, 0.99, 1.0, 1.5], []],
                   units=[[0, 5, 5, 699, 699, 3, 3, 3], []], labels=[4, 0])


def test_binning_matches_a_hand_computed_example(tmp_path):
    """digitize, time_max 1 s, 4 bins: edges 0, 1/3, 2/3, 1 s; a spike in [0, 1/3) s falls in
    bin 1, bin 0 stays empty, spikes at or after 1 s are dropped; counts add up."""
    path = write_h5(tmp_path / "shd_train.h5", **HAND_SPIKES)
    X, Y = cached_counts(path, cfg_for(tmp_path, time_max=1.0, nb_steps=4), 20)
    expected = np.zeros((2, 4, 700), np.uint8)
    expected[0, 1, 0] = expected[0, 3, 3] = 1
    expected[0, 1, 5] = expected[0, 1, 699] = 2
    np.testing.assert_array_equal(X[np.arange(2)], expected)
    assert X[np.arange(2)].dtype == np.uint8 and X.shape == (2, 4, 700)
    np.testing.assert_array_equal(Y, [4, 0])


def test_uniform_binning_matches_a_hand_computed_example(tmp_path):
    """uniform, time_max 1 s in 4 bins of 0.25 s; spikes at or after 1 s are dropped."""
    path = write_h5(tmp_path / "shd_train.h5", **HAND_SPIKES)
    X, _ = cached_counts(path, cfg_for(tmp_path, time_max=1.0, nb_steps=4, binning="uniform"), 20)
    expected = np.zeros((2, 4, 700), np.uint8)
    expected[0, 0, 0] = expected[0, 0, 5] = expected[0, 1, 5] = expected[0, 3, 3] = 1
    expected[0, 1, 699] = 2
    np.testing.assert_array_equal(X[np.arange(2)], expected)


@pytest.mark.parametrize("binning", ["digitize", "uniform"])
@pytest.mark.parametrize("n_in,nb_steps,time_max", [(700, 100, 1.4), (300, 50, 1.4), (64, 7, 0.5)])
def test_binning_agrees_with_a_per_spike_reference(tmp_path, n_in, nb_steps, time_max, binning):
    times, units, labels = random_samples(25, np.random.default_rng(n_in))
    path = write_h5(tmp_path / "shd_train.h5", times, units, labels, times_dtype=np.float32)
    cfg = cfg_for(tmp_path, n_in=n_in, nb_steps=nb_steps, time_max=time_max, binning=binning)
    X, Y = cached_counts(path, cfg, 20)
    expected = dense_reference([np.float32(t) for t in times], units, nb_steps, n_in, time_max, binning)
    np.testing.assert_array_equal(X[np.arange(25)], expected)
    np.testing.assert_array_equal(Y, labels)


def test_channel_subsampling_keeps_every_stride_th_channel(tmp_path):
    """n_in 300: stride ceil(700/300) = 3, channels 0, 3, ..., 699 -> 0..233, 234..299 empty."""
    path = write_h5(tmp_path / "shd_train.h5", times=[[0.5] * 7],
                    units=[[0, 1, 2, 3, 6, 698, 699]], labels=[0])
    x = cached_counts(path, cfg_for(tmp_path, n_in=300, nb_steps=2, binning="uniform"), 20)[0][0]
    assert x.shape == (2, 300)
    assert list(np.flatnonzero(x[0])) == [0, 1, 2, 233] and not x[1].any()
    assert [utils_dataset.channel_stride(n) for n in (700, 350, 300, 234, 233, 1)] == [1, 2, 3, 3, 4, 700]


def test_float16_times_neither_overflow_nor_shift_bins(tmp_path):
    """float16 as in the published files: 1.3994 -> 1.39941 s, last of 200 bins; 1.4 ->
    1.40039 s, dropped; a huge time dropped (60000 * 200 overflows float16)."""
    times = [[0.0, 1.3994, 1.4, 60000.0]]
    path = write_h5(tmp_path / "shd_train.h5", times, [[7] * 4], [3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = cached_counts(path, cfg_for(tmp_path, nb_steps=200, binning="uniform"), 20)[0][0]
        digitized = cached_counts(path, cfg_for(tmp_path, nb_steps=200), 20)[0][0]
    assert x.sum() == 2 and x[0, 7] == 1 and x[199, 7] == 1
    assert digitized.sum() == 2 and digitized[[1, 199], 7].tolist() == [1, 1]  # bin 0 stays empty
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(60000.0) * np.float16(200))  # what float16 arithmetic would do


@pytest.mark.parametrize("times,units,problem", [
    ([[0.1, np.nan]], [[1, 2]], "spike time nan"),
    ([[0.1], [np.inf, 0.2]], [[1], [1, 2]], "sample 1 has spike time inf"),
    ([[-0.5, 0.1]], [[1, 2]], "spike time -0.5"),
    ([[0.1, 0.2]], [[1.5, 2]], "unit 1.5, not a whole channel number"),
    ([[0.1, 0.2]], [[1, 700]], "unit 700, outside the channels 0..699"),
])
def test_impossible_spikes_are_refused(tmp_path, times, units, problem):
    path = write_h5(tmp_path / "shd_train.h5", times, units, [0] * len(times),
                    unit_dtype=np.float32 if problem.startswith("unit 1.5") else np.uint16)
    with pytest.raises(DataError) as err:
        cached_counts(path, cfg_for(tmp_path), 20)
    assert_one_line(err.value, str(path), problem)
    assert not list((tmp_path / "cache").glob("shd_train*"))  # nothing cached


@pytest.mark.parametrize("which", ["times", "units"])
def test_spike_times_and_units_that_are_not_numbers_are_one_line(tmp_path, which):
    """Text where numbers belong (a file whose datasets hold strings) is one line, not a
    traceback from a later comparison."""
    numbers, text = [np.array([0.1, 0.2])], [np.array([b"a", b"b"])]
    times, units = (text, [np.array([1, 2])]) if which == "times" else (numbers, text)
    with pytest.raises(DataError) as err:
        utils_dataset._spikes(times, units, tmp_path / "shd_train.h5", 0)
    assert_one_line(err.value, "shd_train.h5", "its spike times or units are not numbers")


def test_spikes_outside_the_binned_time(tmp_path, capsys):
    """Times in milliseconds, or --nb_steps 1 with digitize: nothing is binned, refused; more
    than half of the spikes dropped: a warning with the count."""
    ms = write_h5(tmp_path / "shd_train.h5", [[100.0, 250.0], [900.0]], [[1, 2], [3]], [0, 1])
    with pytest.raises(DataError) as err:
        cached_counts(ms, cfg_for(tmp_path), 20)
    assert_one_line(err.value, str(ms), "none of its 3 spikes", "seconds")
    ok = write_h5(tmp_path / "ok" / "shd_train.h5", [[0.1, 0.5]], [[1, 2]], [0])
    with pytest.raises(DataError, match="none of its 2 spikes"):
        cached_counts(ok, cfg_for(tmp_path / "ok", nb_steps=1), 20)
    some = write_h5(tmp_path / "some" / "shd_train.h5", [[0.1, 2.0, 3.0]], [[1, 2, 3]], [0])
    cached_counts(some, cfg_for(tmp_path / "some"), 20)
    assert "2 of its 3 spikes (67%) fall outside --time_max 1.4 s" in capsys.readouterr().err
    cached_counts(some, cfg_for(tmp_path / "some"), 20)  # from the cache: warned again
    assert "2 of its 3 spikes" in capsys.readouterr().err


def test_counts_saturate_at_255(tmp_path):
    path = write_h5(tmp_path / "shd_train.h5", [[0.1] * 300 + [0.2] * 254], [[9] * 554], [1])
    x = cached_counts(path, cfg_for(tmp_path, nb_steps=100, binning="uniform"), 20)[0][0]
    assert x[7, 9] == 255 and x[14, 9] == 254 and x.sum() == 509


def test_spike_counts_index_like_an_array(tmp_path):
    times, units, labels = random_samples(12, np.random.default_rng(5))
    path = write_h5(tmp_path / "shd_train.h5", times, units, labels)
    X, _ = cached_counts(path, cfg_for(tmp_path, nb_steps=30), 20)
    dense = X[np.arange(12)]
    for idx in ([11, 0, 5, 5], np.array([3]), np.arange(12)[::-2]):
        np.testing.assert_array_equal(X[np.asarray(idx)], dense[np.asarray(idx)])
    np.testing.assert_array_equal(X[4], dense[4])
    np.testing.assert_array_equal(X[-1], dense[-1])
    part = X.subset(np.array([2, 7, 9]))
    assert len(part) == 3 and part.shape == (3, 30, 700)
    np.testing.assert_array_equal(part[np.array([2, 0])], dense[[9, 2]])
    with pytest.raises(IndexError):
        X[np.array([12])]


# --- the cache -------------------------------------------------------------------------------
def cache_folders(data_dir):
    return sorted(p.name for p in (Path(data_dir) / "audiospikes" / "cache").iterdir() if p.is_dir())


def test_source_md5_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    times, units, labels = random_samples(5, np.random.default_rng(0))
    path = write_h5(tmp_path / "shd_train.h5", times, units, labels)
    real, calls = utils_dataset.file_md5, []
    monkeypatch.setattr(utils_dataset, "file_md5", lambda p: calls.append(p) or real(p))
    # just written: hashed, but not remembered (a rewrite in the same clock tick could
    # keep size and time)
    assert utils_dataset.source_md5(path) == real(path) and len(calls) == 1
    assert not (tmp_path / "cache" / "md5.json").exists()
    later = types.SimpleNamespace(time=lambda: time.time() + 60)  # a minute after the last change
    monkeypatch.setattr(utils_dataset, "time", later)
    assert utils_dataset.source_md5(path) == real(path) and len(calls) == 2
    assert utils_dataset.source_md5(path) == real(path) and len(calls) == 2  # remembered
    write_h5(path, times[::-1], units[::-1], labels[::-1])  # same size, new content
    assert utils_dataset.source_md5(path) == real(path) and len(calls) == 3
    (tmp_path / "cache" / "md5.json").write_text("not json")
    assert utils_dataset.source_md5(path) == real(path) and len(calls) == 4


@pytest.mark.parametrize("memo", ["[1, 2]", '"text"', '{"shd_train.h5": 7}', '{"shd_train.h5": [1, 2]}'])
def test_a_md5_memo_of_the_wrong_type_is_forgotten(tmp_path, monkeypatch, memo):
    path = write_h5(tmp_path / "shd_train.h5", *random_samples(3, np.random.default_rng(0)))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "md5.json").write_text(memo)
    assert utils_dataset.source_md5(path) == utils_dataset.file_md5(path)


def test_a_file_rewritten_in_place_with_its_time_restored_is_hashed_again(tmp_path, monkeypatch):
    """Same size, same inode, the modification time put back by hand: the status-change time
    still tells, so the old cache is not used for the new content."""
    times, units, labels = random_samples(5, np.random.default_rng(0))
    path = write_h5(tmp_path / "audiospikes" / "shd_train.h5", times, units, labels)
    monkeypatch.setattr(utils_dataset, "time", types.SimpleNamespace(time=lambda: time.time() + 60))
    cfg = cfg_for(tmp_path, nb_steps=20)
    _, before = cached_counts(path, cfg, 20)
    st = path.stat()
    rewritten = write_h5(tmp_path / "other.h5", times[::-1], units[::-1], labels[::-1]).read_bytes()
    with open(path, "r+b") as f:  # in place: the inode stays
        f.write(rewritten)
        f.truncate()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_ino == st.st_ino
    _, after = cached_counts(path, cfg, 20)
    np.testing.assert_array_equal(after, labels[::-1])


def test_cache_is_reused_without_binning_again(shd_dir, monkeypatch):
    cfg = cfg_for(shd_dir)
    first = utils_dataset.load_task(cfg)
    monkeypatch.setattr(utils_dataset, "bin_file", lambda *a: pytest.fail("binned again"))
    second = utils_dataset.load_task(cfg)
    for a, b in zip(first[:3], second[:3]):
        np.testing.assert_array_equal(a.X[np.arange(len(a))], b.X[np.arange(len(b))])
        np.testing.assert_array_equal(a.Y, b.Y)


def test_cache_is_keyed_by_settings(tmp_path):
    synthetic.make_dataset("shd", tmp_path / "audiospikes", {"train": 6, "test": 4})
    for overrides in (dict(), dict(nb_steps=50), dict(n_in=350), dict(time_max=1.0)):
        task = utils_dataset.load_task(cfg_for(tmp_path, **overrides))
        assert task.train.X.shape[1:] == (overrides.get("nb_steps", 100), overrides.get("n_in", 700))
    names = cache_folders(tmp_path)
    assert len(names) == 8 and not any(n.startswith(".") for n in names)
    assert any("_T50_C700_1.4s_" in n for n in names) and any("_T100_C350_" in n for n in names)
    assert any("_T100_C700_1.0s_" in n for n in names)


def test_changed_source_rebuilds_the_cache(tmp_path):
    times, units, labels = random_samples(5, np.random.default_rng(0))
    path = write_h5(tmp_path / "audiospikes" / "shd_train.h5", times, units, labels)
    cfg = cfg_for(tmp_path, nb_steps=20)
    _, before = cached_counts(path, cfg, 20)
    old = cache_folders(tmp_path)
    write_h5(path, times[::-1], units[::-1], labels[::-1])
    X, after = cached_counts(path, cfg, 20)
    np.testing.assert_array_equal(after, labels[::-1])
    expected = dense_reference([np.float16(t) for t in times[::-1]], units[::-1], 20, 700, 1.4)  # digitize
    np.testing.assert_array_equal(X[np.arange(5)], expected)
    new = cache_folders(tmp_path)
    assert len(new) == 1 and new != old  # the stale cache of the old file is gone
    assert utils_dataset.file_md5(path) in new[0]


@pytest.mark.parametrize("damage", ["empty counts", "index beyond the cells", "zero count", "bad label",
                                    "missing spikes.json", "garbage ptr", "same-size spikes", "same-size label",
                                    "spikes.json of the wrong type"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, capsys, damage):
    """Damage inside the binned-data cache is our own derived data gone wrong: detected when
    the cache is opened, reported as a warning, and the cache binned again from the source."""
    path = write_h5(tmp_path / "audiospikes" / "shd_train.h5", [[0.1, 0.2], [0.3]], [[1, 2], [5]], [0, 3])
    cfg = cfg_for(tmp_path)
    good_X, good_Y = cached_counts(path, cfg, 20)
    expected = good_X[np.arange(2)]
    (folder,) = (tmp_path / "audiospikes" / "cache").iterdir()
    flat = np.fromfile(folder / "flat.u32", np.uint32)
    if damage == "empty counts":
        (folder / "count.u8").write_bytes(b"")
    elif damage == "index beyond the cells":
        flat[0] = 10 ** 9
        flat.tofile(folder / "flat.u32")
    elif damage == "zero count":
        (folder / "count.u8").write_bytes(b"\x00" * len(flat))
    elif damage == "bad label":
        np.save(folder / "labels.npy", np.array([0, 99]))
    elif damage == "missing spikes.json":
        (folder / "spikes.json").unlink()
    elif damage == "same-size spikes":  # other cells, all in range: only a checksum tells
        flat[[0, 1]] = flat[[1, 0]] + 1
        flat.tofile(folder / "flat.u32")
    elif damage == "same-size label":  # another class, in range
        np.save(folder / "labels.npy", np.array([0, 4]))
    elif damage == "spikes.json of the wrong type":
        (folder / "spikes.json").write_text("[1, 2]")
    else:
        (folder / "ptr.npy").write_bytes(b"\x93NUMPY garbage")
    X, Y = cached_counts(path, cfg, 20)
    np.testing.assert_array_equal(X[np.arange(2)], expected)
    np.testing.assert_array_equal(Y, good_Y)
    err = capsys.readouterr().err
    assert str(folder) in err and ("damaged" in err or "unreadable" in err) and "binning" in err


def test_a_label_outside_the_classes_is_refused_in_one_line(tmp_path):
    """Labels are checked against the network's classes for every task and split, so a label
    beyond --n_out is never trained on as no class."""
    task = utils_dataset.Task(*(utils_dataset.Split(np.zeros((3, 2, 1), np.uint8), np.array(y))
                                for y in ([0, 1, 2], [0, 20, 1], [1, 1, 1])))
    cfg = make_config("shd", n_out=20)
    with pytest.raises(DataError, match=r"validation set has a label outside the classes 0..19 \(sample 1, 1 such"):
        utils_dataset.check_sizes(task, cfg)
    negative = task._replace(valid=task.test, test=utils_dataset.Split(task.test.X, np.array([0, -1, 0])))
    with pytest.raises(DataError, match="test set has a label outside"):
        utils_dataset.check_sizes(negative, cfg)


def test_a_file_another_process_is_writing_is_not_called_damaged(tmp_path):
    import subprocess
    import sys
    times, units, labels = random_samples(4, np.random.default_rng(0))
    path = write_h5(tmp_path / "audiospikes" / "shd_train.h5", times, units, labels)
    writer = subprocess.Popen([sys.executable, "-c", f"import h5py, sys, time\nf = h5py.File({str(path)!r}, 'a')\n"
                               "print('open', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(DataError) as err:
            cached_counts(path, cfg_for(tmp_path), 20)
        assert "another process has it open for writing" in str(err.value) and "delete" not in str(err.value)
    finally:
        writer.kill()
        writer.wait()
    assert path.exists()


# --- failures: one line, which file, what, how to fix; nothing half-written left ---------------
def test_unreachable_host_fails_fast_and_leaves_nothing(tmp_path):
    folder = tmp_path / "audiospikes"
    start = time.time()
    with pytest.raises(DataError) as err:
        utils_dataset.load_audiospikes(cfg_for(tmp_path), base_url=f"http://127.0.0.1:{closed_port()}/")
    assert time.time() - start < 10
    assert_one_line(err.value, str(folder / "shd_train.h5.gz"), "Connection refused",
                    "https://zenkelab.org/datasets/shd_train.h5.gz", "by hand")
    assert files_in(folder) == []


def test_silent_host_times_out(tmp_path, monkeypatch):
    """A host that accepts the connection but never answers (a listening socket nobody serves)."""
    monkeypatch.setattr(utils_dataset, "NET_TIMEOUT", (1, 1))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.time()
        with pytest.raises(DataError) as err:
            utils_dataset.audio_file(tmp_path, "shd_test", f"http://127.0.0.1:{silent.getsockname()[1]}/")
    assert time.time() - start < 10
    assert_one_line(err.value, "shd_test.h5.gz", "did not answer in time", "by hand")
    assert files_in(tmp_path) == []


def test_http_error_is_reported(tmp_path, site):
    root, url = site
    (root / "md5sums.txt").write_text(f"{'0' * 32}  shd_train.h5.gz\n")
    folder = tmp_path / "audiospikes"
    with pytest.raises(DataError) as err:
        utils_dataset.audio_file(folder, "shd_train", base_url=url)
    assert_one_line(err.value, "shd_train.h5.gz", "HTTP 404", "by hand", str(folder))
    assert files_in(folder) == []


def test_missing_md5_line_is_reported(tmp_path, site):
    root, url = site
    (root / "md5sums.txt").write_text(f"{'0' * 32}  ssc_train.h5.gz\n")
    with pytest.raises(DataError) as err:
        utils_dataset.audio_file(tmp_path / "audiospikes", "shd_train", base_url=url)
    assert_one_line(err.value, "md5sums.txt lists no md5", "shd_train.h5.gz")
    assert files_in(tmp_path / "audiospikes") == []


def test_md5_mismatch_discards_the_download(tmp_path, site):
    root, url = site
    synthetic.make_dataset("shd", root, {"train": 3}, compress=True)
    (root / "md5sums.txt").write_text(f"{'0' * 32}  shd_train.h5.gz\n")
    folder = tmp_path / "audiospikes"
    with pytest.raises(DataError) as err:
        utils_dataset.audio_file(folder, "shd_train", base_url=url)
    assert_one_line(err.value, str(folder / "shd_train.h5.gz"), "does not match its md5", "by hand")
    assert files_in(folder) == []


def test_download_checks_md5_decompresses_once_then_needs_no_network(tmp_path, site):
    root, url = site
    synthetic.make_dataset("shd", root, {"train": 10, "test": 4}, compress=True)
    task = utils_dataset.load_audiospikes(cfg_for(tmp_path), base_url=url)
    assert (len(task.train), len(task.valid), len(task.test)) == (8, 2, 4)
    folder = tmp_path / "audiospikes"
    for name in ("shd_train", "shd_test"):
        assert (folder / f"{name}.h5.gz").read_bytes() == (root / f"{name}.h5.gz").read_bytes()
        assert (folder / f"{name}.h5").exists()
    assert not [n for n in files_in(folder) if Path(n).name.startswith(".")]
    offline = utils_dataset.load_audiospikes(cfg_for(tmp_path), base_url=f"http://127.0.0.1:{closed_port()}/")
    np.testing.assert_array_equal(offline.test.Y, task.test.Y)


def test_present_archive_is_decompressed_without_network(tmp_path):
    folder = tmp_path / "audiospikes"
    synthetic.make_dataset("shd", folder, {"train": 5, "test": 3}, compress=True)
    (folder / "md5sums.txt").unlink()
    task = utils_dataset.load_audiospikes(cfg_for(tmp_path), base_url=f"http://127.0.0.1:{closed_port()}/")
    assert len(task.test) == 3 and (folder / "shd_test.h5").exists()


@pytest.mark.parametrize("damage", ["truncated", "not_gzip"])
def test_corrupt_archive_leaves_no_h5_and_keeps_the_archive(tmp_path, damage):
    folder = tmp_path / "audiospikes"
    synthetic.make_dataset("shd", folder, {"train": 4}, compress=True)
    gz = folder / "shd_train.h5.gz"
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a gzip archive" * 10)
    with pytest.raises(DataError) as err:
        utils_dataset.audio_file(folder, "shd_train")
    assert_one_line(err.value, str(gz), "truncated or corrupt", "delete it", "by hand")
    assert files_in(folder) == ["md5sums.txt", "shd_train.h5.gz"]


def malformed_file(path, kind):
    times, units, labels = [[0.1, 0.2], [0.3]], [[1, 2], [3]], [0, 19]
    if kind in ("spikes/times", "spikes/units", "labels"):
        return write_h5(path, times, units, labels, skip=(kind,))
    if kind == "label_range":
        return write_h5(path, times, units, [0, 20])
    if kind == "negative_label":
        return write_h5(path, times, units, [-1, 0], labels_dtype=np.int16)
    if kind == "unit_range":
        return write_h5(path, times, [[1, 2], [700]], labels)
    if kind == "ragged_mismatch":
        return write_h5(path, times, [[1, 2], [3, 4]], labels)
    if kind == "length_mismatch":
        return write_h5(path, times, units, [0, 1, 2])
    if kind == "empty":
        return write_h5(path, [], [], [])
    if kind == "group":
        write_h5(path, times, units, labels, skip=("labels",))
        with h5py.File(path, "a") as f:
            f.create_group("labels")
        return path
    path.write_bytes(b"\x00" * 100)  # not HDF5 at all
    return path


@pytest.mark.parametrize("kind,problem", [
    ("spikes/times", "no 'spikes/times'"), ("spikes/units", "no 'spikes/units'"),
    ("labels", "no 'labels'"), ("label_range", "sample 1 has label 20, outside the class range 0..19"),
    ("negative_label", "sample 0 has label -1"), ("unit_range", "sample 1 has unit 700, outside"),
    ("ragged_mismatch", "sample 1 has 1 spike times but 2 units"),
    ("length_mismatch", "same, non-zero number of samples"), ("empty", "non-zero number of samples"),
    ("group", "'labels' is a group, where an SHD/SSC file has a dataset"),
    ("not_hdf5", "not a readable HDF5 file")])
def test_malformed_file_is_reported_and_not_cached(tmp_path, kind, problem):
    folder = tmp_path / "audiospikes"
    folder.mkdir()
    path = malformed_file(folder / "shd_train.h5", kind)
    with pytest.raises(DataError) as err:
        cached_counts(path, cfg_for(tmp_path), 20)
    assert_one_line(err.value, str(path), problem, "delete it", "shd_train.h5.gz", "by hand")
    assert files_in(folder) == ["cache", "shd_train.h5"]  # the cache folder holds nothing


@pytest.mark.slow
def test_main_reports_a_bad_file_in_one_line_with_exit_code_1(root, tmp_path):
    folder = tmp_path / "audiospikes"
    synthetic.make_dataset("shd", folder, {"test": 4})
    malformed_file(folder / "shd_train.h5", "labels")
    result = run_main(root, "--dataset_name", "shd", "--data_dir", str(tmp_path), "--n_epochs", "1",
                      "--progress", "false", "--results_dir", str(tmp_path / "results"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main.py: error: "), result.stderr
    assert str(folder / "shd_train.h5") in lines[0] and "no 'labels'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not [n for n in files_in(folder / "cache") if "shd_train" in n]


@pytest.mark.slow
def test_main_reports_a_truncated_archive_in_one_line(root, tmp_path):
    folder = tmp_path / "audiospikes"
    synthetic.make_dataset("shd", folder, {"train": 4, "test": 4}, compress=True)
    gz = folder / "shd_test.h5.gz"
    gz.write_bytes(gz.read_bytes()[:1000])
    result = run_main(root, "--dataset_name", "shd", "--data_dir", str(tmp_path), "--n_epochs", "1",
                      "--progress", "false", "--results_dir", str(tmp_path / "results"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert str(gz) in lines[0] and "truncated or corrupt" in lines[0]
    assert not (folder / "shd_test.h5").exists()


@pytest.mark.parametrize("name,overrides,flag", [("shd", dict(n_in=701), "--n_in 701"),
                                                 ("ssc", dict(n_out=20), "--n_out 20")])
def test_settings_the_data_cannot_meet_are_refused_first(tmp_path, name, overrides, flag):
    with pytest.raises(DataError) as err:
        utils_dataset.load_task(cfg_for(tmp_path, name, **overrides))
    assert_one_line(err.value, flag)
    assert files_in(tmp_path) == []


# --- splits ---------------------------------------------------------------------------------
def test_shd_validation_is_a_seeded_80_20_split_of_the_training_file(shd_dir):
    full = cached_counts(shd_dir / "audiospikes" / "shd_train.h5", cfg_for(shd_dir), 20)
    dense = full[0][np.arange(48)]
    tasks = {seed: utils_dataset.load_task(cfg_for(shd_dir, seed=seed)) for seed in (0, 1)}
    task = tasks[0]
    assert (len(task.train), len(task.valid), len(task.test)) == (38, 10, 16)
    train_rows, valid_rows = utils_dataset.shd_validation_rows(48, 0)
    assert sorted(np.concatenate([train_rows, valid_rows])) == list(range(48))
    np.testing.assert_array_equal(task.valid.X[np.arange(10)], dense[valid_rows])
    np.testing.assert_array_equal(task.train.Y, full[1][train_rows])
    again = utils_dataset.shd_validation_rows(48, 0)[1]
    np.testing.assert_array_equal(again, valid_rows)
    assert not np.array_equal(utils_dataset.shd_validation_rows(48, 1)[1], valid_rows)
    assert not np.array_equal(tasks[1].valid.Y, task.valid.Y) or not np.array_equal(
        tasks[1].valid.X[np.arange(10)], task.valid.X[np.arange(10)])
    assert task.train.augment is None and task.valid.augment is None


def test_ssc_validates_on_its_own_file(tmp_path, shd_dir):
    """SSC's validation and test sets are evaluated in a fresh order at every pass, as the
    published loaders shuffled them; SHD's test set stays in file order, its validation
    split does not."""
    synthetic.make_dataset("ssc", tmp_path / "audiospikes", {"train": 12, "valid": 5, "test": 7})
    task = utils_dataset.load_task(cfg_for(tmp_path, "ssc", nb_steps=20))
    assert (len(task.train), len(task.valid), len(task.test)) == (12, 5, 7)
    assert task.train.X.shape == (12, 20, 700) and task.train.Y.max() < 35
    assert task.valid.reshuffle and task.test.reshuffle and not task.train.reshuffle
    shd = utils_dataset.load_task(cfg_for(shd_dir))
    assert shd.valid.reshuffle and not shd.test.reshuffle


def test_use_test_as_valid_warns_and_validates_on_the_test_set(shd_dir, tmp_path, capsys):
    task = utils_dataset.load_task(cfg_for(shd_dir, use_test_as_valid=True))
    err = capsys.readouterr().err
    assert "warning: --use_test_as_valid" in err and "optimistic" in err and len(err.splitlines()) == 1
    # training stays on the 80 % split, as in the published code
    assert len(task.train) == int(0.8 * 48) and task.valid is task.test and len(task.test) == 16
    synthetic.make_dataset("ssc", tmp_path / "audiospikes", {"train": 6, "test": 4})  # no valid file
    ssc = utils_dataset.load_task(cfg_for(tmp_path, "ssc", use_test_as_valid=True, nb_steps=10))
    assert ssc.valid is ssc.test and "optimistic" in capsys.readouterr().err
    plain = utils_dataset.load_task(cfg_for(shd_dir))
    assert capsys.readouterr().err == "" and plain.valid is not plain.test


# --- frequency-shift augmentation (the published per-batch draw) -----------------------------
def expected_shifts(n, freq_shift, seed):
    """One size per batch, max(0, int(N(0,1) * 3 + freq_shift)), then a direction per sample."""
    rng = np.random.default_rng(seed)
    size = max(0, int(rng.normal() * 3 + freq_shift))
    return np.where(rng.random(n) >= 0.5, size, -size)


@pytest.mark.parametrize("freq_shift", [1, 10])
def test_frequency_shift_moves_the_batch_by_one_draw(freq_shift):
    n = 4000
    x = np.zeros((n, 3, 700), np.uint8)
    x[:, 1, 350] = 1
    out = frequency_shift(x, np.random.default_rng(7), freq_shift)
    assert out.shape == x.shape and out.dtype == np.uint8
    moved = out[:, 1].argmax(axis=1) - 350
    shifts = expected_shifts(n, freq_shift, 7)
    np.testing.assert_array_equal(moved, shifts)
    assert out[:, [0, 2]].sum() == 0 and out.sum() == n
    assert len(set(np.abs(shifts))) == 1 and abs(np.mean(shifts > 0) - 0.5) < 0.05


def test_a_negative_shift_draw_moves_nothing():
    """max(0, int(N(0,1) * 3 + freq_shift)): a draw below zero shifts by 0 channels."""
    x = np.random.default_rng(1).integers(0, 3, (50, 2, 30)).astype(np.uint8)
    np.testing.assert_array_equal(frequency_shift(x, np.random.default_rng(0), -100), x)


def test_frequency_shift_fills_with_zeros():
    x = np.ones((500, 2, 40), np.uint8)
    for seed in range(5):
        out = frequency_shift(x, np.random.default_rng(seed), 10)
        shifts = expected_shifts(500, 10, seed)
        for row, s in zip(out, shifts):
            k = min(abs(s), 40)
            zeros = row[:, :k] if s > 0 else row[:, 40 - k:]
            assert zeros.sum() == 0 and row.sum() == 2 * (40 - k)


def test_training_batches_are_augmented_only_when_freq_shift_is_set(shd_dir):
    assert utils_dataset.load_task(cfg_for(shd_dir, freq_shift=1)).train.augment is not None
    assert utils_dataset.load_task(cfg_for(shd_dir, freq_shift=0)).train.augment is None
    task = utils_dataset.load_task(cfg_for(shd_dir, freq_shift=10))
    assert task.valid.augment is None and task.test.augment is None
    x, y = next(iterate_batches(task.train, 16, np.random.default_rng(0)))
    assert x.shape == (100, 16, 700) and x.dtype == np.float32 and y.shape == (16,)
    order = np.random.default_rng(0).permutation(len(task.train))[:16]
    raw = task.train.X[order]
    assert x.sum() <= raw.sum() and not np.array_equal(x, raw.transpose(1, 0, 2))
    again, _ = next(iterate_batches(task.train, 16, np.random.default_rng(0)))
    np.testing.assert_array_equal(x, again)  # the per-epoch Generator makes it reproducible


# --- the synthetic generator and training end to end ------------------------------------------
def test_generator_writes_the_published_layout(tmp_path):
    paths = synthetic.make_dataset("ssc", tmp_path, {"train": 40, "valid": 3, "test": 2}, seed=4)
    assert [p.name for p in paths] == ["ssc_train.h5", "ssc_valid.h5", "ssc_test.h5"]
    with h5py.File(paths[0], "r") as f:
        times, units, labels = f["spikes/times"][:], f["spikes/units"][:], f["labels"][:]
    assert times[0].dtype == np.float16 and units[0].dtype == np.uint16
    assert sorted(np.unique(labels)) == list(range(35))
    assert all(5000 <= len(t) == len(u) <= 10000 for t, u in zip(times, units))
    assert all(np.all(np.diff(t.astype(float)) >= 0) and t.min() >= 0 for t in times)
    assert max(u.max() for u in units) <= 699
    with pytest.raises(FileExistsError):
        synthetic.make_dataset("ssc", tmp_path, {"train": 2})
    gz = synthetic.make_dataset("shd", tmp_path, {"test": 2}, compress=True)[0]
    listing = (tmp_path / "md5sums.txt").read_text()
    assert f"{hashlib.md5(gz.read_bytes()).hexdigest()}  shd_test.h5.gz" in listing
    with gzip.open(gz) as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [(["--n_test", "0"], "--n_test 0: shd needs at least 1 test samples"),
                                          (["--n_train", "-5"], "--n_train -5: shd needs at least 2"),
                                          (["--n_train", "1"], "its seeded 80/20 split needs one sample on each side"),
                                          (["--dataset", "ssc", "--n_valid", "0"], "--n_valid 0: ssc needs")])
def test_generator_refuses_sizes_no_loader_can_use(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        synthetic.main(["--out", str(tmp_path), "--n_train", "4", "--n_test", "2", "--n_valid", "2", *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_generator_command_line(root, tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, str(root / "tools" / "make_synthetic_audiospikes.py"),
                             "--dataset", "shd", "--out", str(tmp_path), "--n_train", "3", "--n_test", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shd_test.h5", "shd_train.h5"]


@pytest.mark.slow
@pytest.mark.parametrize("convolution", [False, True])
def test_training_runs_end_to_end_on_synthetic_shd(shd_dir, convolution):
    cfg = cfg_for(shd_dir, n_hid=8, n_layers=3, nb_steps=40, batch_size=16, n_epochs=2,
                  convolution=convolution)
    if convolution:
        assert cfg.freq_shift == 10 and cfg.use_test_as_valid and cfg.hierarchy_conv == "kernel"
    metrics = train_hsnn(cfg, progress=False)
    assert len(metrics["epochs"]) == 2 and np.isfinite(metrics["test_loss"])
    assert all(np.isfinite(e["loss"]) for e in metrics["epochs"])
    assert 0 <= metrics["test_acc"] <= 1


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
@pytest.mark.parametrize("name", ["shd_train.h5", "shd_train.h5.gz"])
def test_anything_but_a_regular_file_is_refused_before_it_is_read(tmp_path, kind, name):
    """A folder, a named pipe or /dev/zero where a data file belongs: one line, at once (a pipe
    or a device would hang a reader)."""
    folder = tmp_path / "audiospikes"
    folder.mkdir()
    path = folder / name
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    start = time.time()
    with pytest.raises(DataError) as err:
        utils_dataset.audio_file(folder, "shd_train", base_url=f"http://127.0.0.1:{closed_port()}/")
    assert_one_line(err.value, str(path), "not a regular file")
    assert time.time() - start < 5


@pytest.mark.parametrize("n_train,message", [(1, "training set holds no sample"), (2, None), (3, None)])
def test_tiny_data_sets_train_or_are_refused_in_one_line(tmp_path, n_train, message):
    """One training recording leaves SHD's 80/20 split without a training sample: refused.
    Two or three train in one smaller batch."""
    synthetic.make_dataset("shd", tmp_path / "audiospikes", {"train": n_train, "test": 1})
    cfg = cfg_for(tmp_path, n_hid=4, n_layers=2, n_epochs=1)
    if message:
        with pytest.raises(DataError) as err:
            utils_dataset.load_task(cfg)
        assert_one_line(err.value, message)
    else:
        metrics = train_hsnn(cfg, progress=False)
        assert len(metrics["epochs"]) == 1 and 0 <= metrics["test_acc"] <= 1


def test_errors_number_the_samples_of_the_file_from_zero(tmp_path):
    cfg = cfg_for(tmp_path)
    with pytest.raises(DataError, match="sample 0 has unit 700"):
        utils_dataset.bin_rows([np.array([0.1])], [np.array([700])], cfg, tmp_path / "f.h5")
    with pytest.raises(DataError, match="sample 12 has unit 700"):
        utils_dataset.bin_rows([np.array([0.1])], [np.array([700])], cfg, tmp_path / "f.h5", first=12)


# --- the data on the device: the same batches, gathered in the step ------------------------------
@pytest.mark.parametrize("freq_shift", [0, 10])
def test_shd_held_on_the_device_trains_bitwise_as_batches_built_on_the_host(shd_dir, freq_shift, trained_groups):
    """Two seeds in one vmapped program sharing the file's rows on the device (frequency shift
    drawn on the host, applied in the step): the same losses, accuracies and parameters as
    the same seeds with their batches built on the host."""
    import training
    cfg = cfg_for(shd_dir, n_hid=8, n_layers=3, nb_steps=30, batch_size=16, n_epochs=2, freq_shift=freq_shift)
    runs = {}
    for placement in ("host", "device"):
        c = cfg.replace(data_placement=placement)
        tasks = [utils_dataset.load_task(c.replace(seed=s)) for s in (0, 1)]
        runs[placement] = training.train_seeds(c, [0, 1], progress=False, tasks=tasks, group_size=2)
    assert trained_groups == [2, 2]  # each as one vmapped group
    for a, b in zip(runs["host"], runs["device"]):
        assert [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]
        assert (a["test_acc"], a["best_valid_acc"]) == (b["test_acc"], b["best_valid_acc"])
    data = training.device_data([utils_dataset.load_task(cfg.replace(seed=s, data_placement="device")) for s in (0, 1)],
                                cfg.replace(data_placement="device"))
    assert data["train"].X.ndim == 3 and data["train"].X is data["valid"].X  # one copy of the file's rows
    assert data["train"].pos.shape == (2, 38) and data["test"].X.shape[0] == 16


def test_auto_holds_the_data_on_the_device_only_when_it_fits(shd_dir, monkeypatch):
    import runtime
    import training
    cfg = cfg_for(shd_dir, n_hid=8, nb_steps=30)
    tasks = [utils_dataset.load_task(cfg)]
    monkeypatch.setattr(runtime, "large_step", lambda c: True)  # as SHD's real step (30 time steps here)
    assert training.device_data(tasks, cfg) is not None  # 64 recordings of 30 x 700 bins fit
    monkeypatch.setattr(runtime, "available_memory", lambda: 10 ** 6)
    assert training.device_data(tasks, cfg) is None  # 1 MB free: built on the host
    assert training.device_data(tasks, cfg.replace(data_placement="device")) is not None
    assert training.device_data(tasks, cfg.replace(data_placement="host")) is None
