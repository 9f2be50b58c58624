"""MNIST, sequential MNIST and permuted sequential MNIST on tiny IDX files written here in
torchvision's raw layout (docs/datasets.md). Offline: downloads go to a local HTTP server
that serves the test's own archives, or to a closed local port."""

import functools
import gzip
import hashlib
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import utils_dataset
from training import train_hsnn
from utils_dataset import DataError, latency_steps, load_task
from utils_initialization import ConfigError, make_config

N_TRAIN, N_TEST = 40, 20
CLOSED = "http://127.0.0.1:9/"  # the discard port: nothing listens, connections are refused


def write_idx(path, array, magic):
    """An IDX file: big-endian magic, one uint32 per dimension, then the uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_mnist(data_dir, n_train=N_TRAIN, n_test=N_TEST, seed=0):
    """Random 28x28 uint8 images and labels 0-9 as the four raw files; returns them."""
    rng = np.random.default_rng(seed)
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{part}-images-idx3-ubyte", images, 0x803)
        write_idx(raw / f"{part}-labels-idx1-ubyte", labels, 0x801)
        parts[part] = (images.reshape(n, 784), labels)
    return parts


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, write_mnist(data_dir)


def task(name, data_dir, **overrides):
    return load_task(make_config(name, data_dir=str(data_dir), **overrides))


def all_x(split):
    return split.X[np.arange(len(split))]


def image_set(images_NP):
    """The images as a set of byte strings (random images are distinct)."""
    return {row.tobytes() for row in np.round(images_NP).astype(np.uint8)}


# --- the encodings -------------------------------------------------------------------------
def published_latency(x, nb_steps):
    """The published current2firing_time + expand_time_dim, in numpy on float32 arrays as the
    published code ran it on float32 tensors: x < 0.2 is silent, x is raised to 0.2 + 1e-7,
    t = 20 ln(x / (x - 0.2)) truncated and clipped to the last step."""
    x = np.asarray(x, np.float32)
    silent = x < 0.2
    xc = np.clip(x, np.float32(0.2 + 1e-7), np.float32(1e9))
    t = np.clip((np.float32(20) * np.log(xc / (xc - np.float32(0.2)))).astype(int), 0, nb_steps - 1)
    return np.where(silent, -1, t)


def test_latency_code_of_known_intensities():
    x = np.array([1.0, 0.5, 0.25, 0.21, 0.2, 0.19, 0.1, 0.0])
    expected = [4, int(20 * np.log(0.5 / 0.3)), int(20 * np.log(0.25 / 0.05)), 49, 49, -1, -1, -1]
    assert list(latency_steps(x, 50)) == expected == [4, 10, 32, 49, 49, -1, -1, -1]
    assert list(latency_steps(x, 20)[:5]) == [4, 10, 19, 19, 19]  # clipped to the last step
    # exactly 0.2 (51/255): float32 as published gives 20 ln(0.2000001 / 1.043e-7) = 289.3; float64 gave 290
    assert latency_steps(np.array([0.2]), 400)[0] == 289
    assert latency_steps(np.float32(51) / np.float32(255), 400) == 289
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    for nb_steps in (20, 50, 300, 400):
        np.testing.assert_array_equal(latency_steps(levels, nb_steps), published_latency(levels, nb_steps))


def test_latency_coded_batches(mnist):
    data_dir, parts = mnist
    t = task("mnist", data_dir)
    x_BTP = all_x(t.test)
    assert x_BTP.shape == t.test.X.shape == (N_TEST, 50, 784) and x_BTP.dtype == np.uint8
    images, _ = parts["t10k"]
    steps = latency_steps(images / 255.0, 50)
    assert np.array_equal(x_BTP.sum(1), (steps >= 0).astype(np.uint8))  # one spike or none
    b, p = np.nonzero(steps >= 0)
    assert np.all(x_BTP[b, steps[b, p], p] == 1)
    x_BPT = x_BTP.transpose(0, 2, 1)
    assert not x_BPT[images < 51].any()  # below intensity 0.2: silent
    assert np.all(x_BPT[images == 51][:, 49] == 1)  # exactly 0.2 (51/255): the last step
    assert np.all(x_BPT[images == 255][:, 4] == 1)


def test_sequential_mnist_is_the_raster_of_intensities(mnist):
    data_dir, parts = mnist
    t = task("s-mnist", data_dir)
    x = all_x(t.test)
    assert x.shape == t.test.X.shape == (N_TEST, 784, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], parts["t10k"][0] / 255.0, rtol=1e-6)
    assert t.extras is None


def test_batches_are_time_major(mnist):
    """Time-major float32 batches; stored as uint8 spikes (latency code, 784 wide) or
    float32 intensities (pixel sequences)."""
    data_dir, _ = mnist
    for name, shape, dtype in (("mnist", (50, 8, 784), np.uint8), ("ps-mnist", (784, 8, 1), np.float32)):
        split = task(name, data_dir).train
        x, y = next(utils_dataset.iterate_batches(split, 8))
        assert x.shape == shape and x.dtype == np.float32 and y.shape == (8,)
        raw, _ = next(utils_dataset.iterate_batches(split, 8, time_major=False))
        assert raw.dtype == dtype
        np.testing.assert_array_equal(raw.transpose(1, 0, 2), x)


# --- split and permutation -----------------------------------------------------------------
def test_seeded_80_20_split_and_separate_test_set(mnist):
    data_dir, parts = mnist
    a, b, c = (task("s-mnist", data_dir, seed=s) for s in (0, 0, 1))
    assert (len(a.train), len(a.valid), len(a.test)) == (32, 8, N_TEST)
    np.testing.assert_array_equal(all_x(a.valid), all_x(b.valid))
    assert not np.array_equal(all_x(a.valid), all_x(c.valid))
    train, valid = image_set(all_x(a.train)[..., 0] * 255), image_set(all_x(a.valid)[..., 0] * 255)
    assert train | valid == image_set(parts["train"][0]) and not train & valid
    np.testing.assert_array_equal(a.test.Y, parts["t10k"][1])


def test_validation_set_keeps_the_order_of_the_seeded_split(mnist):
    """The published code evaluated its random_split's validation subset unshuffled, in the
    split's random order (batch norm's statistics depend on which samples share a batch):
    the validation images come in a seeded order that is not the file's."""
    data_dir, parts = mnist
    file_row = {row.tobytes(): i for i, row in enumerate(parts["train"][0])}
    rows = [[file_row[r.tobytes()] for r in np.round(all_x(task("s-mnist", data_dir, seed=s).valid)[..., 0] * 255)
             .astype(np.uint8)] for s in (0, 0, 1)]
    assert rows[0] == rows[1] and rows[0] != rows[2]
    assert rows[0] != sorted(rows[0])
    order = np.random.default_rng(utils_dataset.mnist_seeds(0)[0]).permutation(N_TRAIN)
    assert rows[0] == list(order[:len(rows[0])])


def test_permutation_is_seeded_and_shared_by_the_splits(mnist):
    data_dir, parts = mnist
    a, b, c = (task("ps-mnist", data_dir, seed=s) for s in (3, 3, 4))
    perm = a.extras["permutation"]
    assert sorted(perm) == list(range(784))
    np.testing.assert_array_equal(perm, b.extras["permutation"])
    assert not np.array_equal(perm, c.extras["permutation"])
    plain = task("s-mnist", data_dir, seed=3)
    for permuted, raster in zip(a[:3], plain[:3]):
        np.testing.assert_array_equal(all_x(permuted), all_x(raster)[:, perm])
        np.testing.assert_array_equal(permuted.Y, raster.Y)


@pytest.mark.slow
def test_permutation_is_saved_in_the_run_folder(mnist, tmp_path):
    data_dir, _ = mnist
    cfg = make_config("ps-mnist", data_dir=str(data_dir), seed=5, n_epochs=1, n_hid=4,
                      n_layers=2, batch_size=32)
    train_hsnn(cfg, tmp_path / "run", progress=False)
    saved = np.load(tmp_path / "run" / "task.npz")["permutation"]
    np.testing.assert_array_equal(saved, utils_dataset.pixel_permutation(5))


# --- files, the download, errors ------------------------------------------------------------
class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirrors(tmp_path, monkeypatch):
    """Two local HTTP servers standing in for torchvision's mirrors: the first answers 404 for
    everything, the second serves the .gz archives of a tiny MNIST, whose MD5s replace the
    published ones. Returns (their base URLs, the raw files as written)."""
    files = tmp_path / "made"
    write_mnist(files)
    served = tmp_path / "site"
    served.mkdir()
    md5 = {}
    for raw in (files / "MNIST" / "raw").iterdir():
        data = gzip.compress(raw.read_bytes())
        (served / f"{raw.name}.gz").write_bytes(data)
        md5[f"{raw.name}.gz"] = hashlib.md5(data).hexdigest()
    monkeypatch.setattr(utils_dataset, "MNIST_MD5", md5)
    servers = []
    for root in (tmp_path / "empty", served):
        root.mkdir(exist_ok=True)
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"http://127.0.0.1:{s.server_address[1]}/" for s in servers], files / "MNIST" / "raw"
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_download_tries_each_mirror_checks_md5_and_decompresses(tmp_path, mirrors):
    urls, made = mirrors
    raw = tmp_path / "data" / "MNIST" / "raw"
    utils_dataset.download_mnist(raw, urls)
    for name in utils_dataset.MNIST_RAW_FILES:
        assert (raw / name).read_bytes() == (made / name).read_bytes()
    task("mnist", tmp_path / "data")  # the files read as written
    for name in utils_dataset.MNIST_RAW_FILES:
        (raw / name).unlink()  # the archives stay: decompressed again, no network needed
    utils_dataset.download_mnist(raw, [CLOSED])
    assert all((raw / name).exists() for name in utils_dataset.MNIST_RAW_FILES)


def test_a_download_that_does_not_match_its_md5_is_discarded(tmp_path, mirrors, monkeypatch):
    urls, _ = mirrors
    monkeypatch.setitem(utils_dataset.MNIST_MD5, "train-images-idx3-ubyte.gz", "0" * 32)
    raw = tmp_path / "MNIST" / "raw"
    with pytest.raises(DataError) as err:
        utils_dataset.download_mnist(raw, urls)
    message = str(err.value)
    assert "does not match its MD5 and was discarded" in message and "HTTP 404" in message and "\n" not in message
    assert not (raw / "train-images-idx3-ubyte.gz").exists() and not (raw / "train-images-idx3-ubyte").exists()


def test_present_raw_files_need_no_network(mnist, monkeypatch):
    import pooch
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("downloaded"))
    data_dir, _ = mnist
    assert len(task("mnist", data_dir).train) == 32


def test_a_failed_download_names_the_files_to_copy(tmp_path):
    with pytest.raises(DataError) as err:
        utils_dataset.download_mnist(tmp_path / "MNIST" / "raw", [CLOSED])
    message = str(err.value)
    assert message.startswith(f"MNIST download into {tmp_path / 'MNIST' / 'raw'} failed (http://127.0.0.1:9/: ")
    assert "copy train-images-idx3-ubyte, train-labels-idx1-ubyte" in message and "\n" not in message
    assert not any((tmp_path / "MNIST" / "raw").glob("*idx*"))


def test_malformed_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03rubbish")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an MNIST labels file"):
        task("mnist", tmp_path)


def test_labels_outside_0_to_9_are_refused(root, tmp_path):
    """A label of 10 would train to 0 % accuracy without a word; it stops the run instead."""
    write_mnist(tmp_path)
    labels = (np.arange(N_TRAIN) % 10).astype(np.uint8)
    labels[7] = 10
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels, 0x801)
    with pytest.raises(DataError, match="sample 7 has label 10, outside the classes 0..9"):
        task("mnist", tmp_path)


@pytest.mark.slow
def test_failed_download_is_one_line_on_stderr(root, tmp_path):
    env = dict(os.environ, HSNN_MNIST_URL=CLOSED)
    result = subprocess.run(
        [sys.executable, str(root / "main.py"), "--dataset_name", "mnist", "--data_dir",
         str(tmp_path / "data"), "--results_dir", str(tmp_path / "results")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("main.py: error: MNIST download into") and "failed" in lines[0]
    assert "train-images-idx3-ubyte" in lines[0] and "Traceback" not in result.stdout


def test_sizes_fixed_by_the_data_are_enforced():
    with pytest.raises(ConfigError, match="--n_in"):
        make_config("mnist", n_in=700)
    with pytest.raises(ConfigError, match="--nb_steps"):
        make_config("ps-mnist", nb_steps=100)
    assert make_config("mnist", nb_steps=100).nb_steps == 100


def test_presets_follow_the_published_main():
    m, s, p = (make_config(n) for n in ("mnist", "s-mnist", "ps-mnist"))
    assert (m.nb_steps, m.n_in, m.n_out, m.batch_size) == (50, 784, 10, 256)
    assert m.tau_mem == pytest.approx(3 * m.dt)
    assert (s.nb_steps, s.n_in, s.n_hid, s.batch_size) == (784, 1, 64, 32)
    assert s.tau_mem == pytest.approx(50 * s.dt) and s.tau_out == pytest.approx(200 * s.dt)
    assert p == s.replace(dataset_name="ps-mnist")
