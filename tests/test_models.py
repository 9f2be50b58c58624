"""The neuron model: scan against a plain loop, causality, surrogates, decoders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import decay_scan, decode, forward, leaky_integrator_scan, lif_scan, lif_scan_reference, make_spike_fn
from models import init_params
from utils_initialization import Config


SURROGATE_FORMULAS = {  # dS/dV of docs/model.md, written out here independently of models.py
    "box": lambda x: (jnp.abs(x) < 0.5).astype(x.dtype),
    "fast_sigmoid": lambda x: 1.0 / (10.0 * jnp.abs(x) + 1.0) ** 2,
}


def reference_spike(surrogate):
    """H(x) (strictly above threshold) with the surrogate derivative, as a custom_vjp."""
    spike = jax.custom_vjp(lambda x: (x > 0).astype(x.dtype))
    spike.defvjp(lambda x: ((x > 0).astype(x.dtype), x), lambda x, g: (g * SURROGATE_FORMULAS[surrogate](x),))
    return spike


def loop_lif(I_TBH, alpha, surrogate, v_thr=1.0, W_rec=None):
    """The LIF equations (M2-M3 of docs/model.md) as a plain Python loop, differentiated by JAX."""
    spike = reference_spike(surrogate)
    a = jnp.clip(alpha, models.ALPHA_MIN, models.ALPHA_MAX)
    v = s = jnp.zeros(I_TBH.shape[1:])
    out = []
    for t in range(I_TBH.shape[0]):
        rec = 0.0 if W_rec is None else s @ (W_rec * (1 - jnp.eye(W_rec.shape[0])))
        v = a * v + I_TBH[t] + rec - v_thr * s
        s = spike(v - v_thr)
        out.append(s)
    return jnp.stack(out)


def loop_leaky_integrator(I_TBO, alpha):
    u, out = jnp.zeros(I_TBO.shape[1:]), []
    for t in range(I_TBO.shape[0]):
        u = alpha * u + (1 - alpha) * I_TBO[t]
        out.append(u)
    return jnp.stack(out)


def random_inputs(key, T=16, B=4, H=6):
    k1, k2, k3 = jax.random.split(key, 3)
    I = 1.5 * jax.random.normal(k1, (T, B, H))
    alpha = jax.random.uniform(k2, (H,), minval=0.5, maxval=0.99)
    W_rec = 0.5 * jax.random.normal(k3, (H, H))
    return I, alpha, W_rec


@pytest.mark.parametrize("surrogate", ["box", "fast_sigmoid"])
@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_lif_scan_equals_python_loop(surrogate, recurrent, jit):
    I, alpha, W_rec = random_inputs(jax.random.PRNGKey(1))
    W_rec = W_rec if recurrent else None
    weights = jax.random.normal(jax.random.PRNGKey(2), I.shape)  # a generic downstream loss

    def loss(f):
        return lambda I, a, W: jnp.sum(weights * f(I, a, surrogate, 1.0, W))

    scan_grad = jax.grad(loss(lif_scan), argnums=(0, 1, 2) if recurrent else (0, 1))
    loop_grad = jax.grad(loss(loop_lif), argnums=(0, 1, 2) if recurrent else (0, 1))
    if jit:
        scan_grad = jax.jit(scan_grad)
    S_scan, S_loop = lif_scan(I, alpha, surrogate, 1.0, W_rec), loop_lif(I, alpha, surrogate, 1.0, W_rec)
    assert S_scan.shape == I.shape
    assert 0 < float(S_scan.mean()) < 1  # the test exercises spikes and silence
    np.testing.assert_array_equal(S_scan, S_loop)
    for g_scan, g_loop in zip(scan_grad(I, alpha, W_rec), loop_grad(I, alpha, W_rec)):
        assert float(jnp.abs(g_loop).max()) > 0
        np.testing.assert_allclose(g_scan, g_loop, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [lif_scan, lif_scan_reference])
def test_the_layers_default_to_the_published_neuron(layer):
    """The fused and the reference layer's defaults: the box surrogate and threshold 1."""
    I, alpha, _ = random_inputs(jax.random.PRNGKey(5))
    g = lambda f: jax.grad(lambda I: jnp.sum(jnp.sin(jnp.arange(I.size).reshape(I.shape)) * f(I)))(I)  # noqa: E731
    np.testing.assert_array_equal(layer(I, alpha), layer(I, alpha, "box", 1.0))
    np.testing.assert_allclose(g(lambda I: layer(I, alpha)), g(lambda I: loop_lif(I, alpha, "box", 1.0)),
                               rtol=1e-5, atol=1e-5)


def test_lif_scalar_alpha_and_clipping():
    """A shared scalar decay broadcasts; decays above 0.98 act as 0.98 and get no gradient."""
    I, _, _ = random_inputs(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(lif_scan(I, jnp.float32(0.999), "box"),
                                  lif_scan(I, jnp.full(I.shape[-1], 0.98), "box"))
    g = jax.grad(lambda a: lif_scan(I, a, "box").sum())(jnp.float32(0.999))
    assert float(g) == 0.0


def test_leaky_integrator_equals_python_loop():
    I, alpha, _ = random_inputs(jax.random.PRNGKey(4), H=3)
    f = lambda fn: lambda I, a: jnp.sum(jnp.sin(fn(I, a)))  # noqa: E731
    np.testing.assert_allclose(leaky_integrator_scan(I, alpha), loop_leaky_integrator(I, alpha),
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.grad(f(leaky_integrator_scan), (0, 1))(I, alpha),
                    jax.grad(f(loop_leaky_integrator), (0, 1))(I, alpha)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(decay_scan(jnp.ones((3, 1, 1)), jnp.array([0.5])).ravel(),
                               [1.0, 1.5, 1.75])


@pytest.mark.parametrize("surrogate,expected", [
    ("box", [0.0, 1.0, 1.0, 1.0, 0.0]),
    ("fast_sigmoid", [1 / 36, 1 / 16, 1.0, 1 / 16, 1 / 36]),
])
def test_surrogate_forward_and_gradient(surrogate, expected):
    x = jnp.array([-0.5, -0.3, 0.0, 0.3, 0.5])  # V - theta
    spike = make_spike_fn(surrogate)
    np.testing.assert_array_equal(spike(x), [0, 0, 0, 1, 1])  # strictly above threshold
    np.testing.assert_allclose(jax.vmap(jax.grad(spike))(x), expected, rtol=1e-6)


def active_params(cfg, gain=15.0):
    """Initial parameters with weights scaled up so that spikes reach every layer even
    without normalisation."""
    params = init_params(jax.random.PRNGKey(0), cfg)
    return [dict(layer, W=gain * layer["W"]) for layer in params]


def spiky_input(T=24, B=2, I=5):
    return (jax.random.uniform(jax.random.PRNGKey(1), (T, B, I)) < 0.4).astype(jnp.float32)


def causal_config(**kw):
    return Config(n_in=5, n_hid=7, n_out=3, n_layers=4, nb_steps=24, time_max=0.24,
                  decoder="vlast", **kw)


@pytest.mark.parametrize("kw", [
    dict(normalizer="none"),
    dict(normalizer="layer", recurrent=True),
    dict(normalizer="none", convolution=True, conv_kernel=3, conv_dilation=2),
])
def test_no_gradient_from_future_inputs(kw):
    """Output at step t0 depends on inputs up to t0 only. (Batch norm is excluded: its
    statistics over the whole sequence make every step depend on every other, in the
    published model too.)"""
    cfg = causal_config(**kw)
    params, x = active_params(cfg), spiky_input()
    t0 = 12
    grad = jax.jit(jax.grad(lambda x: forward(params, x, cfg)[1][t0].sum()))(x)
    assert float(jnp.abs(grad[t0 + 1:]).max()) == 0.0
    assert float(jnp.abs(grad[:t0 + 1]).max()) > 0.0


def test_causal_convolution_taps():
    """y[t] = sum_j x[t - (K-1-j) d] W[j]: the last tap sees the present."""
    x = jnp.zeros((10, 1, 1)).at[3, 0, 0].set(1.0)
    W = jnp.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    y = models.causal_conv(x, W, dilation=2).ravel()
    np.testing.assert_allclose(y, [0, 0, 0, 100, 0, 10, 0, 1, 0, 0])


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


DECODER_FORMULAS = {  # the table of docs/model.md, on U [time, batch, classes], in numpy
    "cum": lambda U: np_softmax(np_softmax(U).sum(0)),
    "sum": lambda U: np_softmax(U.mean(0)),
    "vmax": lambda U: np_softmax(U.max(0)),
    "vlast": lambda U: np_softmax(U[-1]),
    "freq": lambda U: np_softmax(U.sum(0)),
    "vmem_time": lambda U: np_softmax(U).transpose(1, 0, 2),
}


@pytest.mark.parametrize("decoder", sorted(DECODER_FORMULAS))
def test_decoders_match_their_formulas(decoder):
    """Each decoder against its numpy formula, on an output trace whose time steps differ
    (first, last, largest and mean all give other answers) and that is not shift-invariant
    across time (the sum and the mean differ)."""
    U = np.random.default_rng(0).normal(0.3, 2.0, (9, 4, 3)).astype(np.float32)
    U[:, 0] = U[::-1, 0]  # a sample whose largest value comes early
    p = np.asarray(decode(jnp.asarray(U), decoder))
    np.testing.assert_allclose(p, DECODER_FORMULAS[decoder](U.astype(np.float64)), rtol=2e-5, atol=1e-6)
    others = [d for d in DECODER_FORMULAS if d != decoder and d != "vmem_time" and decoder != "vmem_time"]
    for other in others:  # the input tells the decoders apart
        assert not np.allclose(DECODER_FORMULAS[other](U.astype(np.float64)), p, atol=1e-4), other


def test_freq_decoder_counts_output_spikes():
    cfg = causal_config(normalizer="none").replace(decoder="freq")
    _, out = forward(active_params(cfg), spiky_input(), cfg)
    assert set(np.unique(np.asarray(out))) == {0.0, 1.0}


def test_dropout_only_in_training():
    cfg = causal_config(normalizer="none").replace(dropout=0.5)
    params, x, key = active_params(cfg), spiky_input(), jax.random.PRNGKey(2)
    eval_a, eval_b = forward(params, x, cfg)[1], forward(params, x, cfg, key, train=False)[1]
    np.testing.assert_array_equal(eval_a, eval_b)
    train = forward(params, x, cfg, key, train=True)[1]
    assert not np.allclose(train, eval_a)
    np.testing.assert_array_equal(train, forward(params, x, cfg, key, train=True)[1])


def dropout_key(seed=0, epoch=0, batch=0, layer=0, n_layers=4):
    """A layer's dropout key as a training step derives it: the first half of PRNGKey(seed)
    (training._init_run), folded with the epoch and the batch (make_step_fns), split per layer
    (models.forward)."""
    key = jax.random.split(jax.random.PRNGKey(seed))[0]
    return jax.random.split(jax.random.fold_in(jax.random.fold_in(key, epoch), batch), n_layers)[layer]


SHAPE = (64, 256, 256)  # time x batch x neurons: 4.2 million draws
FIVE_SIGMA = 5 / np.sqrt(np.prod(SHAPE))  # of a correlation coefficient of independent draws


def draws(**key):
    return np.asarray(models.dropout_bits(dropout_key(**key), SHAPE), dtype=np.float64)


def correlation(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_dropout_draws_are_uniform_16_bit_values():
    """A frequency test of the low and the high byte of 4.2 million draws (chi-square with 255
    degrees of freedom within 5 sigma), the extreme values reached, the mean within 5 sigma."""
    u = draws().astype(np.int64).ravel()
    assert u.min() == 0 and u.max() == 65535
    for byte in (u & 0xFF, u >> 8):
        counts = np.bincount(byte, minlength=256)
        expected = len(u) / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert abs(chi2 - 255) < 5 * np.sqrt(2 * 255), chi2
    assert abs(u.mean() / 65535 - 0.5) < 5 * np.sqrt(1 / 12 / len(u))


def test_neighbouring_dropout_draws_are_uncorrelated():
    """In time, batch and neuron (neighbours in the neuron axis share a 32-bit hash word)."""
    u = draws()
    assert abs(correlation(u[1:], u[:-1])) < FIVE_SIGMA * 1.01
    assert abs(correlation(u[:, 1:], u[:, :-1])) < FIVE_SIGMA * 1.01
    assert abs(correlation(u[..., 1:], u[..., :-1])) < FIVE_SIGMA * 1.01
    assert abs(correlation(u[..., 0::2], u[..., 1::2])) < FIVE_SIGMA * 1.5  # the two halves of each word


@pytest.mark.parametrize("other", [dict(layer=1), dict(layer=3), dict(batch=1), dict(batch=19), dict(epoch=1),
                                   dict(epoch=59), dict(seed=1), dict(seed=9), dict(seed=1, epoch=1, batch=1)])
def test_dropout_masks_of_other_layers_batches_epochs_and_seeds_are_independent(other):
    """The same position in the mask of another layer, batch, epoch or seed: no correlation,
    and the keep decisions agree as often as independent draws would."""
    a, b = draws(), draws(**other)
    assert abs(correlation(a, b)) < FIVE_SIGMA
    keep_a, keep_b = a >= round(0.1 * 65536), b >= round(0.1 * 65536)
    p = 1 - round(0.1 * 65536) / 65536
    both = (keep_a & keep_b).mean()
    assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / keep_a.size)


def test_dropout_masks_follow_the_documented_hash():
    """Word j = lowbias32(lowbias32(j + k0) ^ k1): element 2j its low, 2j + 1 its high 16 bits
    (docs/model.md), recomputed here in numpy."""
    def lowbias32(x):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))

    key = dropout_key(seed=3, epoch=2, batch=5, layer=1)
    k0, k1 = (np.uint32(v) for v in np.asarray(key, dtype=np.uint32))
    with np.errstate(over="ignore"):
        words = lowbias32(lowbias32(np.arange(6, dtype=np.uint32) + k0) ^ k1)
    expected = np.stack([words & np.uint32(0xFFFF), words >> np.uint32(16)], axis=1).ravel()[:11]
    np.testing.assert_array_equal(np.asarray(models.dropout_bits(key, (11,))), expected)
    S = jnp.ones((11,))
    kept = np.asarray(models.dropout(key, S, 0.3)) > 0
    np.testing.assert_array_equal(kept, expected >= round(0.3 * 65536))
    # a draw equal to the threshold is kept: the rate is exactly round(rate * 65536) / 65536
    at_threshold = int(expected[3])
    kept = np.asarray(models.dropout(key, S, at_threshold / 65536)) > 0
    assert kept[3] and np.array_equal(kept, expected >= at_threshold)


@pytest.mark.parametrize("rate,shape", [(0.1, (100, 64, 10)), (0.4, (7, 3, 5)), (0.25, (33, 17, 9))])
def test_dropout_keeps_each_spike_with_probability_one_minus_rate(rate, shape):
    """Inverted dropout: the kept spikes are scaled by 1 / (1 - rate); the fraction dropped
    is the rate (binomial 5-sigma bounds), independently per element and per key."""
    S = jnp.ones(shape, jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(3), 20)
    out = np.stack([np.asarray(models.dropout(k, S, rate)) for k in keys])
    assert set(np.unique(out)) == {0.0, np.float32(1.0) / np.float32(1.0 - rate)}
    dropped, n = (out == 0).mean(), out.size
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    assert not np.array_equal(out[0], out[1])
    # neighbours share a 32-bit word: their draws must still be independent
    a, b = out[..., :-1].reshape(-1) == 0, out[..., 1:].reshape(-1) == 0
    assert abs((a & b).mean() - rate ** 2) < 5 * np.sqrt(rate ** 2 * (1 - rate ** 2) / a.size)


def test_bfloat16_matmuls_keep_float32_state():
    """matmul_dtype bfloat16 rounds the matmul inputs only: outputs stay float32 and close."""
    cfg = causal_config(normalizer="batch")
    params, x = active_params(cfg), spiky_input()
    I32 = models.input_current(params[0], x, cfg)
    I16 = models.input_current(params[0], x, cfg.replace(matmul_dtype="bfloat16"))
    assert I16.dtype == jnp.float32
    np.testing.assert_allclose(I16, I32, atol=0.05)
    assert not np.array_equal(I16, I32)


@pytest.mark.parametrize("kw", [dict(), dict(recurrent=True), dict(convolution=True, conv_kernel=3)])
def test_matmul_precision(kw):
    """`matmul_precision` highest: every product of a float32 network, forward and backward,
    asks for HIGHEST (a GPU would otherwise round its inputs to TF32). default (the published
    code's): the weight products and convolutions leave the precision to JAX, while the
    batch-norm sums (products with a ones vector) stay HIGHEST, as the published float32
    reductions. bfloat16 networks leave the input currents' products at the default."""
    cfg = causal_config(normalizer="batch", **kw)
    params, x = active_params(cfg), spiky_input()

    def products(cfg, dtype="f32"):
        loss = lambda p: forward(p, x, cfg)[1].sum()  # noqa: E731
        text = jax.jit(jax.grad(loss)).lower(params).as_text()
        return [line for line in text.splitlines() if ("dot_general" in line or "convolution" in line) and dtype in line]

    assert cfg.matmul_precision == "default"
    highest = products(cfg.replace(matmul_precision="highest"))
    assert highest and all("HIGHEST" in line for line in highest)
    default = products(cfg)
    assert len(default) == len(highest)
    exact = [line for line in default if "HIGHEST" in line]
    assert exact and len(exact) < len(default)
    assert not any("convolution" in line for line in exact)
    bf16 = products(cfg.replace(matmul_dtype="bfloat16", matmul_precision="highest"), "bf16")
    assert bf16 and not any("HIGHEST" in line for line in bf16)


@pytest.mark.parametrize("kw", [dict(), dict(recurrent=True), dict(recurrent=True, surrogate="fast_sigmoid"),
                                dict(decoder="freq"), dict(convolution=True, conv_kernel=3, conv_dilation=2),
                                dict(normalizer="layer", recurrent=True)])
def test_the_reference_layers_equal_the_fused_ones(kw):
    """--lif_impl reference (plain lax.scan of models.lif_step, differentiated by JAX) and the
    fused layers with their hand-written adjoints: the same spikes and outputs, the same
    gradients of every parameter, feed-forward and recurrent."""
    cfg = causal_config(**{"normalizer": "batch", **{k: v for k, v in kw.items() if k != "decoder"}})
    cfg = cfg.replace(**{k: v for k, v in kw.items() if k == "decoder"})
    params, x = active_params(cfg), spiky_input()
    k1, k2 = jax.random.split(jax.random.PRNGKey(7))

    def loss(p, cfg):
        hidden, out = forward(p, x, cfg)
        weights = [jax.random.normal(jax.random.fold_in(k1, i), h.shape) for i, h in enumerate(hidden)]
        return (jnp.sum(jax.random.normal(k2, out.shape) * out)
                + sum(jnp.sum(w * h) for w, h in zip(weights, hidden)))

    reference = cfg.replace(lif_impl="reference")
    (h_f, o_f), (h_r, o_r) = forward(params, x, cfg), forward(params, x, reference)
    for a, b in zip(h_f, h_r):
        np.testing.assert_array_equal(a, b)
    assert 0 < float(jnp.mean(h_f[-1])) < 1
    np.testing.assert_allclose(o_f, o_r, rtol=1e-5, atol=1e-6)
    g_f, g_r = jax.grad(loss)(params, cfg), jax.grad(loss)(params, reference)
    for i, (a, b) in enumerate(zip(g_f, g_r)):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=2e-4, atol=1e-5, err_msg=f"L{i}_{name}")
    assert any(float(jnp.abs(g["alpha"]).max()) > 0 for g in g_f[:-1])


# --- the neuron contract: ALIF, the registry -----------------------------------------------------
def loop_alif(I_TBH, alpha, rho, beta, surrogate="box", v_thr=1.0, W_rec=None):
    """The ALIF equations (docs/model.md) as a plain Python loop: b[t] = rho b[t-1] +
    (1 - rho) S[t-1]; V[t] = a V[t-1] + I[t] + S[t-1] W_rec - (theta + beta b[t-1]) S[t-1];
    S[t] = H(V[t] - theta - beta b[t]); a, rho clipped to [1e-5, 0.98]. Returns (S, V)."""
    spike = reference_spike(surrogate)
    a, r = (jnp.clip(x, models.ALPHA_MIN, models.ALPHA_MAX) for x in (alpha, rho))
    v = s = b = jnp.zeros(I_TBH.shape[1:])
    spikes, membranes = [], []
    for t in range(I_TBH.shape[0]):
        rec = 0.0 if W_rec is None else s @ (W_rec * (1 - jnp.eye(W_rec.shape[0])))
        threshold_before = v_thr + beta * b
        b = r * b + (1 - r) * s
        v = a * v + I_TBH[t] + rec - threshold_before * s
        s = spike(v - (v_thr + beta * b))
        spikes.append(s)
        membranes.append(v)
    return jnp.stack(spikes), jnp.stack(membranes)


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("surrogate", ["box", "fast_sigmoid"])
def test_the_alif_layer_equals_its_equations_as_a_python_loop(recurrent, surrogate):
    I, alpha, W_rec = random_inputs(jax.random.PRNGKey(11))
    rho = jax.random.uniform(jax.random.PRNGKey(12), alpha.shape, minval=0.6, maxval=0.99)
    W_rec = W_rec if recurrent else None
    neuron = models.ALIF(surrogate=surrogate, beta=0.7)
    weights = jax.random.normal(jax.random.PRNGKey(13), I.shape)

    def layer(I, a, r, W):
        return models.neuron_scan(neuron, I, {"alpha": a, "rho": r}, W)

    def loop(I, a, r, W):
        return loop_alif(I, a, r, 0.7, surrogate, 1.0, W)

    (S, V), (S_ref, V_ref) = layer(I, alpha, rho, W_rec), loop(I, alpha, rho, W_rec)
    np.testing.assert_array_equal(S, S_ref)
    np.testing.assert_allclose(V, V_ref, rtol=1e-5, atol=1e-5)
    assert 0 < float(S.mean()) < 1
    argnums = (0, 1, 2, 3) if recurrent else (0, 1, 2)
    grad = lambda f: jax.grad(lambda *a: jnp.sum(weights * f(*a)[0]), argnums)(I, alpha, rho, W_rec)  # noqa: E731
    for g, g_ref in zip(grad(layer), grad(loop)):
        assert float(jnp.abs(g_ref).max()) > 0
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_alif_without_adaptation_is_the_lif_neuron():
    """beta = 0: the same spikes, membranes and gradients as the LIF neuron, in both of its
    layers (the plain scan and the fused layer)."""
    I, alpha, W_rec = random_inputs(jax.random.PRNGKey(14))
    rho = jnp.full(alpha.shape, 0.9)
    weights = jax.random.normal(jax.random.PRNGKey(15), I.shape)
    alif = lambda I, a, W: models.neuron_scan(models.ALIF(beta=0.0), I, {"alpha": a, "rho": rho}, W)[0]  # noqa: E731
    lif = lambda I, a, W: models.neuron_scan(models.LIF(), I, {"alpha": a}, W)[0]  # noqa: E731
    for W in (None, W_rec):
        np.testing.assert_array_equal(alif(I, alpha, W), lif(I, alpha, W))
        np.testing.assert_array_equal(alif(I, alpha, W), lif_scan(I, alpha, W_rec=W))
        for fn in (lif, lambda I, a, W: lif_scan(I, a, W_rec=W)):
            for g, g_ref in zip(jax.grad(lambda I, a: jnp.sum(weights * alif(I, a, W)), (0, 1))(I, alpha),
                                jax.grad(lambda I, a: jnp.sum(weights * fn(I, a, W)), (0, 1))(I, alpha)):
                np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def test_a_network_of_alif_neurons_trains_its_adaptation_when_asked():
    cfg = causal_config(neuron="alif", normalizer="batch", adapt_beta=0.5, tau_adapt=0.1, hierarchy_tau="linear",
                        delta_tau=0.02, delta_tau_adapt=0.06)
    params = init_params(jax.random.PRNGKey(0), cfg)
    assert [set(layer) for layer in params] == [{"W", "alpha", "rho", "norm_scale", "norm_bias"}] * 3 + [
        {"W", "alpha", "norm_scale", "norm_bias"}]
    taus = [float(np.median(-cfg.dt / np.log(np.asarray(layer["rho"])))) for layer in params[:-1]]
    np.testing.assert_allclose(taus, [0.07, 0.1, 0.13], rtol=0.1)  # tau_adapt's linear hierarchy, +-0.03 s
    np.testing.assert_array_equal(params[0]["alpha"], init_params(jax.random.PRNGKey(0), cfg.replace(neuron="lif"))[0]["alpha"])
    import training
    x, y = spiky_input(), jnp.zeros(2, jnp.int32)
    for train_adapt in (False, True):
        c = cfg.replace(train_adapt=train_adapt)
        grads = jax.grad(lambda p: training.loss_fn(training.freeze_fixed_decays(p, c), x, y, c)[0])(params)
        grads = training.decay_grad_rule(grads, c)
        assert (float(jnp.abs(grads[0]["rho"]).max()) > 0) == train_adapt
        assert float(jnp.abs(grads[0]["W"]).max()) > 0 and float(jnp.abs(grads[0]["alpha"]).max()) == 0


def test_the_neuron_registry_and_its_settings():
    assert set(models.NEURONS) >= {"lif", "alif"}
    for name, neuron in models.NEURONS.items():  # every model follows the contract
        assert neuron.params and all(isinstance(p, models.Param) and p.init for p in neuron.params.values())
        state = neuron(Config(neuron=name)).init_state((2, 3))
        assert state.v.shape == (2, 3)
    with pytest.raises(models.ConfigError, match="--neuron: unknown neuron model 'izhikevich'"):
        models.neuron_of(Config(neuron="izhikevich"))
    with pytest.raises(models.ConfigError, match="--neuron_args: 'tau_syn=0.005': the lif neuron's settings are none"):
        models.neuron_of(Config(neuron_args="tau_syn=0.005"))
    models.NEURONS["cuba"] = type("CuBa", (models.LIF,), {"settings": {"tau_syn": 0.005}})
    try:
        assert models.neuron_of(Config(neuron="cuba", neuron_args=" tau_syn = 0.01 ")).settings == {"tau_syn": 0.01}
        assert models.neuron_of(Config(neuron="cuba")).settings == {"tau_syn": 0.005}
        with pytest.raises(models.ConfigError, match="'tau_syn=fast' is not a number|'fast' is not a number"):
            models.neuron_of(Config(neuron="cuba", neuron_args="tau_syn=fast"))
    finally:
        del models.NEURONS["cuba"]
    rules = models.param_rules(Config(neuron="alif"))
    assert {k for k, p in rules.items() if p.l2} == {"W", "W_rec", "norm_scale", "norm_bias"}
    assert {k for k, p in rules.items() if p.decay} == {"alpha", "rho"}
    assert {k for k, p in rules.items() if p.penalised} == {"alpha"}


@pytest.mark.parametrize("kw", [dict(), dict(recurrent=True, lif_impl="reference"), dict(neuron="alif"),
                                dict(decoder="freq")])
def test_unrolling_the_loops_over_time_changes_no_number(kw):
    """--scan_unroll 4 (a GPU's choice): the same spikes as 1, outputs and gradients to float32
    rounding (XLA may contract the unrolled steps' operations differently: not bitwise)."""
    cfg = causal_config(**{"normalizer": "batch", **{k: v for k, v in kw.items() if k != "decoder"}})
    cfg = cfg.replace(**{k: v for k, v in kw.items() if k == "decoder"})
    params, x = active_params(cfg), spiky_input()

    def loss(p, c):
        hidden, out = forward(p, x, c)
        return jnp.sum(jnp.sin(out)) + sum(jnp.sum(h * jnp.arange(h.size).reshape(h.shape) % 7) for h in hidden)

    (h1, o1), (h4, o4) = forward(params, x, cfg), forward(params, x, cfg.replace(scan_unroll=4))
    for a, b in zip(h1, h4):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(o1, o4, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss)(params, cfg)),
                    jax.tree_util.tree_leaves(jax.grad(loss)(params, cfg.replace(scan_unroll=4)))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))  # sums that cancel


def loop_unrolls(jaxpr, found=None) -> list:
    """The `unroll` of every loop over time (scan, or an un-unrolled while) in a jaxpr, nested
    ones included."""
    found = [] if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("scan", "while"):
            found.append(eqn.params.get("unroll", 1))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    loop_unrolls(inner, found)
    return found


@pytest.mark.parametrize("kw", [dict(), dict(recurrent=True, lif_impl="reference"), dict(neuron="alif")])
def test_scan_unroll_reaches_every_loop_forward_and_backward(kw):
    """--scan_unroll is passed to each hidden layer's loop (fused LIF, plain scan of any neuron
    model) and the readout's, in the forward pass and in the hand-written adjoints."""
    cfg = causal_config(**{"normalizer": "batch", **kw})
    params, x = active_params(cfg), spiky_input()

    def unrolls(c):
        grad = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(forward(p, x, c)[1])))(params)
        return loop_unrolls(grad.jaxpr)

    plain, unrolled = unrolls(cfg), unrolls(cfg.replace(scan_unroll=4))
    assert plain and set(plain) == {1}
    assert len(unrolled) == len(plain) and set(unrolled) == {4}
