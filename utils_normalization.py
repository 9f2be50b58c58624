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


@jax.custom_vjp
def batch_norm(I_TBH, scale, bias):
    """Per feature over batch x time: (I - mean) / sqrt(var + 1e-5) * scale + bias."""
    return _batch_norm_fwd(I_TBH, scale, bias)[0]


def _batch_norm_fwd(I_TBH, scale, bias):
    mean = I_TBH.mean(axis=(0, 1))
    var = jnp.square(I_TBH - mean).mean(axis=(0, 1))
    inv = jax.lax.rsqrt(var + BATCH_EPS)
    xhat = (I_TBH - mean) * inv
    return xhat * scale + bias, (xhat, inv, scale)


def _batch_norm_bwd(residuals, g_TBH):
    """The textbook batch-norm gradient: two reductions and one elementwise pass."""
    xhat, inv, scale = residuals
    n = xhat.shape[0] * xhat.shape[1]
    dbias = g_TBH.sum(axis=(0, 1))
    dscale = (g_TBH * xhat).sum(axis=(0, 1))
    dI = (scale * inv) * (g_TBH - (dbias + xhat * dscale) / n)
    return dI, dscale, dbias


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def layer_norm(I_TBH, scale, bias, eps=LAYER_EPS):
    mean = I_TBH.mean(axis=-1, keepdims=True)
    var = I_TBH.var(axis=-1, keepdims=True)
    return (I_TBH - mean) / jnp.sqrt(var + eps) * scale + bias


def normalize(I_TBH, layer: dict, normalizer: str):
    """Apply the configured normalizer with the layer's `norm_scale` and `norm_bias`."""
    if normalizer == "batch":
        return batch_norm(I_TBH, layer["norm_scale"], layer["norm_bias"])
    if normalizer == "layer":
        return layer_norm(I_TBH, layer["norm_scale"], layer["norm_bias"])
    return I_TBH
