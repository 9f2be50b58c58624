"""The published protocol (tests/data/golden/protocol/, made by running the published code):
which configuration every command and sweep trains, the initial parameters, the SHD binning,
the frequency-shift augmentation, the evaluation order and how accuracy is averaged.

New files dropped into that folder are picked up with no code change: every
`init_*.json` + `.npz` pair, and every folder holding a `binned_published.npz`."""

import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import main
import sweep
import sweep_definitions
import training
import utils_dataset
from models import init_params
from utils_initialization import SWEEP_BASE, Config, make_config

PROTOCOL = Path(__file__).parent / "data" / "golden" / "protocol"
PUBLISHED_MAIN = json.loads((PROTOCOL / "published_main.json").read_text())
PUBLISHED_SWEEPS = json.loads((PROTOCOL / "published_sweeps.json").read_text())

# The name map of the protocol README: published attribute -> Config field.
RENAMED = {"dropout_rate": "dropout", "surrogate_fn": "surrogate", "dropout": "dropout"}
# Published attributes with no effect on training.
NO_EFFECT = {"verbose", "wandb", "experiment_name", "save_dir_name", "nb_rep", "noise_sd",
             "pert_proba", "truncation", "grad_clip", "lr_config", "v_rest", "v_reset"}
# Published attributes that this code does not make configurable: the value it builds in.
BUILT_IN = {"norm_bias_init": 0.0}


def ours(field, value):
    """A published value in this code's vocabulary: False hierarchies are 'none'; the
    published code treated distrib_tau=True as one time constant per layer ('none')."""
    if field in ("hierarchy_tau", "hierarchy_conv") and value is False:
        return "none"
    if field == "distrib_tau" and value is True:
        return "none"
    return value


def published_w_scale(cfg: Config) -> list:
    return ([1 / math.sqrt(cfg.w_scale_n_in)] + [1 / math.sqrt(cfg.w_scale_n_hid)] * cfg.w_scale_n_layers)


def assert_same_config(cfg: Config, published: dict, where: str):
    """Every published attribute that has a counterpart here has the same value in `cfg`."""
    for name, value in published.items():
        if name in NO_EFFECT or value is None:  # None in a sweep's 'fixed': swept in its grid
            continue
        if name in BUILT_IN:
            assert value == BUILT_IN[name], f"{where}: {name}"
        elif name == "w_scale":
            np.testing.assert_allclose(published_w_scale(cfg), value, rtol=1e-12, err_msg=f"{where}: w_scale")
        elif name == "timestep":
            assert cfg.dt == pytest.approx(value, rel=1e-12), f"{where}: timestep"
        else:
            field = RENAMED.get(name, name)
            assert hasattr(cfg, field), f"{where}: published {name!r} has no counterpart"
            expected, got = ours(field, value), getattr(cfg, field)
            if isinstance(expected, float) or isinstance(got, float):
                assert got == pytest.approx(expected, rel=1e-12), f"{where}: {name} = {got!r}, published {expected!r}"
            else:
                assert got == expected, f"{where}: {name} = {got!r}, published {expected!r}"


# --- main.py -------------------------------------------------------------------------------
def main_config(argv):
    return main.config_from_args(main.build_parser().parse_args(argv))


@pytest.mark.parametrize("command", sorted(PUBLISHED_MAIN))
def test_main_trains_the_published_configuration(command):
    name, *rest = command.split()
    cfg = main_config(["--dataset_name", name, *rest])
    assert_same_config(cfg, PUBLISHED_MAIN[command], f"main.py --dataset_name {command}")


def test_explicit_flags_win_over_the_task_preset():
    """The published task block silently replaced --n_hid and others; here a flag given wins
    (one of the listed differences), and the weight scales still follow the command line."""
    cfg = main_config(["--dataset_name", "mts_xor", "--n_hid", "32"])
    assert cfg.n_hid == 32 and cfg.w_scale_n_hid == 32 and cfg.n_in == 40 and cfg.w_scale_n_in == 700


# --- sweeps --------------------------------------------------------------------------------
def published_runs(name: str):
    """(published values of each run, the run's grid point) for a published sweep."""
    grid = PUBLISHED_SWEEPS[name]["grid"]
    import itertools
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield dict(zip(keys, values))


def test_every_published_sweep_is_defined():
    definitions = sweep_definitions.load_definitions()
    assert set(PUBLISHED_SWEEPS) <= set(definitions)


@pytest.mark.parametrize("name", sorted(PUBLISHED_SWEEPS))
def test_every_run_of_a_sweep_trains_the_published_configuration(name):
    """Each published run has a run of ours with the published configuration; a run of ours
    outside the published grid is declared as an addition ('added' or 'baseline')."""
    definition = sweep_definitions.load_definitions()[name]
    runs = sweep_definitions.expand(definition)
    fixed = PUBLISHED_SWEEPS[name]["fixed"]
    matched = set()
    for point in published_runs(name):
        published = {**fixed, **point}
        mine = [r for r in runs if not r.baseline and r.seed == published["seed"]
                and all(ours(k, published.get(k)) == v for k, v in r.point.items())]
        where = f"{name} {point}"
        assert len(mine) == 1, f"{where}: {len(mine)} runs of ours match"
        assert_same_config(sweep_definitions.make_run_config(mine[0].overrides, mine[0].seed), {**fixed, **point}, where)
        matched.add(mine[0].key)
    extra = [r for r in runs if r.key not in matched]
    assert not extra or definition.get("added") or all(r.baseline for r in extra), \
        f"{name}: runs beyond the published grid must be declared: {[r.key for r in extra][:3]}"
    assert len(runs) == PUBLISHED_SWEEPS[name]["runs"] + len(extra)


def test_additions_are_marked_in_the_list(capsys):
    sweep.print_list(sweep_definitions.load_definitions())
    out = capsys.readouterr().out
    assert "SHD_hCSNN_proper_validation" in out
    block = out[out.index("SHD_hCSNN_proper_validation"):]
    assert "added here" in block.splitlines()[1]


def test_sweep_configs_do_not_use_the_main_presets():
    """The published sweeps started from SimArgs(), not from main.py's task blocks: dropout
    0.1 and distrib_tau_sd 0.2 reach Fig. 2c and Fig. 6; no conv run selects on the test set."""
    definitions = sweep_definitions.load_definitions()
    fig6 = sweep_definitions.make_run_config(sweep_definitions.expand(definitions["hSNN_Figure_6"])[0].overrides, 0)
    assert fig6.distrib_tau_sd == 0.2 and fig6.dropout == 0.1
    for name in ("hSNN_Figure_S4a", "hSNN_Figure_S4b", "hSNN_Figure_4b", "hSNN_Figure_4d"):
        assert not sweep_definitions.make_run_config(sweep_definitions.expand(definitions[name])[0].overrides, 0).use_test_as_valid


# --- initial parameters --------------------------------------------------------------------
INIT_CASES = sorted(p.stem for p in PROTOCOL.glob("init_*.json") if p.with_suffix(".npz").exists())
NPZ_NAMES = {"scale": "norm_scale", "bias": "norm_bias"}


def init_case_config(meta) -> Config:
    if meta["path"] == "main":
        return main_config(meta["argv"])
    values = {RENAMED.get(k, k): ours(k, v) for k, v in meta["values"].items()}
    return Config(**{**SWEEP_BASE, **values})


@pytest.mark.parametrize("name", INIT_CASES)
def test_published_initial_parameters(name):
    meta = json.loads((PROTOCOL / f"{name}.json").read_text())
    cfg = init_case_config(meta)
    assert_same_config(cfg, meta["published_effective"], name)
    # the published train_hsnn initialises from the second half of PRNGKey(seed)
    params = init_params(jax.random.split(jax.random.PRNGKey(cfg.seed))[1], cfg)
    z = np.load(PROTOCOL / f"{name}.npz")
    expected = {}
    for key in z:
        layer, array = key[1:].split("_", 1)
        expected.setdefault(int(layer), {})[NPZ_NAMES.get(array, array)] = z[key]
    assert len(params) == len(expected)
    for i, layer in enumerate(params):
        assert set(layer) == set(expected[i]), f"{name}: layer {i}"
        for array, value in layer.items():
            np.testing.assert_allclose(value, expected[i][array], rtol=0, atol=1e-7, err_msg=f"{name}: L{i}_{array}")


def test_init_cases_are_all_used():
    assert len(INIT_CASES) >= 8
    assert {p.stem for p in PROTOCOL.glob("init_*.npz")} == set(INIT_CASES)


def test_published_init_reuses_keys_as_the_published_code():
    """W_rec equals W in hidden layers after the first; fan_in draws every array afresh."""
    cfg = Config(n_in=12, n_hid=6, n_layers=4, recurrent=True)
    published = init_params(jax.random.PRNGKey(3), cfg)
    assert np.array_equal(published[1]["W"], published[1]["W_rec"])
    fan_in = init_params(jax.random.PRNGKey(3), cfg.replace(weight_init="fan_in"))
    assert not np.array_equal(fan_in[1]["W"], fan_in[1]["W_rec"])
    np.testing.assert_allclose(np.abs(fan_in[0]["W"]).max(), 1 / math.sqrt(12), rtol=0.2)


# --- binning -------------------------------------------------------------------------------
BINNING_FOLDERS = sorted(p.parent for p in PROTOCOL.rglob("binned_published.npz"))


def binning_cases():
    for folder in BINNING_FOLDERS:
        z = np.load(folder / "binned_published.npz")
        for key in z:
            split, what, *rest = key.split("_")
            if what != "labels":
                yield folder, key, split, int(what[1:]), int(rest[0][1:])


@pytest.mark.parametrize("folder,key,split,nb_steps,n_in", list(binning_cases()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_default_binning_is_the_published_one(tmp_path, folder, key, split, nb_steps, n_in):
    shutil.copytree(folder / "audiospikes", tmp_path / "audiospikes")
    (source,) = (tmp_path / "audiospikes").glob(f"*_{split}.h5")  # shd_ or ssc_
    dataset = source.name.split("_")[0]
    cfg = make_config(dataset, nb_steps=nb_steps, n_in=n_in, data_dir=str(tmp_path))
    assert cfg.binning == "digitize"
    counts, labels = utils_dataset.cached_counts(source, cfg, utils_dataset.AUDIO_CLASSES[dataset])
    z = np.load(folder / "binned_published.npz")
    np.testing.assert_array_equal(counts[np.arange(len(counts))], z[key])
    np.testing.assert_array_equal(labels, z[f"{split}_labels"])


def test_binning_cases_are_found():
    assert len(list(binning_cases())) >= 8


def test_digitize_and_uniform_binning_differ_as_described(tmp_path):
    """digitize: bin 0 stays empty and spikes at or after time_max are dropped; uniform keeps
    a spike at t in bin floor(t / dt)."""
    times = [np.array([0.0, 0.0071, 0.5, 1.3999, 1.4, 2.0])]
    units = [np.array([0, 1, 2, 3, 4, 5])]
    cfg = make_config("shd", nb_steps=100, n_in=700)
    digitize = utils_dataset.bin_rows(times, units, cfg, tmp_path)
    uniform = utils_dataset.bin_rows(times, units, cfg.replace(binning="uniform"), tmp_path)
    cells = lambda out: sorted(divmod(int(f), 700) for f in out[1])  # noqa: E731
    assert digitize[3:] == (6, 4) and uniform[3:] == (6, 4)  # spikes, and those inside the binned time
    edges = np.linspace(0, 1.4, 100)
    assert cells(digitize) == [(1, 0), (1, 1), (int(np.digitize(0.5, edges)), 2), (99, 3)]
    assert cells(uniform) == [(0, 0), (0, 1), (35, 2), (99, 3)]


# --- augmentation and evaluation ------------------------------------------------------------
def test_frequency_shift_draws_one_size_per_batch_and_a_direction_per_sample():
    x = np.zeros((400, 1, 60), np.uint8)
    x[:, :, 30] = 1
    sizes, ups = [], []
    for b in range(300):
        out = utils_dataset.frequency_shift(x, np.random.default_rng(b), freq_shift=10)
        where = out[:, 0].argmax(-1) - 30
        assert len(set(np.abs(where))) == 1  # one size for the whole batch
        sizes.append(abs(int(where[0])))
        ups.append(np.mean(where > 0) if where[0] != 0 else 0.5)
    # size = max(0, int(N(0,1) * 3 + 10)): truncation towards zero lowers the mean by ~0.5
    assert np.mean(sizes) == pytest.approx(9.5, abs=0.5)
    assert np.std(sizes) == pytest.approx(3.0, abs=0.4)
    assert np.mean(ups) == pytest.approx(0.5, abs=0.02)


def test_frequency_shift_size_is_the_published_formula():
    rng = np.random.default_rng(7)
    expected = max(0, int(np.random.default_rng(7).normal() * 3 + 4))
    x = np.zeros((3, 2, 50), np.uint8)
    x[:, :, 20] = 1
    out = utils_dataset.frequency_shift(x, rng, freq_shift=4)
    assert set(np.abs(out[:, 0].argmax(-1) - 20)) == {expected}


def make_split(n, n_classes=3, reshuffle=False):
    rng = np.random.default_rng(0)
    return utils_dataset.Split(rng.integers(0, 2, (n, 4, 5)).astype(np.uint8),
                               rng.integers(0, n_classes, n), reshuffle=reshuffle)


class CountingSteps:
    """A stand-in for the compiled evaluation step: 'correct' = the number of label-0 samples."""

    def __init__(self):
        self.batches = []
        self.evaluate = self._evaluate

    def _evaluate(self, params, batch):
        y = np.asarray(batch.y)
        self.batches.append(y[0])
        correct = (y == 0).sum(axis=1).astype(np.float32)
        return training.Metrics(np.zeros(len(y), np.float32), {}, correct, np.full(len(y), y.shape[1], np.float32))


def test_accuracy_is_the_unweighted_mean_of_batch_accuracies():
    split = utils_dataset.Split(make_split(10).X, np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 1]))
    cfg = make_config("shd", batch_size=4)
    tally = training.evaluate(CountingSteps(), None, [split], cfg)
    per_batch = [np.mean(split.Y[i:i + 4] == 0) for i in range(0, 10, 4)]
    acc = tally.batch_acc / tally.batches
    assert acc[0] == pytest.approx(np.mean(per_batch))
    assert acc[0] != pytest.approx(np.mean(split.Y == 0))  # 4 + 4 + 2 samples: weights differ


def test_evaluation_order_reshuffles_only_marked_splits():
    cfg = make_config("shd", batch_size=4)
    fixed, shuffled = make_split(12), make_split(12, reshuffle=True)
    orders = []
    for epoch in range(2):
        for split in (fixed, shuffled):
            steps = CountingSteps()
            training.evaluate(steps, None, [split], cfg, training.eval_rngs([cfg], epoch, "valid"))
            orders.append(np.concatenate(steps.batches))
    fixed0, shuffled0, fixed1, shuffled1 = orders
    assert np.array_equal(fixed0, fixed.Y) and np.array_equal(fixed1, fixed.Y)
    assert not np.array_equal(shuffled0, shuffled1)  # a fresh order every epoch
    assert sorted(shuffled0) == sorted(shuffled.Y)


@pytest.fixture
def audio_dir(tmp_path):
    shutil.copytree(BINNING_FOLDERS[0] / "audiospikes", tmp_path / "audiospikes")
    return tmp_path


def test_shd_splits_evaluate_as_the_published_loaders(audio_dir):
    task = utils_dataset.load_task(make_config("shd", data_dir=str(audio_dir)))
    assert task.valid.reshuffle and not task.test.reshuffle and task.train.augment is None


def test_use_test_as_valid_keeps_training_on_the_80_percent_split(audio_dir, capsys):
    plain = utils_dataset.load_task(make_config("shd", data_dir=str(audio_dir)))
    table1 = utils_dataset.load_task(make_config("shd", data_dir=str(audio_dir), use_test_as_valid=True))
    assert len(table1.train) == len(plain.train) == int(0.8 * 40)
    assert table1.valid is table1.test and not table1.valid.reshuffle
    assert "optimistic" in capsys.readouterr().err


@pytest.mark.slow
def test_a_validation_tie_keeps_the_later_epoch(tmp_path, tiny_task, monkeypatch):
    def constant(*args, **kwargs):  # every epoch validates at 75 %
        tally = training.Tally()
        tally.add(training.Metrics(np.zeros(1), {}, np.full(1, 3.0), np.full(1, 4.0)), 1)
        return tally

    monkeypatch.setattr(training, "evaluate", constant)
    metrics = training.train_hsnn(make_config("mts_xor", n_epochs=3, batch_size=64, n_layers=3),
                                  progress=False, task=tiny_task)
    assert metrics["best_epoch"] == 2
