"""The benchmark scripts run against the current train step (they are not timed here:
speed is measured by running them, see docs/performance.md)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import benchmark  # noqa: E402
import compare_commits  # noqa: E402
import seed_scaling  # noqa: E402
import sweep_step_times  # noqa: E402
from utils_initialization import make_config  # noqa: E402


def test_benchmark_reports_every_figure_for_shd(tmp_path):
    out = tmp_path / "shd.json"
    result = benchmark.main(["--dataset_name", "shd", "--n_layers", "2", "--n_hid", "8", "--nb_steps", "20",
                             "--n_train", "300", "--batch_size", "128", "--epochs", "1",
                             "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    for key in ("compile_seconds", "epoch_seconds", "validation_seconds", "samples_per_second",
                "peak_rss_mb", "first_layer_matmul_seconds", "epoch_to_first_layer_matmul"):
        assert result[key] > 0, key
    assert result["n_train"] == 300 and result["config"]["n_hid"] == 8
    assert result["epoch_cpu_seconds"] > 0
    roof = result["roofline"]
    assert roof["step_gflop"] == pytest.approx(benchmark.step_flop(make_config("shd", **SMALL)) / 1e9, abs=1e-3)
    assert roof["peak_gflops"] > 0 and roof["bandwidth_gbs"] > 0
    assert roof["fraction_of_peak"] == pytest.approx(roof["achieved_gflops"] / roof["peak_gflops"], rel=0.02)


SMALL = dict(n_layers=2, n_hid=8, nb_steps=20, batch_size=128)


def test_a_train_steps_flop_from_its_shapes():
    """2 per multiply-add: SHD, 3 hidden layers of 32: the first layer's product forward and
    its weight gradient (no input gradient), the others' three products each."""
    rows = 100 * 256
    expected = 2 * 2 * rows * 700 * 32 + 3 * 2 * rows * (32 * 32 + 32 * 32 + 32 * 20)
    assert benchmark.step_flop(make_config("shd", n_layers=4, n_hid=32)) == expected
    recurrent = benchmark.step_flop(make_config("shd", n_layers=4, n_hid=32, recurrent=True))
    assert recurrent - expected == 3 * 3 * 2 * rows * 32 * 32
    conv = make_config("shd", convolution=True)  # main.py's: 3 hidden layers, kernels 3, 4 and 6
    rows2 = 200 * 256
    assert benchmark.step_flop(conv) == (2 * 2 * rows2 * 3 * 700 * 128
                                         + 3 * 2 * rows2 * (4 * 128 * 128 + 6 * 128 * 128 + 128 * 20))


def test_the_memory_pass_writes_over_its_input():
    """The bandwidth pass allocates nothing: its input is donated (a fresh 256 MiB output at
    each call was faulted in page by page where glibc's heap is not kept: MTS-XOR's roofline
    measured 5.4 GB/s where SHD's measured 32 GB/s), and it scales every element."""
    import jax.numpy as jnp
    x = jnp.arange(8, dtype=jnp.float32)
    y = benchmark.memory_pass()(x)
    assert x.is_deleted()
    np.testing.assert_array_equal(np.asarray(y), np.arange(8, dtype=np.float32) * np.float32(1.0001))


def test_a_one_batch_training_set_is_benchmarked_too():
    result = benchmark.main(["--dataset_name", "shd", "--n_layers", "2", "--n_hid", "8", "--nb_steps", "20",
                             "--n_train", "100", "--batch_size", "128", "--epochs", "1"])
    assert result["first_layer_matmul_seconds"] > 0


def test_benchmark_compares_vmapped_and_sequential_seeds():
    result = benchmark.main(["--dataset_name", "mts_xor", "--n_layers", "2", "--seeds", "2", "--batch_size", "32",
                             "--epochs", "1", "--compare_sequential"])
    assert result["seeds"] == 2 and result["sequential_epoch_seconds"] > 0
    assert result["vmap_speedup"] == pytest.approx(result["sequential_epoch_seconds"] / result["epoch_seconds"], rel=0.02)


@pytest.mark.parametrize("dataset, nb_steps", [("mts_xor", 100), ("shd", 20)])
def test_sweep_step_times_runs_the_train_step(dataset, nb_steps):
    cfg = make_config(dataset, n_layers=2, n_hid=8, nb_steps=nb_steps, batch_size=16)
    assert 0 < sweep_step_times.step_seconds(cfg, 1) < 60


@pytest.mark.parametrize("dataset, nb_steps", [("mts_xor", 100), ("shd", 20)])
def test_seed_scaling_bounds_the_batched_speedup(dataset, nb_steps, tmp_path):
    out = tmp_path / "scaling.json"
    r = seed_scaling.main(["--dataset_name", dataset, "--n_layers", "3", "--n_hid", "4", "--seeds", "3",
                           "--batch_size", "8", "--nb_steps", str(nb_steps), "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == r
    assert r["hidden_layers"] == 2 and r["currents_shape"] == [nb_steps, 8, 4]
    assert r["step_seconds"] > 0 and [g["seeds_side_by_side"] for g in r["groups"]] == [1, 2, 3]
    for g in r["groups"]:
        assert g["layer_seconds"] > 0 and g["layer_seconds_vmapped"] > 0
        assert g["speedup_bound"] == pytest.approx(
            g["seeds_side_by_side"] * r["step_seconds"] / (2 * g["layer_seconds"]), rel=0.02)
    assert r["speedup_bound"] == max(g["speedup_bound"] for g in r["groups"])


def test_compare_commits_pairs_the_versions_within_each_round():
    # the machine slowed down in round 2: the medians' ratio (3.0 / 2.0) reads 1.5, while
    # within each round HEAD took 0.9, 1.0 and 2.0 times BASE's time
    b, h, ratio, paired = compare_commits.summary([2.0, 4.0, 1.0], [1.8, 4.0, 3.0])
    assert (b, h) == (2.0, 3.0) and ratio == pytest.approx(1.5) and paired == pytest.approx(1.0)
