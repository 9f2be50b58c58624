"""Hyper-parameters, the published protocol as data, the temporal hierarchy and parameter
initialisation.

Everything a run depends on lives in one frozen `Config`. Its defaults are the published
code's `SimArgs()` defaults (but for `SWEEP_BASE`), the base every published sweep started
from: its sweep.py and Figure 3 notebook build each run as `SimArgs()` plus the sweep's values. The published
main.py differs: its own command-line defaults (`MAIN_DEFAULTS`), then a block of settings
per task (`PRESETS`, `CONV_PRESET`). So:

    sweep run     Config defaults -> SWEEP_BASE -> the sweep's 'fixed' -> one grid point
    main.py run   Config defaults -> MAIN_DEFAULTS -> task preset -> conv preset
                  -> the flags given on the command line (`make_config`)

Derived values (`dt`, decay factors, weight scales, per-layer time constants, kernel sizes
and dilations) are computed here and only here. Paper notation: tau = membrane time constant,
alpha = exp(-dt / tau) = per-step decay, Delta tau = `delta_tau`, the spread of time
constants across the hidden layers (paper Sec. 2, Fig. 2).
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

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
    "binning": ("digitize", "uniform"),
    "weight_init": ("published", "fan_in"),
    "optimizer": ("published_adam", "adam"),
    "matmul_dtype": ("float32", "bfloat16"),
    "matmul_precision": ("default", "highest"),
    "lif_impl": ("fused", "reference"),
    "data_placement": ("auto", "device", "host"),
}


def _field(default, help: str, unit: str = "", symbol: str = ""):
    """A Config field with what `--help` says of it: meaning, unit and paper symbol."""
    return dataclasses.field(default=default, metadata=dict(help=help, unit=unit, symbol=symbol))


@dataclass(frozen=True)
class Config:
    """Every hyper-parameter of a run. Defaults: the published `SimArgs()` (see module doc)."""
    # --- architecture ---------------------------------------------------------------------
    n_in: int = _field(700, "input channels (SHD/SSC: 700 cochlea channels)")
    n_hid: int = _field(128, "neurons per hidden layer")
    n_layers: int = _field(3, "layers including the output layer: n_layers - 1 hidden", symbol="L")
    n_out: int = _field(20, "output neurons = classes")
    recurrent: bool = _field(False, "recurrent weights W_rec inside every hidden layer")
    convolution: bool = _field(False, "causal dilated temporal convolutions instead of dense "
                                      "input weights (paper Sec. 4)")
    conv_kernel: int = _field(5, "kernel size, centre of the kernel hierarchy", "time steps", "k")
    conv_dilation: int = _field(5, "dilation, centre of the dilation hierarchy", "time steps", "d")
    hierarchy_conv: str = _field("none", "kernel/both: kernel sizes spread by delta_ker over "
                                         "depth; the dilations follow delta_dil in every case")
    delta_ker: float = _field(0.0, "spread of kernel sizes, deepest minus shallowest", "time steps",
                              "Delta k")
    delta_dil: float = _field(0.0, "spread of dilations, deepest minus shallowest", "time steps",
                              "Delta d")
    # --- neurons ------------------------------------------------------------------------
    tau_mem: float = _field(0.1, "centre of the hidden layers' membrane time constants", "s",
                            "tau_mem")
    tau_out: float = _field(0.2, "time constant of the leaky-integrator output layer", "s", "tau_out")
    delta_tau: float = _field(0.075, "deepest minus shallowest hidden-layer time constant "
                                     "(used by hierarchy_tau tanh/linear)", "s", "Delta tau")
    hierarchy_tau: str = _field("none", "shape of the time constants across depth (Fig. 2)")
    tanh_coef: float = _field(0.5, "steepness of the tanh hierarchy (Fig. S2e)")
    tanh_center: float = _field(0.5, "centre of the tanh hierarchy, as a fraction of depth (Fig. S2e)")
    distrib_tau: str = _field("uniform", "per-neuron spread of tau around its layer's value; "
                                         "none: one shared decay per layer")
    distrib_tau_sd: float = _field(0.2, "relative spread of tau (uniform: +-sd, normal: sd)")
    v_thr: float = _field(1.0, "firing threshold", symbol="theta")
    surrogate: str = _field("box", "surrogate derivative of the spike function")
    train_alpha: bool = _field(False, "train the decays alpha = exp(-dt/tau) (Fig. 3)")
    neuron: str = _field("lif", "hidden neuron model (models.NEURONS): lif, the paper's; alif, "
                                "adaptive threshold (Bellec et al. 2018)")
    neuron_args: str = _field("", "settings of the neuron model that have no flag of their own, as "
                                  "NAME=VALUE pairs separated by commas (models.NEURONS: each model's settings)")
    tau_adapt: float = _field(0.6, "alif: centre of the threshold adaptation's time constants; follows "
                                   "hierarchy_tau like tau_mem", "s", "tau_a")
    delta_tau_adapt: float = _field(0.0, "alif: deepest minus shallowest hidden layer's adaptation time "
                                         "constant (hierarchy_tau tanh/linear)", "s", "Delta tau_a")
    adapt_beta: float = _field(1.0, "alif: threshold increase per unit of adaptation (0: LIF)", symbol="beta")
    train_adapt: bool = _field(False, "alif: train the adaptation decays rho = exp(-dt/tau_a), with the "
                                      "decays' gradient rule")
    # --- data ---------------------------------------------------------------------------
    dataset_name: str = _field("shd", "task")
    nb_steps: int = _field(100, "time bins per sample", "steps", "T")
    time_max: float = _field(1.4, "length of each SHD/SSC recording that is binned", "s")
    timestep: Optional[float] = _field(None, "neuron time step; none: time_max / nb_steps", "s", "dt")
    noise_rate: float = _field(0.01, "MTS-XOR background spike probability", "per step")
    freq_shift: int = _field(0, "SHD/SSC augmentation: mean channel shift per training batch",
                             "channels")
    use_test_as_valid: bool = _field(False, "select the model on the test set (paper Table 1 "
                                            "protocol; training stays on the training split)")
    data_dir: str = _field("datasets", "folder of the downloaded data sets")
    binning: str = _field("digitize", "SHD/SSC spike times to bins: digitize (published: bin 0 "
                                      "empty, spikes at or after time_max dropped) or uniform")
    # --- training -----------------------------------------------------------------------
    seed: int = _field(0, "seed of the initialisation, data order, dropout and data splits")
    n_epochs: int = _field(5, "training epochs", "epochs")
    batch_size: int = _field(256, "samples per batch")
    lr: float = _field(0.01, "Adam learning rate before decay")
    lr_start_decay: int = _field(25, "constant learning rate until this epoch", "epochs")
    lr_decay: float = _field(0.5, "learning-rate factor every lr_decay_every epochs after that")
    lr_decay_every: int = _field(5, "epochs between learning-rate decays", "epochs")
    optimizer: str = _field("published_adam", "published_adam: Adam with the published "
                                              "epoch-indexed bias correction; adam: optax's")
    dropout: float = _field(0.1, "dropout rate on hidden spikes, training only")
    l2_lambda: float = _field(0.0, "weight of ||weights||_2 (not squared) in the loss")
    l2_alpha_sd: float = _field(0.01, "weight of ||alpha_l - mean(alpha_l)||_2 in the loss")
    freq_lambda: float = _field(0.0, "weight of the firing-rate loss (target_fr - rate)^2")
    target_fr: float = _field(12.0, "target of the firing-rate loss", "spikes per neuron per sample")
    normalizer: str = _field("batch", "normalisation of every layer's input current")
    decoder: str = _field("cum", "readout of the output membrane into class probabilities")
    weight_init: str = _field("published", "weight scale rule: published (frozen list, see "
                                           "w_scale_*) or fan_in (1/sqrt(fan-in))")
    w_scale_n_in: int = _field(700, "published init: n_in the weight-scale list was built from")
    w_scale_n_hid: int = _field(128, "published init: n_hid the weight-scale list was built from")
    w_scale_n_layers: int = _field(3, "published init: n_layers the weight-scale list was built from")
    matmul_dtype: str = _field("float32", "inputs of the input-current matmuls; state stays float32")
    lif_impl: str = _field("fused", "the neuron loops' backward pass: fused (hand-written, fast) or reference "
                                    "(a plain lax.scan differentiated by JAX; where a new neuron equation starts)")
    data_placement: str = _field("auto", "where the batches come from: device (the data set held in the "
                                         "device's memory, each batch gathered in the step), host (built "
                                         "on the host and sent every step), auto (device when the data set "
                                         "fits, on the CPU only for large steps such as SHD's); the same "
                                         "numbers either way")
    scan_unroll: int = _field(1, "time steps per iteration of the compiled loops over time (1, the default, is "
                                 "fastest on the CPU; a GPU may gain from 4 or 8; other values agree to float32 "
                                 "rounding, not bitwise)", "steps")
    matmul_precision: str = _field("default", "float32 matmuls and convolutions: default (JAX's, "
                                              "as published: TF32 on NVIDIA GPUs from Ampere on) "
                                              "or highest (full float32 everywhere); CPUs: the same")

    def __post_init__(self):
        validate(self)

    # --- derived values (one place) -----------------------------------------------------
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

# --- the published sweeps' base ---------------------------------------------------------------
# SimArgs() where it differs from Config's defaults: it froze timestep at time_max / nb_steps
# of its defaults (14 ms), so a sweep that changes nb_steps or time_max without setting timestep
# keeps 14 ms steps (the convolutional sweeps bin 1.4 s into 200 bins of 7 ms and step 14 ms).
SWEEP_BASE = dict(timestep=1.4 / 100)

# --- the published main.py as data ------------------------------------------------------------
# main.py's own command-line defaults where they differ from SimArgs().
MAIN_DEFAULTS = dict(n_layers=4, n_epochs=10)
# Its per-task blocks, applied after the command line (here: before it, so that a flag given
# is never silently replaced).
PRESETS = {
    "mts_xor": dict(n_in=40, n_out=2, n_hid=10, decoder="vmem_time", time_max=1.0, timestep=0.01,
                    tau_out=0.05, tau_mem=0.3, distrib_tau_sd=0.1, batch_size=512, noise_rate=0.01),
    "shd": dict(n_out=20),
    "ssc": dict(n_out=35),
    # latency-coded MNIST: 50 steps of 20 ms, tau_mem = 3 steps
    "mnist": dict(nb_steps=50, n_in=784, n_out=10, timestep=1 / 50, tau_mem=3 * (1 / 50)),
    # sequential MNIST: steps of 1/784 s, tau_mem = 50 steps, tau_out = 200 steps. The block's
    # convolution settings have no effect (convolution stays false), as in the published code.
    "s-mnist": dict(nb_steps=784, n_in=1, n_out=10, n_hid=64, timestep=1 / 784,
                    tau_mem=50 * (1 / 784), tau_out=200 * (1 / 784), dropout=0.1, lr=0.01,
                    batch_size=32, hierarchy_conv="kernel", conv_kernel=3, delta_ker=0,
                    conv_dilation=10, delta_dil=0),
}
PRESETS["ps-mnist"] = dict(PRESETS["s-mnist"])
# `--convolution true` on SHD/SSC: the hierarchical convolutional network. It bins 1.4 s into
# 200 bins but keeps SimArgs' 14 ms neuron step (timestep 0.014), as the published code did.
CONV_PRESET = dict(nb_steps=200, timestep=1.4 / 100, freq_shift=10, use_test_as_valid=True,
                   hierarchy_conv="kernel", conv_kernel=5, delta_ker=3, conv_dilation=3,
                   delta_dil=2, dropout=0.4, l2_lambda=1e-4, tau_mem=0.015)
# Sizes fixed by a task's data; any other value is rejected with the flag's name.
TASK_SIZES = {
    "mts_xor": dict(n_in=40, nb_steps=100, n_out=2),
    "mnist": dict(n_in=784, n_out=10),                 # nb_steps is free: the latency code clips
    "s-mnist": dict(n_in=1, nb_steps=784, n_out=10),   # one pixel per step
    "ps-mnist": dict(n_in=1, nb_steps=784, n_out=10),
}
# The published main.py built its weight-scale list from these command-line values, before
# its task block changed them.
W_SCALE_FROM = dict(w_scale_n_in="n_in", w_scale_n_hid="n_hid", w_scale_n_layers="n_layers")


def make_config(dataset_name: str = "shd", **overrides) -> Config:
    """What the published main.py trains for `--dataset_name` and the flags in `overrides`:
    Config defaults -> MAIN_DEFAULTS -> task preset -> conv preset (if convolution) ->
    overrides. Weight scales are frozen at the command line's n_in / n_hid / n_layers."""
    if dataset_name not in DATASETS:
        raise ConfigError("dataset_name", f"unknown data set {dataset_name!r}; choose from "
                          + ", ".join(DATASETS))
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ConfigError(unknown[0], "is not a configuration field")
    command_line = {**MAIN_DEFAULTS, **overrides}
    values = dict(MAIN_DEFAULTS, **PRESETS[dataset_name])
    values.update({k: command_line.get(v, FIELDS[v].default) for k, v in W_SCALE_FROM.items()})
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


def _type_error(field: dataclasses.Field, value) -> Optional[str]:
    """What is wrong with the type of `value` for `field`, else None (JSON's 3 for 3.0 is a
    float; a float must be finite)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if field.type is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if field.type is int:
        return None if number and isinstance(value, int) else "must be a whole number"
    if field.type is str:
        return None if isinstance(value, str) else "must be text"
    if value is None and field.default is None:  # Optional[float]: timestep
        return None
    if not number:
        return "must be a number"
    return None if math.isfinite(value) else "must be a finite number"


def validate(cfg: Config) -> None:
    def need(ok, field, message):
        if not ok:
            raise ConfigError(field, f"{message} (got {getattr(cfg, field)!r})")

    for name, field in FIELDS.items():
        problem = _type_error(field, getattr(cfg, name))
        need(problem is None, name, problem)
    for field, options in CHOICES.items():
        need(getattr(cfg, field) in options, field, "must be one of " + ", ".join(options))
    for field in ("n_in", "n_hid", "n_out", "nb_steps", "batch_size", "conv_kernel",
                  "conv_dilation", "lr_decay_every", "w_scale_n_in", "w_scale_n_hid",
                  "w_scale_n_layers", "scan_unroll"):
        need(getattr(cfg, field) >= 1, field, "must be >= 1")
    need(cfg.n_layers >= 2, "n_layers", "must be >= 2 (it counts the output layer)")
    need(cfg.n_epochs >= 1, "n_epochs", "must be >= 1")
    need(0 <= cfg.seed < 2 ** 32, "seed", "must be in 0 .. 2**32 - 1")
    for field in ("tau_mem", "tau_out", "time_max", "lr", "v_thr", "tanh_coef", "tau_adapt"):
        need(getattr(cfg, field) > 0, field, "must be > 0")
    need(cfg.timestep is None or cfg.timestep > 0, "timestep", "must be > 0")
    need(0 <= cfg.dropout < 1, "dropout", "must be in [0, 1)")
    need(0 <= cfg.noise_rate <= 1, "noise_rate", "must be a probability in [0, 1]")
    need(0 < cfg.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
    need(cfg.distrib_tau_sd >= 0, "distrib_tau_sd", "must be >= 0")
    for field in ("l2_lambda", "l2_alpha_sd", "freq_lambda", "lr_start_decay", "freq_shift", "adapt_beta"):
        need(getattr(cfg, field) >= 0, field, "must be >= 0")
    need(cfg.dataset_name != "mts_xor" or cfg.decoder == "vmem_time", "decoder",
         "mts_xor has a label per time step and needs decoder vmem_time")
    for field, size in TASK_SIZES.get(cfg.dataset_name, {}).items():
        need(getattr(cfg, field) == size, field, f"{cfg.dataset_name} has {field} = {size}")
    if cfg.hierarchy_tau == "tanh":
        taus = tau_hierarchy(cfg)
        i = int(np.argmin(taus))
        need(taus[i] > 0, "delta_tau", f"with --tau_mem {cfg.tau_mem} the tanh hierarchy gives hidden layer "
             f"{i + 1} a time constant of {taus[i]:.3g} s, which no neuron can have; keep |delta_tau| "
             f"below 2 x tau_mem = {2 * cfg.tau_mem:.3g}")
    if cfg.convolution:
        kernels, dilations = conv_hierarchy(cfg)
        need(min(kernels) >= 1, "delta_ker", "gives a kernel size below 1")
        need(min(dilations) >= 1, "delta_dil", "gives a dilation below 1")


# --- the temporal hierarchy (paper Sec. 2, Fig. 2) ---------------------------------------
def tau_hierarchy(cfg: Config, centre: Optional[float] = None, spread: Optional[float] = None) -> np.ndarray:
    """Centre time constant [s] of each hidden layer, shallow to deep (M7 linear, M8 tanh),
    of the membranes (tau_mem, delta_tau), or of another time constant that follows the same
    hierarchy shape (`centre`, `spread`: ALIF's tau_adapt, delta_tau_adapt).

    With a single hidden layer the linear hierarchy gives its first value,
    max(tau_mem - delta_tau / 2, 0), as the published code does; the tanh hierarchy gives
    tau_mem (the published tanh formula divides 0 by 0 there and returns NaN).
    """
    n = cfg.n_hidden_layers
    tau = cfg.tau_mem if centre is None else centre
    delta = cfg.delta_tau if spread is None else spread
    if cfg.hierarchy_tau == "none":
        return np.full(n, tau)
    if cfg.hierarchy_tau == "linear":
        return np.linspace(max(tau - delta / 2, 0), max(tau + delta / 2, 0), n)
    if n == 1:
        return np.full(n, tau)
    x = np.linspace(0, 1, n)
    h = np.tanh((x - cfg.tanh_center) / cfg.tanh_coef)
    h_tilde = (h - h.min()) / np.abs(h - h.min()).max() - 0.5
    return tau + delta * h_tilde


def hierarchy_notes(cfg: Config) -> list:
    """What the published hierarchy does to the settings silently, in words, for the run to
    print: the linear hierarchy clips time constants below 0 s to 0 (the decay then becomes
    0.1, the smallest the initialiser allows)."""
    if cfg.hierarchy_tau != "linear" or cfg.tau_mem - abs(cfg.delta_tau) / 2 >= 0:
        return []
    taus = tau_hierarchy(cfg)
    clipped = [i + 1 for i, t in enumerate(taus) if t <= 0]
    raw = cfg.tau_mem - abs(cfg.delta_tau) / 2
    return [f"note: the linear hierarchy (--tau_mem {cfg.tau_mem}, --delta_tau {cfg.delta_tau}) would give "
            f"a time constant of {raw:.3g} s; as in the published code it is clipped to 0 s, in hidden "
            f"layer{'s' * (len(clipped) > 1)} {', '.join(map(str, clipped))} (decay 0.1 per step)"]


def conv_hierarchy(cfg: Config) -> tuple:
    """Kernel sizes (M9) and dilations (M10) [time steps] of the hidden layers (paper Fig. 4).

    As in the published code, `hierarchy_conv` kernel/both spreads the kernel sizes by
    `delta_ker`, and the dilations are spread by `delta_dil` whatever `hierarchy_conv` says
    (so 'dilation' and 'none' give equal kernels, and 'kernel' with a nonzero delta_dil
    spreads both, as the published Table 1 network did)."""
    n = cfg.n_hidden_layers
    k, d = cfg.conv_kernel, cfg.conv_dilation
    if cfg.hierarchy_conv in ("kernel", "both"):
        kernels = np.linspace(max(int(k - cfg.delta_ker / 2), 1), max(int(k + cfg.delta_ker / 2), 1),
                              n).astype(int)
    else:
        kernels = np.full(n, k)
    if n == 1:
        dilations = [d]
    else:
        dilations = [max(int(d + (i - (n - 1) / 2) * cfg.delta_dil / (n - 1)), 0) for i in range(n)]
    return tuple(int(v) for v in kernels), tuple(int(v) for v in dilations)


def layer_sizes(cfg: Config) -> list:
    """[n_in, n_hid, ..., n_hid, n_out]: n_layers + 1 entries."""
    return [cfg.n_in] + [cfg.n_hid] * cfg.n_hidden_layers + [cfg.n_out]


# the decay a = alpha is clipped to [ALPHA_MIN, ALPHA_MAX] inside the LIF step (models.lif_scan)
ALPHA_MIN, ALPHA_MAX = 1e-5, 0.98


def tau_from_alpha(alpha, dt):
    """The time constant [s] that a decay stands for as the model uses it: alpha clipped to
    [ALPHA_MIN, ALPHA_MAX] (as in the LIF step), then alpha = exp(-dt / tau)."""
    return -dt / np.log(np.asarray(np.clip(np.asarray(alpha), ALPHA_MIN, ALPHA_MAX), dtype=np.float64))


# --- initialisation rules (models.init_params applies them) -------------------------------------
# JAX is imported by the functions that draw parameters, not at the top: the configuration,
# the hierarchies and the decay conversions serve figures and reports, which need no JAX.
def weight_scales(cfg: Config) -> list:
    """Bounds (s_W, s_Wrec) of the uniform initialisation of each layer's W and W_rec.

    `published`: the published code built the list [1/sqrt(n_in), 1/sqrt(n_hid) x n_layers]
    once, from the sizes its settings object was constructed with (w_scale_*: 700 / 128 / 3
    in sweeps; the command-line values in main.py), and reshaped it per layer: used per layer
    when it has n_layers entries, else replaced by its mean for every layer (recurrent runs:
    (W, W_rec) pairs by the same rule). `fan_in`: 1/sqrt(fan-in) of each weight."""
    import jax.numpy as jnp
    n_layers = cfg.n_layers
    if cfg.weight_init == "fan_in":
        sizes = layer_sizes(cfg)
        return [(1 / math.sqrt(sizes[i]), 1 / math.sqrt(sizes[i + 1])) for i in range(n_layers)]
    w = jnp.asarray([1 / np.sqrt(float(cfg.w_scale_n_in))]
                    + [1 / np.sqrt(float(cfg.w_scale_n_hid))] * cfg.w_scale_n_layers, jnp.float32)
    n = len(w)
    if not cfg.recurrent:
        per_layer = w if n == n_layers else jnp.full(n_layers, jnp.mean(w))
        return [(s, s) for s in per_layer]
    if n == n_layers:
        pairs = jnp.stack([w, w]).T
    elif n == 2 * n_layers:
        pairs = w.reshape(2, n_layers).T
    elif n == 2:
        pairs = jnp.tile(w, (n_layers, 1))
    else:
        pairs = jnp.full((n_layers, 2), jnp.mean(w))
    return [(p[0], p[1]) for p in pairs]


def uniform(key, shape, bound):
    import jax
    return jax.random.uniform(key, shape, "float32", -bound, bound)


def tau_layers(cfg: Config, centre: Optional[float] = None, spread: Optional[float] = None):
    """`tau_hierarchy` in the number types of the published initialiser (float32 for linear
    and none, float64 for tanh), so that the drawn time constants round alike."""
    import jax.numpy as jnp
    taus = tau_hierarchy(cfg, centre, spread)
    if cfg.hierarchy_tau == "linear" and cfg.n_hidden_layers > 1:
        return jnp.linspace(taus[0], taus[-1], cfg.n_hidden_layers)
    if cfg.hierarchy_tau == "tanh" and cfg.n_hidden_layers > 1:
        return taus
    return jnp.ones(cfg.n_hidden_layers) * (cfg.tau_mem if centre is None else centre)


def draw_decays(key, tau_l, n, cfg):
    """Per-neuron decays around the layer's time constant tau_l: tau ~ U[tau_l (1 - sd),
    tau_l (1 + sd)] or N(tau_l, (sd tau_l)^2), clipped to [1e-10, 10] s; one shared scalar
    when `distrib_tau` is none. alpha = exp(-dt / tau) clipped to [0.1, 0.99]."""
    import jax
    import jax.numpy as jnp
    sd = cfg.distrib_tau_sd
    if cfg.distrib_tau == "uniform":
        tau = jax.random.uniform(key, (n,), jnp.float32, tau_l * (1 - sd), tau_l * (1 + sd))
        tau = jnp.clip(tau, 1e-10, 10.0)
    elif cfg.distrib_tau == "normal":
        tau = jax.random.normal(key, (n,), jnp.float32) * sd * tau_l + tau_l
        tau = jnp.clip(tau, 1e-10, 10.0)
    else:
        tau = tau_l
    return jnp.clip(jnp.exp(-cfg.dt / tau), 0.1, 0.99).astype(jnp.float32)
