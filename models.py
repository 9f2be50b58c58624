"""The hierarchical spiking network as pure functions.

Arrays are time-major inside the model; suffixes name the axes: T time, B batch, I inputs,
H hidden neurons, O outputs, K kernel taps. Every input current is computed for all time
steps at once (one matmul or convolution, then normalisation); only the membrane recursion
runs inside a loop over time (`scan_in_place`), carrying the membrane and the last spike.

Equations (numbered as in docs/model.md; threshold theta):
  current (M1)    I[t] = Norm(x[t] W)
  hidden LIF      V[t] = a V[t-1] + I[t] + S[t-1] W_rec - theta S[t-1],  S[t] = H(V[t] - theta)   (M2, M3)
  output (LI)     U[t] = a_out U[t-1] + (1 - a_out) I[t]                                      (M4)
  with a the per-neuron decay alpha clipped to [1e-5, 0.98] (hidden layers).

The hidden neuron is a model of the registry NEURONS (`--neuron`; the contract: `LIF`): its
parameters with their rules, its initial state and one step function. LIF has a fast path, the
fused layer with a hand-written adjoint (`lif_scan`); every neuron model runs as the plain scan
of its step (`neuron_scan`), differentiated by JAX.
"""

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from utils_initialization import (ALPHA_MAX, ALPHA_MIN, Config, ConfigError, conv_hierarchy, draw_decays, layer_sizes, tau_layers,
                                  uniform, weight_scales)
from utils_normalization import normalize, sum_rows

# `--matmul_precision`: how float32 matrix products and convolutions are computed. "default"
# is JAX's default, which the published code used: exact float32 on CPUs; on NVIDIA GPUs from
# Ampere on, TF32 (inputs rounded to a 10-bit mantissa, float32 accumulation). "highest" asks
# for full float32 on every backend. The batch-norm sums are reductions in the published code
# and stay float32 whatever this says (utils_normalization.sum_rows).
PRECISIONS = {"default": None, "highest": jax.lax.Precision.HIGHEST}


# --- surrogate gradient spike function ---------------------------------------------------
def box_grad(x):
    """dS/dV = 1 where |V - theta| < 0.5, else 0."""
    return (jnp.abs(x) < 0.5).astype(x.dtype)


def fast_sigmoid_grad(x):
    """dS/dV = 1 / (10 |V - theta| + 1)^2."""
    return 1.0 / (10.0 * jnp.abs(x) + 1.0) ** 2


SURROGATES = {"box": box_grad, "fast_sigmoid": fast_sigmoid_grad}


def heaviside(x):
    """S = H(V - theta): a spike where the membrane is strictly above threshold."""
    return (x > 0).astype(x.dtype)


def make_spike_fn(surrogate: str):
    """Heaviside step of x = V - theta in the forward pass, `surrogate` in the backward.
    The layers below apply the same rule inside their hand-written backward passes."""
    grad_fn = SURROGATES[surrogate]
    spike = jax.custom_vjp(heaviside)
    spike.defvjp(lambda x: (heaviside(x), x), lambda x, g: (g * grad_fn(x),))
    return spike


# --- layers ------------------------------------------------------------------------------
def scan_in_place(step, state, xs, reverse=False, unroll=1):
    """lax.scan(step, state, xs) -> (state, ys) for a `step` whose output y[t] has the
    shape of xs[0][t]; y[t] is written over xs[0][t] once that has been read. A scan's
    stacked outputs cost XLA's CPU backend a zero-filled [T, ...] buffer and a copy of it
    per loop; the loop here reuses a buffer that is dead afterwards (the currents, the
    incoming gradient). `unroll`: time steps per iteration of the compiled loop (`--scan_unroll`:
    on a GPU each iteration is a few kernel launches, so more steps per iteration can pay)."""
    buf, rest = xs[0], tuple(xs[1:])
    n = buf.shape[0]

    def body(i, carry):
        state, buf = carry
        t = n - 1 - i if reverse else i
        x = [jax.lax.dynamic_index_in_dim(a, t, keepdims=False, allow_negative_indices=False) for a in (buf, *rest)]
        state, y = step(state, x[0] if not rest else tuple(x))
        return state, jax.lax.dynamic_update_index_in_dim(buf, y, t, 0, allow_negative_indices=False)

    return jax.lax.fori_loop(0, n, body, (state, buf), unroll=unroll)


# --- neurons: the contract, the registry ------------------------------------------------------
class Param(NamedTuple):
    """A trainable parameter of a layer, declared with the rules that apply to it (nothing is
    inferred from its name): its initial value, whether the L2 weight norm covers it, whether
    it is a decay (alpha = exp(-dt / tau): the decay-gradient rule, trained only when the
    Config flag `trained_by` is set and then with its gradient scaled by 0.1, the output
    layer's never), and whether the published decay penalties (alpha_high, alpha_sd) cover it."""
    init: Optional[Callable] = None  # (key, cfg, hidden layer index, neurons) -> value; None: init_params's own
    l2: bool = False
    decay: bool = False
    trained_by: str = ""             # for a decay: the Config field that trains it ("": never trained)
    penalised: bool = False


def membrane_decays(key, cfg: Config, layer: int, n: int):
    """Per-neuron membrane decays of hidden layer `layer` around its time constant of the
    temporal hierarchy (tau_mem, delta_tau, hierarchy_tau; M7, M8)."""
    return draw_decays(key, tau_layers(cfg)[layer], n, cfg)


def adaptation_decays(key, cfg: Config, layer: int, n: int):
    """Per-neuron decays of the threshold adaptation (ALIF) around the adaptation time
    constant of hidden layer `layer`: the same hierarchy shape as the membranes'
    (hierarchy_tau), centred on tau_adapt with spread delta_tau_adapt."""
    return draw_decays(key, tau_layers(cfg, cfg.tau_adapt, cfg.delta_tau_adapt)[layer], n, cfg)


# Parameters of every layer, whatever its neuron: the weights and the normalisation (their
# initialisation is init_params's, which follows the published code's use of keys).
SYNAPSE_PARAMS = {"W": Param(l2=True), "W_rec": Param(l2=True), "norm_scale": Param(l2=True),
                  "norm_bias": Param(l2=True)}
MEMBRANE_DECAY = Param(init=membrane_decays, decay=True, trained_by="train_alpha", penalised=True)


class LIFState(NamedTuple):
    v: jax.Array  # membrane potential [B, H]
    s: jax.Array  # spikes of the previous step [B, H]


class LIF:
    """The paper's hidden neuron (M2, M3): V[t] = a V[t-1] + I[t] - theta S[t-1],
    S[t] = H(V[t] - theta), with a = clip(alpha, 1e-5, 0.98) per neuron.

    The neuron contract, which every entry of NEURONS follows:
      params           {name: Param}: its parameters per hidden layer, with their rules
      init_state(shape) its state before the first step, a NamedTuple with the membrane `v`
      step(state, I, p) one time step: (spikes [B, H], next state) from the input current
                       I [B, H] (the recurrent current included) and the layer's parameters p
    Built from the Config (`neuron_of`); its settings (threshold, surrogate) are its own. A
    model's settings without a Config field of their own are declared in `settings`
    ({name: default}) and set with --neuron_args NAME=VALUE (`neuron_settings`)."""
    params = {"alpha": MEMBRANE_DECAY}
    settings = {}

    def __init__(self, cfg: Config = None, surrogate: str = "box", v_thr: float = 1.0):
        surrogate, v_thr = (cfg.surrogate, cfg.v_thr) if cfg is not None else (surrogate, v_thr)
        self.v_thr, self.spike = float(v_thr), make_spike_fn(surrogate)

    def init_state(self, shape):
        zeros = jnp.zeros(shape, jnp.float32)
        return LIFState(zeros, zeros)

    def step(self, state: LIFState, I_BH, p):
        v = lif_update(state.v, state.s, I_BH, decay(p["alpha"]), self.v_thr)
        s = self.spike(v - self.v_thr)
        return s, LIFState(v, s)


class ALIFState(NamedTuple):
    v: jax.Array  # membrane potential [B, H]
    s: jax.Array  # spikes of the previous step [B, H]
    b: jax.Array  # threshold adaptation [B, H]


class ALIF(LIF):
    """Adaptive LIF (Bellec et al. 2018, LSNN): every spike raises the neuron's threshold,
    which relaxes back with its own time constant tau_adapt:
      b[t] = rho b[t-1] + (1 - rho) S[t-1],   A[t] = theta + beta b[t]
      V[t] = a V[t-1] + I[t] - A[t-1] S[t-1],  S[t] = H(V[t] - A[t])
    with rho = exp(-dt / tau_adapt) per neuron (clipped as a), beta = adapt_beta. With
    beta = 0 it is the LIF neuron. The adaptation decays follow the time-constant hierarchy
    (hierarchy_tau, around tau_adapt with spread delta_tau_adapt) and are trained with
    train_adapt, under the decay-gradient rule."""
    params = {"alpha": MEMBRANE_DECAY, "rho": Param(init=adaptation_decays, decay=True, trained_by="train_adapt")}

    def __init__(self, cfg: Config = None, surrogate: str = "box", v_thr: float = 1.0, beta: float = 1.0):
        super().__init__(cfg, surrogate, v_thr)
        self.beta = float(cfg.adapt_beta if cfg is not None else beta)

    def init_state(self, shape):
        zeros = jnp.zeros(shape, jnp.float32)
        return ALIFState(zeros, zeros, zeros)

    def step(self, state: ALIFState, I_BH, p):
        threshold = self.v_thr + self.beta * state.b                   # A[t-1]
        rho = decay(p["rho"])
        b = rho * state.b + (1.0 - rho) * state.s                      # b[t]
        v = decay(p["alpha"]) * state.v + I_BH - threshold * state.s    # V[t]
        s = self.spike(v - (self.v_thr + self.beta * b))               # H(V[t] - A[t])
        return s, ALIFState(v, s, b)


NEURONS = {"lif": LIF, "alif": ALIF}  # --neuron


def neuron_settings(cfg: Config) -> dict:
    """The settings of `cfg`'s neuron model: its declared defaults, with --neuron_args on top;
    ConfigError for a model that is not registered, a setting it does not declare, or a value
    that is not a number."""
    if cfg.neuron not in NEURONS:
        raise ConfigError("neuron", f"unknown neuron model {cfg.neuron!r}; choose from {', '.join(NEURONS)}")
    values = dict(NEURONS[cfg.neuron].settings)
    for pair in filter(None, (part.strip() for part in cfg.neuron_args.split(","))):
        name, sep, text = (x.strip() for x in pair.partition("="))
        if not sep or name not in values:
            declared = ", ".join(values) or "none"
            raise ConfigError("neuron_args", f"{pair!r}: the {cfg.neuron} neuron's settings are {declared} "
                                             "(NAME=VALUE pairs separated by commas)")
        try:
            values[name] = float(text)
        except ValueError:
            raise ConfigError("neuron_args", f"{pair!r}: {text!r} is not a number") from None
    return values


def neuron_of(cfg: Config):
    """The hidden layers' neuron model of `cfg` (`--neuron`), built from its settings."""
    settings = neuron_settings(cfg)  # an unknown model or setting: one ConfigError line
    neuron = NEURONS[cfg.neuron](cfg)
    neuron.settings = settings
    return neuron


def param_rules(cfg: Config) -> dict:
    """{parameter name: Param} for every parameter a layer of `cfg` can hold: the synapses'
    and normalisation's, the hidden neurons', and the output layer's decay (a membrane decay,
    never trained: the output layer is no hidden layer)."""
    return {**SYNAPSE_PARAMS, "alpha": MEMBRANE_DECAY, **NEURONS[cfg.neuron].params}


def decay(alpha):
    """The decay as the step uses it: alpha clipped to [1e-5, 0.98]."""
    return jnp.clip(alpha, ALPHA_MIN, ALPHA_MAX)


def lif_update(v, s_prev, I_BH, a, v_thr):
    """The LIF membrane's step (M2): a V[t-1] + I[t] - theta S[t-1]."""
    return a * v + I_BH - v_thr * s_prev


def neuron_scan(neuron, I_TBH, p, W_rec=None, precision="default", unroll=1):
    """A hidden layer of any neuron model: a plain lax.scan of its `step`, differentiated by
    JAX through the surrogate spike function; the recurrent current S[t-1] W_rec (diagonal
    masked) is added to the input current. Returns (spikes, membranes), each [T, B, H]."""
    if W_rec is not None:
        W_rec = W_rec * (1.0 - jnp.eye(W_rec.shape[0], dtype=W_rec.dtype))
    p = {k: jnp.broadcast_to(v, I_TBH.shape[-1:]) for k, v in p.items()}
    zeros = jnp.zeros(I_TBH.shape[1:], I_TBH.dtype)

    def body(carry, I_BH):
        state, s_prev = carry
        if W_rec is not None:
            I_BH = I_BH + jnp.dot(s_prev, W_rec, precision=PRECISIONS[precision])
        s, state = neuron.step(state, I_BH, p)
        return (state, s), (s, state.v)

    return jax.lax.scan(body, (neuron.init_state(I_TBH.shape[1:]), zeros), I_TBH, unroll=unroll)[1]


def _lif_inputs(I_TBH, alpha, W_rec):
    """The decays a = clip(alpha, 1e-5, 0.98) per neuron, and W_rec with its diagonal masked."""
    a_H = jnp.broadcast_to(decay(alpha), I_TBH.shape[-1:])
    if W_rec is not None:
        W_rec = W_rec * (1.0 - jnp.eye(W_rec.shape[0], dtype=W_rec.dtype))
    return a_H, W_rec


def lif_scan(I_TBH, alpha, surrogate="box", v_thr=1.0, W_rec=None, precision="default", unroll=1):
    """Leaky integrate-and-fire over time with subtractive reset (M2, M3); returns spikes [T, B, H].

    V[t] = a V[t-1] + I[t] + S[t-1] W_rec - v_thr S[t-1], S[t] = H(V[t] - v_thr), with
    a = clip(alpha, 1e-5, 0.98) and the diagonal of W_rec masked to zero; `precision` of the
    recurrent products (a key of PRECISIONS). The backward pass is hand-written (`_lif_bwd`):
    one reverse loop that stores only the membranes.
    """
    return lif_layer(I_TBH, alpha, surrogate, v_thr, W_rec, precision, unroll)[0]


def lif_layer(I_TBH, alpha, surrogate="box", v_thr=1.0, W_rec=None, precision="default", unroll=1):
    """`lif_scan`'s (spikes, membranes); the membranes carry no gradient (they feed measures)."""
    a_H, W_rec = _lif_inputs(I_TBH, alpha, W_rec)
    return _lif(I_TBH, a_H, W_rec, float(v_thr), surrogate, precision, int(unroll))


def lif_scan_reference(I_TBH, alpha, surrogate="box", v_thr=1.0, W_rec=None, precision="default", unroll=1):
    """`lif_scan`'s layer as the plain scan of the LIF neuron's step (`neuron_scan`),
    differentiated by JAX (`--lif_impl reference`): slower and storing more for the backward
    pass, but what every other neuron model runs; the tests hold the fused layer to it."""
    return neuron_scan(LIF(surrogate=surrogate, v_thr=v_thr), I_TBH, {"alpha": alpha}, W_rec, precision, unroll)[0]


def _lif_forward(I_TBH, a_H, W_rec, v_thr, precision, unroll=1):
    """Returns the membranes V [T, B, H]; the spikes are H(V - v_thr). The loop carries only
    the membrane: S[t-1] = H(V[t-1] - v_thr) is recomputed from it inside the step's one
    kernel (V[-1] = 0 gives S[-1] = 0, as v_thr > 0), one kernel per time step fewer than
    carrying the spikes."""
    def step(v, I_BH):
        s = heaviside(v - v_thr)
        if W_rec is not None:
            I_BH = I_BH + jnp.dot(s, W_rec, precision=PRECISIONS[precision])
        v = lif_update(v, s, I_BH, a_H, v_thr)
        return v, v

    return scan_in_place(step, jnp.zeros(I_TBH.shape[1:], I_TBH.dtype), (I_TBH,), unroll=unroll)[1]


def _lif(I_TBH, a_H, W_rec, v_thr, surrogate, precision, unroll):
    V_TBH = _lif_forward(I_TBH, a_H, W_rec, v_thr, precision, unroll)
    return heaviside(V_TBH - v_thr), V_TBH


def _lif_fwd(I_TBH, a_H, W_rec, v_thr, surrogate, precision, unroll):
    S_TBH, V_TBH = _lif(I_TBH, a_H, W_rec, v_thr, surrogate, precision, unroll)
    return (S_TBH, V_TBH), (V_TBH, S_TBH if W_rec is not None else None, a_H, W_rec)


def _lif_bwd(v_thr, surrogate, precision, unroll, residuals, cotangents):
    """Backpropagation through time as one reverse scan; at step t, with dv = dV[t+1]:
    dS[t] = g[t] - v_thr dv + dv W_rec^T,  dV[t] = dS[t] H'(V[t]) + a dv,
    and da += sum_b dv V[t]. dI = dV; dW_rec = sum_t S[t-1]^T dV[t] outside the scan. The
    membranes, the layer's second output, feed measures only: their cotangent is ignored."""
    V_TBH, S_TBH, a_H, W_rec = residuals
    gS_TBH, _ = cotangents
    grad_fn = SURROGATES[surrogate]

    def step(carry, inputs):
        dv_next = carry
        g_BH, v_BH = inputs
        ds = g_BH - v_thr * dv_next
        if W_rec is not None:
            ds = ds + jnp.dot(dv_next, W_rec.T, precision=PRECISIONS[precision])
        dv = ds * grad_fn(v_BH - v_thr) + a_H * dv_next
        return dv, dv

    _, dV_TBH = scan_in_place(step, jnp.zeros_like(V_TBH[0]), (gS_TBH, V_TBH), reverse=True, unroll=unroll)
    da_H = sum_rows(dV_TBH[1:] * V_TBH[:-1])
    dW = None
    if W_rec is not None:
        h = S_TBH.shape[-1]
        dW = jnp.dot(S_TBH[:-1].reshape(-1, h).T, dV_TBH[1:].reshape(-1, h),
                     precision=PRECISIONS[precision])
    return dV_TBH, da_H, dW


_lif = jax.custom_vjp(_lif, nondiff_argnums=(3, 4, 5, 6))
_lif.defvjp(_lif_fwd, _lif_bwd)


def decay_scan(x_TBH, a_H, unroll=1):
    """Linear recurrence y[t] = a y[t-1] + x[t] (y[-1] = 0)."""
    return _decay_scan(x_TBH, a_H, int(unroll))


def _decay_scan(x_TBH, a_H, unroll):
    def step(y, x):
        y = a_H * y + x
        return y, y

    return scan_in_place(step, jnp.zeros_like(x_TBH[0]), (x_TBH,), unroll=unroll)[1]


def _decay_scan_fwd(x_TBH, a_H, unroll):
    y_TBH = _decay_scan(x_TBH, a_H, unroll)
    return y_TBH, (y_TBH, a_H)


def _decay_scan_bwd(unroll, residuals, g_TBH):
    """dy[t] = g[t] + a dy[t+1], run backwards; da = sum_tb dy[t+1] y[t], accumulated."""
    y_TBH, a_H = residuals

    def step(dy_next, g_BH):
        dy = g_BH + a_H * dy_next
        return dy, dy

    _, dy_TBH = scan_in_place(step, jnp.zeros_like(y_TBH[0]), (g_TBH,), reverse=True, unroll=unroll)
    da_H = sum_rows(dy_TBH[1:] * y_TBH[:-1])
    return dy_TBH, da_H


_decay_scan = jax.custom_vjp(_decay_scan, nondiff_argnums=(2,))
_decay_scan.defvjp(_decay_scan_fwd, _decay_scan_bwd)


def leaky_integrator_scan(I_TBO, alpha, unroll=1):
    """Non-spiking output membrane U[t] = a U[t-1] + (1 - a) I[t] (M4); returns U [T, B, O]."""
    a_O = jnp.broadcast_to(alpha, I_TBO.shape[-1:])
    return decay_scan((1.0 - a_O) * I_TBO, a_O, unroll)


def leaky_integrator_reference(I_TBO, alpha, unroll=1):
    """`leaky_integrator_scan` as a plain lax.scan, differentiated by JAX."""
    a_O = jnp.broadcast_to(alpha, I_TBO.shape[-1:])

    def step(u, I_BO):
        u = a_O * u + (1.0 - a_O) * I_BO
        return u, u

    return jax.lax.scan(step, jnp.zeros_like(I_TBO[0]), I_TBO, unroll=unroll)[1]


# --lif_impl: the LIF and output layers' loops with hand-written backward passes, or
# differentiated by JAX (hidden layers of another neuron model always take the latter)
LAYERS = {"fused": (lif_scan, leaky_integrator_scan), "reference": (lif_scan_reference, leaky_integrator_reference)}


def causal_conv(x_TBI, W_KIO, dilation, precision=None):
    """Causal dilated temporal convolution: y[t] = sum_j x[t - (K-1-j) d] W[j]."""
    k = W_KIO.shape[0]
    return jax.lax.conv_general_dilated(
        x_TBI, W_KIO, window_strides=(1,), padding=[((k - 1) * dilation, 0)],
        rhs_dilation=(dilation,), dimension_numbers=("WNC", "WIO", "WNC"),
        precision=precision, preferred_element_type=jnp.float32)


def input_current(layer, x_TBI, cfg: Config, dilation=None):
    """Norm(x W) for every time step at once (M1; dense or convolutional), float32 products at
    `cfg.matmul_precision`. With `matmul_dtype` bfloat16 the matmul's inputs are rounded to
    bfloat16 and it accumulates in float32; the currents, membranes and parameters stay
    float32."""
    W, precision = layer["W"], PRECISIONS[cfg.matmul_precision]
    if cfg.matmul_dtype != "float32":
        x_TBI, W, precision = x_TBI.astype(cfg.matmul_dtype), W.astype(cfg.matmul_dtype), None
    if W.ndim == 3:
        I = causal_conv(x_TBI, W, dilation, precision)
    else:  # one 2-D matmul over all (time, batch) rows
        I = jnp.matmul(x_TBI.reshape(-1, x_TBI.shape[-1]), W, precision=precision,
                       preferred_element_type=jnp.float32)
        I = I.reshape(*x_TBI.shape[:-1], -1)
    return normalize(I, layer, cfg.normalizer)  # float32: preferred_element_type


def mix32(x):
    """lowbias32 (C. Wellons' search for 32-bit integer hashes): a bijection of uint32 whose
    output bits each flip with probability 0.5 when any input bit flips."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def dropout_bits(key, shape):
    """Uniform 16-bit draws (as uint32), one per element of `shape`, from a counter-based
    hash: word j = mix32(mix32(j + k0) ^ k1), with (k0, k1) the two words of `key`, gives
    element 2j its low 16 bits and element 2j + 1 its high 16 bits. The keys come from JAX's
    generator (one per layer, batch, epoch and seed); the elements cost a few integer
    operations each, computed in the loop that applies the mask, where threefry spent its
    rounds on every word."""
    k = jax.random.key_data(key).reshape(-1)  # a typed or a raw uint32 key
    element = jnp.arange(math.prod(shape), dtype=jnp.uint32)
    word = mix32(mix32((element >> 1) + k[0]) ^ k[1])
    return ((word >> ((element & 1) << 4)) & jnp.uint32(0xFFFF)).reshape(shape)


def dropout(key, S_TBH, rate):
    """Inverted dropout on hidden spikes (training only): each spike is kept when its 16-bit
    draw (`dropout_bits`) is at least round(rate * 65536), i.e. with probability 1 - rate to
    1/65536, and scaled by 1 / (1 - rate)."""
    keep = dropout_bits(key, S_TBH.shape) >= min(round(rate * 65536), 65535)
    return jnp.where(keep, S_TBH / (1.0 - rate), 0.0)


def shift_channels(x_BTC, shift, up_B):
    """The frequency shift of a batch inside the program (utils_dataset.FrequencyShift.apply,
    for data held on the device): every sample's channels moved by `shift`, up (to higher
    indices) where `up_B`, else down, zeros shifted in."""
    n = x_BTC.shape[-1]
    c = jnp.arange(n)
    source = jnp.where(up_B[:, None], c - shift, c + shift)  # [B, C]: where each channel comes from
    inside = (source >= 0) & (source < n)
    moved = jnp.take_along_axis(x_BTC, jnp.clip(source, 0, n - 1)[:, None, :], axis=2)
    return jnp.where(inside[:, None, :], moved, jnp.zeros((), x_BTC.dtype))


# --- parameters ---------------------------------------------------------------------------
def init_params(key, cfg: Config) -> list:
    """One dict per layer: W (dense [n_pre, n_post] or conv [k, n_pre, n_post]), optional
    W_rec, norm_scale and norm_bias, and the hidden neuron's parameters (`Param.init` of each
    entry of its `params`: LIF's alpha); the output layer's alpha = exp(-dt / tau_out). The
    last dict is the output layer.

    `published`: the published initialiser's keys. `key` is split into n_layers keys; the
    first is unused and hidden layer l draws its time constants, W and W_rec all from key
    l + 1 (so W_rec equals W in hidden layers after the first, where the shapes and bounds
    agree), and the output layer reuses the last hidden layer's key; a neuron's parameters
    after its first draw from that key folded with their position. `fan_in`: every array
    from a key of its own."""
    sizes, scales = layer_sizes(cfg), weight_scales(cfg)
    kernels, _ = conv_hierarchy(cfg)
    neuron_params = NEURONS[cfg.neuron].params
    keys = jax.random.split(key, cfg.n_layers)[1:]
    params = []
    for i in range(cfg.n_layers):
        k_layer = keys[min(i, len(keys) - 1)]
        k_w, k_rec, k_tau = (k_layer,) * 3 if cfg.weight_init == "published" else jax.random.split(k_layer, 3)
        n_pre, n_post = sizes[i], sizes[i + 1]
        s_w, s_rec = scales[i]
        hidden = i < cfg.n_layers - 1
        if hidden and cfg.convolution:
            bound = s_w / jnp.float32(0.5 * np.sqrt(kernels[i]))
            layer = {"W": uniform(k_w, (kernels[i], n_pre, n_post), bound)}
        else:
            layer = {"W": uniform(k_w, (n_pre, n_post), s_w)}
        if hidden and cfg.recurrent:
            layer["W_rec"] = uniform(k_rec, (n_post, n_post), s_rec)
        if hidden:
            for j, (name, param) in enumerate(neuron_params.items()):
                layer[name] = param.init(k_tau if j == 0 else jax.random.fold_in(k_tau, j), cfg, i, n_post)
        else:
            layer["alpha"] = jnp.exp(jnp.float32(-cfg.dt / cfg.tau_out))
        if cfg.normalizer != "none":
            layer["norm_scale"] = jnp.ones(n_post, jnp.float32)
            layer["norm_bias"] = jnp.zeros(n_post, jnp.float32)
        params.append(layer)
    return params


# --- network -----------------------------------------------------------------------------
class LayerTrace(NamedTuple):
    """What a hidden layer did on a batch, for the loss and the measures."""
    spikes: jax.Array     # S [T, B, H]
    passed: jax.Array     # the spikes as the next layer receives them: after dropout when training
    membranes: jax.Array  # V [T, B, H] (no gradient flows through them from the fused layer)


def hidden_layer(layer, I_TBH, cfg: Config):
    """(spikes, membranes) of a hidden layer: for the LIF neuron with `--lif_impl fused` the
    fused layer with its hand-written adjoint (the fast path), for any other neuron model (or
    `--lif_impl reference`) the plain scan of its step (`neuron_scan`)."""
    if cfg.neuron == "lif" and cfg.lif_impl == "fused":
        return lif_layer(I_TBH, layer["alpha"], cfg.surrogate, cfg.v_thr, layer.get("W_rec"), cfg.matmul_precision,
                         cfg.scan_unroll)
    neuron = neuron_of(cfg)
    return neuron_scan(neuron, I_TBH, {k: layer[k] for k in neuron.params}, layer.get("W_rec"), cfg.matmul_precision,
                       cfg.scan_unroll)


def forward_trace(params, x_TBI, cfg: Config, key=None, train=False):
    """Whole network: ([LayerTrace per hidden layer], output trace [T, B, O]): the output
    membrane U (a leaky integrator), or the output spikes for the `freq` decoder."""
    _, dilations = conv_hierarchy(cfg)
    lif, leaky_integrator = LAYERS[cfg.lif_impl]
    use_dropout = train and cfg.dropout > 0
    keys = jax.random.split(key, len(params)) if use_dropout else [None] * len(params)
    hidden, h_TBX = [], x_TBI
    for i, layer in enumerate(params[:-1]):
        I_TBH = input_current(layer, h_TBX, cfg, dilations[i] if cfg.convolution else None)
        S_TBH, V_TBH = hidden_layer(layer, I_TBH, cfg)
        h_TBX = dropout(keys[i], S_TBH, cfg.dropout) if use_dropout else S_TBH
        hidden.append(LayerTrace(S_TBH, h_TBX, V_TBH))
    out = params[-1]
    I_TBO = input_current(out, h_TBX, cfg)
    if cfg.decoder == "freq":  # spiking output layer (LIF, whatever the hidden neuron)
        return hidden, lif(I_TBO, out["alpha"], cfg.surrogate, cfg.v_thr, precision=cfg.matmul_precision,
                           unroll=cfg.scan_unroll)
    return hidden, leaky_integrator(I_TBO, out["alpha"], cfg.scan_unroll)


def forward(params, x_TBI, cfg: Config, key=None, train=False):
    """Whole network. Returns (hidden spikes [T, B, H] per hidden layer as the next layer
    receives them, i.e. after dropout when training, as the published code collects them for
    its firing-rate loss; output trace [T, B, O]): `forward_trace` without the rest."""
    hidden, out_TBO = forward_trace(params, x_TBI, cfg, key, train)
    return [h.passed for h in hidden], out_TBO


def decode(out_TBO, decoder: str):
    """Class probabilities: [B, O], or [B, T, O] for `vmem_time`."""
    softmax = jax.nn.softmax
    if decoder == "cum":
        return softmax(softmax(out_TBO, axis=-1).sum(0), axis=-1)
    if decoder == "sum":
        return softmax(out_TBO.mean(0), axis=-1)
    if decoder == "vmax":
        return softmax(out_TBO.max(0), axis=-1)
    if decoder == "vlast":
        return softmax(out_TBO[-1], axis=-1)
    if decoder == "freq":
        return softmax(out_TBO.sum(0), axis=-1)
    if decoder == "vmem_time":
        return softmax(out_TBO, axis=-1).transpose(1, 0, 2)
    raise ValueError(f"unknown decoder {decoder!r}")
