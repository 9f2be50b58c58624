"""Functional normalisation of a layer's input current, as the paper's code computes it.

Batch norm uses the statistics of the batch at hand over batch x time, per feature, in
training *and* evaluation: the published code keeps no running averages, so a sample's
prediction depends on the other samples of its evaluation batch. Layer norm normalises
every (time, sample) over the features.
"""

import jax
import jax.numpy as jnp

BATCH_EPS = 1e-5
LAYER_EPS = 1e-6
# float32 matmuls in float32 on every backend: GPUs may otherwise round their inputs to
# TF32 (10-bit mantissa); the published PyTorch code multiplies in float32. No effect on CPU.
HIGHEST = jax.lax.Precision.HIGHEST


def sum_rows(x):
    """Sum over every axis but the last, as a product with a ones vector: XLA's CPU backend
    rewrites large reductions into slower trees of reduce-windows (docs/performance.md);
    HIGHEST keeps the sum in float32 on GPUs."""
    x2 = x.reshape(-1, x.shape[-1])
    return jnp.dot(jnp.ones(x2.shape[0], x.dtype), x2, precision=HIGHEST)


def moments(mean_x, mean_x2):
    """(mean, variance) from E[x] and E[x^2], as the published code computes them:
    var = max(0, E[x^2] - E[x]^2) (the difference can round below zero)."""
    return mean_x, jnp.maximum(0.0, mean_x2 - jnp.square(mean_x))


@jax.custom_vjp
def batch_norm(I_TBH, scale, bias):
    """Per feature over batch x time (M5): (I - mean) * (rsqrt(var + 1e-5) * scale) + bias."""
    return _batch_norm_fwd(I_TBH, scale, bias)[0]


def _batch_norm_fwd(I_TBH, scale, bias):
    n = I_TBH.shape[0] * I_TBH.shape[1]
    mean, var = moments(sum_rows(I_TBH) / n, sum_rows(jnp.square(I_TBH)) / n)
    inv = jax.lax.rsqrt(var + BATCH_EPS)
    centred = I_TBH - mean
    return centred * (inv * scale) + bias, (centred, inv, scale)


def _batch_norm_bwd(residuals, g_TBH):
    """The textbook batch-norm gradient (xhat = centred * inv): two reductions and one
    elementwise pass."""
    centred, inv, scale = residuals
    n = centred.shape[0] * centred.shape[1]
    dbias = sum_rows(g_TBH)
    dscale = inv * sum_rows(g_TBH * centred)
    dI = (scale * inv) * (g_TBH - (dbias + centred * (inv * dscale)) / n)
    return dI, dscale, dbias


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def layer_norm(I_TBH, scale, bias, eps=LAYER_EPS):
    """Per (time, sample) over the features: (I - mean) * (rsqrt(var + 1e-6) * scale) + bias."""
    mean, var = moments(I_TBH.mean(axis=-1, keepdims=True),
                        jnp.square(I_TBH).mean(axis=-1, keepdims=True))
    return (I_TBH - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias


def normalize(I_TBH, layer: dict, normalizer: str):
    """Apply the configured normalizer with the layer's `norm_scale` and `norm_bias`."""
    if normalizer == "batch":
        return batch_norm(I_TBH, layer["norm_scale"], layer["norm_bias"])
    if normalizer == "layer":
        return layer_norm(I_TBH, layer["norm_scale"], layer["norm_bias"])
    return I_TBH
