"""MTS-XOR generator and the batch iterator."""

import numpy as np
import pytest

import utils_dataset
from utils_dataset import generate_mts_xor, iterate_batches, mts_xor_score_mask
from utils_initialization import make_config

HALF, SIGNAL, WINDOW, SILENT = 20, 10, 15, 5


@pytest.fixture  # per test, so that a mutation test runs the generator for each of them
def sample():
    return generate_mts_xor(2000, np.random.default_rng(0), noise_rate=0.01)


def window_slices(w):
    start = SIGNAL + w * WINDOW
    return slice(start, start + SILENT), slice(start + SILENT, start + WINDOW)


def test_shapes_and_types(sample):
    X, Y = sample
    assert X.shape == (2000, 100, 40) and X.dtype == np.uint8
    assert Y.shape == (2000, 100) and set(np.unique(X)) == {0, 1} and set(np.unique(Y)) == {0, 1}


def test_rates_per_window(sample):
    """Signal 1 and every coding window fire at 0.2 or 0.6 (plus noise); silences and the
    other group carry only the 1 % noise."""
    X, _ = sample
    noise = 0.01
    low, high = 0.2 + noise * 0.8, 0.6 + noise * 0.4  # P(signal or noise)
    first = X[:, :SIGNAL, :HALF].mean(axis=(1, 2))
    assert np.all((np.abs(first - low) < 0.12) | (np.abs(first - high) < 0.12))
    assert abs(first[first < 0.4].mean() - low) < 0.01 and abs(first[first > 0.4].mean() - high) < 0.01
    assert 0.4 < np.mean(first > 0.4) < 0.6
    assert abs(X[:, :SIGNAL, HALF:].mean() - noise) < 0.003
    assert abs(X[:, SIGNAL:, :HALF].mean() - noise) < 0.003
    for w in range(6):
        silent, code = window_slices(w)
        assert abs(X[:, silent, HALF:].mean() - noise) < 0.003
        rate = X[:, code, HALF:].mean(axis=(1, 2))
        assert abs(rate[rate < 0.4].mean() - low) < 0.01 and abs(rate[rate > 0.4].mean() - high) < 0.01


def test_labels_are_the_xor(sample):
    X, Y = sample
    first_high = X[:, :SIGNAL, :HALF].mean(axis=(1, 2)) > 0.4
    assert np.all(Y[:, :SIGNAL] == 0)
    for w in range(6):
        silent, code = window_slices(w)
        window_high = X[:, code, HALF:].mean(axis=(1, 2)) > 0.4
        expected = (first_high ^ window_high).astype(int)[:, None]
        assert np.all(Y[:, silent] == expected) and np.all(Y[:, code] == expected)
    assert 0.4 < Y[:, SIGNAL:].mean() < 0.6


def test_the_default_noise_rate_is_the_published_one_percent():
    X, _ = generate_mts_xor(2000, np.random.default_rng(1))
    assert abs(X[:, :SIGNAL, HALF:].mean() - 0.01) < 0.003


def test_the_task_carries_its_noise_rate_and_score_mask():
    quiet = utils_dataset.load_task(make_config("mts_xor", noise_rate=0.0, batch_size=16))
    noisy = utils_dataset.load_task(make_config("mts_xor", noise_rate=0.3, batch_size=16))
    assert quiet.train.X[:, :SIGNAL, HALF:].sum() == 0
    assert abs(noisy.train.X[:, :SIGNAL, HALF:].mean() - 0.3) < 0.03
    np.testing.assert_array_equal(quiet.score_mask, mts_xor_score_mask())


def test_the_seeded_data_stream_is_pinned():
    """The data a seed makes is part of what a run is (numpy's PCG64 gives the same numbers on
    every machine): seed 0's first training samples, pinned by their sums."""
    t = utils_dataset.load_task(make_config("mts_xor", batch_size=8))
    assert (int(t.train.X[:4].sum()), int(t.train.Y[:4].sum()), int(t.test.X[:4].sum())) == PINNED_SUMS


PINNED_SUMS = (2503, 165, 2038)  # (train X, train Y, test X) of the first 4 samples


def test_exactly_60_scored_steps():
    mask = mts_xor_score_mask()
    assert mask.sum() == 60
    expected = [t for w in range(6) for t in range(SIGNAL + w * WINDOW + SILENT, SIGNAL + (w + 1) * WINDOW)]
    assert list(np.flatnonzero(mask)) == expected


def test_noise_rate_is_honoured():
    X, _ = generate_mts_xor(500, np.random.default_rng(0), noise_rate=0.2)
    assert abs(X[:, :SIGNAL, HALF:].mean() - 0.2) < 0.01


def test_seeded_splits():
    a = utils_dataset.load_task(make_config("mts_xor", seed=3))
    b = utils_dataset.load_task(make_config("mts_xor", seed=3))
    c = utils_dataset.load_task(make_config("mts_xor", seed=4))
    assert (len(a.train), len(a.valid), len(a.test)) == (10240, 1024, 1024)  # 20, 2, 2 x 512
    np.testing.assert_array_equal(a.train.X, b.train.X)
    np.testing.assert_array_equal(a.test.Y, b.test.Y)
    assert not np.array_equal(a.train.X, c.train.X)
    assert not np.array_equal(a.train.X[:1024], a.valid.X)


def test_a_split_counts_its_samples_and_is_replaced_field_by_field():
    """len(split) is its number of samples; a field is replaced without touching the others
    (a NamedTuple whose len() counts the samples would break its own _replace)."""
    import dataclasses
    split = utils_dataset.Split(np.zeros((3, 5, 2), np.uint8), np.array([0, 1, 0]))
    assert len(split) == 3
    relabelled = dataclasses.replace(split, Y=np.array([1, 1, 1]))
    assert relabelled.X is split.X and relabelled.Y.tolist() == [1, 1, 1] and split.Y.tolist() == [0, 1, 0]
    assert (relabelled.augment, relabelled.reshuffle) == (None, False)


@pytest.mark.parametrize("batch_size", [64, 100])
def test_mts_xor_set_sizes_follow_the_batch_size(batch_size):
    """The published generator makes 20 training, 2 validation and 2 test batches."""
    t = utils_dataset.load_task(make_config("mts_xor", batch_size=batch_size))
    assert (len(t.train), len(t.valid), len(t.test)) == (20 * batch_size, 2 * batch_size, 2 * batch_size)


def test_iterate_batches_time_major_and_complete():
    X = np.arange(10 * 3 * 2, dtype=np.uint8).reshape(10, 3, 2)
    split = utils_dataset.Split(X, np.arange(10))
    batches = list(iterate_batches(split, 4, np.random.default_rng(0)))
    assert [b[0].shape for b in batches] == [(3, 4, 2), (3, 4, 2), (3, 2, 2)]
    assert batches[0][0].dtype == np.float32
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for x, y in batches:
        np.testing.assert_array_equal(x, X[y].transpose(1, 0, 2))
    ordered = np.concatenate([y for _, y in iterate_batches(split, 4)])
    assert list(ordered) == list(range(10))


def test_batches_time_major_float32_or_stored():
    """Time-major float32 by default; the stored batch-major uint8 for the training loop."""
    X = np.random.default_rng(0).integers(0, 3, (3, 5, 700)).astype(np.uint8)
    split = utils_dataset.Split(X, np.arange(3))
    x, _ = next(iterate_batches(split, 2))
    assert x.dtype == np.float32 and x.shape == (5, 2, 700)
    np.testing.assert_array_equal(x, X[:2].transpose(1, 0, 2))
    raw, _ = next(iterate_batches(split, 2, time_major=False))
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, X[:2])
