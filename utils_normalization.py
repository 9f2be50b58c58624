"""Functional normalisation of a layer's input current, as the paper's code computes it.

Batch norm uses the statistics of the batch at hand over batch x time, per feature, in
training *and* evaluation: the published code keeps no running averages, so a sample's
prediction depends on the other samples of its evaluation batch. Layer norm normalises
every (time, sample) over the features.
"""

import jax.numpy as jnp

BATCH_EPS = 1e-5
LAYER_EPS = 1e-6


def batch_norm(I_TBH, scale, bias, eps=BATCH_EPS):
    mean = I_TBH.mean(axis=(0, 1))
    var = I_TBH.var(axis=(0, 1))
    return (I_TBH - mean) / jnp.sqrt(var + eps) * scale + bias


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
