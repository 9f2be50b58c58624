"""utils_normalization.py: batch and layer norm as the published code computes them (M5 of
docs/model.md), the hand-written batch-norm gradient, and the ones-vector sum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from utils_normalization import BATCH_EPS, LAYER_EPS, batch_norm, layer_norm, moments, normalize, sum_rows


def currents(shape=(7, 5, 4), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(1.0, 2.0, shape).astype(np.float32))


def published_norm(x, axes, eps, scale, bias):
    """The published code's arithmetic, step by step, in float32."""
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes, keepdims=True) - jnp.square(mean))
    return (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias


def test_batch_norm_is_the_published_formula():
    x, scale, bias = currents(), jnp.array([1.0, 2.0, 0.5, -1.0]), jnp.array([0.0, 0.1, -0.3, 2.0])
    np.testing.assert_allclose(batch_norm(x, scale, bias), published_norm(x, (0, 1), BATCH_EPS, scale, bias),
                               rtol=1e-6, atol=1e-6)


def test_layer_norm_is_the_published_formula():
    x, scale, bias = currents(), jnp.full(4, 1.5), jnp.full(4, 0.2)
    np.testing.assert_allclose(layer_norm(x, scale, bias), published_norm(x, -1, LAYER_EPS, scale, bias),
                               rtol=1e-6, atol=1e-6)


def test_variance_never_rounds_below_zero():
    """A constant feature: E[x^2] - E[x]^2 can round below 0 in float32; it is clipped."""
    mean, var = moments(jnp.float32(0.1), jnp.float32(0.1) ** 2 - jnp.float32(1e-9))
    assert float(var) == 0.0 and float(mean) == pytest.approx(0.1)
    x = jnp.full((6, 3, 2), 0.1, jnp.float32)
    assert np.all(np.isfinite(batch_norm(x, jnp.ones(2), jnp.zeros(2))))


def test_batch_norm_gradient_equals_autodiff():
    """The hand-written backward pass equals JAX's differentiation of the plain formula."""
    x, scale, bias = currents(seed=1), jnp.array([1.0, 2.0, 0.5, -1.0]), jnp.array([0.0, 0.1, -0.3, 2.0])
    g = currents(seed=2)
    ours = jax.vjp(batch_norm, x, scale, bias)[1](g)
    plain = jax.vjp(lambda x, s, b: published_norm(x, (0, 1), BATCH_EPS, s, b), x, scale, bias)[1](g)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_normalize_chooses_by_name():
    x, layer = currents(), {"norm_scale": jnp.ones(4), "norm_bias": jnp.zeros(4)}
    assert normalize(x, layer, "none") is x
    np.testing.assert_allclose(normalize(x, layer, "layer"), layer_norm(x, jnp.ones(4), jnp.zeros(4)))
    np.testing.assert_allclose(normalize(x, layer, "batch").mean(axis=(0, 1)), 0, atol=1e-5)


@pytest.mark.parametrize("shape", [(100, 256, 32), (7, 3, 5), (1, 1, 4), (3, 7, 11, 2), (100, 1, 3)])
def test_sum_rows_equals_sum_over_leading_axes(shape):
    """sum_rows (a ones-vector matmul) is the float32 sum over every axis but the last,
    jitted or not, with the same gradient."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    expected = np.asarray(x, np.float64).reshape(-1, shape[-1]).sum(0)
    for f in (sum_rows, jax.jit(sum_rows)):
        np.testing.assert_allclose(f(x), expected, rtol=1e-5, atol=1e-5 * np.sqrt(x.size))
    w = jnp.arange(shape[-1], dtype=jnp.float32)
    np.testing.assert_allclose(jax.grad(lambda x: sum_rows(x) @ w)(x), jnp.broadcast_to(w, shape))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_statistics_of_a_full_batch_are_as_exact_as_float32_allows(seed):
    """The sweeps' batch: 100 steps x 512 samples per statistic. Mean and variance (as the
    published formula takes them) within 1e-6 of float64, as the published jnp.mean; a single
    float32 pass over the 51,200 rows drifts to about 1e-5 there and flips spikes."""
    x = np.random.default_rng(seed).normal(0.5, 0.7, (100, 512, 32)).astype(np.float32)
    n = 100 * 512
    mean, var = jax.jit(lambda x: moments(sum_rows(x) / n, sum_rows(jnp.square(x)) / n))(x)
    x64 = x.astype(np.float64).reshape(n, 32)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-6)
    mean_bn = np.asarray(x64.mean(0))
    bn = batch_norm(jnp.asarray(x), jnp.ones(32), jnp.zeros(32))
    np.testing.assert_allclose(bn, (x - mean_bn) / np.sqrt(x64.var(0) + BATCH_EPS), rtol=2e-5, atol=2e-5)
