"""Re-estimate BatchNorm moving statistics after pruning (``bn_recalibrate``).

Every mask update changes the activations that reach each BatchNormalization layer, but
its moving mean and variance follow them only at the rate ``1 - momentum`` per training
step: with Keras's default momentum 0.99, the statistics at the end of a gradual schedule
still remember the denser network of the last mask updates, and the pruned model scores
lower at inference than its weights deserve. :func:`recalibrate_batchnorm` replaces them
with the exact mean and (biased, as Keras's update uses) variance of each layer's inputs
over ``x``: a cumulative estimate, not an exponential one, so no old statistic survives
and the result does not depend on a momentum or on the order of the batches' means.

The inputs are those of training-mode forward passes of the BatchNorm layers (upstream
BatchNorms normalise each batch with its own statistics, as during fine-tuning), with
every other layer in inference mode (no dropout noise, no augmentation) and no weight
update. Layers inside nested models are reached; a frozen layer (``trainable=False``,
which Keras runs in inference mode) keeps its statistics.

Example:

>>> info = recalibrate_batchnorm(model, x_train[:1024])  # doctest: +SKIP
>>> info["layers"], info["samples"]                                    # doctest: +SKIP
(52, 1024)
"""

from __future__ import annotations

import numpy as np

#: Training samples the prune pass re-estimates the statistics on: a thousand images pin
#: each channel's mean to a few percent of its standard deviation even where a layer
#: sees one position per image.
SAMPLES = 1024
#: Samples per forward pass: upstream BatchNorms normalise each batch by its own
#: statistics, and a large batch brings that close to the population statistics that
#: inference uses (and costs fewer eager calls).
BATCH = 256


def batchnorm_layers(model) -> list:
    """The trainable BatchNormalization layers of ``model``, nested models included."""
    from compress.pruning.masks import _leaves

    return [la for la in _leaves(model) if type(la).__name__ == "BatchNormalization"
            and la.trainable and getattr(la, "moving_mean", None) is not None]


def recalibrate_batchnorm(model, x, batch_size: int = BATCH) -> dict:
    """Set each BatchNorm layer's moving statistics to the exact mean/variance of its
    training-mode inputs over ``x`` (in place; weights and masks untouched).

    Args:
        model: a Keras model (changed in place: only ``moving_mean``/``moving_variance``).
        x: inputs shaped for the model (an array or a structure of arrays; no labels).
        batch_size: int, default :data:`BATCH` (256). Samples per forward pass
            (upstream BatchNorms normalise by each batch's statistics).

    Returns:
        ``{"layers": n, "samples": m}``; ``layers`` 0 when there is nothing to do.
    """
    import keras
    import tensorflow as tf

    from compress.pruning.hessian import _batches

    layers = batchnorm_layers(model)
    leaves = keras.tree.flatten(x)
    n = len(leaves[0]) if leaves else 0
    if not layers or not n:
        return {"layers": 0, "samples": 0}
    # Per layer: [count, mean, M2] per channel, combined batch by batch (Chan et al.), in
    # float64 so that 1e3 batches lose nothing.
    stats = {id(la): [0, 0.0, 0.0] for la in layers}

    def hook(layer):
        original = layer.call

        def call(*args, **kwargs):
            a = tf.convert_to_tensor(args[0] if args else kwargs["inputs"])
            axis = layer.axis % len(a.shape)
            axes = [i for i in range(len(a.shape)) if i != axis]
            mean, var = tf.nn.moments(tf.cast(a, "float32"), axes)
            count = int(np.prod([a.shape[i] for i in axes]))
            s = stats[id(layer)]
            m_b, v_b = mean.numpy().astype("float64"), var.numpy().astype("float64")
            total = s[0] + count
            delta = m_b - s[1]
            s[2] = s[2] + v_b * count + delta ** 2 * s[0] * count / total
            s[1] = s[1] + delta * count / total
            s[0] = total
            kwargs["training"] = True  # normalise by the batch, as fine-tuning did
            return original(*args, **kwargs)

        return call

    saved = {id(la): (np.asarray(la.moving_mean), np.asarray(la.moving_variance))
             for la in layers}
    for la in layers:
        la.call = hook(la)
    try:
        for xb in _batches(x, batch_size):
            model(xb, training=False)
    finally:
        for la in layers:
            del la.call
    for la in layers:
        count, mean, m2 = stats[id(la)]
        if not count:  # never called on this input (an unused branch): left as it was
            la.moving_mean.assign(saved[id(la)][0])
            la.moving_variance.assign(saved[id(la)][1])
            continue
        la.moving_mean.assign(mean.astype(la.moving_mean.dtype))
        la.moving_variance.assign((m2 / count).astype(la.moving_variance.dtype))
    return {"layers": sum(1 for la in layers if stats[id(la)][0]), "samples": int(n)}
