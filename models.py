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
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from utils_initialization import ALPHA_MAX, ALPHA_MIN, Config, conv_hierarchy
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
def scan_in_place(step, state, xs, reverse=False):
    """lax.scan(step, state, xs) -> (state, ys) for a `step` whose output y[t] has the
    shape of xs[0][t]; y[t] is written over xs[0][t] once that has been read. A scan's
    stacked outputs cost XLA's CPU backend a zero-filled [T, ...] buffer and a copy of it
    per loop; the loop here reuses a buffer that is dead afterwards (the currents, the
    incoming gradient)."""
    buf, rest = xs[0], tuple(xs[1:])
    n = buf.shape[0]

    def body(i, carry):
        state, buf = carry
        t = n - 1 - i if reverse else i
        x = [jax.lax.dynamic_index_in_dim(a, t, keepdims=False) for a in (buf, *rest)]
        state, y = step(state, x[0] if not rest else tuple(x))
        return state, jax.lax.dynamic_update_index_in_dim(buf, y, t, 0)

    return jax.lax.fori_loop(0, n, body, (state, buf))


class LIFState(NamedTuple):
    v: jax.Array  # membrane potential [B, H]
    s: jax.Array  # spikes of the previous step [B, H]


def lif_step(state: LIFState, I_BH, a_H, W_rec, v_thr, spike, precision) -> LIFState:
    """One time step of the hidden LIF neuron (M2, M3): the equation, written once. Both the
    fused layer (`lif_scan`, with its hand-written adjoint) and the reference layer
    (`lif_scan_reference`, differentiated by JAX) run it; `spike` is H(V - v_thr) with its
    surrogate derivative."""
    if W_rec is not None:
        I_BH = I_BH + jnp.dot(state.s, W_rec, precision=PRECISIONS[precision])
    v = a_H * state.v + I_BH - v_thr * state.s
    return LIFState(v, spike(v - v_thr))


def _lif_inputs(I_TBH, alpha, W_rec):
    """The decays a = clip(alpha, 1e-5, 0.98) per neuron, and W_rec with its diagonal masked."""
    a_H = jnp.broadcast_to(jnp.clip(alpha, ALPHA_MIN, ALPHA_MAX), I_TBH.shape[-1:])
    if W_rec is not None:
        W_rec = W_rec * (1.0 - jnp.eye(W_rec.shape[0], dtype=W_rec.dtype))
    return a_H, W_rec


def lif_scan(I_TBH, alpha, surrogate="box", v_thr=1.0, W_rec=None, precision="default"):
    """Leaky integrate-and-fire over time with subtractive reset (M2, M3); returns spikes [T, B, H].

    V[t] = a V[t-1] + I[t] + S[t-1] W_rec - v_thr S[t-1], S[t] = H(V[t] - v_thr), with
    a = clip(alpha, 1e-5, 0.98) and the diagonal of W_rec masked to zero; `precision` of the
    recurrent products (a key of PRECISIONS). The backward pass is hand-written (`_lif_bwd`):
    one reverse loop that stores only the membranes.
    """
    a_H, W_rec = _lif_inputs(I_TBH, alpha, W_rec)
    return _lif(I_TBH, a_H, W_rec, float(v_thr), surrogate, precision)


def lif_scan_reference(I_TBH, alpha, surrogate="box", v_thr=1.0, W_rec=None, precision="default"):
    """`lif_scan`'s layer as a plain lax.scan of `lif_step`, differentiated by JAX through the
    surrogate spike function (`--lif_impl reference`): slower and storing more for the
    backward pass, but the place to try a new neuron equation, since no adjoint needs
    deriving; the tests hold the fused layer to it."""
    a_H, W_rec = _lif_inputs(I_TBH, alpha, W_rec)
    spike = make_spike_fn(surrogate)
    zeros = jnp.zeros(I_TBH.shape[1:], I_TBH.dtype)

    def step(state, I_BH):
        state = lif_step(state, I_BH, a_H, W_rec, float(v_thr), spike, precision)
        return state, state.s

    return jax.lax.scan(step, LIFState(zeros, zeros), I_TBH)[1]


def _lif_forward(I_TBH, a_H, W_rec, v_thr, precision):
    """Returns the membranes V [T, B, H]; the spikes are H(V - v_thr)."""
    def step(state, I_BH):
        state = lif_step(state, I_BH, a_H, W_rec, v_thr, heaviside, precision)
        return state, state.v

    zeros = jnp.zeros(I_TBH.shape[1:], I_TBH.dtype)
    return scan_in_place(step, LIFState(zeros, zeros), (I_TBH,))[1]


def _lif(I_TBH, a_H, W_rec, v_thr, surrogate, precision):
    return heaviside(_lif_forward(I_TBH, a_H, W_rec, v_thr, precision) - v_thr)


def _lif_fwd(I_TBH, a_H, W_rec, v_thr, surrogate, precision):
    V_TBH = _lif_forward(I_TBH, a_H, W_rec, v_thr, precision)
    S_TBH = heaviside(V_TBH - v_thr)
    return S_TBH, (V_TBH, S_TBH if W_rec is not None else None, a_H, W_rec)


def _lif_bwd(v_thr, surrogate, precision, residuals, gS_TBH):
    """Backpropagation through time as one reverse scan; at step t, with dv = dV[t+1]:
    dS[t] = g[t] - v_thr dv + dv W_rec^T,  dV[t] = dS[t] H'(V[t]) + a dv,
    and da += sum_b dv V[t]. dI = dV; dW_rec = sum_t S[t-1]^T dV[t] outside the scan."""
    V_TBH, S_TBH, a_H, W_rec = residuals
    grad_fn = SURROGATES[surrogate]

    def step(carry, inputs):
        dv_next = carry
        g_BH, v_BH = inputs
        ds = g_BH - v_thr * dv_next
        if W_rec is not None:
            ds = ds + jnp.dot(dv_next, W_rec.T, precision=PRECISIONS[precision])
        dv = ds * grad_fn(v_BH - v_thr) + a_H * dv_next
        return dv, dv

    _, dV_TBH = scan_in_place(step, jnp.zeros_like(V_TBH[0]), (gS_TBH, V_TBH), reverse=True)
    da_H = sum_rows(dV_TBH[1:] * V_TBH[:-1])
    dW = None
    if W_rec is not None:
        h = S_TBH.shape[-1]
        dW = jnp.dot(S_TBH[:-1].reshape(-1, h).T, dV_TBH[1:].reshape(-1, h),
                     precision=PRECISIONS[precision])
    return dV_TBH, da_H, dW


_lif = jax.custom_vjp(_lif, nondiff_argnums=(3, 4, 5))
_lif.defvjp(_lif_fwd, _lif_bwd)


@jax.custom_vjp
def decay_scan(x_TBH, a_H):
    """Linear recurrence y[t] = a y[t-1] + x[t] (y[-1] = 0)."""
    def step(y, x):
        y = a_H * y + x
        return y, y

    return scan_in_place(step, jnp.zeros_like(x_TBH[0]), (x_TBH,))[1]


def _decay_scan_fwd(x_TBH, a_H):
    y_TBH = decay_scan(x_TBH, a_H)
    return y_TBH, (y_TBH, a_H)


def _decay_scan_bwd(residuals, g_TBH):
    """dy[t] = g[t] + a dy[t+1], run backwards; da = sum_tb dy[t+1] y[t], accumulated."""
    y_TBH, a_H = residuals

    def step(dy_next, g_BH):
        dy = g_BH + a_H * dy_next
        return dy, dy

    _, dy_TBH = scan_in_place(step, jnp.zeros_like(y_TBH[0]), (g_TBH,), reverse=True)
    da_H = sum_rows(dy_TBH[1:] * y_TBH[:-1])
    return dy_TBH, da_H


decay_scan.defvjp(_decay_scan_fwd, _decay_scan_bwd)


def leaky_integrator_scan(I_TBO, alpha):
    """Non-spiking output membrane U[t] = a U[t-1] + (1 - a) I[t] (M4); returns U [T, B, O]."""
    a_O = jnp.broadcast_to(alpha, I_TBO.shape[-1:])
    return decay_scan((1.0 - a_O) * I_TBO, a_O)


def leaky_integrator_reference(I_TBO, alpha):
    """`leaky_integrator_scan` as a plain lax.scan, differentiated by JAX."""
    a_O = jnp.broadcast_to(alpha, I_TBO.shape[-1:])

    def step(u, I_BO):
        u = a_O * u + (1.0 - a_O) * I_BO
        return u, u

    return jax.lax.scan(step, jnp.zeros_like(I_TBO[0]), I_TBO)[1]


# --lif_impl: the layers' loops with hand-written backward passes, or differentiated by JAX
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


# --- network -----------------------------------------------------------------------------
def forward(params, x_TBI, cfg: Config, key=None, train=False):
    """Whole network. Returns (hidden spikes [T, B, H] per hidden layer as the next layer
    receives them, i.e. after dropout when training, as the published code collects them for
    its firing-rate loss; output trace [T, B, O]): the output membrane U, or the output
    spikes for the `freq` decoder."""
    _, dilations = conv_hierarchy(cfg)
    lif, leaky_integrator = LAYERS[cfg.lif_impl]
    use_dropout = train and cfg.dropout > 0
    keys = jax.random.split(key, len(params)) if use_dropout else [None] * len(params)
    hidden, h_TBX = [], x_TBI
    for i, layer in enumerate(params[:-1]):
        I_TBH = input_current(layer, h_TBX, cfg, dilations[i] if cfg.convolution else None)
        S_TBH = lif(I_TBH, layer["alpha"], cfg.surrogate, cfg.v_thr, layer.get("W_rec"), cfg.matmul_precision)
        h_TBX = dropout(keys[i], S_TBH, cfg.dropout) if use_dropout else S_TBH
        hidden.append(h_TBX)
    out = params[-1]
    I_TBO = input_current(out, h_TBX, cfg)
    if cfg.decoder == "freq":  # spiking output layer
        return hidden, lif(I_TBO, out["alpha"], cfg.surrogate, cfg.v_thr, precision=cfg.matmul_precision)
    return hidden, leaky_integrator(I_TBO, out["alpha"])


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
