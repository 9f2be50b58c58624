"""utils_initialization.py: Config validation, the published defaults and presets, the
hierarchies (M7-M10 of docs/model.md), weight scales and the shapes init_params gives.
The published initial parameters themselves are compared in test_protocol.py."""

import math

import jax
import numpy as np
import pytest

from models import init_params
from utils_initialization import (CONV_PRESET, FIELDS, MAIN_DEFAULTS, PRESETS, SWEEP_BASE, Config, ConfigError,
                                  conv_hierarchy, hierarchy_notes, make_config, tau_hierarchy, weight_scales)


def test_defaults_are_the_published_simargs():
    cfg = Config()
    assert (cfg.n_layers, cfg.n_epochs, cfg.dropout, cfg.distrib_tau, cfg.distrib_tau_sd, cfg.target_fr) == \
        (3, 5, 0.1, "uniform", 0.2, 12.0)
    assert (cfg.w_scale_n_in, cfg.w_scale_n_hid, cfg.w_scale_n_layers) == (700, 128, 3)
    assert SWEEP_BASE == {"timestep": pytest.approx(0.014)} and cfg.dt == pytest.approx(0.014)


def test_main_precedence_defaults_then_preset_then_flags():
    cfg = make_config("mts_xor", n_hid=12, seed=4)
    assert (cfg.n_layers, cfg.n_epochs) == (MAIN_DEFAULTS["n_layers"], MAIN_DEFAULTS["n_epochs"])
    assert cfg.n_hid == 12 and cfg.tau_mem == PRESETS["mts_xor"]["tau_mem"] and cfg.seed == 4
    assert (cfg.w_scale_n_in, cfg.w_scale_n_hid, cfg.w_scale_n_layers) == (700, 12, 4)  # the command line's
    conv = make_config("ssc", convolution=True, dropout=0.2)
    assert conv.nb_steps == CONV_PRESET["nb_steps"] and conv.dropout == 0.2 and conv.n_out == 35


@pytest.mark.parametrize("field,value", [("n_layers", 1), ("dropout", 1.0), ("seed", -1), ("seed", 2 ** 32),
                                         ("decoder", "mean"), ("binning", "floor"), ("tau_mem", 0.0),
                                         ("w_scale_n_hid", 0), ("lr_decay", 0.0)])
def test_invalid_values_name_their_field(field, value):
    with pytest.raises(ConfigError, match=f"--{field}"):
        Config(**{field: value})


@pytest.mark.parametrize("field", [f for f, spec in FIELDS.items() if spec.type is float or spec.default is None])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_number_is_finite(field, value):
    """inf and nan pass no float field (they once trained to chance and wrote NaN into JSON)."""
    with pytest.raises(ConfigError, match=f"--{field}: must be a finite number"):
        Config(**{field: value})


@pytest.mark.parametrize("field,value,message", [("n_hid", 3.5, "whole number"), ("n_hid", True, "whole number"),
                                                 ("n_hid", "10", "whole number"), ("recurrent", "yes", "true or false"),
                                                 ("recurrent", 1, "true or false"), ("tau_mem", "0.1", "a number"),
                                                 ("decoder", 3, "text"), ("timestep", "none", "a number")])
def test_values_of_the_wrong_type_name_their_field(field, value, message):
    """A config.json edited by hand gets one line naming the field, not a TypeError later."""
    with pytest.raises(ConfigError, match=f"--{field}: must be .*{message}"):
        Config(**{field: value})


@pytest.mark.parametrize("delta_tau", [0.6, -0.6, 1.0])
def test_a_tanh_hierarchy_cannot_reach_zero_seconds(delta_tau):
    """tau_mem 0.3 +- delta_tau / 2 must stay above 0 s; the error names the layer and the limit."""
    with pytest.raises(ConfigError) as err:
        Config(n_layers=4, hierarchy_tau="tanh", tau_mem=0.3, delta_tau=delta_tau)
    layer = 1 if delta_tau > 0 else 3
    assert f"--delta_tau: with --tau_mem 0.3 the tanh hierarchy gives hidden layer {layer} a time constant" in str(err.value)
    assert "below 2 x tau_mem = 0.6" in str(err.value)
    Config(n_layers=4, hierarchy_tau="tanh", tau_mem=0.3, delta_tau=0.59)  # just inside


def test_the_linear_hierarchy_clip_is_printed():
    """The published linear hierarchy clips at 0 s; hierarchy_notes says so, naming the layers."""
    assert hierarchy_notes(Config(n_layers=4, hierarchy_tau="linear", tau_mem=0.3, delta_tau=0.4)) == []
    notes = hierarchy_notes(Config(n_layers=4, hierarchy_tau="linear", tau_mem=0.3, delta_tau=0.8))
    assert len(notes) == 1 and "-0.1 s" in notes[0] and "clipped to 0 s, in hidden layer 1 " in notes[0]
    notes = hierarchy_notes(Config(n_layers=4, hierarchy_tau="linear", tau_mem=0.3, delta_tau=-0.8))
    assert "hidden layer 3 " in notes[0]
    np.testing.assert_allclose(tau_hierarchy(Config(n_layers=4, hierarchy_tau="linear", tau_mem=0.3,
                                                    delta_tau=-0.8)), [0.7, 0.35, 0.0])


def test_task_sizes_are_fixed_by_the_data():
    with pytest.raises(ConfigError, match="--n_in"):
        make_config("mts_xor", n_in=30)
    with pytest.raises(ConfigError, match="--decoder"):
        make_config("mts_xor", decoder="cum")


def test_hierarchies():
    cfg = Config(n_layers=4, tau_mem=0.3, delta_tau=0.4, hierarchy_tau="linear")
    np.testing.assert_allclose(tau_hierarchy(cfg), [0.1, 0.3, 0.5])
    np.testing.assert_allclose(tau_hierarchy(cfg.replace(hierarchy_tau="none")), [0.3] * 3)
    tanh = tau_hierarchy(cfg.replace(hierarchy_tau="tanh"))
    assert tanh[0] == pytest.approx(0.1) and tanh[-1] == pytest.approx(0.5) and tanh[0] < tanh[1] < tanh[2]
    assert list(tau_hierarchy(Config(n_layers=2, hierarchy_tau="tanh"))) == [0.1]  # no 0/0
    # one hidden layer, linear: the published linspace(tau_mem - d/2, tau_mem + d/2, 1)
    one = Config(n_layers=2, hierarchy_tau="linear", tau_mem=0.3, delta_tau=0.4)
    np.testing.assert_allclose(tau_hierarchy(one), [0.1])
    np.testing.assert_allclose(tau_hierarchy(one.replace(delta_tau=-0.2)), [0.4])
    np.testing.assert_allclose(tau_hierarchy(one.replace(delta_tau=0.8)), [0.0])  # clipped at 0
    assert conv_hierarchy(Config(n_layers=3, convolution=True, hierarchy_conv="kernel", delta_ker=3,
                                 delta_dil=2)) == ((3, 6), (4, 6))
    assert conv_hierarchy(Config(n_layers=3, convolution=True, hierarchy_conv="dilation", delta_ker=3,
                                 delta_dil=2)) == ((5, 5), (4, 6))


def test_published_weight_scales():
    per_layer = weight_scales(Config(n_layers=4))
    np.testing.assert_allclose([s for s, _ in per_layer], [1 / math.sqrt(700)] + [1 / math.sqrt(128)] * 3, rtol=1e-6)
    mean = np.mean([1 / math.sqrt(700)] + [1 / math.sqrt(128)] * 3)
    np.testing.assert_allclose([s for s, _ in weight_scales(Config(n_layers=5))], [mean] * 5, rtol=1e-6)
    fan_in = weight_scales(Config(n_in=16, n_hid=4, n_layers=3, weight_init="fan_in"))
    assert [round(s, 6) for s, _ in fan_in] == [0.25, 0.5, 0.5]


@pytest.mark.parametrize("distrib_tau", ["uniform", "normal"])
def test_initial_time_constants_are_clipped_to_ten_seconds(distrib_tau):
    """Drawn time constants are clipped to [1e-10, 10] s before alpha = exp(-dt / tau) (itself
    clipped to [0.1, 0.99]): with steps of 0.2 s a 20 s time constant starts at exp(-0.02),
    not at 0.99."""
    import utils_initialization
    cfg = Config(time_max=1.0, nb_steps=5, distrib_tau=distrib_tau, distrib_tau_sd=0.01)
    alpha = utils_initialization.draw_decays(jax.random.PRNGKey(0), 20.0, 8, cfg)
    np.testing.assert_allclose(alpha, np.exp(-0.2 / 10.0), rtol=1e-6)
    short = utils_initialization.draw_decays(jax.random.PRNGKey(0), 1.0, 8, cfg)  # not clipped
    assert np.all(np.abs(np.asarray(short) - np.exp(-0.2)) < 0.01) and len(set(np.asarray(short).tolist())) > 1


A, B = 1 / math.sqrt(700), 1 / math.sqrt(128)


@pytest.mark.parametrize("n_layers, w_scale_n_layers, pairs", [
    (4, 3, [(A, A), (B, B), (B, B), (B, B)]),      # one entry per layer: W and W_rec alike
    (2, 3, [(A, B), (B, B)]),                      # two per layer: the list as rows (W; W_rec)
    (3, 1, [(A, B)] * 3),                          # two entries: the same pair for every layer
    (3, 3, [((A + 3 * B) / 4,) * 2] * 3)])         # otherwise their mean everywhere
def test_published_recurrent_weight_scales(n_layers, w_scale_n_layers, pairs):
    """Recurrent runs: the published list [1/sqrt(700), 1/sqrt(128) x w_scale_n_layers] as
    (W, W_rec) bounds per layer."""
    got = weight_scales(Config(n_layers=n_layers, recurrent=True, w_scale_n_layers=w_scale_n_layers))
    np.testing.assert_allclose(np.asarray(got, float), pairs, rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(recurrent=True), dict(convolution=True, hierarchy_conv="kernel",
                                                                       delta_ker=2), dict(normalizer="none"),
                                dict(distrib_tau="none")])
def test_init_params_shapes(kw):
    cfg = Config(n_in=6, n_hid=5, n_out=3, n_layers=3, **kw)
    params = init_params(jax.random.PRNGKey(0), cfg)
    assert len(params) == 3
    kernels, _ = conv_hierarchy(cfg)
    for i, layer in enumerate(params[:-1]):
        n_pre = 6 if i == 0 else 5
        assert layer["W"].shape == ((kernels[i], n_pre, 5) if cfg.convolution else (n_pre, 5))
        assert ("W_rec" in layer) == cfg.recurrent and ("norm_scale" in layer) == (cfg.normalizer != "none")
        assert np.shape(layer["alpha"]) == (() if cfg.distrib_tau == "none" else (5,))
        assert np.all((0.1 <= np.asarray(layer["alpha"])) & (np.asarray(layer["alpha"]) <= 0.99))
    assert params[-1]["W"].shape == (5, 3)
    assert float(params[-1]["alpha"]) == pytest.approx(math.exp(-cfg.dt / cfg.tau_out), rel=1e-6)
