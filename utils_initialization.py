"""Hyper-parameters, per-task presets, the temporal hierarchy and parameter initialisation.

Everything a run depends on lives in one frozen `Config`. Presets are plain data applied
in the order: `Config` defaults -> task preset -> convolutional preset (if `convolution`)
-> explicit overrides (command line or sweep). Derived values (`dt`, decay factors, weight
scales, per-layer time constants, kernel sizes and dilations) are computed here and only
here.

Paper notation: tau = membrane time constant, alpha = exp(-dt / tau) = per-step decay,
Delta tau = `delta_tau`, the spread of time constants across the hidden layers.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

DATASETS = ("mts_xor", "shd", "ssc", "mnist", "s-mnist", "ps-mnist")
CHOICES = {
    "dataset_name": DATASETS,
    "hierarchy_tau": ("none", "tanh", "linear"),
    "hierarchy_conv": ("none", "kernel", "dilation", "both"),
    "distrib_tau": ("none", "uniform", "normal"),
    "surrogate": ("box", "fast_sigmoid"),
    "normalizer": ("batch", "layer", "none"),
    "decoder": ("cum", "sum", "vmax", "vlast", "freq", "vmem_time"),
    "weight_init": ("published", "fan_in"),
    "optimizer": ("published_adam", "adam"),
    "matmul_dtype": ("float32", "bfloat16"),
}


@dataclass(frozen=True)
class Config:
    # --- architecture ---------------------------------------------------------------
    n_in: int = 700              # input channels (SHD/SSC: 700 cochlea channels)
    n_hid: int = 128             # neurons per hidden layer
    n_layers: int = 3            # layers *including* the output layer: n_layers-1 hidden
    n_out: int = 20              # classes
    recurrent: bool = False      # recurrent weights W_rec inside every hidden layer
    convolution: bool = False    # causal dilated temporal convolutions instead of dense
    conv_kernel: int = 5         # k, kernel size in time steps (centre of the hierarchy)
    conv_dilation: int = 5       # d, dilation in time steps (centre of the hierarchy)
    hierarchy_conv: str = "none"  # which of kernel/dilation grow with depth
    delta_ker: float = 0.0       # Delta k, spread of kernel sizes across hidden layers
    delta_dil: float = 0.0       # Delta d, spread of dilations across hidden layers
    # --- neurons --------------------------------------------------------------------
    tau_mem: float = 0.1         # tau_mem [s], centre of the hidden time constants
    tau_out: float = 0.2         # tau_out [s], leaky-integrator output time constant
    delta_tau: float = 0.075     # Delta tau [s], deep minus shallow time constant
    hierarchy_tau: str = "none"  # shape of tau across layers (Fig. 2)
    tanh_coef: float = 0.5       # steepness of the tanh hierarchy (Fig. S2e)
    tanh_center: float = 0.5     # centre of the tanh hierarchy, in [0, 1] of depth
    distrib_tau: str = "uniform"  # per-neuron spread of tau around the layer's value
    distrib_tau_sd: float = 0.2  # relative spread (uniform: +-sd, normal: sd)
    v_thr: float = 1.0           # theta, firing threshold
    surrogate: str = "box"       # surrogate derivative of the Heaviside spike function
    train_alpha: bool = False    # learn the per-neuron decays alpha (Fig. 3)
    # --- data -----------------------------------------------------------------------
    dataset_name: str = "shd"
    nb_steps: int = 100          # T, time bins per sample
    time_max: float = 1.4        # [s] of each recording that is binned
    timestep: Optional[float] = None  # dt [s] of the neurons; None -> time_max / nb_steps
    noise_rate: float = 0.01     # MTS-XOR background spike probability per step
    freq_shift: int = 0          # SHD/SSC channel-shift augmentation (mean shift)
    use_test_as_valid: bool = False  # model selection on the test set (paper Table 1)
    data_dir: str = "datasets"   # where downloaded data sets live
    # --- training -------------------------------------------------------------------
    seed: int = 0
    n_epochs: int = 5
    batch_size: int = 256
    lr: float = 0.01             # Adam learning rate before decay
    lr_start_decay: int = 25     # [epochs] constant learning rate until this epoch
    lr_decay: float = 0.5        # multiplicative decay ...
    lr_decay_every: int = 5      # ... every this many epochs
    optimizer: str = "published_adam"  # Adam with the published epoch-indexed bias correction
    dropout: float = 0.0         # dropout rate on hidden spikes (training only)
    l2_lambda: float = 0.0       # weight of ||weights||_2 (not squared)
    l2_alpha_sd: float = 0.01    # weight of ||alpha_l - mean(alpha_l)||_2
    freq_lambda: float = 0.0     # weight of the firing-rate regulariser
    target_fr: float = 0.1       # target spikes per neuron per sample for freq_lambda
    normalizer: str = "batch"    # normalisation of every layer's input current
    decoder: str = "cum"         # readout of the output membrane
    weight_init: str = "published"  # weight scale rule (see README)
    matmul_dtype: str = "float32"  # inputs of the input-current matmuls (state stays float32)

    def __post_init__(self):
        validate(self)

    # --- derived values (one place) -------------------------------------------------
    @property
    def dt(self) -> float:
        """Neuron time step [s]."""
        return self.timestep if self.timestep is not None else self.time_max / self.nb_steps

    @property
    def n_hidden_layers(self) -> int:
        return self.n_layers - 1

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}

# Task presets: the published main.py's per-dataset settings, as data.
PRESETS = {
    "mts_xor": dict(n_in=40, n_out=2, n_hid=10, n_layers=3, decoder="vmem_time", time_max=1.0,
                    nb_steps=100, tau_mem=0.3, tau_out=0.05, distrib_tau="normal",
                    distrib_tau_sd=0.1, batch_size=512),
    "shd": dict(n_in=700, n_out=20, nb_steps=100, time_max=1.4),
    "ssc": dict(n_in=700, n_out=35, nb_steps=100, time_max=1.4),
    # latency-coded MNIST: 50 steps of 20 ms, tau_mem = 3 steps (the Fig. 5b/5c sweeps fix
    # the same values, with batch 256)
    "mnist": dict(n_in=784, n_out=10, n_hid=128, n_layers=4, nb_steps=50, time_max=1.0,
                  tau_mem=0.06, tau_out=0.2, distrib_tau="normal", distrib_tau_sd=0.1),
    # sequential MNIST: 784 steps of 1/784 s, tau_mem = 50 steps, tau_out = 200 steps; batch
    # 32 as in the published main.py (the Fig. 6 sweep sets batch 256 explicitly)
    "s-mnist": dict(n_in=1, n_out=10, n_hid=64, n_layers=4, nb_steps=784, time_max=1.0,
                    tau_mem=50 / 784, tau_out=200 / 784, distrib_tau="normal",
                    distrib_tau_sd=0.1, batch_size=32),
}
PRESETS["ps-mnist"] = dict(PRESETS["s-mnist"])
# Sizes fixed by a task's data; any other value is rejected with the flag's name.
TASK_SIZES = {
    "mts_xor": dict(n_in=40, nb_steps=100, n_out=2),
    "mnist": dict(n_in=784, n_out=10),                 # nb_steps is free: the latency code clips
    "s-mnist": dict(n_in=1, nb_steps=784, n_out=10),   # one pixel per step
    "ps-mnist": dict(n_in=1, nb_steps=784, n_out=10),
}
# `--convolution true` on SHD/SSC: the published main.py's hierarchical convolutional net.
# It bins 1.4 s into 200 bins but keeps a 14 ms neuron step (timestep 0.014).
CONV_PRESET = dict(nb_steps=200, timestep=0.014, freq_shift=10, hierarchy_conv="both",
                   conv_kernel=5, delta_ker=3, conv_dilation=3, delta_dil=2, dropout=0.4,
                   l2_lambda=1e-4, tau_mem=0.015, use_test_as_valid=True)


def make_config(dataset_name: str = "shd", **overrides) -> Config:
    """Defaults -> task preset -> conv preset (if convolution) -> overrides."""
    if dataset_name not in DATASETS:
        raise ConfigError("dataset_name", f"unknown data set {dataset_name!r}; choose from "
                          + ", ".join(DATASETS))
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ConfigError(unknown[0], "is not a configuration field")
    values = dict(PRESETS[dataset_name])
    if overrides.get("convolution") and dataset_name in ("shd", "ssc"):
        values.update(CONV_PRESET)
    values.update(overrides)
    values["dataset_name"] = dataset_name
    return Config(**values)


class ConfigError(ValueError):
    """An invalid hyper-parameter; `field` names the offending flag."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"--{field}: {message}")


def validate(cfg: Config) -> None:
    def need(ok, field, message):
        if not ok:
            raise ConfigError(field, f"{message} (got {getattr(cfg, field)!r})")

    for field, options in CHOICES.items():
        need(getattr(cfg, field) in options, field, "must be one of " + ", ".join(options))
    for field in ("n_in", "n_hid", "n_out", "nb_steps", "batch_size", "conv_kernel",
                  "conv_dilation", "lr_decay_every"):
        need(getattr(cfg, field) >= 1, field, "must be >= 1")
    need(cfg.n_layers >= 2, "n_layers", "must be >= 2 (it counts the output layer)")
    need(cfg.n_epochs >= 1, "n_epochs", "must be >= 1")
    for field in ("tau_mem", "tau_out", "time_max", "lr", "v_thr", "tanh_coef"):
        need(getattr(cfg, field) > 0, field, "must be > 0")
    need(cfg.timestep is None or cfg.timestep > 0, "timestep", "must be > 0")
    need(0 <= cfg.dropout < 1, "dropout", "must be in [0, 1)")
    need(0 <= cfg.noise_rate <= 1, "noise_rate", "must be a probability in [0, 1]")
    need(0 < cfg.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
    need(cfg.distrib_tau_sd >= 0, "distrib_tau_sd", "must be >= 0")
    for field in ("l2_lambda", "l2_alpha_sd", "freq_lambda", "lr_start_decay", "freq_shift"):
        need(getattr(cfg, field) >= 0, field, "must be >= 0")
    need(cfg.dataset_name != "mts_xor" or cfg.decoder == "vmem_time", "decoder",
         "mts_xor has a label per time step and needs decoder vmem_time")
    for field, size in TASK_SIZES.get(cfg.dataset_name, {}).items():
        need(getattr(cfg, field) == size, field, f"{cfg.dataset_name} has {field} = {size}")
    if cfg.convolution:
        kernels, dilations = conv_hierarchy(cfg)
        need(min(kernels) >= 1, "delta_ker", "gives a kernel size below 1")
        need(min(dilations) >= 1, "delta_dil", "gives a dilation below 1")


# --- the temporal hierarchy (paper Sec. 2, Fig. 2) ---------------------------------------
def tau_hierarchy(cfg: Config) -> np.ndarray:
    """Centre time constant [s] of each hidden layer, shallow to deep.

    A single hidden layer has no hierarchy: it gets tau_mem (the published tanh formula
    divides 0 by 0 there and returns NaN).
    """
    n = cfg.n_hidden_layers
    if cfg.hierarchy_tau == "none" or n == 1:
        return np.full(n, cfg.tau_mem)
    if cfg.hierarchy_tau == "linear":
        return np.linspace(max(cfg.tau_mem - cfg.delta_tau / 2, 0),
                           max(cfg.tau_mem + cfg.delta_tau / 2, 0), n)
    x = np.linspace(0, 1, n)
    h = np.tanh((x - cfg.tanh_center) / cfg.tanh_coef)
    h_tilde = (h - h.min()) / np.abs(h - h.min()).max() - 0.5
    return cfg.tau_mem + cfg.delta_tau * h_tilde


def conv_hierarchy(cfg: Config) -> tuple:
    """Kernel sizes and dilations [time steps] of the hidden layers (paper Fig. 4)."""
    n = cfg.n_hidden_layers
    k, d = cfg.conv_kernel, cfg.conv_dilation
    dk = cfg.delta_ker if cfg.hierarchy_conv in ("kernel", "both") else 0
    dd = cfg.delta_dil if cfg.hierarchy_conv in ("dilation", "both") else 0
    kernels = np.linspace(max(int(k - dk / 2), 1), max(int(k + dk / 2), 1), n).astype(int)
    if n == 1:
        dilations = [d]
    else:
        dilations = [max(int(d + (l - (n - 1) / 2) * dd / (n - 1)), 0) for l in range(n)]
    return tuple(int(v) for v in kernels), tuple(int(v) for v in dilations)


def weight_scales(cfg: Config) -> list:
    """Bound s_l of the uniform weight initialisation of each layer.

    `published`: the published sweeps built [1/sqrt(700), 1/sqrt(128) x 3] once from the
    code's defaults and used it per layer only when n_layers == 4; any other depth fell back
    to the mean of that list for every layer. `fan_in`: 1/sqrt(n_pre).
    """
    if cfg.weight_init == "fan_in":
        return [1 / math.sqrt(n) for n in layer_sizes(cfg)[:-1]]
    published = [1 / math.sqrt(700)] + [1 / math.sqrt(128)] * 3
    if cfg.n_layers == 4:
        return published
    return [float(np.mean(published))] * cfg.n_layers


def layer_sizes(cfg: Config) -> list:
    """[n_in, n_hid, ..., n_hid, n_out]: n_layers + 1 entries."""
    return [cfg.n_in] + [cfg.n_hid] * cfg.n_hidden_layers + [cfg.n_out]


def alpha_from_tau(tau, dt):
    """alpha = exp(-dt / tau), the per-step decay of a membrane."""
    return np.exp(-dt / np.asarray(tau))


def tau_from_alpha(alpha, dt):
    """Inverse of `alpha_from_tau`: the time constant [s] that a decay stands for."""
    return -dt / np.log(np.asarray(alpha, dtype=np.float64))


def init_params(key, cfg: Config) -> list:
    """One dict per layer: W (dense [n_pre, n_post] or conv [k, n_pre, n_post]), alpha,
    optional W_rec, norm_scale and norm_bias. The last dict is the output layer."""
    sizes, scales = layer_sizes(cfg), weight_scales(cfg)
    kernels, _ = conv_hierarchy(cfg)
    taus = tau_hierarchy(cfg)
    keys = jax.random.split(key, cfg.n_layers)
    params = []
    for l in range(cfg.n_layers):
        k_w, k_rec, k_tau = jax.random.split(keys[l], 3)
        n_pre, n_post, s = sizes[l], sizes[l + 1], scales[l]
        hidden = l < cfg.n_layers - 1
        if hidden and cfg.convolution:
            bound = s / (0.5 * math.sqrt(kernels[l]))
            layer = {"W": _uniform(k_w, (kernels[l], n_pre, n_post), bound)}
        else:
            layer = {"W": _uniform(k_w, (n_pre, n_post), s)}
        if hidden and cfg.recurrent:
            layer["W_rec"] = _uniform(k_rec, (n_post, n_post), s)
        if hidden:
            layer["alpha"] = _hidden_alpha(k_tau, taus[l], n_post, cfg)
        else:
            layer["alpha"] = jnp.asarray(alpha_from_tau(cfg.tau_out, cfg.dt), jnp.float32)
        if cfg.normalizer != "none":
            layer["norm_scale"] = jnp.ones(n_post, jnp.float32)
            layer["norm_bias"] = jnp.zeros(n_post, jnp.float32)
        params.append(layer)
    return params


def _uniform(key, shape, bound):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _hidden_alpha(key, tau_l, n, cfg):
    """Per-neuron decays around the layer's time constant; one shared scalar when
    `distrib_tau` is none (as in the published code)."""
    sd = cfg.distrib_tau_sd
    if cfg.distrib_tau == "uniform":
        tau = jax.random.uniform(key, (n,), jnp.float32, tau_l * (1 - sd), tau_l * (1 + sd))
    elif cfg.distrib_tau == "normal":
        tau = tau_l + sd * tau_l * jax.random.normal(key, (n,), jnp.float32)
    else:
        tau = jnp.asarray(tau_l, jnp.float32)
    tau = jnp.clip(tau, 1e-10, 10.0)
    return jnp.clip(jnp.exp(-cfg.dt / tau), 0.1, 0.99).astype(jnp.float32)
